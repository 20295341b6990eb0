"""Rotary position embeddings with Phi-3's LongRoPE ("su"/"longrope") and yarn scalings.

Regime policy (where this package differs from the original on purpose): a sequence uses the SHORT
factors while its length (largest position + 1) fits in `original_max_position_embeddings`, and the
LONG factors beyond. The original decides this once for the whole batch from the longest row; we
decide it per row, so a batched row computes exactly what it computes alone. The generation engine
recomputes a row's cache when the row crosses the boundary (see generation.py).
"""
from __future__ import annotations

import torch

from ..config import Phi3VConfig


def rope_inv_freq(config: Phi3VConfig, long: bool, device=None) -> torch.Tensor:
    """(head_dim/2,) float32 inverse frequencies: 1 / (factor_i * theta^(2i/d))."""
    d = config.head_dim
    exponent = torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d
    base = config.rope_theta**exponent
    if config.rope_scaling is None:
        return 1.0 / base
    factors = config.rope_scaling.long_factor if long else config.rope_scaling.short_factor
    return 1.0 / (torch.tensor(factors, dtype=torch.float32, device=device) * base)


def rope_is_long(config: Phi3VConfig, seq_len: torch.Tensor) -> torch.Tensor:
    """(B,) bool: which rows use the long factors, given each row's length (largest position + 1)."""
    if config.rope_scaling is None:
        return torch.zeros_like(seq_len, dtype=torch.bool)
    return seq_len > config.original_max_position_embeddings


def rope_cos_sin(
    inv_freq_short: torch.Tensor,
    inv_freq_long: torch.Tensor,
    long: torch.Tensor,
    position_ids: torch.Tensor,
    attention_factor: float,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (B, T, head_dim), computed in float32 and cast to `dtype`.

    long: (B,) bool, per-row factor choice. position_ids: (B, T).
    """
    inv_freq = torch.where(long[:, None], inv_freq_long[None, :], inv_freq_short[None, :])  # (B, d/2)
    freqs = position_ids.to(torch.float32)[:, :, None] * inv_freq[:, None, :]  # (B, T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, d): angles duplicated as [f, f]
    cos, sin = emb.cos(), emb.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos.to(dtype), sin.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dim (first half / second half)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, d); cos/sin: (B, T, d)."""
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, d)
    return x * cos + rotate_half(x) * sin
