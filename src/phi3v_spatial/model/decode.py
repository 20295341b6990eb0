"""The one-token decode step: `Phi3VModel.forward` for a single new token per row, written for speed.

On small models the time of a decode step is Python and framework overhead, not arithmetic, so this
path does only what one token needs and nothing the general forward does to be general:

- no checks and no host syncs (the general forward validates ids and inspects the mask on the host);
- RoPE from tables built once per generation (both regimes, every slot) and gathered per row: the
  same float32 `rope_cos_sin` values as the forward, so cached == uncached;
- rotate-half as one `roll` with a sign-folded sine: x*cos + roll(x)*[-sin, sin] == x*cos +
  rotate_half(x)*sin exactly;
- no mask building: padding is a (B, 1, 1, slots) additive bias made once per generation and sliced;
- attention of the single query through a compiled kernel where available (`native.py`), else as two
  small matmuls (`_attend_one`), or the fused SDPA kernel once rows x cached keys are many enough to
  pay for its thread fan-out;
- weights read straight from plain `nn.Linear`/`nn.Embedding` modules (one matmul each); any
  other module in their place (a LoRA layer, a quantized linear, a module with hooks) is called
  as a module, so swapped-in layers keep working;
- on CPU in float32, for a model too large for the caches, those matmuls go to oneDNN
  (`onednn_linear`) instead of BLAS `F.linear`: for the 1-8 rows of a decode step it streams the
  weights ~1.5x (1 row) to ~2.5x (8 rows) faster on this project's machine, reading the same
  row-major weights (no copy, no repacking);
- for one row (batch 1), where available, a hand-written GEMV compiled on first use (`native.py`,
  `kernels/gemv.c`) instead of oneDNN: it streams the weights like a plain read of memory, where
  oneDNN's one-row product falls behind in this machine's fast-memory phases; for 2-8 rows its
  sibling (`native_gemm_rows`, each weight row read once for all rows): ~1.4x oneDNN at 2 rows,
  ~1.25x oneDNN's packed GEMM at 8, without a copy of the weights;
- for 1-8 rows, where the compiled kernels are available and every layer is plain (float32 weights
  read as stored, Phi3RMSNorm norms, no swapped-in modules or hooks), each decoder layer in one
  compiled call (`native.NativeLayer`, `kernels/layer.c`): the same GEMV / few-row and attention
  kernels with the norms, RoPE, cache writes, SiLU and residual adds between them done in C by the
  same threads, instead of ~14 torch ops per layer during which the weights are not streamed, each
  slow with the caches cold after a pass over the weights (`_native_step`);
- for more rows (batched decoding beyond 8), the same weights packed once into oneDNN's blocked layout
  for small row counts (`packed_weight`): 8-row steps stream them ~1.4-2x faster than the plain
  layout on this project's machine. The packed copies are extra memory (as much as the decoder's
  weights), so they are made only when the machine has room for them (`packing_allowed`), kept
  with the model for the next batched generation and rebuilt when a weight changes;
  `release_packed_weights(model)` frees them.

The math is the decoder's (language.py); tests check the step's logits against the uncached forward.

`cpu_weight_layout` is the fallback for CPU builds without oneDNN: see its docstring.
"""
from __future__ import annotations

import os
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import KVCache
from .native import (NativeLayer, attend_reference, attend_usable, layer_usable, native_attend_one, native_available,
                     native_gemm_rows, native_gemv, native_norm_gemv, usable as native_gemv_usable)
from .language import Phi3RMSNorm
from .rope import rope_cos_sin, rope_inv_freq


def cpu_weight_layout(model, below: int | None = None) -> None:
    """Store every plain float32 `nn.Linear` weight of a CPU model column-major, in place (with
    `below`: only the weights of fewer elements, the ones the decode step leaves to BLAS).

    Same values, same (out, in) shape, transposed strides: `F.linear(x, W)` then multiplies by a
    contiguous W^T, the form the CPU BLAS streams fastest. Measured on this project's machine (mid-size
    random checkpoint, 1 thread): decode steps ~25% faster, a 775-token prefill ~15% faster. Idempotent;
    GPU models, other dtypes, tied or swapped-in (LoRA, quantized) layers are left alone. Saving is
    unaffected (`save_pretrained` writes contiguous tensors); `.view()` on such a weight needs
    `.contiguous()` first.
    """
    if model.device.type != "cpu" or getattr(model, "_cpu_weight_layout", False):
        return
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        for m in model.modules():
            if type(m) is nn.Linear and m.weight.dtype == torch.float32 and not (tied and m is model.lm_head):
                w = m.weight
                if w.dim() == 2 and w.is_contiguous() and w.shape[0] > 1 and w.shape[1] > 1 and (below is None or w.numel() < below):
                    w.data = w.data.t().contiguous().t()
    model._cpu_weight_layout = True


