"""The package's exception types. Every error a user can cause is one of these."""


class Phi3VError(Exception):
    """Base class of every error raised by phi3v_spatial on bad input."""


class ConfigError(Phi3VError, ValueError):
    """A config.json value (or a runtime option) that this package does not support."""


class CheckpointError(Phi3VError):
    """A checkpoint folder that cannot be loaded: missing files, missing/unexpected/misshaped tensors."""


class ImageError(Phi3VError, ValueError):
    """An image that cannot be decoded or used (corrupt, empty, too large, unsupported type)."""


class PromptError(Phi3VError, ValueError):
    """A prompt that does not fit its images or the model (tag/image mismatch, too long, bad messages)."""


class GenerationError(Phi3VError, ValueError):
    """Bad generation or sampling arguments."""


class DataError(Phi3VError, ValueError):
    """A malformed dataset sample, scene file or data argument."""
