"""A hand-written one-row float32 GEMV (`kernels/gemv.c`) for the CPU decode step, compiled on first use.

At batch 1 a large model's decode step streams its weights once per token, so its speed is the rate
at which the matmuls read memory. On this project's machine (2-core Zen 4 VM) the one-row GEMVs that
torch reaches stream well below what a plain `sum` reads (oneDNN ~25-33 GB/s where a sum reads
45-58 GB/s in the VM's fast phases); `kernels/gemv.c` reads each weight row front to back as one
sequential stream per thread, and in the same moments reaches ~80-100% of the sum's rate (see the
README's performance section for the measured numbers).

The kernel is optional, never required:
- it is compiled once per machine with the system C compiler (`$CC`, else `cc`/`gcc`) with
  `-O3 -march=native -fopenmp` into `cache_dir()/kernels/` (keyed by the source, the flags and the
  CPU), atomically, and loaded with ctypes;
- it is used only on Linux, only when its OpenMP calls resolve to the libgomp torch has already
  loaded (one runtime, one thread pool; a second OpenMP runtime spinning beside torch's would
  fight it for the cores), and only after it agrees with `F.linear` on a probe;
- `PHI3V_NATIVE_GEMV=0` turns it off; without a compiler, or on any failure, the decode step keeps
  oneDNN (the failure is logged once at debug level).
Results agree with `F.linear` to float32 rounding (the same products summed in another order).
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

SOURCE = Path(__file__).with_name("kernels") / "gemv.c"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
PREFETCH = 256  # floats ahead of the row being read (1 KiB): measured best of 0/256/512/1024

_STATE: dict = {}  # "fn": the loaded function, or "error": why there is none


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
    """Where the compiled kernel for this source, these flags and this CPU lives."""
    key = hashlib.sha1(SOURCE.read_bytes() + " ".join(FLAGS).encode() + _cpu_key().encode()).hexdigest()[:16]
    return cache_dir() / "kernels" / f"gemv-{key}.so"


def _build(out: Path) -> None:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler ($CC, cc or gcc) on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=120)
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
    fn = lib.phi3v_gemv_f32
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int, ctypes.c_int64]
    fn.restype = None
    g = torch.Generator().manual_seed(0)
    for n, k in ((37, 300), (8, 64), (5, 7)):  # tails of rows and of the 64-wide blocks
        w, x = torch.randn(n, k, generator=g), torch.randn(1, k, generator=g)
        if not torch.allclose(_call(fn, x, w), F.linear(x, w), rtol=1e-5, atol=1e-5):
            raise RuntimeError("the compiled kernel disagrees with F.linear")
    return fn


def _call(fn, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    y = torch.empty(*x.shape[:-1], w.shape[0], dtype=torch.float32)
    fn(w.data_ptr(), x.data_ptr(), y.data_ptr(), w.shape[0], w.shape[1], w.stride(0), torch.get_num_threads(), PREFETCH)
    return y


def native_gemv_available() -> bool:
    """Whether the compiled kernel is loaded (compiling it on the first call; see the module doc)."""
    if not _STATE:
        try:
            _STATE["fn"] = _load()
        except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
            _STATE["error"] = str(e)
            log.debug("native GEMV unavailable, the decode step keeps oneDNN: %s", e)
    return "fn" in _STATE


def native_gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, w)` for one row of x (shape (..., K) with one row in all; float32, CPU) and a
    float32 CPU weight (N, K) with unit stride along K. Call only after `native_gemv_available()`."""
    return _call(_STATE["fn"], x, w)


def usable(w: torch.Tensor) -> bool:
    """Whether `native_gemv` can read this weight as it is stored."""
    return w.dtype == torch.float32 and w.device.type == "cpu" and w.dim() == 2 and w.stride(1) == 1