_ONEDNN: bool | None = None
# oneDNN streams weights from memory faster than BLAS, but on cache-resident ones its per-call
# cost is higher: used for models of >= 64 MiB of decoder weights, and in them for weights >= 1 MiB
_ONEDNN_MIN_MODEL = 64 << 20
_ONEDNN_MIN_WEIGHT = 1 << 18
# rows of a decode step that go to the compiled few-row kernel (native.py) rather than oneDNN: at 2 rows
# it streams phi3-2l's weights ~1.4x faster than oneDNN, at 3 ~1.1x, at 8 (three weight rows at a time)
# ~1.25x oneDNN's packed GEMM, without the packed copy of the weights; more rows go to oneDNN
_NATIVE_MAX_ROWS = 8


def onednn_linear_available() -> bool:
    """True when this torch build has oneDNN's linear op and it agrees with `F.linear` (probed once)."""
    global _ONEDNN
    if _ONEDNN is None:
        try:
            op = torch.ops.mkldnn._linear_pointwise
            g = torch.Generator().manual_seed(0)
            x, w = torch.randn(3, 1, 40, generator=g), torch.randn(24, 40, generator=g)
            _ONEDNN = bool(torch.backends.mkldnn.is_available()) and torch.allclose(
                op(x, w, None, "none", [], ""), F.linear(x, w), rtol=1e-5, atol=1e-5)
        except (AttributeError, RuntimeError):
            _ONEDNN = False
    return _ONEDNN


