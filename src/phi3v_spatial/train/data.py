"""Training data: sources (data-engine folders, Hugging Face `datasets`, plain tables) mixed with
sampling probabilities and a seed, as one deterministic, resumable stream of samples.

A sample is a dict with `messages` (chat turns; user content holds `<|image_N|>` tags) and
`images` (paths or PIL images, in tag order). The stream's position is one integer (samples
drawn), so a run resumes exactly where it stopped: `MixedStream(sources, probs, seed, start=pos)`.

Map-style sources are read in a reshuffled order per epoch (seeded by (seed, source, epoch));
streaming sources are read in order and skipped ahead on resume.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import DataError

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


# ---------------------------------------------------------------- sources
@dataclass
class Source:
    """One data source. Map-style: `samples` (a list or any len()/[] object). Streaming: `stream`
    (a zero-argument function returning a fresh iterator). `name` is for logs."""

    name: str
    samples: Any = None
    stream: Callable[[], Iterator[dict]] | None = None
    filter: Callable[[dict], bool] | None = field(default=None, repr=False)

    def __post_init__(self):
        if (self.samples is None) == (self.stream is None):
            raise DataError(f"source {self.name!r}: give exactly one of samples= or stream=")
        if self.samples is not None and len(self.samples) == 0:
            raise DataError(f"source {self.name!r} has no samples")

    @property
    def streaming(self) -> bool:
        return self.stream is not None


def _resolve_images(sample: dict, root: Path) -> list:
    images = sample.get("images")
    if images is None and sample.get("image") is not None:
        images = [sample["image"]]
    out = []
    for im in images or []:
        if isinstance(im, (str, Path)) and not Path(im).is_absolute():
            im = str(root / im)
        out.append(im)
    return out


def load_engine_folder(path: str | Path, exclude_eval_seeds: bool = True, tasks: Sequence[str] | None = None) -> Source:
    """A data-engine dataset folder (docs/dataset_schema.md): every `data/*.jsonl` line.

    Samples of held-out evaluation scenes (seed >= spatial.EVAL_SEED_BASE) are refused unless
    exclude_eval_seeds=False: a training run must never see them.
    """
    root = Path(path)
    files = sorted((root / "data").glob("*.jsonl")) if (root / "data").is_dir() else []
    if not files:
        raise DataError(f"{root} is not a data-engine folder: no data/*.jsonl inside")
    samples = []
    for f in files:
        for n, line in enumerate(f.open(encoding="utf-8"), 1):
            if not line.strip():
                continue
            try:
                s = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{f}:{n}: not JSON ({e})") from None
            if tasks and s.get("task") not in tasks:
                continue
            if exclude_eval_seeds and is_eval_sample(s):
                raise DataError(
                    f"{f}:{n}: sample {s.get('id')!r} comes from a held-out evaluation scene "
                    "(seed >= EVAL_SEED_BASE); training data must be synthesized with training seeds"
                )
            samples.append({"messages": s["messages"], "images": _resolve_images(s, root), "id": s.get("id"),
                            "task": s.get("task")})
    return Source(name=root.name, samples=samples)


def is_eval_sample(sample: dict) -> bool:
    """True when a data-engine sample's scene seed is in the held-out evaluation range."""
    from ..spatial import EVAL_SEED_BASE

    meta = sample.get("meta") or {}
    if isinstance(meta, str):
        meta = json.loads(meta) if meta.strip().startswith("{") else {}
    seed = meta.get("seed")
    if seed is None:
        sid = str(sample.get("scene") or sample.get("id") or "")
        digits = sid.split("/")[-1].split("-")[0].lstrip("s").split(".")[0]
        seed = int(digits) if digits.isdigit() else None
    return seed is not None and int(seed) >= EVAL_SEED_BASE


def load_table(path: str | Path, image_col: str = "image", question_col: str = "question",
               answer_col: str = "answer") -> Source:
    """A plain image-question-answer table (.csv, .tsv, .jsonl, .json list): each row becomes a
    one-turn conversation `<|image_1|>\\n{question}` -> `{answer}`. Image paths are relative to the table."""
    path = Path(path)
    if path.suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    elif path.suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
    else:
        raise DataError(f"{path}: a table must be .csv, .tsv, .jsonl or .json")
    samples = []
    for i, r in enumerate(rows):
        missing = [c for c in (image_col, question_col, answer_col) if c not in r]
        if missing:
            raise DataError(f"{path} row {i + 1}: missing column(s) {missing} (columns: {sorted(r)})")
        image = r[image_col]
        samples.append({
            "messages": [{"role": "user", "content": f"<|image_1|>\n{r[question_col]}"},
                         {"role": "assistant", "content": str(r[answer_col])}],
            "images": [image if Path(image).is_absolute() else str(path.parent / image)],
        })
    return Source(name=path.stem, samples=samples)


