"""Turning prompts and images into model inputs, and ids back into text.

hd.py: HD-transform geometry and the image-token count; image.py: loading and the HD transform;
text.py: tokenizer, chat template, streaming detokenizer; processor.py: both together, batched.
"""
from .image import Phi3VImageProcessor, load_image
from .processor import BatchFeature, Phi3VProcessor
from .text import IncrementalDetokenizer, Phi3VTokenizer

__all__ = [
    "BatchFeature",
    "IncrementalDetokenizer",
    "Phi3VImageProcessor",
    "Phi3VProcessor",
    "Phi3VTokenizer",
    "load_image",
]
