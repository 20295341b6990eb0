"""Users' own RGB-D captures -> the same dataset format, through lift.py.

A capture folder holds, per capture NAME:
  NAME.png (or .jpg)        the RGB image
  NAME.depth.png            metric depth as uint16 millimetres (0 = unknown), or NAME.depth.npy (float metres)
  NAME.mask.png             instance ids (0 = background)
  NAME.json                 {"labels": {"1": "red mug", ...}, "intrinsics": {"fx", "fy", "cx", "cy"}}  (intrinsics optional)
The world frame of the resulting scenes is the lifted gravity frame (z up from the support plane,
x along the camera's view, origin below the camera). Labels are taken as complete: counting and
existence questions assume every object in view is labelled. No robot is in view, so no
robot_action samples are made.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from ..errors import DataError
from .camera import Camera, rigid_inverse
from .catalog import COLOUR_NAMES
from .dataset import SUBDIRS, atomic_write_text, encode_sample, read_depth, read_mask, write_scene_files
from .geometry import bbox_of_mask
from .lift import lift
from .scene import Scene, SceneObject

GENERATOR = "phi3v_spatial rgbd-lift 1"


def find_captures(in_dir) -> list[str]:
    d = Path(in_dir)
    if not d.is_dir():
        raise DataError(f"{d} is not a folder of RGB-D captures")
    names = sorted(p.name[: -len(".mask.png")] for p in d.glob("*.mask.png"))
    if not names:
        raise DataError(f"no captures in {d}: expected NAME.png, NAME.depth.png (or .npy), NAME.mask.png, NAME.json")
    return names


def load_capture(in_dir, name: str):
    """(rgb uint8 (H, W, 3), depth float32 metres, instances int32, labels {id: str}, intrinsics or None)."""
    from PIL import Image

    d = Path(in_dir)
    rgb_path = next((d / f"{name}{ext}" for ext in (".png", ".jpg", ".jpeg") if (d / f"{name}{ext}").exists()), None)
    depth_path = next((d / f"{name}.depth{ext}" for ext in (".png", ".npy") if (d / f"{name}.depth{ext}").exists()), None)
    if rgb_path is None or depth_path is None:
        raise DataError(f"capture {name!r} in {d} needs {name}.png (or .jpg) and {name}.depth.png (or .npy)")
    try:
        rgb = np.asarray(Image.open(rgb_path).convert("RGB"))
        meta = json.loads((d / f"{name}.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read capture {name!r}: {exc}") from exc
    depth = read_depth(depth_path)
    instances = read_mask(d / f"{name}.mask.png")
    if not (rgb.shape[:2] == depth.shape == instances.shape):
        raise DataError(f"capture {name!r}: rgb {rgb.shape[:2]}, depth {depth.shape} and mask {instances.shape} differ in size")
    if instances.max() > 255 or instances.min() < 0:
        raise DataError(f"capture {name!r}: instance ids must be 0-255, got {instances.min()}-{instances.max()}")
    labels = {int(k): str(v) for k, v in meta.get("labels", {}).items()}
    K = meta.get("intrinsics")
    intrinsics = None if K is None else (float(K["fx"]), float(K["fy"]), float(K["cx"]), float(K["cy"]))
    return rgb, depth, instances, labels, intrinsics


def scene_from_capture(scene_id: str, depth, instances, labels, intrinsics=None) -> Scene:
    L = lift(depth, instances, labels, intrinsics)
    H, W = depth.shape
    fx, fy, cx, cy = L.intrinsics
    camera = Camera(W, H, fx, fy, cx, cy, rigid_inverse(L.camera_to_gravity))
    objects = []
    for lo in L.objects:
        words = lo.label.split()
        colour = words[0] if len(words) > 1 and words[0] in COLOUR_NAMES else None
        box2d = bbox_of_mask(instances == lo.mask_id)
        objects.append(SceneObject(mask_id=lo.mask_id, name=lo.label, shape=words[-1] if colour else lo.label,
                                   colour=colour, box=lo.box, bbox_2d=[float(v) for v in box2d],
                                   bbox_2d_visible=box2d, visible_pixels=lo.pixels, visible_fraction=1.0))
    n, d = L.plane
    return Scene(scene_id=scene_id, camera=camera, objects=objects, seed=None, source="rgbd", setting="capture",
                 support={"type": "plane", "normal_camera": [round(float(v), 6) for v in n], "d_camera": round(d, 6)},
                 generator=GENERATOR,
                 files={"image": f"images/{scene_id}.png", "depth": f"depth/{scene_id}.png", "mask": f"masks/{scene_id}.png"})


def synthesize_from_rgbd(in_dir, out_dir, tasks=None, samples_per_scene: int | None = None,
                         progress: bool = False) -> Path:
    """Lift every capture in `in_dir` and write a dataset (one shard) to `out_dir`, replacing its data."""
    from tqdm import tqdm

    from .questions import check_tasks, make_samples

    tasks = check_tasks(tasks)
    names = find_captures(in_dir)
    out = Path(out_dir)
    if (out / "data").exists():
        shutil.rmtree(out / "data")
    for sub in SUBDIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)
    lines, counts = [], {}
    for name in tqdm(names, unit="capture", disable=not progress, desc="lift"):
        rgb, depth, instances, labels, K = load_capture(in_dir, name)
        sid = "c-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        scene = scene_from_capture(sid, depth, instances, labels, K).normalized()
        write_scene_files(out, scene, rgb, depth, instances.astype(np.uint8))
        for sample in make_samples(scene, instances, tasks, samples_per_scene):
            lines.append(encode_sample(sample))
            counts[sample["task"]] = counts.get(sample["task"], 0) + 1
    atomic_write_text(out / "data" / "shard-00000-of-00001.jsonl", "".join(lines))
    info = {"format": "phi3v-spatial-dataset", "format_version": 1,
            "config": {"generator": GENERATOR, "source": "rgbd", "captures": str(Path(in_dir)), "tasks": list(tasks),
                       "samples_per_scene": samples_per_scene},
            "shards": ["shard-00000-of-00001.jsonl"],
            "counts": {"scenes": len(names), "samples": len(lines), "by_task": counts}, "complete": True}
    atomic_write_text(out / "dataset_info.json", json.dumps(info, indent=1))
    return out