def load_hf_dataset(path: str, split: str = "train", streaming: bool = False, **kwargs) -> Source:
    """A Hugging Face `datasets` dataset with `messages` and `images` columns: a folder written by
    `save_to_disk`, data files (json/parquet/...) or a hub name. streaming=True reads it lazily."""
    try:
        import datasets
    except ImportError as e:
        raise DataError("Hugging Face datasets sources need `pip install datasets`") from e
    p = Path(path)
    if p.is_dir() and (p / "dataset_info.json").is_file() and (p / "state.json").is_file():
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
        if streaming:
            ds = ds.to_iterable_dataset()
    elif p.is_file():
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(p.suffix)
        if kind is None:
            raise DataError(f"{path}: unsupported data file type {p.suffix!r}")
        ds = datasets.load_dataset(kind, data_files=str(p), split=split, streaming=streaming, **kwargs)
    else:
        ds = datasets.load_dataset(path, split=split, streaming=streaming, **kwargs)
    columns = ds.column_names if ds.column_names is not None else list(next(iter(ds)).keys())
    for col in ("messages", "images"):
        if col not in columns:
            raise DataError(f"{path}: the dataset needs a {col!r} column (has {columns})")
    root = p.parent if p.is_file() else p

    def convert(row):
        return {"messages": row["messages"], "images": _resolve_images(row, root)}

    if streaming:
        return Source(name=p.name or path, stream=lambda: (convert(r) for r in ds))
    return Source(name=p.name or path, samples=_Mapped(ds, convert))


class _Mapped:
    def __init__(self, data, fn):
        self.data, self.fn = data, fn

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.fn(self.data[int(i)])


def open_source(spec: str | Path) -> Source:
    """One `--data` argument -> a Source: a data-engine folder, a `save_to_disk` folder, a table
    file, or `hf:NAME` / `hf-stream:NAME` for `datasets.load_dataset`."""
    spec = str(spec)
    if spec.startswith("hf:"):
        return load_hf_dataset(spec[3:])
    if spec.startswith("hf-stream:"):
        return load_hf_dataset(spec[10:], streaming=True)
    p = Path(spec)
    if p.is_dir() and (p / "data").is_dir() and any((p / "data").glob("*.jsonl")):
        return load_engine_folder(p)
    if p.is_dir() and (p / "state.json").is_file():
        return load_hf_dataset(spec)
    if p.is_file() and p.suffix in TABLE_SUFFIXES:
        first = p.open(encoding="utf-8").readline()
        if p.suffix == ".jsonl" and '"messages"' in first:
            return load_hf_dataset(spec)
        return load_table(p)
    raise DataError(f"--data {spec}: not a data-engine folder, datasets folder or table file")


def parse_data_arg(arg: str) -> tuple[str, float]:
    """'DIR[:prob]' -> (DIR, prob); prob defaults to 1 (normalised later)."""
    head, sep, tail = arg.rpartition(":")
    if sep and head and not head.endswith(("hf", "hf-stream")):
        try:
            return head, float(tail)
        except ValueError:
            pass
    return arg, 1.0


# ---------------------------------------------------------------- mixing
class MixedStream:
    """An endless, deterministic stream of samples drawn from `sources` with probabilities `probs`.

    Draw k picks a source with rng(seed) (k-th draw) and takes that source's next sample. The
    position is the number of draws; `MixedStream(..., start=k)` continues exactly at draw k
    (map-style sources replay indices only; streaming sources skip their consumed samples).
    """

    def __init__(self, sources: Sequence[Source], probs: Sequence[float] | None = None, seed: int = 0, start: int = 0):
        if not sources:
            raise DataError("no training data sources")
        probs = np.asarray(probs if probs is not None else [1.0] * len(sources), dtype=np.float64)
        if len(probs) != len(sources) or (probs < 0).any() or probs.sum() <= 0:
            raise DataError(f"need one non-negative probability per source (got {list(probs)})")
        self.sources, self.probs, self.seed = list(sources), probs / probs.sum(), seed
        self._rng = np.random.default_rng([seed, 0x5EED])
        self._cursor = [0] * len(sources)  # samples taken from each source
        self._iters: list[Iterator | None] = [None] * len(sources)
        self._orders: dict[tuple[int, int], np.ndarray] = {}
        self.position = 0
        self._cum = np.cumsum(self.probs)
        for s in self._pick(self._rng.random(start)):
            self._cursor[int(s)] += 1
        self.position = start

    def _pick(self, u: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(self._cum, u, side="right"), len(self.sources) - 1)

    def _order(self, s: int, epoch: int) -> np.ndarray:
        key = (s, epoch)
        if key not in self._orders:
            self._orders = {k: v for k, v in self._orders.items() if k[0] != s}
            rng = np.random.default_rng([self.seed, s, epoch])
            self._orders[key] = rng.permutation(len(self.sources[s].samples))
        return self._orders[key]

    def _take(self, s: int) -> dict:
        src, k = self.sources[s], self._cursor[s]
        self._cursor[s] += 1
        if not src.streaming:
            n = len(src.samples)
            return src.samples[int(self._order(s, k // n)[k % n])]
        if self._iters[s] is None:  # (re)open and skip what a previous run consumed
            self._iters[s] = src.stream()
            for _ in range(k):
                self._next_streamed(s)
        return self._next_streamed(s)

    def _next_streamed(self, s: int) -> dict:
        try:
            return next(self._iters[s])
        except StopIteration:  # epoch over: start again
            self._iters[s] = self.sources[s].stream()
            try:
                return next(self._iters[s])
            except StopIteration:
                raise DataError(f"streaming source {self.sources[s].name!r} is empty") from None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        s = int(self._pick(self._rng.random(1))[0])
        self.position += 1
        return self._take(s)
