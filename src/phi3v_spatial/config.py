"""Model configuration, parsed from a Hugging Face `config.json` (model_type `phi3_v`).

Frozen dataclasses with the checkpoint's field names. Anything this package does not implement is a
`ConfigError` at parse time, never a silent default. Runtime choices (device, dtype, attention
backend) are arguments of the model, not fields here.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

# CLIP ViT-L/14-336, the tower the original hard-codes when config.json has no `vision_config`.
CLIP_VIT_L_14_336 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    num_channels=3,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)

ROPE_TYPES = ("su", "longrope", "yarn")


@dataclass(frozen=True)
class VisionConfig:
    """The CLIP vision tower."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.hidden_act not in ("quick_gelu", "gelu"):
            raise ConfigError(f"vision_config.hidden_act {self.hidden_act!r} is not supported (quick_gelu, gelu)")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("vision_config.hidden_size must be divisible by num_attention_heads")
        if self.image_size % self.patch_size:
            raise ConfigError("vision_config.image_size must be a multiple of patch_size")

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class RopeScaling:
    """LongRoPE ("su" / "longrope") or yarn: per-frequency short and long factors."""

    type: str
    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]

    def __post_init__(self):
        if self.type not in ROPE_TYPES:
            raise ConfigError(f"rope_scaling type {self.type!r} is not supported; expected one of {ROPE_TYPES} or null")


