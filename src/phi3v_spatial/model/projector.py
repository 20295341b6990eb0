"""The image embedding (`model.vision_embed_tokens`): CLIP features of every crop, 2x2 patch merge,
the HD layout with the learned separators `sub_GN` / `glb_GN`, and the projector to the decoder width.

Token layout of one image with an h x w crop grid (sub_glb order; glb_sub swaps the two parts):
  sub-crops as one (12h) x (12w) grid, `sub_GN` after every row   -> 12h * (12w + 1) tokens
  `glb_GN`                                                         -> 1 token
  global view, 12 rows of 12, `sub_GN` after every row            -> 12 * 13 tokens
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import Phi3VConfig
from ..errors import PromptError
from ..processing.hd import CROP_SIZE, num_image_tokens_for_padded
from .vision import CLIPVisionModel


def merge_2x2(feats: torch.Tensor, side: int) -> torch.Tensor:
    """(N, side*side, C) patch features -> (N, side/2, side/2, 4C); the 4C channels are the
    top-left, top-right, bottom-left, bottom-right patches of each 2x2 block."""
    N, _, C = feats.shape
    x = feats.reshape(N, side // 2, 2, side // 2, 2, C)  # (N, row, dy, col, dx, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (N, row, col, dy, dx, C)
    return x.reshape(N, side // 2, side // 2, 4 * C)


def with_row_separator(grid: torch.Tensor, sep: torch.Tensor) -> torch.Tensor:
    """(R, W, D) -> (R * (W + 1), D): `sep` (D,) appended after every row, flattened row-major."""
    R, _, D = grid.shape
    return torch.cat([grid, sep.reshape(1, 1, D).expand(R, 1, D)], dim=1).reshape(-1, D)


class Phi3ImageEmbedding(nn.Module):
    def __init__(self, config: Phi3VConfig):
        super().__init__()
        self.config = config
        c4 = config.image_dim_out * 4
        self.img_processor = CLIPVisionModel(config.vision)
        self.glb_GN = nn.Parameter(torch.empty(1, 1, c4))
        self.sub_GN = nn.Parameter(torch.empty(1, 1, 1, c4))
        if config.projection_cls == "mlp":
            self.img_projection = nn.Sequential(
                nn.Linear(c4, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)
            )
        else:
            self.img_projection = nn.Linear(c4, config.hidden_size)

    def crop_features(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 3, 336, 336) -> (N, 576, C): the configured CLIP hidden state, CLS dropped."""
        tower = self.img_processor.vision_model
        return tower.hidden_state(crops, self.config.vision_layer_idx)[:, 1:]

    def forward(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> list[torch.Tensor]:
        """pixel_values (N, max_crops+1, 3, 336, 336), image_sizes (N, 2) padded [H, W]
        -> per image, its (num_image_tokens, hidden) projected embeddings."""
        sizes = [(int(h) // CROP_SIZE, int(w) // CROP_SIZE) for h, w in image_sizes.tolist()]
        for i, (h, w) in enumerate(sizes):
            if h < 1 or w < 1 or h * w + 1 > pixel_values.shape[1]:
                raise PromptError(f"image {i}: image_sizes {image_sizes[i].tolist()} do not fit pixel_values with {pixel_values.shape[1]} crops")
        # Only the crops in use (global + h*w) go through CLIP; the zero tiles the processor pads
        # with never reach the output, so skipping them changes nothing but the cost.
        crops = torch.cat([pixel_values[i, : h * w + 1] for i, (h, w) in enumerate(sizes)])
        side = self.config.vision.num_patches_per_side
        merged = merge_2x2(self.crop_features(crops), side)  # (N_crops, 12, 12, 4C)
        merged = merged.to(self.glb_GN.dtype)
        sub_sep, glb_sep = self.sub_GN.reshape(-1), self.glb_GN.reshape(1, -1)

        tokens = []
        start = 0
        for h, w in sizes:
            glb, sub = merged[start], merged[start + 1 : start + 1 + h * w]
            start += 1 + h * w
            m = glb.shape[0]
            sub = sub.reshape(h, w, m, m, -1).permute(0, 2, 1, 3, 4).reshape(h * m, w * m, -1)  # crop grid
            sub_t, glb_t = with_row_separator(sub, sub_sep), with_row_separator(glb, sub_sep)
            parts = (sub_t, glb_sep, glb_t) if self.config.hd_transform_order == "sub_glb" else (glb_t, glb_sep, sub_t)
            tokens.append(torch.cat(parts))
        lengths = [t.shape[0] for t in tokens]
        for (h, w), n in zip(sizes, lengths):
            assert n == num_image_tokens_for_padded(h * CROP_SIZE, w * CROP_SIZE)
        projected = self.img_projection(torch.cat(tokens))  # one matmul for all images
        return list(projected.split(lengths))
