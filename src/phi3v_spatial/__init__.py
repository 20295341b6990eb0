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
]
