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
  775-token cache): `kernels/attend.c` reads each cache head's keys then values once, front to back.
(See the README's performance section for the measured numbers.)

The kernels are optional, never required:
- they are compiled once per machine with the system C compiler (`$CC`, else `cc`/`gcc`) with
  `-O3 -march=native -fopenmp` into one library in `cache_dir()/kernels/` (keyed by the sources, the
  flags and the CPU), atomically, and loaded with ctypes;
- they are used only on Linux, only when their OpenMP calls resolve to the libgomp torch has already
  loaded (one runtime, one thread pool; a second OpenMP runtime spinning beside torch's would
  fight it for the cores), and only after all three agree with torch on a probe;
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

SOURCES = tuple(Path(__file__).with_name("kernels") / name for name in ("gemv.c", "attend.c"))
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
PREFETCH = 512  # floats ahead of the row being read (2 KiB), into L2: measured best of 256-4096 (kernels/gemv.c)

_STATE: dict = {}  # "gemv", "rows", "attend": the loaded functions, or "error": why there are none


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
    text = b"".join(src.read_bytes() for src in SOURCES) + " ".join(FLAGS).encode() + _cpu_key().encode()
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
    g = torch.Generator().manual_seed(0)
    for n, k in ((37, 300), (8, 64), (5, 7), (1, 33), (11, 16)):  # short blocks, tails of rows and of the 16-wide steps
        w, x = torch.randn(n, k, generator=g), torch.randn(1, k, generator=g)
        if not torch.allclose(_gemv(gemv, x, w), F.linear(x, w), rtol=1e-5, atol=1e-5):
            raise RuntimeError("the compiled GEMV disagrees with F.linear")
    for m, n, k in ((2, 37, 300), (8, 9, 64), (3, 5, 7), (11, 33, 40), (5, 38, 70)):  # odd blocks, tails, > 8 rows
        w, x = torch.randn(n, k, generator=g), torch.randn(m, k, generator=g)
        if not torch.allclose(_gemm_rows(rows, x, w), F.linear(x, w), rtol=1e-5, atol=1e-5):
            raise RuntimeError("the compiled few-row GEMM disagrees with F.linear")
    for b, h, kvh, s, d in ((2, 4, 2, 37, 16), (1, 3, 3, 5, 7)):  # GQA, odd sizes
        q, k, v = torch.randn(b, h, d, generator=g), torch.randn(b, kvh, s + 3, d, generator=g), torch.randn(b, kvh, s + 3, d, generator=g)
        bias = torch.zeros(b, 1, 1, s)
        bias[0, ..., 0] = torch.finfo(torch.float32).min
        k, v = k[:, :, 2 : s + 2], v[:, :, 1 : s + 1]  # strided views, as cache slices are
        if not torch.allclose(_attend(attend, q, k, v, bias, 0.3), attend_reference(q, k, v, bias, 0.3), rtol=1e-5, atol=1e-5):
            raise RuntimeError("the compiled attention disagrees with torch")
    return gemv, rows, attend


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
       torch.get_num_threads(), PREFETCH)
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


def native_available() -> bool:
    """Whether the compiled kernels are loaded (compiling them on the first call; see the module doc)."""
    if not _STATE:
        try:
            _STATE["gemv"], _STATE["rows"], _STATE["attend"] = _load()
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
