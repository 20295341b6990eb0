"""Scene facts: the camera and, per object, its identity, pose, 3D box and 2D boxes.

A `Scene` is what the question generator reads and what `scenes/<scene_id>.json` stores (see
docs/dataset_schema.md). Synthetic scenes come from `generate.generate_scene`; scenes of users'
own RGB-D captures come from `rgbd.scene_from_capture` (the world frame is then the lifted
gravity frame). Everything here is plain data: no simulator.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .camera import Camera
from .geometry import Box3D

SCENE_FORMAT = 1


@dataclass
class SceneObject:
    mask_id: int  # pixel value in the instance mask; 0 is the background and the support
    name: str  # unique in the scene, e.g. "red mug"
    shape: str  # category noun, e.g. "mug"
    colour: str | None
    box: Box3D  # gravity-aligned 3D box of the visible geometry, world frame
    role: str = "object"  # "object" (asked about) or "robot"
    position: np.ndarray | None = None  # body origin, world frame
    orientation: np.ndarray | None = None  # (x, y, z, w)
    geometry: dict | None = None  # catalog geometry spec (None for lifted objects)
    rgba: list | None = None
    bbox_2d: list[float] | None = None  # projection of the full 3D geometry, clipped to the image
    bbox_2d_visible: list[int] | None = None  # box of the visible mask pixels, None when unseen
    visible_pixels: int = 0
    visible_fraction: float = 1.0  # visible pixels / pixels of the object rendered alone
    truncated: bool = False  # the projection leaves the image
    supported_by: list[int] = field(default_factory=list)  # mask ids; 0 = table/floor

    @property
    def center(self) -> np.ndarray:
        return self.box.center

    @property
    def width(self) -> float:
        """The longer horizontal side of the 3D box."""
        return float(self.box.size[0])

    @property
    def depth(self) -> float:
        return float(self.box.size[1])

    @property
    def height(self) -> float:
        return float(self.box.size[2])

    @property
    def volume(self) -> float:
        return float(np.prod(self.box.size))

    def to_dict(self) -> dict:
        d = {
            "mask_id": self.mask_id, "name": self.name, "shape": self.shape, "colour": self.colour, "role": self.role,
            "box_3d": self.box.to_dict(),
            "size": {"width": round(self.width, 6), "depth": round(self.depth, 6), "height": round(self.height, 6)},
            "position": None if self.position is None else [round(float(v), 6) for v in self.position],
            "orientation": None if self.orientation is None else [round(float(v), 9) for v in self.orientation],
            "geometry": self.geometry, "rgba": self.rgba,
            "bbox_2d": None if self.bbox_2d is None else [round(float(v), 2) for v in self.bbox_2d],
            "bbox_2d_visible": self.bbox_2d_visible,
            "visible_pixels": int(self.visible_pixels), "visible_fraction": round(float(self.visible_fraction), 4),
            "truncated": bool(self.truncated), "supported_by": list(self.supported_by),
        }
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SceneObject":
        try:
            return cls(
                mask_id=int(d["mask_id"]), name=d["name"], shape=d["shape"], colour=d.get("colour"),
                box=Box3D.from_dict(d["box_3d"]), role=d.get("role", "object"),
                position=None if d.get("position") is None else np.asarray(d["position"], dtype=np.float64),
                orientation=None if d.get("orientation") is None else np.asarray(d["orientation"], dtype=np.float64),
                geometry=d.get("geometry"), rgba=d.get("rgba"), bbox_2d=d.get("bbox_2d"),
                bbox_2d_visible=d.get("bbox_2d_visible"), visible_pixels=int(d.get("visible_pixels", 0)),
                visible_fraction=float(d.get("visible_fraction", 1.0)), truncated=bool(d.get("truncated", False)),
                supported_by=list(d.get("supported_by", [])),
            )
        except KeyError as exc:
            raise DataError(f"scene object is missing the field {exc.args[0]!r}: {d.get('name', d)!r}") from None


@dataclass
class Scene:
    scene_id: str
    camera: Camera
    objects: list[SceneObject]
    seed: int | None = None
    source: str = "synthetic"  # or "rgbd"
    setting: str = "tabletop"  # tabletop | floor | capture
    support: dict = field(default_factory=dict)  # what the objects rest on, e.g. {"type": "table", ...}
    robot: dict | None = None  # robot in view: model, joints, ee_pose, grasp, mask_id
    light: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # image, depth, mask paths relative to the dataset folder
    generator: str = ""

    def object(self, mask_id: int) -> SceneObject:
        for o in self.objects:
            if o.mask_id == mask_id:
                return o
        raise DataError(f"scene {self.scene_id} has no object with mask id {mask_id}")

    def to_dict(self) -> dict:
        return {
            "format": SCENE_FORMAT, "scene_id": self.scene_id, "seed": self.seed, "source": self.source,
            "setting": self.setting, "generator": self.generator, "files": self.files,
            "camera": self.camera.to_dict(), "support": self.support, "light": self.light, "robot": self.robot,
            "objects": [o.to_dict() for o in self.objects],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        if d.get("format") != SCENE_FORMAT:
            raise DataError(f"scene format {d.get('format')!r} is not supported (expected {SCENE_FORMAT})")
        try:
            return cls(
                scene_id=d["scene_id"], camera=Camera.from_dict(d["camera"]),
                objects=[SceneObject.from_dict(o) for o in d["objects"]], seed=d.get("seed"),
                source=d.get("source", "synthetic"), setting=d.get("setting", "tabletop"), support=d.get("support", {}),
                robot=d.get("robot"), light=d.get("light", {}), files=d.get("files", {}), generator=d.get("generator", ""),
            )
        except KeyError as exc:
            raise DataError(f"scene is missing the field {exc.args[0]!r}") from None

    def normalized(self) -> "Scene":
        """The scene as it reads back from its JSON (values rounded), so questions computed from it
        agree exactly with what is stored."""
        return Scene.from_dict(json.loads(json.dumps(self.to_dict())))


def save_scene(scene: Scene, path: Path) -> None:
    from .dataset import atomic_write_text

    atomic_write_text(Path(path), json.dumps(scene.to_dict(), separators=(",", ":")))


def load_scene(path: Path) -> Scene:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read scene {path}: {exc}") from exc
    return Scene.from_dict(d)
