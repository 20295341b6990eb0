"""Random Phi-3-V checkpoints of any size, for tests, benchmarks and training from scratch.

The tiny reference config (../shared/fixtures) and a few named sizes are built from the real
config's structure; weights follow the same rule as the golden tiny checkpoint (unit-scale
activations): Linear std 1/sqrt(fan_in), biases 0.05, embeddings 1, norms mean 1 std 0.1.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from .config import Phi3VConfig

# structure of the real config.json (Phi-3-vision-128k-instruct), sizes overridden per preset
_BASE = {
    "model_type": "phi3_v",
    "architectures": ["Phi3VForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 32000,
    "embd_layer": {"embedding_cls": "image", "hd_transform_order": "sub_glb", "projection_cls": "mlp",
                   "use_hd_transform": True, "with_learnable_separator": True},
    "hidden_act": "silu",
    "img_processor": {"image_dim_out": 1024, "model_name": "openai/clip-vit-large-patch14-336",
                      "name": "clip_vision_model", "num_img_tokens": 144},
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "vocab_size": 32064,
    "torch_dtype": "float32",
}

PRESETS = {
    # ~23M parameters: the embedded model's size class
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4)),
    # ~300M parameters: decode is memory-bound on a CPU
    "mid": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16,
                vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4)),
}


def random_config(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=None, vision=None, max_position_embeddings=131072,
                  original_max_position_embeddings=4096, sliding_window=None, rope="su", **extra) -> Phi3VConfig:
    """A Phi-3-V config with the given sizes and LongRoPE factors (random-looking but fixed)."""
    d = copy.deepcopy(_BASE)
    vision = dict(vision or dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4))
    vision.setdefault("image_size", 336)
    vision.setdefault("patch_size", 14)
    vision.setdefault("hidden_act", "quick_gelu")
    vision.setdefault("layer_norm_eps", 1e-5)
    vision.setdefault("model_type", "clip_vision_model")
    half = hidden_size // num_attention_heads // 2
    d.update(
        hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads or num_attention_heads,
        max_position_embeddings=max_position_embeddings, original_max_position_embeddings=original_max_position_embeddings,
        sliding_window=sliding_window if sliding_window is not None else max_position_embeddings,
        vision_config=vision,
    )
    d["img_processor"]["image_dim_out"] = vision["hidden_size"]
    if rope is None:
        d["rope_scaling"] = None
    else:
        d["rope_scaling"] = {
            "type": rope,
            "short_factor": [round(1.0 + 2.0 * i / max(half - 1, 1), 4) for i in range(half)],
            "long_factor": [round(1.0 + 60.0 * (i / max(half - 1, 1)) ** 2, 4) for i in range(half)],
        }
    d.update(extra)
    return Phi3VConfig.from_dict(d)


@torch.no_grad()
def init_weights(model: torch.nn.Module, seed: int = 0, std_scale: float = 1.0) -> torch.nn.Module:
    """Fill every parameter in sorted-name order from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    for name in sorted(params):
        p = params[name]
        t = torch.empty(p.shape, dtype=torch.float32)
        if name.endswith("norm.weight") or "layernorm" in name or "layer_norm" in name or "layrnorm" in name:
            t = (1.0 + 0.1 * torch.randn(p.shape, generator=g)) if name.endswith("weight") else 0.05 * torch.randn(p.shape, generator=g)
        elif name.endswith("bias"):
            t = 0.05 * torch.randn(p.shape, generator=g)
        elif "embed_tokens" in name or name.endswith("GN") or "class_embedding" in name:
            t = torch.randn(p.shape, generator=g)
        elif "position_embedding" in name:
            t = 0.5 * torch.randn(p.shape, generator=g)
        else:
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            t = torch.randn(p.shape, generator=g) * (std_scale / fan_in**0.5)
        p.copy_(t.to(p.dtype))
    return model


def random_model(config: Phi3VConfig, seed: int = 0, dtype=torch.float32):
    from .model import Phi3VForCausalLM

    model = Phi3VForCausalLM(config).to(dtype)
    return init_weights(model, seed).eval()


def make_random_checkpoint(out_dir, config: Phi3VConfig | str = "tiny", seed: int = 0, dtype=torch.float32,
                           tokenizer_from=None, max_shard_size="5GB") -> Path:
    """Write a complete random checkpoint folder (weights + config, and tokenizer/preprocessor files
    copied from `tokenizer_from` when given)."""
    if isinstance(config, str):
        config = random_config(**PRESETS[config])
    model = random_model(config, seed, dtype)
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    if tokenizer_from is not None:
        from .weights import save_pretrained

        save_pretrained(model, out_dir, max_shard_size=max_shard_size, copy_aux_from=tokenizer_from)
    return Path(out_dir)
