"""A picture of one scene with its questions: RGB with visible boxes, depth, instance mask, and
its question-answer samples, one per task first (matplotlib, from the `spatial` extra)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import read_depth, read_mask
from .scene import load_scene


def _qa_lines(sample: dict, width: int = 120) -> list[str]:
    q = sample["messages"][-2]["content"].replace("<|image_1|>\n", "").replace("\n", " ")
    a = sample["messages"][-1]["content"]
    if sample["task"] == "robot_action":
        q = q.split("}. ", 1)[-1] if "}. " in q else q  # the instruction, after the current pose
        poses = a.splitlines()
        a = " ".join(poses[:2]) + f" ... ({len(poses)} poses)"
    cut = lambda t: t if len(t) <= width else t[: width - 4] + " ..."  # noqa: E731
    return [cut(f"{sample['task']:>16}  Q: {' '.join(q.split())}"), cut(f"{'':>16}  A: {' '.join(a.split())}")]


def render_preview(dataset_dir, scene_id: str, samples: list[dict], path, max_samples: int = 10) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    root = Path(dataset_dir)
    scene = load_scene(root / "scenes" / f"{scene_id}.json")
    rgb = np.asarray(Image.open(root / scene.files["image"]))
    depth = read_depth(root / scene.files["depth"])
    mask = read_mask(root / scene.files["mask"])
    fig = plt.figure(figsize=(13, 10.5), dpi=90)
    grid = fig.add_gridspec(3, 2, width_ratios=[2.0, 1.0], height_ratios=[1, 1, 1.05], hspace=0.12, wspace=0.03)
    ax = fig.add_subplot(grid[0:2, 0])
    ax.imshow(rgb)
    for o in scene.objects:
        if o.role == "object" and o.bbox_2d_visible:
            x1, y1, x2, y2 = o.bbox_2d_visible
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.0, ec="yellow"))
            ax.text(x1, y2 + 1, o.name, fontsize=6.5, va="top", color="black",
                    bbox={"facecolor": (1, 1, 0.7, 0.75), "pad": 0.6, "lw": 0})
    ax.set_title(f"scene {scene_id}: RGB, visible boxes", fontsize=9)
    ax2 = fig.add_subplot(grid[0, 1])
    seen = depth[depth > 0]
    top = float(np.percentile(seen, 95)) if seen.size else 1.0
    im = ax2.imshow(np.where(depth > 0, depth, np.nan), cmap="viridis", vmax=top)
    fig.colorbar(im, ax=ax2, fraction=0.04, pad=0.01).set_label("metres", fontsize=8)
    ax2.set_title("metric depth", fontsize=9)
    ax3 = fig.add_subplot(grid[1, 1])
    ax3.imshow(mask, cmap="tab20", interpolation="nearest")
    ax3.set_title("instance mask", fontsize=9)
    for a in (ax, ax2, ax3):
        a.axis("off")
    tasks: list[str] = []
    picked = [s for s in samples if s["task"] not in tasks and not tasks.append(s["task"])]  # one per task first
    picked += [s for s in samples if s not in picked]
    lines = [line for s in picked[:max_samples] for line in _qa_lines(s)]
    tx = fig.add_subplot(grid[2, :])
    tx.axis("off")
    tx.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=8, family="monospace")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
