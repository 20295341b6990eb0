"""Evaluation samples from datasets on disk: this package's spatial datasets and public
benchmarks in their published formats.

Every loader returns a list of `EvalSample`: the prompt turns (user content holds `<|image_N|>`
tags), the images, and the ground truth as a dataset-schema `answer` object, so scoring is the
same for every source.

Public formats (local files only; nothing is downloaded):
- VSR (Liu et al. 2023) jsonl: {"image", "caption", "label": 0|1, "relation", ...}
- POPE (Li et al. 2023) jsonl: {"question_id", "image", "text", "label": "yes"|"no"[, "category"]};
  the negative-sampling subset comes from a "category" field or the file name
  (coco_pope_random / _popular / _adversarial).
- multiple choice shaped like CV-Bench / BLINK, jsonl or a json list:
  {"question", "choices"|"options", "answer": "(B)"|"B"|1|"option text", "image" | "images" |
  "image_1".."image_4", optional category in "task" | "sub_task" | "category" | "type", id in
  "idx" | "id" | "question_id"}. Parquet releases must be converted to jsonl + image files first.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .parsing import option_letter

IMAGE_TAG_RE = re.compile(r"<\|image_(\d+)\|>")


@dataclass
class EvalSample:
    id: str
    task: str
    messages: list[dict]            # prompt turns (no final assistant answer)
    images: list                    # paths or PIL images, in <|image_N|> order
    answer: dict                    # dataset-schema answer object
    meta: dict = field(default_factory=dict)
    root: Path | None = None        # dataset folder (masks for point answers)
    reference: str | None = None    # the dataset's own answer text, when it has one

    @property
    def relation(self) -> str | None:
        return self.meta.get("relation")


# ---------------------------------------------------------------------------------------------
# file helpers


def read_records(path: Path) -> list[dict]:
    """Rows of a .jsonl file or a .json list (one object per line / element)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"benchmark file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from exc
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {i + 1} is a {type(row).__name__}, expected an object")
    return rows


def _need(row: dict, keys: tuple[str, ...], path: Path, i: int):
    for key in keys:
        if key in row and row[key] is not None:
            return row[key]
    raise DataError(f"{path}: record {i + 1} has no {' / '.join(repr(k) for k in keys)} field")


def _image_path(name: str, image_dir: Path, path: Path, i: int) -> Path:
    p = Path(name)
    candidates = [p] if p.is_absolute() else [image_dir / p, image_dir / "images" / p, image_dir / p.name]
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(
        f"{path}: record {i + 1}: image {name!r} not found under {image_dir} "
        f"(point --image-dir / image_dir at the folder holding the benchmark's images)"
    )


def _user(text: str, n_images: int) -> list[dict]:
    tags = "".join(f"<|image_{k}|>\n" for k in range(1, n_images + 1))
    return [{"role": "user", "content": tags + text}]


# ---------------------------------------------------------------------------------------------
# this package's datasets


def load_dataset(dataset_dir: str | Path) -> list[EvalSample]:
    """Samples of a spatial dataset folder (docs/dataset_schema.md), read with the data engine's
    `iter_samples` (complete scenes only, `answer` / `meta` decoded)."""
    from ..spatial import iter_samples

    root = Path(dataset_dir)
    return [sample_from_record(row, root, None, i) for i, row in enumerate(iter_samples(root))]


def sample_from_record(row: dict, root: Path, path: Path | None = None, i: int = 0) -> EvalSample:
    """One dataset-schema sample as an EvalSample (prompt = every turn before the last assistant one)."""
    where = f"{path or root}: record {i + 1}"
    for key in ("id", "messages", "task", "answer"):
        if key not in row:
            raise DataError(f"{where} has no {key!r} field")
    messages = row["messages"]
    reference = None
    if messages and messages[-1].get("role") == "assistant":
        reference = messages[-1].get("content")
        messages = messages[:-1]
    if not messages:
        raise DataError(f"{where} ({row['id']}) has no prompt turns")
    names = row.get("images") or ([row["image"]] if row.get("image") else [])
    images = [Path(n) if Path(n).is_absolute() else root / n for n in names]
    answer, meta = row["answer"], row.get("meta") or {}
    try:  # stored as JSON strings in the shards (one column type for the datasets loader)
        answer = json.loads(answer) if isinstance(answer, str) else answer
        meta = json.loads(meta) if isinstance(meta, str) else meta
    except json.JSONDecodeError as exc:
        raise DataError(f"{where} ({row['id']}): answer / meta is not valid JSON ({exc})") from exc
    if not isinstance(answer, dict) or "type" not in answer:
        raise DataError(f"{where} ({row['id']}): answer must be an object with a 'type'")
    return EvalSample(id=str(row["id"]), task=str(row["task"]), messages=messages, images=images,
                      answer=answer, meta=dict(meta), root=root,
                      reference=reference if isinstance(reference, str) else None)


