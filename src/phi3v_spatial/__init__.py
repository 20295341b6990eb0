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
    "Phi3VForCausalLM",
    "Phi3VProcessor",
    "AutoModelForCausalLM",
    "AutoProcessor",
]


def __getattr__(name):  # these import torch: only on first use, so `import phi3v_spatial` stays light
    if name == "load":
        from .api import load

        return load
    if name in ("Phi3VForCausalLM", "AutoModelForCausalLM"):  # drop-in names for the model card's snippet
        from .model import Phi3VForCausalLM

        return Phi3VForCausalLM
    if name in ("Phi3VProcessor", "AutoProcessor"):
        from .processing import Phi3VProcessor

        return Phi3VProcessor
    raise AttributeError(f"module 'phi3v_spatial' has no attribute {name!r}")
