"""Runs that survive: every scored sample is appended to `OUT/results.jsonl` as soon as its
batch is answered, and a rerun with the same OUT skips the ids already there.

OUT/
  run.json          which answerer on which suite (a rerun must match it)
  results.jsonl     one scored record per sample (id, task, relation, raw text, parsed value, scores)
  report.md / summary.json / *.png   written by `report.write_report` at the end
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

from ..errors import DataError
from . import metrics
from .answerers import Answerer
from .loaders import EvalSample

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"


def read_results(path: Path) -> dict[str, dict]:
    """Records of a results file by id. A torn last line (a crash mid-write) is cut off the file."""
    path = Path(path)
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    records, good_end, pos = {}, 0, 0
    for line in raw.splitlines(keepends=True):
        pos += len(line)
        if not line.strip():
            good_end = pos
            continue
        try:
            rec = json.loads(line)
            if not line.endswith(b"\n") or not isinstance(rec, dict) or "id" not in rec:
                raise ValueError("unterminated or not a record")
        except ValueError:
            if pos == len(raw):  # torn tail: drop it
                break
            raise DataError(f"{path}: corrupt record at byte {pos - len(line)}; delete the line or the file")
        records[rec["id"]] = rec
        good_end = pos
    if good_end < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


def score_sample(sample: EvalSample, text: str) -> dict:
    """The stored record of one answered sample."""
    return {"id": sample.id, "task": sample.task, "relation": sample.relation, "text": text,
            **metrics.score(sample.answer, text, sample.root)}


def _check_run(out_dir: Path, suite: str, answerer: Answerer):
    run_file = out_dir / RUN_FILE
    info = {"suite": suite, "answerer": answerer.name}
    if run_file.is_file():
        old = json.loads(run_file.read_text())
        if (old.get("suite"), old.get("answerer")) != (suite, answerer.name):
            raise DataError(
                f"{out_dir} holds a run of {old.get('answerer')!r} on {old.get('suite')!r}, not "
                f"{answerer.name!r} on {suite!r}; choose another output folder"
            )
        return
    run_file.write_text(json.dumps({**info, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")


def run(samples: Sequence[EvalSample], answerer: Answerer, out_dir: str | Path, suite: str = "custom",
        batch_size: int = 8, limit: int | None = None, progress: bool = False) -> list[dict]:
    """Answer and score `samples[:limit]`, appending to OUT/results.jsonl and skipping ids already
    there; returns the records of the selected samples in order (old and new)."""
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    selected = list(samples[:limit] if limit is not None else samples)
    ids = [s.id for s in selected]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"sample id {dup!r} appears twice; ids must be unique to resume runs")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run(out_dir, suite, answerer)
    results_path = out_dir / RESULTS_FILE
    done = read_results(results_path)
    todo = [s for s in selected if s.id not in done]

    from tqdm.auto import tqdm

    bar = tqdm(total=len(selected), initial=len(selected) - len(todo), desc=answerer.name, unit="sample",
               disable=not progress, dynamic_ncols=True)
    try:
        with open(results_path, "a", encoding="utf-8") as f:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                t0 = time.perf_counter()
                texts = answerer.answer(batch)
                if len(texts) != len(batch):
                    raise DataError(f"answerer {answerer.name} returned {len(texts)} answers for {len(batch)} prompts")
                seconds = (time.perf_counter() - t0) / len(batch)
                for sample, text in zip(batch, texts):
                    rec = {**score_sample(sample, text), "seconds": seconds}
                    done[sample.id] = rec
                    f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(batch))
    finally:
        bar.close()
    return [done[i] for i in ids]


def evaluate(samples: Sequence[EvalSample], answerer: Answerer, out_dir: str | Path, suite: str = "custom",
             batch_size: int = 8, limit: int | None = None, progress: bool = False, charts: bool = True) -> dict:
    """`run`, then write the report folder; returns the JSON summary."""
    from .report import write_report

    records = run(samples, answerer, out_dir, suite=suite, batch_size=batch_size, limit=limit, progress=progress)
    run_info = {"suite": suite, "answerer": answerer.name}
    roots = {s.root for s in samples if s.root is not None}
    marker = next(iter(roots)) / "suite.json" if len(roots) == 1 else None
    if marker is not None and marker.is_file():  # a generated suite: record which one exactly
        run_info["suite_info"] = json.loads(marker.read_text())
    return write_report(records, out_dir, title=f"{answerer.name} on {suite}", charts=charts, run_info=run_info)
