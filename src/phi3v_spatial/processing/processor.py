"""Phi3VProcessor: prompts with `<|image_N|>` tags + images -> input_ids, attention_mask,
pixel_values, image_sizes; one prompt or a padded batch.

As the original: a prompt is split on its tags, every text piece is tokenized on its own (each
with its own `<s>`), and tag N becomes num_img_tokens(image N) copies of the id -N. Prompts without
images are plain tokenizer calls. Beyond the original (which cannot batch images): a batch of
prompts, each with its own images and num_crops; left or right padding with the tokenizer's pad id.
Out-of-order or repeated tags are placed by their number (the original sized block i by image i
whatever its tag); tags must name every image 1..K exactly, else PromptError.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import CheckpointError, ImageError, PromptError
from .image import Phi3VImageProcessor
from .text import Phi3VTokenizer

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")
_PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json")


class BatchFeature(dict):
    """A dict of model inputs with attribute access and `.to(device or dtype)` (floating tensors
    only change dtype, so ids stay long), like transformers' BatchFeature."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args, **kwargs) -> "BatchFeature":
        dtype = kwargs.get("dtype") or next((a for a in args if isinstance(a, torch.dtype)), None)
        device = kwargs.get("device") or next((a for a in args if not isinstance(a, torch.dtype)), None)
        for key, value in self.items():
            if not isinstance(value, torch.Tensor):
                continue
            if device is not None:
                value = value.to(device)
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            self[key] = value
        return self


def pad_rows(
    rows: Sequence[Sequence[int]],
    pad_id: int | None,
    padding: bool | str = True,
    max_length: int | None = None,
    padding_side: str = "right",
    return_tensors: str | None = "pt",
):
    """Ragged id rows -> (input_ids, attention_mask) padded with `pad_id` (mask 0) on one side.

    padding: True / "longest" (to the longest row), "max_length" (to max_length), False /
    "do_not_pad" (rows must then have equal lengths when tensors are asked for).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right' (got {padding_side!r})")
    if return_tensors not in ("pt", "np", None):
        raise ValueError(f"return_tensors must be 'pt', 'np' or None (got {return_tensors!r})")
    longest = max((len(r) for r in rows), default=0)
    if padding is True or padding == "longest":
        target = longest
    elif padding == "max_length":
        if max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        target = max(max_length, longest)
    elif padding is False or padding == "do_not_pad" or padding is None:
        target = None
    else:
        raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad' (got {padding!r})")
    if target is None:
        if return_tensors is None:
            return [list(r) for r in rows], [[1] * len(r) for r in rows]
        if len({len(r) for r in rows}) > 1:
            raise PromptError("prompts of different lengths need padding=True to become one tensor")
        target = longest
    if pad_id is None and any(len(r) < target for r in rows):
        raise PromptError("the tokenizer has no pad token; cannot pad")
    ids = np.full((len(rows), target), pad_id if pad_id is not None else 0, dtype=np.int64)
    mask = np.zeros((len(rows), target), dtype=np.int64)
    for i, r in enumerate(rows):
        span = slice(target - len(r), target) if padding_side == "left" else slice(0, len(r))
        ids[i, span] = r
        mask[i, span] = 1
    if return_tensors == "pt":
        return torch.from_numpy(ids), torch.from_numpy(mask)
    if return_tensors == "np":
        return ids, mask
    return ids.tolist(), mask.tolist()


def split_prompt(prompt: str, num_images: int) -> tuple[list[str], list[int]]:
    """Text pieces and tag numbers of a prompt; PromptError unless its tags name exactly 1..num_images."""
    tags = [int(n) for n in IMAGE_TAG.findall(prompt)]
    used = set(tags)
    if 0 in used:
        raise PromptError("<|image_0|> is not a valid tag: images are numbered from <|image_1|>")
    beyond = sorted(n for n in used if n > num_images)
    if beyond:
        raise PromptError(
            f"the prompt uses <|image_{beyond[0]}|> but only {num_images} image(s) were given for it"
        )
    unused = [n for n in range(1, num_images + 1) if n not in used]
    if unused:
        raise PromptError(
            f"image {unused[0]} is given but the prompt has no <|image_{unused[0]}|> tag; "
            "put one tag per image where it belongs in the text"
        )
    return IMAGE_TAG.split(prompt)[::2], tags


def _as_batch(text: Any, images: Any) -> tuple[list[str], list[list[Any]], bool]:
    """(prompts, images per prompt, batched). images: None, one image, a list for a single prompt,
    a list of lists (one per prompt) or, for a batch, a flat list handed out by each prompt's tags."""
    batched = not isinstance(text, str)
    prompts = list(text) if batched else [text]
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise PromptError("text must be a str or a non-empty list of str")
    if images is None:
        return prompts, [[] for _ in prompts], batched
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not batched:
        return prompts, [list(images)], batched
    if all(isinstance(im, (list, tuple)) for im in images):
        if len(images) != len(prompts):
            raise PromptError(f"{len(images)} image lists for {len(prompts)} prompts")
        return prompts, [list(im) for im in images], batched
    per_prompt, k = [], 0
    for p in prompts:
        n = len(set(IMAGE_TAG.findall(p)))
        per_prompt.append(list(images[k : k + n]))
        k += n
    if k != len(images):
        raise PromptError(f"the prompts' tags ask for {k} images but {len(images)} were given")
    return prompts, per_prompt, batched


