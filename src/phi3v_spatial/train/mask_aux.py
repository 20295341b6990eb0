"""A dense auxiliary loss on the image tokens, from the data engine's instance masks.

Every merged image token (a 28x28-pixel cell of a crop, or of the global view) is classified as the
colour and the kind of the object covering it (0 = no object), through two linear heads on the
projected image features that exist only during training. It teaches a vision tower trained from
scratch to see the objects at all: through the language loss alone the colour of an object is
hardly readable from the features (a linear probe on the embedded model's pooled image tokens named
the colour of single-object crops 23% of the time; after 700 steps with this loss, 64%).

Labels follow the processor's HD transform exactly: the mask is resized (nearest) to the HD size,
padded like the image (floor half on top, or left for a portrait image), cut into the 12h x 12w
sub-crop cells and, for the global view, into 12 x 12 cells of the padded image; separator tokens
are ignored. A cell takes the object with the most pixels in it when that is at least
`MIN_CELL_FRACTION` of the cell. Only images inside a data-engine folder (`<root>/images/<id>.png`
with `<root>/scenes/<id>.json` and its mask) have labels; any other image is left out of the loss.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..processing.hd import CROP_SIZE, MERGED_PER_SIDE, hd_padded_size, hd_resized_size

IGNORE = -100
MIN_CELL_FRACTION = 60 / 784  # 60 of a 28x28 cell's pixels


def _vocab():
    from ..spatial.catalog import COLOUR_NAMES, KIND_BY_SHAPE

    return tuple(COLOUR_NAMES), tuple(sorted(KIND_BY_SHAPE))


def _cell_labels(canvas: np.ndarray, rows: int, cols: int, table: dict[int, tuple[int, int]]) -> np.ndarray:
    """(rows*cols, 2) labels of a canvas cut into rows x cols equal cells."""
    H, W = canvas.shape
    out = np.zeros((rows * cols, 2), dtype=np.int64)
    ys = np.linspace(0, H, rows + 1).round().astype(int)
    xs = np.linspace(0, W, cols + 1).round().astype(int)
    for r in range(rows):
        for c in range(cols):
            cell = canvas[ys[r]:ys[r + 1], xs[c]:xs[c + 1]].ravel()
            ids, counts = np.unique(cell[cell > 0], return_counts=True)
            if len(ids) and counts.max() >= MIN_CELL_FRACTION * cell.size:
                out[r * cols + c] = table.get(int(ids[counts.argmax()]), (0, 0))
    return out


def token_labels(mask: np.ndarray, table: dict[int, tuple[int, int]], num_crops: int,
                 order: str = "sub_glb") -> torch.Tensor:
    """(num_image_tokens, 2) colour/kind labels of one image's tokens, given its instance mask
    (H, W) and `table`: mask id -> (colour label, kind label). Separators are IGNORE."""
    from PIL import Image

    h, w = mask.shape
    rw, rh = hd_resized_size(w, h, num_crops)
    pw, ph = hd_padded_size(w, h, num_crops)
    small = np.asarray(Image.fromarray(mask.astype(np.int32)).resize((rw, rh), Image.NEAREST))
    canvas = np.zeros((ph, pw), dtype=np.int64)
    top, left = (ph - rh) // 2, (pw - rw) // 2
    canvas[top:top + rh, left:left + rw] = small
    R, C = ph // CROP_SIZE * MERGED_PER_SIDE, pw // CROP_SIZE * MERGED_PER_SIDE
    sep = np.full((1, 2), IGNORE, dtype=np.int64)

    def with_seps(lab: np.ndarray, rows: int, cols: int) -> np.ndarray:
        return np.concatenate([np.concatenate([lab[r * cols:(r + 1) * cols], sep]) for r in range(rows)])

    sub = with_seps(_cell_labels(canvas, R, C, table), R, C)
    glb = with_seps(_cell_labels(canvas, MERGED_PER_SIDE, MERGED_PER_SIDE, table), MERGED_PER_SIDE, MERGED_PER_SIDE)
    parts = (sub, sep, glb) if order == "sub_glb" else (glb, sep, sub)
    return torch.from_numpy(np.concatenate(parts))


class EngineMaskLabels:
    """image path -> (num_image_tokens, 2) labels, or None for an image outside a data-engine folder."""

    def __init__(self, num_crops: int, order: str = "sub_glb"):
        self.num_crops, self.order = num_crops, order
        self.colours, self.kinds = _vocab()
        self._cached = lru_cache(maxsize=4096)(self._labels)

    def __call__(self, image) -> torch.Tensor | None:
        if not isinstance(image, (str, Path)):
            return None
        return self._cached(str(image))

    def _labels(self, image: str) -> torch.Tensor | None:
        from ..spatial.dataset import read_mask
        from ..spatial.scene import load_scene

        p = Path(image)
        scene_path = p.parent.parent / "scenes" / f"{p.stem}.json"
        if p.parent.name != "images" or not scene_path.is_file():
            return None
        scene = load_scene(scene_path)
        mask_rel = scene.files.get("mask")
        if not mask_rel or not (p.parent.parent / mask_rel).is_file():
            return None
        table = {o.mask_id: (self.colours.index(o.colour) + 1, self.kinds.index(o.shape) + 1)
                 for o in scene.objects if o.role == "object" and o.colour in self.colours and o.shape in self.kinds}
        return token_labels(read_mask(p.parent.parent / mask_rel), table, self.num_crops, self.order)


class MaskAuxHeads(nn.Module):
    """The two training-only linear heads and their loss (mean cross-entropy over labelled tokens)."""

    def __init__(self, hidden: int):
        super().__init__()
        colours, kinds = _vocab()
        self.colour = nn.Linear(hidden, len(colours) + 1)
        self.kind = nn.Linear(hidden, len(kinds) + 1)

    def forward(self, features: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """features: per image (tokens, hidden); labels: (sum of tokens, 2) with IGNORE rows for
        separators and unlabelled images."""
        return paired_heads_loss(self.colour, self.kind, features, labels)


def paired_heads_loss(first: nn.Module, second: nn.Module, features: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of two per-token classifiers (labels[:, 0] for `first`, [:, 1] for `second`),
    each a mean over the labelled tokens (IGNORE rows left out), summed."""
    x = torch.cat(features)
    if x.shape[0] != labels.shape[0]:
        raise ValueError(f"{x.shape[0]} image tokens but {labels.shape[0]} labels")
    keep = labels[:, 0] != IGNORE
    if not bool(keep.any()):  # zero, but through the heads, so DDP sees them used
        return (first(x[:1]).sum() + second(x[:1]).sum()) * 0.0
    x, labels = x[keep], labels[keep]
    return F.cross_entropy(first(x).float(), labels[:, 0]) + F.cross_entropy(second(x).float(), labels[:, 1])