def onednn_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, w)` through oneDNN (float32 CPU tensors, no bias). The same products summed in
    another order: results agree with `F.linear` to float32 rounding (~1e-6 relative).

    One row multiplies as x W^T; several rows as (W x^T)^T, oneDNN's faster form when the weight is
    the tall operand (2-8 rows: ~1.4x on this project's machine)."""
    rows = x.numel() // x.shape[-1]
    if rows == 1:
        return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    flat = x.reshape(rows, x.shape[-1]).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(w, flat, None, "none", [], "")  # (out, rows)
    return out.t().contiguous().view(*x.shape[:-1], w.shape[0])


def prepare_cpu_decode(model) -> None:
    """Once per model, before decoding on CPU: the weights BLAS will multiply go column-major (all
    of them without oneDNN; with it, those under `_ONEDNN_MIN_WEIGHT`, oneDNN reading the rest
    row-major as they are)."""
    if model.device.type == "cpu":
        cpu_weight_layout(model, below=_ONEDNN_MIN_WEIGHT if use_onednn(model) else None)


def use_onednn(model) -> bool:
    """The decode step's matmuls go to oneDNN for a float32 model on the CPU whose decoder weights
    outgrow the caches (>= `_ONEDNN_MIN_MODEL` bytes), when available. Smaller models are
    cache-resident, where BLAS on column-major weights is as fast or faster."""
    if model.device.type != "cpu" or model.dtype != torch.float32 or not onednn_linear_available():
        return False
    return decode_weight_bytes(model) >= _ONEDNN_MIN_MODEL


def decode_weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: every decoder layer, the final norm and lm_head (one
    row of embed_tokens and nothing of the vision tower)."""
    lm = model.model
    return sum(p.numel() * p.element_size() for m in (*lm.layers, lm.norm, model.lm_head) for p in m.parameters())


# packed copies, by id of the plain weight: ((data_ptr, version), packed). An entry is dropped when its
# weight is garbage collected and rebuilt when the weight is modified (in place or through .data).
_PACKED: dict[int, tuple[tuple[int, int], torch.Tensor]] = {}
PACKED_ROWS = 8  # the row count the blocked layout is chosen for (any count multiplies correctly)


def packed_weight(w: torch.Tensor) -> torch.Tensor:
    """`w` (a float32 (out, in) CPU weight) in oneDNN's blocked layout for `PACKED_ROWS`-row inputs,
    made once and cached while `w` is alive and unmodified. `_linear_pointwise(x, packed)` ==
    `F.linear(x, w)` to float32 rounding."""
    key = (w.data_ptr(), w._version)
    hit = _PACKED.get(id(w))
    if hit is None or hit[0] != key:
        if hit is None:
            weakref.finalize(w, _PACKED.pop, id(w), None)
        with torch.no_grad():
            hit = _PACKED[id(w)] = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACKED_ROWS))
    return hit[1]


def release_packed_weights(model=None) -> int:
    """Free the packed copies made for batched CPU decoding (of `model`'s weights, or all); returns
    the bytes freed. The next batched generation packs again when it is allowed to."""
    ids = None if model is None else {id(p) for p in model.parameters()}
    freed = 0
    for k in [k for k in _PACKED if ids is None or k in ids]:
        w = _PACKED.pop(k)[1]
        freed += w.numel() * w.element_size()
    return freed


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def packing_allowed(model) -> bool:
    """Whether batched decoding of this (oneDNN, float32, CPU) model may use packed weight copies:
    `PHI3V_CPU_PACKED_WEIGHTS=1` / `0` forces it on / off; by default yes when they exist already
    or the machine's available memory holds them with 1 GiB to spare (never on a machine whose
    available memory cannot be read)."""
    env = os.environ.get("PHI3V_CPU_PACKED_WEIGHTS", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    lm = model.model
    linears = [m for layer in lm.layers for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                                                  layer.mlp.gate_up_proj, layer.mlp.down_proj)]
    weights = [_plain_linear(m) for m in (*linears, model.lm_head)]  # what _bind_linear would pack
    big = [w for w in weights if isinstance(w, torch.Tensor) and w.dtype == torch.float32 and w.numel() >= _ONEDNN_MIN_WEIGHT]
    missing = sum(w.numel() * w.element_size() for w in big if id(w) not in _PACKED)
    if missing == 0:
        return True
    avail = _available_memory()
    return avail is not None and avail >= missing + (1 << 30)


def _plain_linear(m: nn.Module):
    """The weight of a plain bias-free nn.Linear without hooks, else the module itself."""
    plain = type(m) is nn.Linear and m.bias is None and not (m._forward_hooks or m._forward_pre_hooks)
    return m.weight if plain else m


def _bind_linear(w, fast: bool, pack: bool = False):
    """A callable x -> x @ w^T for one layer: for a plain float32 weight when `fast`, one row through
    the compiled GEMV when it is available (native.py) else oneDNN, 2-8 rows through its few-row
    sibling when available, more rows through oneDNN (with `pack`: its packed copy); else `F.linear`,
    else (a swapped-in module) the module itself."""
    if not isinstance(w, torch.Tensor):
        return w
    if fast and w.dtype == torch.float32 and w.dim() == 2 and w.numel() >= _ONEDNN_MIN_WEIGHT:
        native = native_gemv_usable(w) and native_available()
        one_row = native_gemv if native else onednn_linear

        def linear(x: torch.Tensor) -> torch.Tensor:
            rows = x.numel() // x.shape[-1]
            if rows == 1:
                return one_row(x, w)
            if native and rows <= _NATIVE_MAX_ROWS:
                return native_gemm_rows(x, w)
            if not pack:
                return onednn_linear(x, w)
            flat = x.reshape(rows, x.shape[-1])
            return torch.ops.mkldnn._linear_pointwise(flat, packed_weight(w), None, "none", [], "").view(*x.shape[:-1], w.shape[0])

        return linear
    return lambda x: F.linear(x, w)


def _rms_norm(x: torch.Tensor, norm) -> torch.Tensor:
    if x.dtype == torch.float32 and type(norm) is Phi3RMSNorm:
        return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.eps)
    return norm(x)  # other dtypes: the module's exact rounding order


# rows x cached keys from which the fused SDPA kernel beats the two matmuls on CPU (measured: 8 rows
# x 800 keys ~25% faster; 1 row x 800 keys ~35% slower; 1 row x 4000 keys ~40% faster)
_SDPA_MIN_KEYS = 4096


def _attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Attention of one query per row. q: (B, H, d); k, v: (B, KVH, S, d) -> (B, H, d).

    The query heads of a KV head are grouped as rows of one matmul (GQA without repeating keys).
    Softmax in float32, as the eager path. On CPU in float32, where it is available, the compiled
    kernel (`native.py`, `kernels/attend.c`: each cache head's keys and values read once, front to
    back; 1.6-3.5x faster than either torch path below on this project's machine). Otherwise two
    batched matmuls: on CPU this beats the fused SDPA kernel for a single query over a short cache,
    whose thread-pool fan-out costs more than the arithmetic; from `_SDPA_MIN_KEYS` rows x keys on,
    the fused kernel is faster and used.
    """
    if attend_usable(q, k, v, bias) and native_available():  # the compiled kernel (native.py): 1.6-3.5x faster
        return native_attend_one(q, k, v, bias, scale)
    B, H, d = q.shape
    KVH = k.shape[1]
    if B * k.shape[2] >= _SDPA_MIN_KEYS and q.device.type == "cpu":  # enough keys that the fused kernel's fan-out pays
        mask = None if bias is None else bias.to(q.dtype)
        return F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=mask, scale=scale,
                                              enable_gqa=H != KVH).view(B, H, d)
    return attend_reference(q, k, v, bias, scale)


class DecodeStep:
    """Bound to one model and one cache size; call once per generated token.

    step(tokens (B,), positions (B,), regime (B,) 0 short / 1 long, cache, slot, bias) -> (B, V)
    float32 logits. The new keys/values go to cache slot `slot`; `bias` is None (no padding) or a
    (B, 1, 1, >= slot+1) additive mask over the cache slots. `rows`: the batch size it starts with
    (several rows may use packed weights, see `packed_weight`).
    """

    def __init__(self, model, max_slots: int, rows: int = 1):
        lm = model.model
        cfg = model.config
        self.model = model
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.window = cfg.sliding_window
        dtype, device = model.dtype, model.device
        emb = lm.embed_tokens
        self.embed = emb.weight if type(emb) is nn.Embedding and not emb._forward_hooks else emb
        fast = use_onednn(model)
        pack = fast and rows > 1 and packing_allowed(model)
        self.layers = [
            (
                layer.input_layernorm,
                _bind_linear(_plain_linear(layer.self_attn.qkv_proj), fast, pack),
                _bind_linear(_plain_linear(layer.self_attn.o_proj), fast, pack),
                layer.post_attention_layernorm,
                _bind_linear(_plain_linear(layer.mlp.gate_up_proj), fast, pack),
                _bind_linear(_plain_linear(layer.mlp.down_proj), fast, pack),
            )
            for layer in lm.layers
        ]
        self.norm = lm.norm
        self.lm_head = _bind_linear(_plain_linear(model.lm_head), fast, pack)
        # RoPE tables for every slot, regime-major: row (regime * max_slots + position)
        positions = torch.arange(max_slots, device=device).expand(2, max_slots)
        short, long_ = rope_inv_freq(cfg, False, device), rope_inv_freq(cfg, True, device)
        cos, sin = rope_cos_sin(
            short, long_, torch.tensor([False, True], device=device), positions, cfg.rope_attention_factor, dtype
        )  # (2, S, d)
        half = self.head_dim // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # sign of rotate_half folded in
        self.cos = cos.reshape(2 * max_slots, self.head_dim)
        self.sin = sin.reshape(2 * max_slots, self.head_dim)
        self.max_slots = max_slots
        self.scale = self.head_dim**-0.5
        self.native = _native_layers(model, self.heads, self.kv_heads, self.head_dim) if fast else None
        self.native_head = None
        if self.native:
            self.cos, self.sin = self.cos.contiguous(), self.sin.contiguous()
            self.scratch = torch.empty(self.native[0].scratch_floats(max_slots))
            norm, head = lm.norm, _plain_linear(model.lm_head)
            if _plain_norm(norm) and isinstance(head, torch.Tensor) and layer_usable(norm.weight, head):
                self.native_head = (norm.weight, norm.eps, head)

    def __call__(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        regime: torch.Tensor,
        cache: KVCache,
        slot: int,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        B = tokens.shape[0]
        if B <= _NATIVE_MAX_ROWS and self.native and _native_cache(cache, bias):
            return self._native_step(tokens, positions, regime, cache, slot, bias)
        H, KVH, d = self.heads, self.kv_heads, self.head_dim
        half = d // 2
        row = regime * self.max_slots + positions  # (B,)
        cos = self.cos.index_select(0, row)[:, None]  # (B, 1, d)
        sin = self.sin.index_select(0, row)[:, None]
        x = F.embedding(tokens, self.embed) if isinstance(self.embed, torch.Tensor) else self.embed(tokens)  # (B, D)
        x = x[:, None]  # (B, 1, D)
        start = 0 if self.window is None or slot <= self.window else slot - self.window
        if bias is not None:
            bias = bias[..., start : slot + 1]
        for i, (ln1, qkv_proj, o_proj, ln2, gate_up_proj, down_proj) in enumerate(self.layers):
            qkv = qkv_proj(_rms_norm(x, ln1)).view(B, H + 2 * KVH, d)  # rows [q heads | k heads | v heads]
            qk = qkv[:, : H + KVH]
            qk = torch.addcmul(qk * cos, qk.roll(half, -1), sin)  # RoPE on q and k at once
            k_cache, v_cache = cache.k[i], cache.v[i]  # (B, KVH, S, d)
            k_cache[:, :, slot] = qk[:, H:]
            v_cache[:, :, slot] = qkv[:, H + KVH :]
            out = _attend_one(qk[:, :H], k_cache[:, :, start : slot + 1], v_cache[:, :, start : slot + 1], bias, self.scale)
            x = x + o_proj(out.reshape(B, 1, H * d))
            gate, up = gate_up_proj(_rms_norm(x, ln2)).chunk(2, dim=-1)
            x = x + down_proj(F.silu(gate) * up)
        cache.length = slot + 1
        return self.lm_head(_rms_norm(x, self.norm))[:, 0].float()

    def _native_step(self, tokens, positions, regime, cache: KVCache, slot: int, bias) -> torch.Tensor:
        """The step of 1-8 rows with each decoder layer in one compiled call (`native.NativeLayer`), and
        the final norm with lm_head in another where lm_head is a plain weight. Few torch ops: after each
        pass over the weights the caches are cold, and a torch op then costs ~20-200 us, not ~10."""
        B = tokens.shape[0]
        if B == 1:  # Python ints: no gather ops for one row
            row = int(regime) * self.max_slots + int(positions)
            cos, sin = self.cos[row : row + 1], self.sin[row : row + 1]
            x = (self.embed[int(tokens)] if isinstance(self.embed, torch.Tensor) else self.embed(tokens)).reshape(1, -1).clone()
        else:
            row = regime * self.max_slots + positions
            cos, sin = self.cos.index_select(0, row), self.sin.index_select(0, row)  # (B, d)
            x = F.embedding(tokens, self.embed) if isinstance(self.embed, torch.Tensor) else self.embed(tokens)
            x = x.reshape(B, -1).clone(memory_format=torch.contiguous_format)  # updated in place by the layers
        start = 0 if self.window is None or slot <= self.window else slot - self.window
        if bias is not None:
            bias = bias[..., start : slot + 1].reshape(B, -1)  # (B, keys), rows apart by the bias's stride
        need = self.native[0].scratch_floats(slot + 1 - start, B)
        if self.scratch.numel() < need:
            self.scratch = torch.empty(self.native[0].scratch_floats(self.max_slots, B))
        for layer, k, v in zip(self.native, cache.k, cache.v):
            layer(x, cos, sin, k, v, slot, start, bias, self.scale, self.scratch)
        cache.length = slot + 1
        if self.native_head is not None:
            return native_norm_gemv(x, *self.native_head, scratch=self.scratch)
        return self.lm_head(_rms_norm(x.view(B, 1, -1), self.norm))[:, 0].float()


def _native_layers(model, heads: int, kv_heads: int, head_dim: int) -> list[NativeLayer] | None:
    """Every decoder layer bound to the compiled one-row layer (native.py), or None when one of them
    has a module the kernel cannot stand in for (a LoRA or quantized linear, hooks, another norm) or
    weights it cannot read as stored (see `native.layer_usable`), or the kernels are unavailable."""
    layers = []
    for layer in model.model.layers:
        attn, mlp, ln1, ln2 = layer.self_attn, layer.mlp, layer.input_layernorm, layer.post_attention_layernorm
        mats = [_plain_linear(m) for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)]
        if not (_plain_norm(ln1) and _plain_norm(ln2) and all(isinstance(w, torch.Tensor) for w in mats)
                and layer_usable(ln1.weight, ln2.weight, *mats)):
            return None
        layers.append((ln1, ln2, mats))
    if not layers or not native_available():
        return None
    return [NativeLayer(ln1.weight, ln1.eps, ln2.weight, ln2.eps, *mats, heads, kv_heads, head_dim) for ln1, ln2, mats in layers]


def _plain_norm(norm: nn.Module) -> bool:
    """A Phi3RMSNorm without hooks (the compiled kernels compute it themselves)."""
    return type(norm) is Phi3RMSNorm and not (norm._forward_hooks or norm._forward_pre_hooks)


def _native_cache(cache: KVCache, bias) -> bool:
    """Whether the compiled layer can write and read this cache (and bias) as stored."""
    return all(t.dtype == torch.float32 and t.stride(-1) == 1 for t in (cache.k[0], cache.v[0])) and (
        bias is None or (bias.dtype == torch.float32 and bias.stride(-1) == 1))
