"""Training-only views of data-engine scenes, the first stages of training a model from scratch.

A decoder trained from scratch on whole scenes answers from the question's text: each object covers
one or two of the 144 image tokens of a crop, so nothing in the image stands out enough for the
decoder to start reading it (the embedded model stayed image-blind for ~3,000 CPU steps). Two
derived views give it images where the answer fills the picture, then half-way there:

- **object crops**: every well-seen object of a scene cut out alone (its visible box, 1.5x, square)
  with "what is this / what colour / what kind" questions; the answer covers most of the image;
- **zoomed scenes**: the scene cropped to its objects (their boxes + a margin, 4:3), with the engine's
  questions that a crop leaves true (relations, choice, clock, counting, existence, listing) and the
  grounding answers re-expressed in the crop's 0-1000 frame. Distance and size questions are left
  out: their answers stay true but the crop changes the apparent scale they are read from.

Each view is written as its own data-engine-format folder (`images/`, `data/<view>.jsonl`), so a
run mixes it with the full scenes by sampling probability like any other `--data DIR:prob`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import DataError

OBJECT_QUESTIONS = {
    "name": ("What is this object?", "What do you see in this image?", "Name the object in the picture."),
    "colour": ("What colour is this object?", "What color is the object?"),
    "shape": ("What kind of object is this?", "What shape is this object?"),
}
ZOOM_TASKS = ("relation_yesno", "relation_choice", "direction_clock", "counting", "existence", "listing",
              "grounding_box", "grounding_point")
MIN_OBJECT_FRACTION = 0.8  # objects at least this visible are cropped alone


def object_crop_box(bbox: list, width: int, height: int, scale: float = 1.5, pad: float = 8) -> tuple[int, int, int, int]:
    """A square around a visible box (x0, y0, x1, y1 in pixels), `scale` x its longer side + pad,
    clipped to the image."""
    x0, y0, x1, y1 = bbox
    s = max(x1 - x0, y1 - y0) * scale + pad
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (round(max(cx - s / 2, 0)), round(max(cy - s / 2, 0)), round(min(cx + s / 2, width)),
            round(min(cy + s / 2, height)))


def zoom_box(boxes: list, width: int, height: int, margin: float = 0.12, pad: float = 12,
             min_width: float = 200) -> tuple[int, int, int, int]:
    """The 4:3 crop holding every box (pixels) with a margin, at least `min_width` wide, inside the image."""
    if not boxes:
        raise DataError("zoom_box needs at least one object box")
    b = np.asarray(boxes, dtype=float)
    x0, y0, x1, y1 = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
    m = margin * max(x1 - x0, y1 - y0) + pad
    x0, y0, x1, y1 = x0 - m, y0 - m, x1 + m, y1 + m
    w = min(max(x1 - x0, (y1 - y0) * 4 / 3, min_width), width)
    h = min(w * 3 / 4, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(cx - w / 2, 0), width - w)
    top = min(max(cy - h / 2, 0), height - h)
    return round(left), round(top), round(left + w), round(top + h)


def remap_grounding(answer, box: tuple, width: int, height: int):
    """`bbox_2d` / `point_2d` values (0-1000 of the full image) of a grounding answer (a dict or a
    list of dicts) -> 0-1000 of the crop `box`."""
    bx0, by0, bx1, by1 = box

    def fx(v):
        return int(min(1000, max(0, round((v / 1000 * width - bx0) / (bx1 - bx0) * 1000))))

    def fy(v):
        return int(min(1000, max(0, round((v / 1000 * height - by0) / (by1 - by0) * 1000))))

    if isinstance(answer, list):
        return [remap_grounding(a, box, width, height) for a in answer]
    out = dict(answer)
    if "bbox_2d" in out:
        a = out["bbox_2d"]
        out["bbox_2d"] = [fx(a[0]), fy(a[1]), fx(a[2]), fy(a[3])]
    if "point_2d" in out:
        a = out["point_2d"]
        out["point_2d"] = [fx(a[0]), fy(a[1])]
    return out


def _scenes(engine_dir: Path):
    from ..spatial.scene import load_scene

    paths = sorted((engine_dir / "scenes").glob("*.json"))
    if not paths:
        raise DataError(f"{engine_dir} has no scenes/*.json (not a data-engine folder)")
    for p in paths:
        yield load_scene(p)


def _open_image(path: Path):
    from ..processing.image import load_image, to_rgb

    return to_rgb(load_image(path))


def _start(out_dir: str | Path, view: str, engine_dir: Path) -> Path:
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    (out / "dataset_info.json").write_text(json.dumps(
        {"format": "phi3v-spatial-dataset", "view": view, "source": str(engine_dir.resolve())}, indent=1))
    return out


def write_object_view(engine_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """Object crops of every scene of `engine_dir` into `out_dir` (see the module doc); returns the
    JSONL written. Objects whose name is not unique in their scene, or seen less than
    MIN_OBJECT_FRACTION, are skipped."""
    from ..spatial.dataset import encode_sample

    engine_dir = Path(engine_dir)
    out = _start(out_dir, "objects", engine_dir)
    path = out / "data" / "objects.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for scene in _scenes(engine_dir):
            objs = [o for o in scene.objects if o.role == "object"]
            names = [o.name for o in objs]
            keep = [o for o in objs if o.bbox_2d_visible and o.visible_fraction >= MIN_OBJECT_FRACTION
                    and names.count(o.name) == 1]
            if not keep:
                continue
            image = _open_image(engine_dir / scene.files["image"])
            rng = np.random.default_rng([seed, int(scene.seed), 13])
            for o in keep:
                name = f"images/{scene.scene_id}-obj{o.mask_id}.png"
                box = object_crop_box(o.bbox_2d_visible, *image.size)
                image.crop(box).save(out / name)
                answers = {"name": f"A {o.name}.", "colour": f"It is {o.colour}.", "shape": f"It is a {o.shape}."}
                for kind, qs in OBJECT_QUESTIONS.items():
                    if kind == "colour" and not o.colour:
                        continue
                    q = qs[int(rng.integers(len(qs)))]
                    f.write(encode_sample({
                        "id": f"{scene.scene_id}-obj{o.mask_id}-{kind}", "image": name, "images": [name], "task": "object",
                        "messages": [{"role": "user", "content": f"<|image_1|>\n{q}"},
                                     {"role": "assistant", "content": answers[kind]}],
                        "answer": {"type": "text", "value": o.name}, "scene": f"scenes/{scene.scene_id}.json",
                        "meta": {"kind": kind, "mask_id": o.mask_id, "crop": list(box), "seed": scene.seed}}))
    return path


def write_zoom_view(engine_dir: str | Path, out_dir: str | Path) -> Path:
    """Zoomed copies of the questions of every `data/*.jsonl` shard of `engine_dir` whose task is
    in ZOOM_TASKS, each scene cropped to its objects (see the module doc); returns the JSONL written."""
    from ..spatial.dataset import decode_sample, encode_sample
    from ..spatial.scene import load_scene

    engine_dir = Path(engine_dir)
    shards = sorted((engine_dir / "data").glob("*.jsonl"))
    if not shards:
        raise DataError(f"{engine_dir} has no data/*.jsonl (not a data-engine folder)")
    out = _start(out_dir, "zoom", engine_dir)
    crops: dict[str, tuple] = {}

    def crop_of(scene_rel: str):
        if scene_rel not in crops:
            scene = load_scene(engine_dir / scene_rel)
            W, H = scene.camera.width, scene.camera.height
            boxes = [o.bbox_2d for o in scene.objects if o.role == "object" and o.visible_pixels > 0 and o.bbox_2d]
            box = zoom_box(boxes, W, H)
            name = f"images/{scene.scene_id}-zoom.png"
            _open_image(engine_dir / scene.files["image"]).crop(box).save(out / name)
            crops[scene_rel] = (box, W, H, name)
        return crops[scene_rel]

    path = out / "data" / "zoom.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for shard in shards:
            for line in shard.open(encoding="utf-8"):
                if not line.strip():
                    continue
                s = decode_sample(line)
                if s.get("task") not in ZOOM_TASKS or not s.get("scene"):
                    continue
                box, W, H, name = crop_of(s["scene"])
                messages = [dict(m) for m in s["messages"]]
                answer = s.get("answer")
                if s["task"].startswith("grounding"):
                    messages[-1]["content"] = json.dumps(remap_grounding(json.loads(messages[-1]["content"]), box, W, H))
                    answer = dict(answer, value=remap_grounding(answer["value"], box, W, H))
                meta = dict(s.get("meta") or {}, view="zoom", crop=list(box))
                f.write(encode_sample(dict(s, id=f"{s['id']}-zoom", image=name, images=[name], messages=messages,
                                           answer=answer, meta=meta)))
    return path
