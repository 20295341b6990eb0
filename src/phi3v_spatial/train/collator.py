"""Samples -> a padded training batch with labels only on the assistant turns.

Each sample's messages are rendered with the checkpoint's chat template and tokenized by the
processor exactly as at inference (text pieces split on `<|image_N|>` tags, each with its `<s>`,
tag N -> num_img_tokens copies of id -N). The labels are then read off those ids: every token
after an `<|assistant|>` up to and including the `<|end|>` that closes the turn is a target; every
other token (system/user text, role tokens, image slots, padding) is -100. Because the spans are
found in the processor's own ids, the labels match what the model sees at inference token by token.

A sample that cannot be used (missing or corrupt image, tags that do not match the images, no
assistant turn, too long) is skipped and counted by reason in `Collator.skipped`; a long run never
crashes on one bad sample.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Sequence

import torch

from ..errors import DataError, ImageError, PromptError

IGNORE = -100
log = logging.getLogger("phi3v_spatial.train")


def assistant_label_mask(ids: Sequence[int], assistant_id: int, end_id: int) -> list[bool]:
    """True for the tokens of every assistant turn: after `<|assistant|>`, through its `<|end|>`."""
    mask, inside = [], False
    for t in ids:
        mask.append(inside)
        if t == assistant_id:
            inside = True
        elif t == end_id and inside:
            inside = False
    return mask


class Collator:
    """Callable: list of samples -> batch dict (input_ids, attention_mask, labels, pixel_values,
    image_sizes) or None when every sample was skipped. Padding on the right.

    `image_labels` (optional): image -> (its image tokens, k) per-token labels or None; the batch
    then also holds `image_token_labels`, every image's rows in pixel_values order (IGNORE rows for
    an image without labels), for an auxiliary loss on the image tokens (train/mask_aux.py)."""

    def __init__(self, processor, max_length: int = 4096, num_crops: int | None = None, image_labels=None):
        self.processor = processor
        tok = processor.tokenizer
        self.assistant_id = tok.convert_tokens_to_ids("<|assistant|>")
        self.end_id = tok.convert_tokens_to_ids("<|end|>")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if self.assistant_id is None or self.end_id is None:
            raise DataError("the tokenizer has no <|assistant|>/<|end|> tokens; it is not a Phi-3 chat tokenizer")
        self.max_length = max_length
        self.num_crops = num_crops
        self.image_labels = image_labels
        self.skipped: Counter = Counter()

    def encode(self, sample: dict) -> dict:
        """One sample -> dict(input_ids list, labels list, pixel_values, image_sizes); raises
        DataError/PromptError/ImageError for a bad sample."""
        messages = sample.get("messages")
        if not messages or not any(m.get("role") == "assistant" for m in messages):
            raise DataError("no assistant turn")
        if messages[-1].get("role") != "assistant":
            messages = list(messages)
            while messages and messages[-1].get("role") != "assistant":
                messages.pop()  # trailing user turns teach nothing
        images = list(sample.get("images") or [])
        text = self.processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        out = self.processor(text, images=images or None, return_tensors="pt", padding=False, num_crops=self.num_crops)
        ids = out["input_ids"][0].tolist()
        if len(ids) > self.max_length:
            raise PromptError(f"too long ({len(ids)} > max_length {self.max_length} tokens)")
        mask = assistant_label_mask(ids, self.assistant_id, self.end_id)
        labels = [t if m else IGNORE for t, m in zip(ids, mask)]
        if not any(m for m in mask):
            raise DataError("no assistant tokens after tokenization")
        row = {"input_ids": ids, "labels": labels, "pixel_values": out.get("pixel_values"),
               "image_sizes": out.get("image_sizes")}
        if self.image_labels is not None and images:
            row["image_token_labels"] = self._image_token_labels(ids, images)
        return row

    def _image_token_labels(self, ids: list[int], images: list) -> torch.Tensor:
        parts = []
        for k, image in enumerate(images, 1):
            n = ids.count(-k)
            lab = self.image_labels(image)
            if lab is None:
                lab = torch.full((n, getattr(self.image_labels, "columns", 2)), IGNORE, dtype=torch.long)
            elif lab.shape[0] != n:
                raise DataError(f"image {k} has {n} tokens but its token labels cover {lab.shape[0]}")
            parts.append(lab)
        return torch.cat(parts)

    def _reason(self, e: Exception) -> str:
        msg = str(e)
        if isinstance(e, (ImageError, FileNotFoundError, OSError)):
            return "image: " + msg.split(":")[0][:60] if not isinstance(e, ImageError) else "image could not be loaded"
        if "tag" in msg or "image" in msg:
            return "tag/image mismatch"
        if msg.startswith("too long"):
            return "too long"
        return msg[:60]

    def __call__(self, samples: Sequence[dict]) -> dict | None:
        rows = []
        for s in samples:
            try:
                rows.append(self.encode(s))
            except (DataError, PromptError, ImageError, OSError, KeyError, TypeError) as e:
                reason = self._reason(e)
                self.skipped[reason] += 1
                log.warning("skipped sample %s: %s (%s)", s.get("id", "?") if isinstance(s, dict) else "?", reason, e)
        if not rows:
            return None
        return pad_batch(rows, self.pad_id)


def pad_batch(rows: list[dict], pad_id: int) -> dict:
    """Encoded rows -> right-padded tensors; images of all rows concatenated row by row."""
    L = max(len(r["input_ids"]) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        input_ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        attention_mask[i, :n] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    pix = [r["pixel_values"] for r in rows if r["pixel_values"] is not None]
    if pix:
        crops = max(p.shape[1] for p in pix)
        pix = [torch.nn.functional.pad(p, (0, 0, 0, 0, 0, 0, 0, crops - p.shape[1])) for p in pix]
        batch["pixel_values"] = torch.cat(pix)
        batch["image_sizes"] = torch.cat([r["image_sizes"] for r in rows if r["image_sizes"] is not None])
    if any("image_token_labels" in r for r in rows):
        batch["image_token_labels"] = torch.cat([r["image_token_labels"] for r in rows if "image_token_labels" in r])
    return batch


def split_batch(batch: dict, parts: int) -> list[dict]:
    """A batch -> `parts` row slices (images follow their rows). For gradient accumulation / DDP."""
    B = batch["input_ids"].shape[0]
    if B % parts:
        raise DataError(f"a batch of {B} rows cannot be split into {parts} equal parts")
    n = B // parts
    per_row = (batch["input_ids"] < 0).any(-1)  # at least one image
    counts = _images_per_row(batch["input_ids"])
    starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    out = []
    for k in range(parts):
        a, b = k * n, (k + 1) * n
        part = {key: batch[key][a:b] for key in ("input_ids", "attention_mask", "labels")}
        if "pixel_values" in batch and bool(per_row[a:b].any()):
            part["pixel_values"] = batch["pixel_values"][starts[a]:starts[b]]
            part["image_sizes"] = batch["image_sizes"][starts[a]:starts[b]]
        out.append(part)
    return out


def _images_per_row(input_ids: torch.Tensor) -> torch.Tensor:
    """Number of images each row references (its largest tag)."""
    return (-input_ids).clamp(min=0).max(dim=-1).values


class StackedLabels:
    """Several `image -> (its image tokens, 2) labels or None` labellers as one, their columns side
    by side in order: (tokens, 2 x k). A labeller's None becomes IGNORE columns; None when all are."""

    def __init__(self, labellers):
        self.labellers = list(labellers)
        self.columns = 2 * len(self.labellers)

    def __call__(self, image) -> torch.Tensor | None:
        labs = [f(image) for f in self.labellers]
        n = next((lab.shape[0] for lab in labs if lab is not None), None)
        if n is None:
            return None
        return torch.cat([lab if lab is not None else torch.full((n, 2), IGNORE, dtype=torch.long) for lab in labs], dim=1)
