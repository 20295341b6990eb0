"""Export a training result as a Hugging Face Phi-3-V folder: a LoRA adapter merged into its base,
or fully fine-tuned weights, with the original key names and config.json fields, so this
package's loader, the original implementation (trust_remote_code) and vLLM all read it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError


def resolve_result(path: str | Path) -> tuple[str, Path]:
    """A run folder, a checkpoint-N folder or a PEFT adapter folder -> ("adapter"|"model", folder)."""
    from .checkpoint import latest_checkpoint

    p = Path(path)
    if (p / "adapter_config.json").is_file():
        return "adapter", p
    if (p / "config.json").is_file() and any(p.glob("model*.safetensors")):
        return "model", p
    ckpt = p if (p / "trainer_state.json").is_file() else latest_checkpoint(p)
    if ckpt is not None:
        if (ckpt / "adapter" / "adapter_config.json").is_file():
            return "adapter", ckpt / "adapter"
        if (ckpt / "model" / "config.json").is_file():
            return "model", ckpt / "model"
    raise CheckpointError(f"{p} holds no LoRA adapter (adapter_config.json), model folder or training checkpoint")


def merge_lora(base, adapter_dir: str | Path):
    """base Phi3VForCausalLM + PEFT adapter folder -> the same model with W + (alpha/r) B A merged
    into every adapted Linear (plain nn.Linear again, original key names)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def export(adapter: str | Path, out: str | Path, model: str | Path | None = None, dtype: torch.dtype | None = None,
           max_shard_size: str = "5GB") -> Path:
    """Write the merged / fine-tuned model to `out`. `model` is the base checkpoint for an adapter
    (default: the adapter's base_model_name_or_path); tokenizer and preprocessor files come along."""
    from ..model import Phi3VForCausalLM

    kind, folder = resolve_result(adapter)
    if kind == "adapter":
        base_path = model or json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base_path:
            raise CheckpointError(f"{folder}: the adapter does not name its base model; pass --model")
        base = Phi3VForCausalLM.from_pretrained(base_path, torch_dtype=torch.float32)
        merged = merge_lora(base, folder)
        aux = base_path
    else:
        merged = Phi3VForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
        aux = folder if (folder / "tokenizer.json").is_file() else model
    if dtype is not None:
        merged = merged.to(dtype)
    from ..weights import save_pretrained

    save_pretrained(merged, out, max_shard_size=max_shard_size, copy_aux_from=str(aux) if aux else None)
    _copy_original_config(Path(aux) if aux else None, Path(out), merged)
    return Path(out)


def _copy_original_config(src: Path | None, out: Path, model) -> None:
    """Keep every field of the base's config.json (auto_map, _name_or_path, ...) that the original
    and vLLM read; only torch_dtype follows the exported weights."""
    if src is None or not (src / "config.json").is_file():
        return
    cfg = json.loads((src / "config.json").read_text())
    cfg["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
