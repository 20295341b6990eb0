"""Attention backends and masks: "eager" (explicit float32 softmax, as the original), "sdpa"
(torch's fused kernel, default) and "flash_attention_2" (flash-attn on CUDA, optional)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def check_attn_implementation(name: str, device: torch.device | str | None = None) -> str:
    if name not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"attn_implementation {name!r} is not supported; choose one of {ATTN_IMPLEMENTATIONS}")
    if name == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError as exc:
            raise ConfigError("attn_implementation='flash_attention_2' needs the flash-attn package (pip install 'phi3v-spatial[flash]')") from exc
        if device is not None and torch.device(device).type != "cuda":
            raise ConfigError("attn_implementation='flash_attention_2' runs on CUDA only; use 'sdpa' on this device")
    return name


def build_attention_mask(
    attention_mask: torch.Tensor | None,
    q_len: int,
    kv_len: int,
    sliding_window: int | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """Additive mask (B or 1, 1, q_len, kv_len): 0 where a query may attend, dtype-min elsewhere.

    Queries are the last q_len of kv_len slots. A query at slot p sees keys p - W .. p (W + 1 keys)
    with W = sliding_window, and never keys whose attention_mask is 0. Returns None when nothing
    needs masking (single query, no padding, window not reached), so fused kernels can run unmasked.
    """
    offset = kv_len - q_len
    window_bites = sliding_window is not None and kv_len > sliding_window
    has_padding = attention_mask is not None and not bool(attention_mask[:, :kv_len].all())
    if q_len == 1 and not window_bites and not has_padding:
        return None
    q_pos = torch.arange(offset, kv_len, device=device)[:, None]  # (q_len, 1)
    k_pos = torch.arange(kv_len, device=device)[None, :]  # (1, kv_len)
    allowed = k_pos <= q_pos
    if window_bites:
        allowed = allowed & (k_pos >= q_pos - sliding_window)
    allowed = allowed[None, None]  # (1, 1, q, k)
    if has_padding:
        allowed = allowed & attention_mask[:, None, None, :kv_len].bool()
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def is_plain_causal(attention_mask, q_len, kv_len, sliding_window) -> bool:
    """True when the mask is exactly causal (no padding, window not reached, no cache offset)."""
    no_pad = attention_mask is None or bool(attention_mask[:, :kv_len].all())
    return no_pad and q_len == kv_len and (sliding_window is None or kv_len <= sliding_window)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    impl: str,
    causal: bool = False,
    sliding_window: int | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """q: (B, H, T, d); k, v: (B, KVH, S, d) -> (B, H, T, d). `mask` additive or None; `causal`
    means "use a plain causal mask" (only valid when mask is None)."""
    n_rep = q.shape[1] // k.shape[1]
    if impl == "eager":
        if n_rep > 1:
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(q.shape[-1])  # (B, H, T, S)
        if mask is None and causal:
            T, S = q.shape[2], k.shape[2]
            mask = build_attention_mask(None, T, S, sliding_window, scores.dtype, q.device) if T > 1 else None
        if mask is not None:
            scores = scores + mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        if dropout:
            probs = F.dropout(probs, p=dropout)
        return torch.matmul(probs, v)
    if impl == "sdpa":
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None and q.shape[2] > 1,
            dropout_p=dropout, enable_gqa=n_rep > 1,
        )
    if impl == "flash_attention_2":
        return _flash(q, k, v, mask, causal, sliding_window, dropout)
    raise ConfigError(f"unknown attention implementation {impl!r}")


def _flash(q, k, v, mask, causal, sliding_window, dropout):
    """flash-attn path (CUDA, fp16/bf16). Padded batches fall back to SDPA with the explicit mask."""
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=q.shape[1] != k.shape[1])
    from flash_attn import flash_attn_func

    window = (-1, -1) if sliding_window is None else (sliding_window, sliding_window)
    out = flash_attn_func(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout,
        causal=causal, window_size=window,  # bottom-right aligned: right for decode too
    )
    return out.transpose(1, 2)