@dataclass(frozen=True)
class Phi3VConfig:
    vocab_size: int = 32064
    hidden_size: int = 3072
    intermediate_size: int = 8192
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    hidden_act: str = "silu"
    max_position_embeddings: int = 131072
    original_max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int | None = 32000
    # image embedding (embd_layer / img_processor of config.json)
    hd_transform_order: str = "sub_glb"
    projection_cls: str = "mlp"
    image_dim_out: int = 1024
    num_img_tokens: int = 144
    vision_layer_idx: int = -2
    vision_type_feature: str = "patch"
    vision: VisionConfig = field(default_factory=VisionConfig)
    # the parsed config.json, kept so save_pretrained writes back every field (auto_map, etc.)
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported (Phi-3 uses silu)")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.hd_transform_order not in ("sub_glb", "glb_sub"):
            raise ConfigError(f"embd_layer.hd_transform_order {self.hd_transform_order!r} is not supported (sub_glb, glb_sub)")
        if self.projection_cls not in ("mlp", "linear"):
            raise ConfigError(f"embd_layer.projection_cls {self.projection_cls!r} is not supported (mlp, linear)")
        if self.vision_type_feature not in ("patch", "cls_patch"):
            raise ConfigError(f"img_processor.type_feature {self.vision_type_feature!r} is not supported (patch, cls_patch)")
        if self.vision_type_feature != "patch":
            raise ConfigError("img_processor.type_feature 'cls_patch' cannot be used with the HD transform (577 tokens do not merge 2x2)")
        n = self.vision.num_hidden_layers
        if not (-n - 1 <= self.vision_layer_idx <= n):
            raise ConfigError(f"img_processor.layer_idx {self.vision_layer_idx} is out of range for {n} vision layers")
        if self.image_dim_out != self.vision.hidden_size:
            raise ConfigError(
                f"img_processor.image_dim_out {self.image_dim_out} differs from the vision tower width {self.vision.hidden_size}"
            )
        if self.rope_scaling is not None:
            half = self.head_dim // 2
            for name in ("short_factor", "long_factor"):
                if len(getattr(self.rope_scaling, name)) != half:
                    raise ConfigError(f"rope_scaling.{name} must have head_dim/2 = {half} entries")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ConfigError("sliding_window must be a positive integer or null")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rope_attention_factor(self) -> float:
        """Magnitude correction both cos and sin are multiplied by, whatever the length."""
        if self.rope_scaling is None:
            return 1.0
        scale = self.max_position_embeddings / self.original_max_position_embeddings
        if scale <= 1.0:
            return 1.0
        if self.rope_scaling.type == "yarn":
            return 0.1 * math.log(scale) + 1.0
        return math.sqrt(1 + math.log(scale) / math.log(self.original_max_position_embeddings))

    # ---------------------------------------------------------------- parsing
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Phi3VConfig":
        d = dict(d)
        model_type = d.get("model_type")
        if model_type != "phi3_v":
            raise ConfigError(f"model_type {model_type!r} is not supported: this package loads Phi-3-Vision (phi3_v) checkpoints")

        rope = d.get("rope_scaling")
        rope_scaling = None
        if rope is not None:
            if not isinstance(rope, dict):
                raise ConfigError(f"rope_scaling must be an object or null, got {rope!r}")
            rtype = rope.get("type", rope.get("rope_type"))
            if rtype in ("default", None) and "short_factor" not in rope:
                rope_scaling = None
            else:
                if "short_factor" not in rope or "long_factor" not in rope:
                    raise ConfigError("rope_scaling needs short_factor and long_factor")
                extra = set(rope) - {"type", "rope_type", "short_factor", "long_factor"}
                if extra:
                    raise ConfigError(f"rope_scaling keys {sorted(extra)} are not supported")
                rope_scaling = RopeScaling(
                    type=rtype,
                    short_factor=tuple(float(x) for x in rope["short_factor"]),
                    long_factor=tuple(float(x) for x in rope["long_factor"]),
                )

        embd = d.get("embd_layer") or {}
        if embd.get("embedding_cls", "image") != "image":
            raise ConfigError(f"embd_layer.embedding_cls {embd.get('embedding_cls')!r} is not supported (image)")
        use_hd = embd.get("use_hd_transform", False)
        sep = embd.get("with_learnable_separator", False)
        if not (use_hd and sep):
            raise ConfigError(
                "embd_layer.use_hd_transform and with_learnable_separator must both be true: the Phi-3-V processor "
                "always produces HD crops, and the original requires the two flags to agree"
            )
        img = d.get("img_processor") or {}
        if img.get("name", "clip_vision_model") != "clip_vision_model":
            raise ConfigError(f"img_processor.name {img.get('name')!r} is not supported (clip_vision_model)")

        vision_raw = d.get("vision_config")
        vkw = dict(CLIP_VIT_L_14_336)
        if vision_raw is not None:
            for k in vkw:
                if k in vision_raw:
                    vkw[k] = vision_raw[k]
        vision = VisionConfig(**vkw)
        image_dim_out = int(img.get("image_dim_out", vision.hidden_size))

        eos = d.get("eos_token_id", 2)
        if isinstance(eos, list):
            eos = eos[0]
        return cls(
            vocab_size=d.get("vocab_size", 32064),
            hidden_size=d.get("hidden_size", 3072),
            intermediate_size=d.get("intermediate_size", 8192),
            num_hidden_layers=d.get("num_hidden_layers", 32),
            num_attention_heads=d.get("num_attention_heads", 32),
            num_key_value_heads=d.get("num_key_value_heads") or d.get("num_attention_heads", 32),
            hidden_act=d.get("hidden_act", "silu"),
            max_position_embeddings=d.get("max_position_embeddings", 4096),
            original_max_position_embeddings=d.get("original_max_position_embeddings", d.get("max_position_embeddings", 4096)),
            rms_norm_eps=d.get("rms_norm_eps", 1e-5),
            rope_theta=float(d.get("rope_theta", 10000.0)),
            rope_scaling=rope_scaling,
            sliding_window=d.get("sliding_window"),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            bos_token_id=d.get("bos_token_id", 1),
            eos_token_id=eos,
            pad_token_id=d.get("pad_token_id", 32000),
            hd_transform_order=embd.get("hd_transform_order", "glb_sub"),
            projection_cls=embd.get("projection_cls", "linear"),
            image_dim_out=image_dim_out,
            num_img_tokens=img.get("num_img_tokens", 144),
            vision_layer_idx=img.get("layer_idx", -2),
            vision_type_feature=img.get("type_feature", "patch"),
            vision=vision,
            raw=d,
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Phi3VConfig":
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise ConfigError(f"no config.json in {path}")
        try:
            d = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{file} is not valid JSON: {exc}") from exc
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """config.json content: the original's fields (and any unknown ones it was read with)."""
        d = dict(self.raw)
        d.update(
            model_type="phi3_v",
            architectures=["Phi3VForCausalLM"],
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            original_max_position_embeddings=self.original_max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_scaling=None
            if self.rope_scaling is None
            else dict(
                type=self.rope_scaling.type,
                short_factor=list(self.rope_scaling.short_factor),
                long_factor=list(self.rope_scaling.long_factor),
            ),
            sliding_window=self.sliding_window,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        embd = dict(d.get("embd_layer") or {})
        embd.update(
            embedding_cls="image",
            hd_transform_order=self.hd_transform_order,
            projection_cls=self.projection_cls,
            use_hd_transform=True,
            with_learnable_separator=True,
        )
        d["embd_layer"] = embd
        img = dict(d.get("img_processor") or {})
        img.update(image_dim_out=self.image_dim_out, num_img_tokens=self.num_img_tokens)
        img.setdefault("name", "clip_vision_model")
        img.setdefault("model_name", "openai/clip-vit-large-patch14-336")
        if self.vision_layer_idx != -2:
            img["layer_idx"] = self.vision_layer_idx
        d["img_processor"] = img
        if self.vision != VisionConfig(**CLIP_VIT_L_14_336) or "vision_config" in d:
            vc = dict(d.get("vision_config") or {})
            vc.update(dataclasses.asdict(self.vision))
            vc.setdefault("model_type", "clip_vision_model")
            d["vision_config"] = vc
        return d

    def replace(self, **changes) -> "Phi3VConfig":
        return dataclasses.replace(self, **changes)
