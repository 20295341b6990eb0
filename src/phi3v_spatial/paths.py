"""Where the package keeps what it makes once and reuses (evaluation suites, compiled kernels)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$PHI3V_SPATIAL_CACHE`, else `$XDG_CACHE_HOME/phi3v_spatial`, else `~/.cache/phi3v_spatial`."""
    if os.environ.get("PHI3V_SPATIAL_CACHE"):
        return Path(os.environ["PHI3V_SPATIAL_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "phi3v_spatial"
