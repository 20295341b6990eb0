"""CPU tensors on transparent huge pages, for the memory that decode streams (weights, KV cache).

Decoding on a CPU reads every weight once per token, so its speed is the speed at which the cores
stream memory. Through 4 KiB pages that stream pays a TLB miss every 4 KiB; through 2 MiB pages it
does not. On the 2-core EPYC VM this project is measured on, a `sum` over a 1 GiB tensor reads ~52
GB/s through 4 KiB pages and ~66 GB/s through huge pages in the same minute, and the one-row GEMV of
decode 58 vs 62 GB/s (`benchmarks/bench_generate.py` prints both probes on each run).

Linux hands out huge pages for anonymous memory only where asked when
`/sys/kernel/mm/transparent_hugepage/enabled` is `madvise` (the common default), and torch's
allocator does not ask. `empty` does: fresh anonymous memory, its start on a 2 MiB boundary, its
whole 2 MiB blocks advised with `MADV_HUGEPAGE` before the first write faults them in (the tail
under 2 MiB keeps small pages, so no byte of RSS is added). Where the kernel has no THP, or
`PHI3V_HUGE_PAGES=0` is set, or the tensor is under 2 MiB, it is a plain `torch.empty`.
"""
from __future__ import annotations

import mmap
import os

import torch

HUGE_PAGE = 2 << 20  # bytes: x86-64 and arm64 (4 KiB base pages) transparent huge page size


def enabled() -> bool:
    """Whether `empty` asks for huge pages: Linux with MADV_HUGEPAGE, unless `PHI3V_HUGE_PAGES=0`."""
    if os.environ.get("PHI3V_HUGE_PAGES", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return hasattr(mmap, "MADV_HUGEPAGE")


def _advise(buf: mmap.mmap, offset: int, length: int) -> None:
    """Advise bytes offset..offset+length of `buf` for huge pages; in a kernel without THP, nothing."""
    try:
        buf.madvise(mmap.MADV_HUGEPAGE, offset, length)
    except OSError:
        pass


def mapping(nbytes: int, advise: bool = True) -> mmap.mmap:
    """Fresh anonymous private memory (no page faulted in yet), all of it advised for huge pages when
    `advise` and `enabled()` (else plain pages, still correct). A shared anonymous mapping would be
    shmem, which THP leaves alone unless configured for it."""
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if advise and enabled():
        _advise(buf, 0, nbytes)
    return buf


def empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor like `torch.empty(shape, dtype=dtype)`, whose memory is
    advised for transparent huge pages when it spans at least one 2 MiB block (see the module doc).
    It owns its memory (freed with the last tensor that views it) and behaves as any CPU tensor."""
    shape = tuple(int(s) for s in shape)
    numel = 1
    for s in shape:
        numel *= s
    nbytes = numel * dtype.itemsize
    if nbytes < HUGE_PAGE or not enabled():
        return torch.empty(shape, dtype=dtype)
    try:
        buf = mapping(nbytes + HUGE_PAGE, advise=False)
    except (OSError, ValueError):  # an address space without room for the mapping: torch's allocator
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(buf, dtype=torch.uint8)  # shares buf's memory and keeps buf alive
    offset = -raw.data_ptr() % HUGE_PAGE  # a multiple of the 4 KiB page: mmap starts on a page
    _advise(buf, offset, nbytes // HUGE_PAGE * HUGE_PAGE)  # whole 2 MiB blocks only: a huge tail page would add RSS
    return raw[offset : offset + nbytes].view(dtype).view(shape)


def zeros(shape, dtype: torch.dtype) -> torch.Tensor:
    """`empty(shape, dtype)` filled with zeros."""
    return empty(shape, dtype).zero_()


def on_huge_pages(t: torch.Tensor) -> bool:
    """Whether `t`'s memory lies in a mapping advised for huge pages (Linux; reads /proc/self/smaps),
    for tests and benchmarks. False where that cannot be read."""
    start = t.data_ptr()
    try:
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                head = line.split(None, 1)[0]
                if "-" in head and ":" not in head:
                    lo, hi = (int(a, 16) for a in head.split("-"))
                    inside = lo <= start < hi
                elif inside and line.startswith("VmFlags:"):
                    return " hg" in line
    except OSError:
        pass
    return False
