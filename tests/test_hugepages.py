"""Weights and KV cache on transparent huge pages (hugepages.py): same values, less TLB traffic."""
import sys

import pytest
import torch

from phi3v_spatial import hugepages
from phi3v_spatial.model.cache import KVCache
from phi3v_spatial.model.phi3v import Phi3VForCausalLM

THP = sys.platform == "linux" and hugepages.enabled()
needs_thp = pytest.mark.skipif(not THP, reason="transparent huge pages are a Linux feature (MADV_HUGEPAGE)")


@needs_thp
@pytest.mark.parametrize("shape", [(1024, 1024), (513, 1027), (3, 700_001)])
def test_empty_is_an_aligned_tensor_on_huge_pages(shape):
    t = hugepages.empty(shape, torch.float32)
    assert t.shape == shape and t.dtype == torch.float32 and t.is_contiguous()
    assert t.data_ptr() % hugepages.HUGE_PAGE == 0 and hugepages.on_huge_pages(t)
    values = torch.randn(shape)
    t.copy_(values)
    assert torch.equal(t, values) and torch.equal(t.clone(), values)
    assert hugepages.zeros(shape, torch.bfloat16).abs().sum() == 0


def test_small_or_disabled_is_plain_memory(monkeypatch):
    def plain(t):  # torch's own allocation: a storage of exactly its bytes (a huge-page one has 2 MiB more)
        return t.untyped_storage().nbytes() == t.numel() * t.element_size() and t.storage_offset() == 0

    small = hugepages.empty((100, 100), torch.float32)
    assert small.shape == (100, 100) and plain(small)
    monkeypatch.setenv("PHI3V_HUGE_PAGES", "0")
    assert not hugepages.enabled()
    big = hugepages.empty((1024, 1024), torch.float32)
    assert big.shape == (1024, 1024) and plain(big)
    monkeypatch.delenv("PHI3V_HUGE_PAGES")
    assert not THP or not plain(hugepages.empty((1024, 1024), torch.float32))


@needs_thp
def test_memory_is_returned_when_the_tensor_goes():
    def rss_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    before = rss_mib()
    t = hugepages.zeros((64, 2**20), torch.float32)  # 256 MiB, all faulted in
    assert rss_mib() - before > 200
    del t
    assert rss_mib() - before < 50


@needs_thp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loaded_weights_and_kv_cache_are_on_huge_pages(tiny_checkpoint, dtype):
    model = Phi3VForCausalLM.from_pretrained(tiny_checkpoint, dtype=dtype)  # a cast for bfloat16
    big = {n: p for n, p in model.named_parameters() if p.numel() * p.element_size() >= hugepages.HUGE_PAGE}
    assert big and all(hugepages.on_huge_pages(p) for p in big.values()), sorted(big)
    cache = KVCache(2, 2, 4, 4096, 64, torch.float32, "cpu")
    assert all(hugepages.on_huge_pages(t) and not t.any() for t in cache.k + cache.v)
