"""Phi-3 decoder layers: RMSNorm, attention with fused qkv_proj, gated MLP with fused gate_up_proj."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Phi3VConfig
from .attention import attend
from .cache import KVCache
from .rope import apply_rope


class Phi3RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)  # computed in float32
        return self.weight * x.to(dtype)


class Phi3Attention(nn.Module):
    def __init__(self, config: Phi3VConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.sliding_window = config.sliding_window
        qkv_out = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, qkv_out, bias=False)  # rows: [q | k | v]
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, causal, impl, cache: KVCache | None, layer_idx: int, cache_start: int):
        B, T, _ = x.shape
        d = self.head_dim
        q, k, v = self.qkv_proj(x).split([self.num_heads * d, self.num_kv_heads * d, self.num_kv_heads * d], dim=-1)
        q = q.view(B, T, self.num_heads, d).transpose(1, 2)  # (B, H, T, d)
        k = k.view(B, T, self.num_kv_heads, d).transpose(1, 2)  # (B, KVH, T, d)
        v = v.view(B, T, self.num_kv_heads, d).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v, cache_start)
        out = attend(q, k, v, mask, impl, causal=causal, sliding_window=self.sliding_window)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * d))


class Phi3MLP(nn.Module):
    def __init__(self, config: Phi3VConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)  # [gate | up]
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * F.silu(gate))


class Phi3DecoderLayer(nn.Module):
    def __init__(self, config: Phi3VConfig):
        super().__init__()
        self.self_attn = Phi3Attention(config)
        self.mlp = Phi3MLP(config)
        self.input_layernorm = Phi3RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = Phi3RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, causal, impl, cache=None, layer_idx=0, cache_start=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, causal, impl, cache, layer_idx, cache_start)
        return x + self.mlp(self.post_attention_layernorm(x))
