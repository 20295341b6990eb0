"""Hand-written float32 kernels for the CPU decode step (`kernels/*.c`), compiled on first use.

At batch 1 a large model's decode step streams its weights once per token, and its attention streams
the KV cache, so its speed is the rate at which those reads go. On this project's machine (2-core
Zen 4 VM) the kernels torch reaches read both well below what a plain `sum` reads memory at:
- the one-row GEMV (oneDNN ~25-33 GB/s where a sum reads 45-58 GB/s in the VM's fast phases):
  `kernels/gemv.c` cuts the weight rows into ~8 MiB chunks that the threads take in turn, each read
  front to back as four sequential streams, and in the same moments reads close to a sum (`native_gemv`); for the
  2-8 rows of a small batch's step its sibling reads each weight row once for all rows
  (`native_gemm_rows`, ~1.4x oneDNN's small-M product at 2 rows, ~1.25x its packed GEMM at 8);
- one query's attention as two batched matmuls over the transposed key view (~13 GB/s over a
  775-token cache): `kernels/attend.c` reads each cache head's keys then values once, front to back
  (the per-head work in `kernels/attend.h`; for one query per KV head a vector path);
- between those, a layer's ~14 small torch ops (norms, RoPE, cache writes, SiLU, residuals; ~8-10 us
  each) during which the memory is not streamed: `kernels/layer.c` runs a whole decoder layer of a
  one-row step in one call (`NativeLayer`), its matmuls and attention through the same code
  (`kernels/gemv.h`, `kernels/attend.h`) and the small work between barriers of one thread team.
(See the README's performance section for the measured numbers.)

The kernels are optional, never required:
- they are compiled once per machine with the system C compiler (`$CC`, else `cc`/`gcc`) with
  `-O3 -march=native -fopenmp` into one library in `cache_dir()/kernels/` (keyed by the sources, the
  flags and the CPU), atomically, and loaded with ctypes;
- they are used only on Linux, only when their OpenMP calls resolve to the libgomp torch has already
  loaded (one runtime, one thread pool; a second OpenMP runtime spinning beside torch's would
  fight it for the cores), and only after all four agree with torch on a probe;
- `PHI3V_NATIVE_GEMV=0` turns them off; without a compiler, or on any failure, the decode step keeps
  torch's kernels (the failure is logged once at debug level).
Results agree with torch to float32 rounding (the same products summed in another order).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from ..paths import cache_dir

log = logging.getLogger("phi3v_spatial.model")

KERNELS = Path(__file__).with_name("kernels")
SOURCES = tuple(KERNELS / name for name in ("gemv.c", "attend.c", "layer.c"))  # compiled into one library
HEADERS = tuple(KERNELS / name for name in ("gemv.h", "attend.h"))  # included by them
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
# floats ahead of each weight row being read that the kernels prefetch into L2 (kernels/gemv.h). The
# one-row GEMV (four rows side by side) reads phi3-2l's weights ~7% faster 256 ahead than 512 (192-384
# within 3%; interleaved in one process, `sum` phases 36-56 GB/s); the few-row kernel (2-3 rows side by
# side, more arithmetic per load) is 1.1-1.3x faster 512 ahead than 256
PREFETCH = 256
PREFETCH_ROWS = 512

_STATE: dict = {}  # "gemv", "rows", "attend", "layer", "head": the loaded functions, or "error": why there are none


def _cpu_key() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("model name", "flags", "Features", "CPU part"))]
    except OSError:
        lines = []
    return "".join(dict.fromkeys(lines)) + platform.machine()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def library_path() -> Path:
    """Where the compiled kernels for these sources, these flags and this CPU live."""
    text = b"".join(src.read_bytes() for src in SOURCES + HEADERS) + " ".join(FLAGS).encode() + _cpu_key().encode()
    return cache_dir() / "kernels" / f"decode-{hashlib.sha1(text).hexdigest()[:16]}.so"


def _build(out: Path) -> None:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler ($CC, cc or gcc) on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *FLAGS, *map(str, SOURCES), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[:500]}")
        os.replace(tmp, out)  # atomic: a concurrent process sees no file or a whole one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _openmp_runtimes() -> set[str]:
    """File names of the OpenMP runtimes mapped into this process (Linux)."""
    with open("/proc/self/maps") as f:
        return {Path(l.split()[-1]).name for l in f if any(s in l for s in ("libgomp", "libomp", "libiomp"))}


def _load():
    if os.environ.get("PHI3V_NATIVE_GEMV", "").strip().lower() in ("0", "false", "no", "off"):
        raise RuntimeError("turned off by PHI3V_NATIVE_GEMV")
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"only built on Linux (this is {sys.platform})")
    before = _openmp_runtimes()
    if not any(name.startswith("libgomp") for name in before):
        raise RuntimeError(f"torch's OpenMP runtime is not libgomp ({sorted(before) or 'none'})")
    path = library_path()
    if not path.is_file():
        _build(path)
    lib = ctypes.CDLL(str(path))
    after = _openmp_runtimes()
    if after != before:
        raise RuntimeError(f"the kernel brought a second OpenMP runtime ({sorted(after - before)})")
    gemv = lib.phi3v_gemv_f32
    gemv.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int, ctypes.c_int64]
    gemv.restype = None
    rows = lib.phi3v_gemm_rows_f32
    rows.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 6 + [ctypes.c_int, ctypes.c_int64]
    rows.restype = None
    attend = lib.phi3v_attend_one_f32
    attend.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 12 + [ctypes.c_float, ctypes.c_int]
    attend.restype = None
    layer = lib.phi3v_layer_rows_f32
    layer.argtypes = ([ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p, ctypes.c_float]
                      + [ctypes.c_void_p, ctypes.c_int64] * 4 + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 8
                      + [ctypes.c_void_p] + [ctypes.c_int64] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
                      + [ctypes.c_int64] * 2)
    layer.restype = None
    head = lib.phi3v_norm_rows_f32
    head.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p, ctypes.c_int64,
                     ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int] + [ctypes.c_int64] * 2
    head.restype = None
    g = torch.Generator().manual_seed(0)
    for n, k in ((37, 300), (8, 64), (5, 7), (1, 33), (11, 16)):  # short blocks, tails of rows and of the 16-wide steps
        w, x = torch.randn(n, k, generator=g), torch.randn(1, k, generator=g)
        if not torch.allclose(_gemv(gemv, x, w), F.linear(x, w), rtol=1e-5, atol=1e-5):
            raise RuntimeError("the compiled GEMV disagrees with F.linear")
    for m, n, k in ((2, 37, 300), (8, 9, 64), (3, 5, 7), (11, 33, 40), (5, 38, 70)):  # odd blocks, tails, > 8 rows
        w, x = torch.randn(n, k, generator=g), torch.randn(m, k, generator=g)
        if not torch.allclose(_gemm_rows(rows, x, w), F.linear(x, w), rtol=1e-5, atol=1e-5):
            raise RuntimeError("the compiled few-row GEMM disagrees with F.linear")
    for b, h, kvh, s, d in ((2, 4, 2, 37, 16), (1, 3, 3, 5, 7), (2, 5, 5, 37, 32), (1, 2, 2, 16, 96)):  # GQA, odd sizes,
        # the vector path (one query per KV head, d a multiple of 16) with a tail of keys and without
        q, k, v = torch.randn(b, h, d, generator=g), torch.randn(b, kvh, s + 3, d, generator=g), torch.randn(b, kvh, s + 3, d, generator=g)
        bias = torch.zeros(b, 1, 1, s)
        bias[0, ..., 0] = torch.finfo(torch.float32).min
        k, v = k[:, :, 2 : s + 2], v[:, :, 1 : s + 1]  # strided views, as cache slices are
        if not torch.allclose(_attend(attend, q, k, v, bias, 0.3), attend_reference(q, k, v, bias, 0.3), rtol=1e-5, atol=1e-5):
            raise RuntimeError("the compiled attention disagrees with torch")
    for h, kvh, d, s, window, m in ((4, 2, 16, 9, None, 1), (3, 3, 6, 5, 2, 1), (5, 5, 16, 21, 17, 1), (4, 2, 16, 9, None, 3),
                                    (5, 5, 16, 21, 17, 8)):  # GQA, odd sizes, windows, one row and several
        if not _layer_agrees(layer, g, h, kvh, d, s, window, m):
            raise RuntimeError("the compiled decoder layer disagrees with torch")
    for m, n, k in ((1, 37, 300), (1, 5, 7), (3, 37, 300)):
        w, x, nw = torch.randn(n, k, generator=g), torch.randn(m, k, generator=g), torch.rand(k, generator=g) + 0.5
        if not torch.allclose(_norm_gemv(head, x, nw, 1e-5, w), F.linear(F.rms_norm(x, (k,), nw, 1e-5), w), rtol=1e-5, atol=1e-5):
            raise RuntimeError("the compiled norm + GEMV disagrees with torch")
    return gemv, rows, attend, layer, head


def _gemv(fn, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    y = torch.empty(*x.shape[:-1], w.shape[0], dtype=torch.float32)
    fn(w.data_ptr(), x.data_ptr(), y.data_ptr(), w.shape[0], w.shape[1], w.stride(0), torch.get_num_threads(), PREFETCH)
    return y


def _gemm_rows(fn, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    M = x.numel() // x.shape[-1]
    y = torch.empty(*x.shape[:-1], w.shape[0], dtype=torch.float32)
    fn(w.data_ptr(), x.data_ptr(), y.data_ptr(), w.shape[0], w.shape[1], w.stride(0), M, x.shape[-1], w.shape[0],
       torch.get_num_threads(), PREFETCH_ROWS)
    return y


def attend_reference(q, k, v, bias, scale: float) -> torch.Tensor:
    """What `native_attend_one` computes, in torch (also the decode step's two-matmul path): q (B, H, d),
    k/v (B, KVH, S, d), bias None or (B, 1, 1, S) additive -> (B, H, d). The query heads of a KV head
    are the rows of one matmul (GQA without repeating keys); softmax in float32, as the eager path."""
    B, H, d = q.shape
    KVH = k.shape[1]
    scores = torch.matmul(q.view(B, KVH, H // KVH, d), k.transpose(2, 3)) * scale  # (B, KVH, H/KVH, S)
    if bias is not None:
        scores = scores + bias  # (B, 1, 1, S) broadcasts over heads
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(probs, v).view(B, H, d)


def _attend(fn, q, k, v, bias, scale: float) -> torch.Tensor:
    B, H, d = q.shape
    KVH, S = k.shape[1], k.shape[2]
    q = q.contiguous()
    out = torch.empty(B, H, d, dtype=torch.float32)
    scores = torch.empty(B * H * S, dtype=torch.float32)
    if bias is not None:
        bias = bias.reshape(B, S)
        if bias.stride(-1) != 1:
            bias = bias.contiguous()
    fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), 0 if bias is None else bias.data_ptr(), out.data_ptr(), scores.data_ptr(),
       B, H, KVH, S, d, k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
       0 if bias is None else bias.stride(0), scale, torch.get_num_threads())
    return out


def _norm_gemv(fn, x: torch.Tensor, nw: torch.Tensor, eps: float, w: torch.Tensor, h=None) -> torch.Tensor:
    M, K = x.numel() // x.shape[-1], x.shape[-1]
    y = torch.empty(*x.shape[:-1], w.shape[0], dtype=torch.float32)
    h = torch.empty(M * K, dtype=torch.float32) if h is None else h
    fn(x.data_ptr(), M, nw.data_ptr(), eps, w.data_ptr(), w.stride(0), y.data_ptr(), w.shape[0], K, h.data_ptr(),
       torch.get_num_threads(), PREFETCH, PREFETCH_ROWS)
    return y


def native_norm_gemv(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, w: torch.Tensor, scratch=None) -> torch.Tensor:
    """`F.linear(F.rms_norm(x, ..., norm_weight, eps), w)` for the rows of x (..., K), contiguous, in one
    compiled call (the decode step's final norm and lm_head; tensors as `layer_usable` reads them) ->
    (..., N). `scratch`: at least x.numel() float32 to use for the normed rows (else one is allocated).
    Call only after `native_available()`."""
    return _norm_gemv(_STATE["head"], x, norm_weight, eps, w, scratch)


def native_available() -> bool:
    """Whether the compiled kernels are loaded (compiling them on the first call; see the module doc)."""
    if not _STATE:
        try:
            _STATE["gemv"], _STATE["rows"], _STATE["attend"], _STATE["layer"], _STATE["head"] = _load()
        except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
            _STATE["error"] = str(e)
            log.debug("compiled decode kernels unavailable, the decode step keeps torch's: %s", e)
    return "gemv" in _STATE


def native_gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, w)` for one row of x (shape (..., K) with one row in all; float32, CPU) and a
    float32 CPU weight (N, K) with unit stride along K. Call only after `native_available()`."""
    return _gemv(_STATE["gemv"], x, w)


def native_gemm_rows(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, w)` for a few rows of x (shape (..., K); float32, CPU), each weight row read once for
    up to 8 rows of x (more rows: a pass over the weights per 8). Same weights as `native_gemv`.
    Call only after `native_available()`."""
    return _gemm_rows(_STATE["rows"], x, w)


def usable(w: torch.Tensor) -> bool:
    """Whether `native_gemv` and `native_gemm_rows` can read this weight as it is stored."""
    return w.dtype == torch.float32 and w.device.type == "cpu" and w.dim() == 2 and w.stride(1) == 1


def native_attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """`attend_reference(q, k, v, bias, scale)` through `kernels/attend.c`: q (B, H, d), k/v (B, KVH, S, d)
    float32 CPU views with unit stride along d (cache slices as they are), bias None or (B, 1, 1, S).
    Call only after `native_available()`."""
    return _attend(_STATE["attend"], q, k, v, bias, scale)


def attend_usable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `native_attend_one` can read these tensors as they are stored."""
    return all(t.dtype == torch.float32 and t.device.type == "cpu" and t.stride(-1) == 1 for t in (q, k, v)) and (
        bias is None or (bias.dtype == torch.float32 and bias.dim() == 4 and bias.shape[:3] == (q.shape[0], 1, 1)))


def layer_usable(*tensors: torch.Tensor) -> bool:
    """Whether `NativeLayer` can read a layer's norm weights and matrices as they are stored."""
    return all(t.dtype == torch.float32 and t.device.type == "cpu" and t.stride(-1) == 1
               and (t.dim() == 2 or t.is_contiguous()) for t in tensors)


class NativeLayer:
    """One decoder layer of the decode step for 1-8 rows through `kernels/layer.c`: the four weight
    matmuls, the attention and all the small work between them in one call (see that file). The layer's
    weights are bound once (plain float32 CPU tensors, `layer_usable`); create only after
    `native_available()`.

    call(x, cos, sin, k, v, slot, start, bias, scale, scratch): x (M, D) float32 contiguous, updated in
    place; cos/sin (M, d) each row's RoPE row (sin sign-folded, as decode.py builds it), contiguous; k/v
    this layer's cache, (M, KVH, slots, d) with unit stride along d; the new keys/values go to `slot`
    and every row attends slots start..slot; bias None or (M, slot + 1 - start) additive biases of
    those slots (unit stride along the slots); scratch of at least `scratch_floats(slot + 1 - start, M)`
    floats.
    """

    def __init__(self, ln1, eps1: float, ln2, eps2: float, qkv, o, gate_up, down, heads: int, kv_heads: int, head_dim: int,
                 _fn=None):
        self._fn = _STATE["layer"] if _fn is None else _fn
        self._keep = (ln1, ln2, qkv, o, gate_up, down)  # the pointers below stay valid while bound
        self._weights = (ln1.data_ptr(), eps1, ln2.data_ptr(), eps2, qkv.data_ptr(), qkv.stride(0), o.data_ptr(), o.stride(0),
                         gate_up.data_ptr(), gate_up.stride(0), down.data_ptr(), down.stride(0))
        self._dims = (qkv.shape[1], heads, kv_heads, head_dim, down.shape[1])  # D, H, KVH, d, I

    def scratch_floats(self, keys: int, rows: int = 1) -> int:
        D, H, KVH, d, I = self._dims
        return rows * (2 * D + (H + 2 * KVH) * d + 2 * H * d + 3 * I + H * keys)

    def __call__(self, x, cos, sin, k, v, slot: int, start: int, bias, scale: float, scratch) -> None:
        M = x.numel() // x.shape[-1]
        self._fn(x.data_ptr(), M, *self._weights, cos.data_ptr(), sin.data_ptr(), k.data_ptr(), v.data_ptr(),
                 k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), slot, start,
                 0 if bias is None else bias.data_ptr(), 0 if bias is None or M == 1 else bias.stride(0),
                 *self._dims, scale, scratch.data_ptr(), torch.get_num_threads(), PREFETCH, PREFETCH_ROWS)


def layer_reference(x, ln1, eps1, ln2, eps2, qkv, o, gate_up, down, cos, sin, k, v, slot, start, bias, heads, kv_heads, scale):
    """What `NativeLayer` computes, in torch ops (the decode step's math, decode.py): x (M, D), cos/sin
    (M, d), k/v (M, KVH, slots, d), bias None or (M, slot + 1 - start) -> the new x (M, D)."""
    (M, D), d = x.shape, cos.shape[-1]
    t = F.linear(F.rms_norm(x, (D,), ln1, eps1), qkv).view(M, heads + 2 * kv_heads, d)
    qk = torch.addcmul(t[:, : heads + kv_heads] * cos[:, None], t[:, : heads + kv_heads].roll(d // 2, -1), sin[:, None])
    k[:, :, slot], v[:, :, slot] = qk[:, heads:], t[:, heads + kv_heads :]
    out = attend_reference(qk[:, :heads], k[:, :, start : slot + 1], v[:, :, start : slot + 1],
                           None if bias is None else bias.view(M, 1, 1, -1), scale)
    x = x + F.linear(out.reshape(M, heads * d), o)
    gate, up = F.linear(F.rms_norm(x, (D,), ln2, eps2), gate_up).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, down)


def _layer_agrees(fn, g, heads: int, kv_heads: int, d: int, slots: int, window: int | None, rows: int) -> bool:
    D, I = 40, 36
    ln1, ln2 = torch.rand(D, generator=g) + 0.5, torch.rand(D, generator=g) + 0.5
    qkv = torch.randn((heads + 2 * kv_heads) * d, D, generator=g) / D**0.5
    o, gate_up, down = (torch.randn(D, heads * d, generator=g) / (heads * d) ** 0.5, torch.randn(2 * I, D, generator=g) / D**0.5,
                        torch.randn(D, I, generator=g) / I**0.5)
    cos, sin = torch.randn(rows, d, generator=g), torch.randn(rows, d, generator=g)
    k, v = torch.randn(rows, kv_heads, slots + 2, d, generator=g), torch.randn(rows, kv_heads, slots + 2, d, generator=g)
    x = torch.randn(rows, D, generator=g)
    slot = slots - 1
    start = 0 if window is None else slot - window
    bias = torch.zeros(rows, slot + 1 - start + 3)[:, 1 : slot + 2 - start]  # rows apart by more than their length
    bias[0, 0] = torch.finfo(torch.float32).min
    ref_k, ref_v = k.clone(), v.clone()
    want = layer_reference(x, ln1, 1e-5, ln2, 1e-5, qkv, o, gate_up, down, cos, sin, ref_k, ref_v, slot, start, bias,
                           heads, kv_heads, 0.3)
    layer = NativeLayer(ln1, 1e-5, ln2, 1e-5, qkv, o, gate_up, down, heads, kv_heads, d, _fn=fn)
    got = x.clone()
    layer(got, cos, sin, k, v, slot, start, bias, 0.3, torch.empty(layer.scratch_floats(slot + 1 - start, rows)))
    return all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in ((got, want), (k, ref_k), (v, ref_v)))