class Phi3VProcessor:
    """Tokenizer + image processor of Phi-3-V; see the module docstring."""

    def __init__(self, tokenizer: Phi3VTokenizer, image_processor: Phi3VImageProcessor):
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, num_crops: int | None = None, **image_kwargs) -> "Phi3VProcessor":
        """From a checkpoint folder (tokenizer files + preprocessor_config.json) or a Hugging Face
        repo id (only those files are downloaded). num_crops overrides preprocessor_config.json.
        Hugging Face keywords with no meaning here (`trust_remote_code`, `use_fast`) are accepted and
        ignored, so the model card's snippet runs unchanged."""
        for hf_only in ("trust_remote_code", "use_fast"):
            image_kwargs.pop(hf_only, None)
        folder = Path(path)
        if not folder.is_dir():
            folder = _download(str(path))
        return cls(Phi3VTokenizer.from_pretrained(folder), Phi3VImageProcessor.from_pretrained(folder, num_crops, **image_kwargs))

    @property
    def num_crops(self) -> int:
        return self.image_processor.num_crops

    @num_crops.setter
    def num_crops(self, value: int) -> None:
        self.image_processor.num_crops = value

    def __call__(
        self,
        text: str | Sequence[str],
        images: Any = None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        padding_side: str | None = None,
        num_crops: int | Sequence[int] | None = None,
        max_length: int | None = None,
    ) -> BatchFeature:
        """Prompt(s) and their images -> BatchFeature(input_ids (B, L), attention_mask (B, L) and,
        with images, pixel_values (N, C, 3, 336, 336) float32 and image_sizes (N, 2) long, images of
        all prompts concatenated in order). num_crops: one value or one per prompt.
        padding_side defaults to the tokenizer's ("right"); use "left" for batched generation."""
        prompts, per_prompt, _ = _as_batch(text, images)
        ncs = num_crops if num_crops is not None else self.num_crops
        if isinstance(ncs, (list, tuple)):
            if len(ncs) != len(prompts):
                raise PromptError(f"num_crops has {len(ncs)} entries for {len(prompts)} prompts")
        else:
            ncs = [ncs] * len(prompts)
        pieces, tag_lists = [], []
        for p, ims in zip(prompts, per_prompt):
            chunks, tags = split_prompt(p, len(ims))
            pieces.append(chunks)
            tag_lists.append(tags)
        flat_images = [im for ims in per_prompt for im in ims]
        out = BatchFeature()
        tokens_per_image: list[int] = []
        if flat_images:
            image_ncs = [nc for nc, ims in zip(ncs, per_prompt) for _ in ims]
            try:
                pixel_values, image_sizes, tokens_per_image = self.image_processor.process(flat_images, image_ncs)
            except ImageError as e:
                raise ImageError(f"{_locate(per_prompt, getattr(e, 'index', None))}{e}") from None
        # every text piece of every prompt in one tokenizer call
        encoded = iter(self.tokenizer.encode_batch([c for chunks in pieces for c in chunks]))
        rows, first = [], 0
        for chunks, tags, ims in zip(pieces, tag_lists, per_prompt):
            row = list(next(encoded))
            for tag in tags:
                row += [-tag] * tokens_per_image[first + tag - 1]
                row += next(encoded)
            rows.append(row)
            first += len(ims)
        out["input_ids"], out["attention_mask"] = pad_rows(
            rows, self.tokenizer.pad_token_id, padding, max_length, padding_side or self.tokenizer.padding_side, return_tensors
        )
        if flat_images:
            out["pixel_values"], out["image_sizes"] = pixel_values, image_sizes
        return out

    def apply_chat_template(self, *args, **kwargs):
        return self.tokenizer.apply_chat_template(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)


def _locate(per_prompt: list[list[Any]], index: int | None) -> str:
    """'prompt i, image k: ' for the index-th image of the batch ('' when unknown)."""
    if index is None:
        return ""
    for i, ims in enumerate(per_prompt):
        if index < len(ims):
            return f"prompt {i}, image {index + 1}: " if len(per_prompt) > 1 else f"image {index + 1}: "
        index -= len(ims)
    return ""


def _download(repo_id: str) -> Path:
    """The processor files of a Hugging Face repo (no weights)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=list(_PROCESSOR_FILES)))
    except Exception as e:
        raise CheckpointError(f"{repo_id!r} is neither a local folder nor a downloadable Hugging Face repo: {e}") from e
