"""A picture of one scene with its questions: RGB with visible boxes, depth, instance mask, and
some of its question-answer samples (matplotlib, from the `spatial` extra)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from .dataset import read_depth, read_mask
from .scene import load_scene


def render_preview(dataset_dir, scene_id: str, samples: list[dict], path, max_samples: int = 8) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    root = Path(dataset_dir)
    scene = load_scene(root / "scenes" / f"{scene_id}.json")
    rgb = np.asarray(Image.open(root / scene.files["image"]))
    depth = read_depth(root / scene.files["depth"])
    mask = read_mask(root / scene.files["mask"])
    fig = plt.figure(figsize=(15, 8.6), dpi=80)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.0, 0.8], hspace=0.08, wspace=0.04)
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(rgb)
    for o in scene.objects:
        if o.role == "object" and o.bbox_2d_visible:
            x1, y1, x2, y2 = o.bbox_2d_visible
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2, ec="yellow"))
            ax.text(x1, y1 - 3, o.name, fontsize=7, color="black", backgroundcolor=(1, 1, 0.6, 0.8))
    ax.set_title(f"{scene_id}: RGB and visible boxes", fontsize=9)
    ax2 = fig.add_subplot(grid[0, 1])
    shown = np.where(depth > 0, depth, np.nan)
    im = ax2.imshow(shown, cmap="viridis")
    fig.colorbar(im, ax=ax2, fraction=0.035, label="metres")
    ax2.set_title("metric depth", fontsize=9)
    ax3 = fig.add_subplot(grid[0, 2])
    ax3.imshow(mask, cmap="tab20", interpolation="nearest")
    ax3.set_title("instance mask", fontsize=9)
    for a in (ax, ax2, ax3):
        a.axis("off")
    lines = []
    for s in samples[:max_samples]:
        q = s["messages"][-2]["content"].replace("<|image_1|>\n", "")
        if s["task"] == "robot_action":
            q = q[:160]
        a = s["messages"][-1]["content"].replace("\n", " | ")
        lines.append(textwrap.shorten(f"[{s['task']}] Q: {q}", 150) + "\n" + textwrap.shorten(f"      A: {a}", 150))
    tx = fig.add_subplot(grid[1, :])
    tx.axis("off")
    tx.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=8.5, family="monospace")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
