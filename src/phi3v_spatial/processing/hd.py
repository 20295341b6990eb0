"""HD-transform geometry: how an image of a given size is cut into 336x336 crops, and how many
image tokens that costs. Every part of the package that needs these numbers calls these functions.
"""
from __future__ import annotations

import math

CROP_SIZE = 336  # CLIP ViT-L/14-336 input side, in pixels
PATCHES_PER_SIDE = 24  # 336 / 14
MERGED_PER_SIDE = 12  # 2x2 patch merge: 24 / 2 tokens per crop side
TOKENS_PER_CROP = MERGED_PER_SIDE * MERGED_PER_SIDE  # 144


def hd_scale(width: int, height: int, num_crops: int) -> int:
    """Largest s with s * ceil(s / ratio) <= num_crops, in the landscape frame (ratio = w / h >= 1)."""
    if width < height:
        width, height = height, width
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    return scale - 1


def hd_resized_size(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """(width, height) the image is resized to before padding, in the original orientation.

    The height is computed in floating point and truncated, as the original does (112x100 -> 599
    rows, not 600): this is what its pixels are, so it is what we reproduce.
    """
    transposed = width < height
    if transposed:
        width, height = height, width
    ratio = width / height
    new_w = int(hd_scale(width, height, num_crops) * CROP_SIZE)
    new_h = int(new_w / ratio)
    return (new_h, new_w) if transposed else (new_w, new_h)


def hd_padded_size(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """(width, height) after white padding of the short side up to a multiple of 336."""
    rw, rh = hd_resized_size(width, height, num_crops)
    if width < height:  # padded along the width (the landscape frame's height)
        return int(math.ceil(rw / CROP_SIZE) * CROP_SIZE), rh
    return rw, int(math.ceil(rh / CROP_SIZE) * CROP_SIZE)


def num_image_tokens_for_grid(rows: int, cols: int) -> int:
    """Image tokens for a crop grid: sub-crops with a separator per row, glb_GN, global view with separators."""
    sub = (rows * MERGED_PER_SIDE) * (cols * MERGED_PER_SIDE + 1)
    glb = MERGED_PER_SIDE * (MERGED_PER_SIDE + 1)
    return sub + 1 + glb


def num_image_tokens_for_padded(height: int, width: int) -> int:
    """Image tokens of an image whose padded size (image_sizes entry) is [height, width]."""
    return num_image_tokens_for_grid(height // CROP_SIZE, width // CROP_SIZE)


def num_image_tokens(width: int, height: int, num_crops: int) -> int:
    """Image tokens an image of this original size costs at this num_crops."""
    pw, ph = hd_padded_size(width, height, num_crops)
    return num_image_tokens_for_padded(ph, pw)
