"""The model shipped inside the package: `default_model_path()` is the default `--model` of every
command, so a fresh install answers spatial questions offline."""
from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError

ASSETS = Path(__file__).resolve().parent / "assets"
EMBEDDED_MODEL = "tiny-spatial"


def default_model_path() -> Path:
    """The embedded tiny-spatial model folder (HF layout: config, bf16 safetensors, tokenizer)."""
    path = ASSETS / EMBEDDED_MODEL
    if not (path / "config.json").is_file():
        raise CheckpointError(f"the embedded model is missing from {path}; reinstall phi3v-spatial or pass --model")
    return path


def tokenizer_source() -> Path:
    """A folder with the real Phi-3-V tokenizer and preprocessor files (the embedded model's)."""
    path = ASSETS / EMBEDDED_MODEL
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"the tokenizer files are missing from {path}; reinstall phi3v-spatial")
    return path