# ---------------------------------------------------------------------------------------------
# public benchmarks

YESNO_SUFFIX = "Answer yes or no."
CHOICE_SUFFIX = "Answer with the option's letter from the given choices."


def load_vsr(path: str | Path, image_dir: str | Path | None = None) -> list[EvalSample]:
    """VSR jsonl: is the caption true of the image (yes/no), scored per relation."""
    path = Path(path)
    image_dir = Path(image_dir) if image_dir else path.parent
    samples = []
    for i, row in enumerate(read_records(path)):
        caption = _need(row, ("caption",), path, i)
        label = _need(row, ("label",), path, i)
        if label not in (0, 1, True, False, "0", "1", "true", "false", "True", "False"):
            raise DataError(f"{path}: record {i + 1}: label {label!r} is not 0/1")
        image = _image_path(_need(row, ("image",), path, i), image_dir, path, i)
        text = f"Is this statement about the image true? \"{caption}\" {YESNO_SUFFIX}"
        samples.append(EvalSample(
            id=f"vsr-{i}", task="vsr", messages=_user(text, 1), images=[image],
            answer={"type": "yesno", "value": str(label).lower() in ("1", "true")},
            meta={"relation": row.get("relation"), "benchmark": "vsr", "caption": caption},
        ))
    return samples


def load_pope(path: str | Path, image_dir: str | Path | None = None) -> list[EvalSample]:
    """POPE jsonl: object existence questions, scored with POPE precision / recall / F1."""
    path = Path(path)
    image_dir = Path(image_dir) if image_dir else path.parent
    subset = next((s for s in ("adversarial", "popular", "random") if s in path.stem.lower()), None)
    samples = []
    for i, row in enumerate(read_records(path)):
        label = str(_need(row, ("label", "answer"), path, i)).strip().lower()
        if label not in ("yes", "no"):
            raise DataError(f"{path}: record {i + 1}: label {label!r} is not yes/no")
        question = _need(row, ("text", "question"), path, i)
        image = _image_path(_need(row, ("image",), path, i), image_dir, path, i)
        negative = row.get("category") if row.get("category") in ("random", "popular", "adversarial") else subset
        qid = row.get("question_id", i)
        samples.append(EvalSample(
            id=f"pope-{negative or 'all'}-{qid}", task="pope", messages=_user(f"{question} {YESNO_SUFFIX}", 1),
            images=[image], answer={"type": "yesno", "value": label == "yes", "negative": negative},
            meta={"benchmark": "pope"},
        ))
    return samples


def _choice_index(raw, options: list[str], path: Path, i: int) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if 0 <= raw < len(options):
            return raw
    elif isinstance(raw, str):
        s = raw.strip()
        m = re.fullmatch(r"\(?([A-Za-z])\)?\.?", s)
        if m and ord(m.group(1).upper()) - ord("A") < len(options):
            return ord(m.group(1).upper()) - ord("A")
        if s in options:
            return options.index(s)
    raise DataError(f"{path}: record {i + 1}: answer {raw!r} is neither an option letter, an index nor an option")


def load_multiple_choice(path: str | Path, image_dir: str | Path | None = None, name: str = "mc") -> list[EvalSample]:
    """CV-Bench / BLINK-shaped multiple choice; the task is the record's category."""
    path = Path(path)
    image_dir = Path(image_dir) if image_dir else path.parent
    samples = []
    for i, row in enumerate(read_records(path)):
        question = _need(row, ("question",), path, i)
        options = _need(row, ("choices", "options"), path, i)
        if not isinstance(options, list) or len(options) < 2:
            raise DataError(f"{path}: record {i + 1}: choices must be a list of at least two options")
        options = [str(o) for o in options]
        value = _choice_index(_need(row, ("answer",), path, i), options, path, i)
        if isinstance(row.get("images"), list):
            names = row["images"]
        elif row.get("image"):
            names = [row["image"]]
        else:
            names = [row[k] for k in ("image_1", "image_2", "image_3", "image_4") if row.get(k)]
        if not names or not all(isinstance(n, str) for n in names):
            raise DataError(f"{path}: record {i + 1}: no image file names (image, images or image_1..image_4)")
        images = [_image_path(n, image_dir, path, i) for n in names]
        category = next((str(row[k]) for k in ("task", "sub_task", "category") if row.get(k)), None)
        lines = "\n".join(f"{option_letter(k)}. {o}" for k, o in enumerate(options))
        text = f"{question}\n{lines}\n{CHOICE_SUFFIX}"
        rid = row.get("idx", row.get("id", row.get("question_id", i)))
        samples.append(EvalSample(
            id=f"{name}-{rid}", task=category or name, messages=_user(text, len(images)), images=images,
            answer={"type": "choice", "options": options, "value": value},
            meta={"benchmark": name, "relation": row.get("relation")},
        ))
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: record ids (idx / id / question_id) are not unique")
    return samples
