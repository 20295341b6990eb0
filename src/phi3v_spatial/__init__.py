"""phi3v_spatial: native Phi-3-Vision / Phi3V-Spatial for robotics and spatial reasoning."""
from .errors import CheckpointError, ConfigError, DataError, GenerationError, ImageError, Phi3VError, PromptError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "GenerationError",
    "ImageError",
    "Phi3VError",
    "PromptError",
    "load",
]


def __getattr__(name):  # `load` imports torch: only on first use, so `import phi3v_spatial` stays light
    if name == "load":
        from .api import load

        return load
    raise AttributeError(f"module 'phi3v_spatial' has no attribute {name!r}")
