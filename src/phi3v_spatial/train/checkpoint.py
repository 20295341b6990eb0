"""Atomic, resumable training checkpoints.

`OUT/checkpoint-<step>/` holds: `adapter/` (PEFT format) or `model/` (HF folder), `optimizer.pt`
(keyed by parameter index, or by parameter name when the run was sharded),
`scheduler.pt`, `rng.pt` (python, numpy, torch CPU and CUDA generators) and `trainer_state.json`
(step, data position, metrics so far). It is written to a temporary folder and renamed into place
in one `os.replace`, so a run killed at any moment leaves either the previous checkpoint or the
new one, never half of one.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError

_NAME = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints in out_dir, oldest first."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _NAME.match(p.name)) and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: str | Path, step: int, save_weights, optimizer_state: dict, scheduler, state: dict,
                    keep: int = 2) -> Path:
    """Write checkpoint-<step> atomically. save_weights(folder) writes the adapter or the model;
    optimizer_state is the optimizer's state dict (train/sharding.py: gathered from the shards)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"checkpoint-{step}"
    tmp = out / f".tmp-checkpoint-{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_weights(tmp)
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    _fsync_tree(tmp)
    if final.exists():  # an older run's checkpoint of the same step
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: str | Path, load_optimizer, scheduler) -> dict:
    """Restore optimizer (load_optimizer(state dict)), scheduler and RNG states; return trainer_state
    (weights are the caller's)."""
    folder = Path(folder)
    try:
        load_optimizer(torch.load(folder / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
        set_rng_state(torch.load(folder / "rng.pt", weights_only=False))
        return json.loads((folder / "trainer_state.json").read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{folder} is not a complete training checkpoint: {e}") from e


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
