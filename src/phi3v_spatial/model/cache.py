"""Preallocated key/value cache shared by all decoder layers.

Layout: one (B, KVH, max_len, d) tensor per layer for keys and one for values. All rows of a batch
share the slot axis (left padding keeps them aligned); `length` slots are filled.
"""
from __future__ import annotations

import torch

from ..hugepages import zeros as _huge_zeros


def _zeros(shape, dtype, device) -> torch.Tensor:
    """Zeros; on the CPU on huge pages (decode streams the cache as it streams the weights)."""
    if torch.device(device).type == "cpu":
        return _huge_zeros(shape, dtype)
    return torch.zeros(shape, dtype=dtype, device=device)


class KVCache:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int, dtype, device):
        shape = (batch, kv_heads, max_len, head_dim)
        self.k = [_zeros(shape, dtype, device) for _ in range(num_layers)]
        self.v = [_zeros(shape, dtype, device) for _ in range(num_layers)]
        self.length = 0
        self.max_len = max_len

    @classmethod
    def for_model(cls, model, batch: int, max_len: int, dtype=None, device=None) -> "KVCache":
        c = model.config
        p = next(model.parameters())
        return cls(
            c.num_hidden_layers, batch, c.num_key_value_heads, max_len, c.head_dim,
            dtype or p.dtype, device or p.device,
        )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, KVH, T, d) at slots start..start+T and return all keys/values up to there."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} > {self.max_len} slots")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def row_view(self, row: int) -> "KVCache":
        """A one-row cache sharing this cache's storage: writes through it land in row `row`."""
        view = object.__new__(KVCache)
        view.k = [t[row : row + 1] for t in self.k]
        view.v = [t[row : row + 1] for t in self.v]
        view.length, view.max_len = self.length, self.max_len
        return view

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (finished rows dropped)."""
        self.k = [t.index_select(0, rows) for t in self.k]
        self.v = [t.index_select(0, rows) for t in self.v]
