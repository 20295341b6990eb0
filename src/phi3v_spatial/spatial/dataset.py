"""The dataset folder (docs/dataset_schema.md): sharded, resumable writing and reading.

Scene i of a run uses seed `seed + i` and goes to shard i // scenes_per_shard. Workers render
scenes in parallel (each writes its own image, depth, mask and scene files, atomically); the
parent appends each scene's samples to its shard in scene order and then records, in
`progress/shard-<k>.json`, how many scenes and bytes of that shard are complete. After a crash
the shard is cut back to the recorded length and generation continues from the next scene, so a
resumed run writes exactly the bytes an uninterrupted one would. Separate processes or machines
can split a run with `part=(k, n)`: that call does the shards whose index is k modulo n. A seed
for which no valid scene exists (none among seeds 0-1299) is skipped and listed in
dataset_info.json under counts.skipped_seeds.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError

FORMAT = "phi3v-spatial-dataset"
FORMAT_VERSION = 1
SCENES_PER_SHARD = 500
SUBDIRS = ("images", "depth", "masks", "scenes", "data", "progress")


# ---- small file helpers ------------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _png_bytes(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def depth_to_png(depth: np.ndarray) -> np.ndarray:
    """Metres (float) -> uint16 millimetres; 0 stays 0 (no surface)."""
    return np.clip(np.round(np.asarray(depth, dtype=np.float64) * 1000.0), 0, 65535).astype(np.uint16)


def read_depth(path: Path) -> np.ndarray:
    """A depth file -> float32 metres (PNG: uint16 millimetres; .npy: float metres)."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            return np.load(path).astype(np.float32)
        from PIL import Image

        return np.asarray(Image.open(path), dtype=np.float32) / 1000.0
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read depth {path}: {exc}") from exc


def read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        return np.asarray(Image.open(path)).astype(np.int32)
    except OSError as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from exc


def write_scene_files(out_dir: Path, scene, rgb: np.ndarray, depth: np.ndarray, mask: np.ndarray) -> None:
    from .scene import save_scene

    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / scene.files["image"], _png_bytes(rgb))
    atomic_write_bytes(out_dir / scene.files["depth"], _png_bytes(depth_to_png(depth)))
    atomic_write_bytes(out_dir / scene.files["mask"], _png_bytes(mask.astype(np.uint8)))
    save_scene(scene, out_dir / "scenes" / f"{scene.scene_id}.json")


def encode_sample(sample: dict) -> str:
    """One JSONL line; `answer` and `meta` are stored as JSON strings (their shape varies by task,
    and the Hugging Face JSON loader needs one type per column)."""
    row = dict(sample)
    row["answer"] = json.dumps(sample["answer"], separators=(",", ":"))
    row["meta"] = json.dumps(sample["meta"], separators=(",", ":"))
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"


def decode_sample(line: str) -> dict:
    row = json.loads(line)
    for key in ("answer", "meta"):
        if isinstance(row.get(key), str):
            row[key] = json.loads(row[key])
    return row


# ---- writing -----------------------------------------------------------------------------------

def shard_name(k: int, n: int) -> str:
    return f"shard-{k:05d}-of-{n:05d}.jsonl"


_WORLD = None  # one pybullet client per worker process


def _scene_job(args) -> tuple[int, int, list[str], Counter]:
    from .generate import generate_scene
    from .questions import make_samples
    from .world import World

    global _WORLD
    out_dir, shard, index, seed, tasks, samples_per_scene, image_size = args
    if _WORLD is None:
        _WORLD = World()
    try:
        scene, rgb, depth, mask = generate_scene(_WORLD, seed, tuple(image_size))
    except DataError:  # no valid layout for this seed: skipped, the same way on every run
        return shard, index, [], Counter({"_skipped": 1})
    write_scene_files(Path(out_dir), scene, rgb, depth, mask)
    samples = make_samples(scene, mask, tasks, samples_per_scene)
    return shard, index, [encode_sample(s) for s in samples], Counter(s["task"] for s in samples)


def _read_progress(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"scenes_done": 0, "bytes": 0, "samples": 0, "by_task": {}}


