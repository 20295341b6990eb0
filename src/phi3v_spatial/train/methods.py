"""Fine-tuning methods: LoRA (through PEFT), QLoRA (4-bit base through bitsandbytes, CUDA only) and
full fine-tuning, with the vision tower and/or the projector optionally frozen.

Module names follow the checkpoint, so PEFT's target names are the original's: the decoder's
`qkv_proj`, `o_proj`, `gate_up_proj`, `down_proj` (CLIP's `q_proj`/`out_proj`/`fc1` do not match
them). Adapters are saved in PEFT's own format (adapter_config.json + adapter_model.safetensors)
with the original key names, so PEFT, vLLM and `export` read them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import ConfigError

DEFAULT_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
METHODS = ("lora", "qlora", "full")
VISION_TOWER = "model.vision_embed_tokens.img_processor."
PROJECTOR = ("model.vision_embed_tokens.img_projection.", "model.vision_embed_tokens.glb_GN",
             "model.vision_embed_tokens.sub_GN")


@dataclass
class LoraOptions:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    modules_to_save: tuple[str, ...] = field(default_factory=tuple)


def freeze(model: nn.Module, vision_tower: bool = False, projector: bool = False) -> None:
    """requires_grad=False on the CLIP tower and/or the image projector (+ its separators)."""
    for name, p in model.named_parameters():
        name = name.replace("base_model.model.", "")
        if vision_tower and name.startswith(VISION_TOWER):
            p.requires_grad_(False)
        if projector and name.startswith(PROJECTOR):
            p.requires_grad_(False)


def _peft():
    try:
        import peft
    except ImportError as e:
        raise ConfigError("LoRA/QLoRA need PEFT: pip install 'phi3v-spatial[train]'") from e
    return peft


def apply_lora(model: nn.Module, opts: LoraOptions):
    """Wrap `model` in a PEFT LoRA model (layers swapped in place). The base is frozen; modules
    named in opts.modules_to_save (e.g. "img_projection") train in full and are saved with the adapter."""
    peft = _peft()
    to_save = list(opts.modules_to_save)
    cfg = peft.LoraConfig(
        r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout, target_modules=list(opts.targets),
        modules_to_save=to_save or None, bias="none",
    )
    try:
        return peft.get_peft_model(model, cfg)
    except ValueError as e:
        raise ConfigError(f"LoRA targets {list(opts.targets)} do not match this model's modules: {e}") from e


def quantize_4bit(model: nn.Module, targets=DEFAULT_TARGETS, compute_dtype=torch.bfloat16) -> nn.Module:
    """Swap the decoder's target Linears for bitsandbytes NF4 Linear4bit (QLoRA's base) on CUDA."""
    if not torch.cuda.is_available():
        raise ConfigError("QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels); use --method lora on this machine")
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ConfigError("QLoRA needs bitsandbytes: pip install bitsandbytes") from e
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Linear) and child_name in targets and not name.startswith(VISION_TOWER.rstrip(".")):
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=compute_dtype, quant_type="nf4")
                q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
                if child.bias is not None:
                    q.bias = nn.Parameter(child.bias.data, requires_grad=False)
                setattr(mod, child_name, q.cuda())
    return model.cuda()


def prepare(model: nn.Module, method: str, lora: LoraOptions | None = None, freeze_vision: bool = False,
            freeze_projector: bool = False) -> nn.Module:
    """The model to train for `method` ("lora", "qlora", "full"). For LoRA the returned object is
    a PEFT model whose layers live inside `model` (the same object is still callable directly)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        freeze(model, freeze_vision, freeze_projector)
        return model
    if method == "qlora":
        model = quantize_4bit(model)
    # LoRA: the whole base is frozen; the projector / vision tower train in full only when asked
    # through LoraOptions.modules_to_save (e.g. ("img_projection",))
    return apply_lora(model, lora or LoraOptions())


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
