"""Checkpoint I/O: Hugging Face folders <-> the model, both directions.

Loading builds the model on the meta device and assigns each tensor as it is read (cast and moved
one at a time), so a checkpoint is never held twice. Safetensors files are read with plain file
reads into fresh (anonymous) memory rather than memory-mapped: a mapped file is backed by 4 KiB
page-cache pages, which a CPU streams ~25% slower than anonymous memory on transparent huge pages
(decode on CPU is bound by that stream; `hugepages.py` allocates them), and read() pages never count
twice in RSS. Every key is checked: a missing, unexpected or
wrongly shaped tensor is a `CheckpointError` that lists the names.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

import torch

from .config import Phi3VConfig
from . import hugepages
from .errors import CheckpointError

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
# keys some saved checkpoints carry that are not parameters of the model: accepted, dropped
IGNORED_KEYS = re.compile(r".*(\.position_ids|rotary_emb\.inv_freq|vision_embed_tokens\.wte\.weight)$")
AUX_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json",
    "generation_config.json", "added_tokens.json", "tokenizer.model",
)


def resolve_checkpoint(path_or_id: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hugging Face hub id, downloaded through huggingface_hub."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    if p.exists() or str(path_or_id).startswith((".", "/", "~")) or str(path_or_id).count("/") != 1:
        raise CheckpointError(f"checkpoint folder {path_or_id} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                str(path_or_id), revision=revision,
                allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "tokenizer.model"],
            )
        )
    except Exception as exc:  # offline, unknown repo, auth...
        raise CheckpointError(f"could not find {path_or_id!r} locally or download it from the Hugging Face hub: {exc}") from exc


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files, safetensors preferred over .bin."""
    for index, single in ((SAFE_INDEX, SAFE_SINGLE), (BIN_INDEX, BIN_SINGLE)):
        if (folder / index).is_file():
            try:
                wmap = json.loads((folder / index).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{folder / index} is not a valid weight index: {exc}") from exc
            files = sorted(set(wmap.values()))
            missing = [f for f in files if not (folder / f).is_file()]
            if missing:
                raise CheckpointError(f"{folder}: shards listed in {index} are missing: {missing}")
            return [folder / f for f in files]
        if (folder / single).is_file():
            return [folder / single]
    raise CheckpointError(f"{folder} has no weights ({SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX})")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def read_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of a .safetensors file in file order, each read into its own fresh tensor.

    The format (8-byte little-endian header length, a JSON header of {name: {dtype, shape,
    data_offsets}}, then the data) is checked as it is read: a truncated file, a bad header or a
    tensor whose byte range does not fit its shape is a CheckpointError naming the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if n <= 0 or 8 + n > size:
            raise CheckpointError(f"cannot read {path}: not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read {path}: corrupt safetensors header ({exc})") from None
        header.pop("__metadata__", None)
        base = 8 + n
        entries = []
        for name, info in header.items():
            try:
                dtype = _SAFETENSORS_DTYPES[info["dtype"]]
                shape = [int(d) for d in info["shape"]]
                start, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"cannot read {path}: bad header entry for {name!r}: {info!r}") from None
            numel = 1
            for d in shape:
                numel *= d
            if end - start != numel * dtype.itemsize or start < 0 or base + end > size:
                raise CheckpointError(f"cannot read {path}: tensor {name!r} {info['dtype']}{shape} does not fit "
                                      f"bytes {start}..{end} of a {size - base}-byte data section (truncated or corrupt)")
            entries.append((start, end, name, dtype, shape))
        for start, end, name, dtype, shape in sorted(entries):
            t = hugepages.empty(shape, dtype)
            if end > start:
                f.seek(base + start)
                if f.readinto(memoryview(t.view(-1).view(torch.uint8).numpy())) != end - start:
                    raise CheckpointError(f"cannot read {path}: file ended inside tensor {name!r}")
            yield name, t


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) from each file, one tensor at a time."""
    for f in files:
        if f.suffix == ".safetensors":
            yield from read_safetensors(f)
        else:
            try:
                sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                sd = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise CheckpointError(f"cannot read {f} (loaded with weights_only=True): {exc}") from exc
            for name in list(sd):
                yield name, sd.pop(name)
            del sd


def _fmt(names, limit=20) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def assign_weights(model: torch.nn.Module, tensors: Iterator[tuple[str, torch.Tensor]], dtype, device) -> None:
    """Assign every tensor to its parameter (model built on meta). Strict: names and shapes."""
    expected = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    tied = model.config.tie_word_embeddings
    seen, unexpected, misshaped = set(), [], []
    for name, t in tensors:
        if IGNORED_KEYS.match(name):
            continue
        if name not in expected:
            unexpected.append(name)
            continue
        if tuple(t.shape) != tuple(expected[name].shape):
            misshaped.append(f"{name} {tuple(t.shape)} (expected {tuple(expected[name].shape)})")
            continue
        target_dtype = dtype if t.is_floating_point() else t.dtype
        if torch.device(device).type == "cpu" and (t.dtype != target_dtype or t.device.type != "cpu"):
            value = hugepages.empty(t.shape, target_dtype).copy_(t)  # cast onto huge pages, as read tensors are
        else:
            value = t.to(device=device, dtype=target_dtype)
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        module._parameters[attr] = torch.nn.Parameter(value, requires_grad=module._parameters[attr].requires_grad)
        seen.add(name)
    missing = set(expected) - seen
    if tied:
        missing.discard("lm_head.weight")
    problems = []
    if missing:
        problems.append(f"missing tensors: {_fmt(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_fmt(unexpected)}")
    if misshaped:
        problems.append(f"wrongly shaped tensors: {_fmt(misshaped)}")
    if problems:
        raise CheckpointError("checkpoint does not fit the model config: " + "; ".join(problems))
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight


def resolve_dtype(dtype, config: Phi3VConfig) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        name = config.raw.get("torch_dtype", "float32")
        dtype = name
    if isinstance(dtype, str):
        table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
        if dtype not in table:
            raise CheckpointError(f"dtype {dtype!r} is not supported (float32, bfloat16, float16)")
        dtype = table[dtype]
    return dtype


def resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, dict):  # HF device_map {"": "cuda:0"}
        device = next(iter(device.values()))
    if isinstance(device, int):
        device = f"cuda:{device}"
    return torch.device(device)


def load_pretrained(path_or_id, dtype=None, device=None, attn_implementation="sdpa", revision=None, progress=False):
    from .model.phi3v import Phi3VForCausalLM

    folder = resolve_checkpoint(path_or_id, revision)
    config = Phi3VConfig.from_pretrained(folder)
    dtype = resolve_dtype(dtype, config)
    device = resolve_device(device)
    with torch.device("meta"):
        model = Phi3VForCausalLM(config, attn_implementation=attn_implementation)
    if device.type == "meta":  # a skeleton: the weights are not read (distributed loading fills it)
        model.name_or_path = str(folder)
        return model.to(dtype).eval()
    files = weight_files(folder)
    tensors = iter_tensors(files)
    if progress:
        from tqdm import tqdm

        total = sum(1 for k in model.state_dict())
        tensors = tqdm(tensors, total=total, desc="loading weights", unit="tensor", leave=False)
    assign_weights(model, tensors, dtype, device)
    model.set_attn_implementation(attn_implementation)
    if attn_implementation == "flash_attention_2":
        from .model.attention import check_attn_implementation

        check_attn_implementation(attn_implementation, device)
    model.name_or_path = str(folder)
    return model.eval()


def _parse_size(size) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)\s*", str(size), re.I)
    if not m:
        raise ValueError(f"max_shard_size {size!r}: expected bytes or e.g. '5GB'")
    unit = m.group(2).upper()
    mult = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * mult)


def save_pretrained(model, out_dir, max_shard_size="5GB", copy_aux_from=None, state_dict=None) -> None:
    """Write config.json and safetensors shards (with an index when more than one), HF layout.

    Tied lm_head is not written twice. Tokenizer/preprocessor files are copied from the folder the
    model was loaded from (or `copy_aux_from`) so the result is a complete checkpoint. `state_dict`
    (the model's own key names) replaces the model's tensors, e.g. full tensors gathered from shards.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    limit = _parse_size(max_shard_size)
    sd = dict(model.state_dict() if state_dict is None else state_dict)
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    shards, current, size = [], {}, 0
    for name, t in sd.items():
        n = t.numel() * t.element_size()
        if current and size + n > limit:
            shards.append(current)
            current, size = {}, 0
        current[name] = t.detach().contiguous().cpu()
        size += n
    shards.append(current)
    for stale in list(out.glob("model*.safetensors")) + [out / SAFE_INDEX]:
        if stale.exists():
            stale.unlink()
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / SAFE_SINGLE), metadata=meta)
    else:
        weight_map, total = {}, 0
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / fname), metadata=meta)
            for k, t in shard.items():
                weight_map[k] = fname
                total += t.numel() * t.element_size()
        (out / SAFE_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    cfg = model.config.to_dict()
    dtype = model.dtype if state_dict is None else sd[next(iter(sd))].dtype
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    src = copy_aux_from or getattr(model, "name_or_path", None)
    if src and Path(src).is_dir() and Path(src).resolve() != out.resolve():
        for f in AUX_FILES:
            if (Path(src) / f).is_file():
                shutil.copyfile(Path(src) / f, out / f)