def synthesize(out_dir, num_scenes: int, seed: int = 0, tasks=None, workers: int = 1,
               samples_per_scene: int | None = None, image_size: tuple[int, int] = (640, 480),
               progress: bool = False, *, scenes_per_shard: int = SCENES_PER_SHARD,
               part: tuple[int, int] | None = None) -> Path:
    """Generate (or resume) a dataset of `num_scenes` scenes in `out_dir`; returns the folder.

    Deterministic in (seed, num_scenes, tasks, samples_per_scene, image_size, scenes_per_shard):
    the worker count and interruptions do not change a byte of the output."""
    from .generate import GENERATOR
    from .questions import check_tasks

    tasks = check_tasks(tasks)
    if num_scenes < 1 or seed < 0 or workers < 1 or scenes_per_shard < 1:
        raise DataError(f"need num_scenes >= 1, seed >= 0, workers >= 1, scenes_per_shard >= 1 "
                        f"(got {num_scenes}, {seed}, {workers}, {scenes_per_shard})")
    if samples_per_scene is not None and samples_per_scene < 1:
        raise DataError(f"samples_per_scene must be >= 1 or None, got {samples_per_scene}")
    width, height = (int(v) for v in image_size)
    if part is not None and not (part[1] >= 1 and 0 <= part[0] < part[1]):
        raise DataError(f"part must be (k, n) with 0 <= k < n, got {part}")
    out = Path(out_dir)
    for sub in SUBDIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)
    config = {"generator": GENERATOR, "seed": seed, "num_scenes": num_scenes, "tasks": list(tasks),
              "samples_per_scene": samples_per_scene, "image_size": [width, height],
              "scenes_per_shard": scenes_per_shard}
    info_path = out / "dataset_info.json"
    if info_path.exists():
        old = json.loads(info_path.read_text()).get("config")
        if old != config:
            raise DataError(f"{out} already holds a dataset made with other settings ({old}); "
                            f"use a new folder or the same settings ({config}) to resume")
    else:
        _write_info(out, config)
    n_shards = math.ceil(num_scenes / scenes_per_shard)
    mine = [k for k in range(n_shards) if part is None or k % part[1] == part[0]]
    jobs, handles, state = [], {}, {}
    for k in mine:
        prog = _read_progress(out / "progress" / f"shard-{k:05d}.json")
        path = out / "data" / shard_name(k, n_shards)
        f = open(path, "ab")
        f.truncate(prog["bytes"])  # drop what a crash left after the last complete scene
        f.seek(prog["bytes"])
        handles[k], state[k] = f, prog
        start = k * scenes_per_shard
        end = min(num_scenes, start + scenes_per_shard)
        jobs += [(str(out), k, i, seed + i, tasks, samples_per_scene, (width, height))
                 for i in range(start + prog["scenes_done"], end)]
    total = sum(min(num_scenes, (k + 1) * scenes_per_shard) - k * scenes_per_shard for k in mine)
    from tqdm import tqdm

    bar = tqdm(total=total, initial=total - len(jobs), unit="scene", disable=not progress, desc="synth")
    try:
        for k, index, lines, by_task in _run(jobs, workers):
            data = "".join(lines).encode("utf-8")
            f = handles[k]
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            st = state[k]
            st["scenes_done"] += 1
            st["bytes"] += len(data)
            st["samples"] += len(lines)
            if by_task.pop("_skipped", 0):
                st["skipped_seeds"] = st.get("skipped_seeds", []) + [seed + index]
            st["by_task"] = dict(Counter(st["by_task"]) + by_task)
            atomic_write_text(out / "progress" / f"shard-{k:05d}.json", json.dumps(st, sort_keys=True))
            bar.set_postfix(samples=sum(s["samples"] for s in state.values()), refresh=False)
            bar.update(1)
    finally:
        bar.close()
        for f in handles.values():
            f.close()
    _write_info(out, config)
    return out


def _run(jobs: list, workers: int):
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield _scene_job(job)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap(_scene_job, jobs, chunksize=1)


def _write_info(out: Path, config: dict) -> None:
    n_shards = math.ceil(config["num_scenes"] / config["scenes_per_shard"])
    progs = [_read_progress(out / "progress" / f"shard-{k:05d}.json") for k in range(n_shards)]
    by_task = Counter()
    for p in progs:
        by_task.update(p["by_task"])
    scenes = sum(p["scenes_done"] for p in progs)
    info = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "config": config,
        "seed_range": [config["seed"], config["seed"] + config["num_scenes"] - 1],
        "shards": [shard_name(k, n_shards) for k in range(n_shards)],
        "counts": {"scenes": scenes, "samples": sum(p["samples"] for p in progs),
                   "by_task": {t: by_task.get(t, 0) for t in config["tasks"]},
                   "skipped_seeds": sorted(s for p in progs for s in p.get("skipped_seeds", []))},
        "complete": scenes == config["num_scenes"],
        "schema": "docs/dataset_schema.md (phi3v-spatial)",
    }
    atomic_write_text(out / "dataset_info.json", json.dumps(info, indent=1))


# ---- reading -----------------------------------------------------------------------------------

def load_info(dataset_dir) -> dict:
    path = Path(dataset_dir) / "dataset_info.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{dataset_dir} is not a spatial dataset folder (cannot read {path}: {exc})") from exc


def shard_paths(dataset_dir) -> list[Path]:
    paths = sorted((Path(dataset_dir) / "data").glob("shard-*.jsonl"))
    if not paths:
        raise DataError(f"no shards in {Path(dataset_dir) / 'data'}; is this a dataset folder?")
    return paths


def iter_samples(dataset_dir, decode: bool = True) -> Iterator[dict]:
    """Every complete sample of every shard, shards in name order and lines in file order.

    With decode=True (the default) `answer` and `meta` come back as dicts; decode=False gives the
    rows exactly as stored (both as JSON strings), as the Hugging Face JSON loader sees them."""
    for path in shard_paths(dataset_dir):
        k = int(path.name.split("-")[1])
        limit = None
        prog = Path(dataset_dir) / "progress" / f"shard-{k:05d}.json"
        if prog.exists():
            limit = _read_progress(prog)["bytes"]
        with open(path, "rb") as f:
            data = f.read() if limit is None else f.read(limit)
        for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield decode_sample(line) if decode else json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not a JSON line ({exc})") from exc
