"""Shared test fixtures. Golden data is read only through `fixtures_dir`, which skips cleanly
when ../shared is absent (a fresh clone outside CI)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PHI3V_SHARED", REPO.parent / "shared"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    import torch

    skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run")
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures, or skip with the reason when it is not there."""
    path = SHARED / "fixtures"
    if not (path / "reference" / "manifest.json").is_file():
        pytest.skip(f"golden fixtures not found at {path} (they live in ../shared beside the checkout; CI has them)")
    return path


@pytest.fixture(scope="session")
def reference_dir(fixtures_dir) -> Path:
    return fixtures_dir / "reference"


@pytest.fixture(scope="session")
def meta_dir(fixtures_dir) -> Path:
    return fixtures_dir / "phi3v-spatial-meta"


@pytest.fixture(scope="session")
def tiny_checkpoint(reference_dir) -> Path:
    return reference_dir / "tiny_checkpoint"


@pytest.fixture(scope="session")
def manifest(reference_dir) -> dict:
    import json

    return json.loads((reference_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is as fast and far steadier on a shared machine (opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
