"""What scenes are made of: object kinds, colours, geometry specs, their vertices and pybullet bodies.

A geometry spec is a JSON-able dict stored with every object, enough to rebuild the body exactly:
- `{"type": "box", "half_extents": [hx, hy, hz]}`
- `{"type": "sphere", "radius": r}`
- `{"type": "cylinder", "radius": r, "height": h}` (axis along the body's z)
- `{"type": "mesh", "file", "collision_file" | "collision_boxes", "scale", "frame_rotation", "frame_position"}`:
  a mesh from pybullet_data; a vertex v of `file` sits at R(frame_rotation) @ (scale * v) + frame_position
  in the body frame. `collision_boxes` lists `{"half_extents", "position", "rotation"}` (the tray).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .geometry import matrix_to_quat, quat_to_matrix, rpy_to_matrix

# (name, rgb): distinct under the renderer's lighting
COLOURS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("red", (0.85, 0.08, 0.08)),
    ("green", (0.10, 0.62, 0.15)),
    ("blue", (0.10, 0.25, 0.90)),
    ("yellow", (0.95, 0.85, 0.10)),
    ("orange", (1.00, 0.50, 0.00)),
    ("purple", (0.50, 0.15, 0.70)),
    ("pink", (1.00, 0.50, 0.75)),
    ("white", (0.95, 0.95, 0.95)),
    ("black", (0.07, 0.07, 0.07)),
    ("gray", (0.50, 0.50, 0.50)),
    ("brown", (0.45, 0.26, 0.10)),
    ("cyan", (0.10, 0.80, 0.85)),
)
COLOUR_NAMES = tuple(name for name, _ in COLOURS)


@dataclass(frozen=True)
class Kind:
    shape: str  # the noun used in text: "mug"
    plural: str
    geometry: str  # box | sphere | cylinder | mesh
    weight: float  # relative sampling frequency (also the "popular" prior for existence questions)
    size: tuple[float, float]  # range of the characteristic size (see sample_geometry)
    file: str = ""
    collision_file: str = ""
    up_rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)  # rotates the mesh file to z up
    flat_top: bool = False  # another object can rest on it
    container: bool = False
    size_is_width: bool = False  # the size range is the longest horizontal extent, not the height


_UP_Y = (math.pi / 2, 0.0, 0.0)
KINDS: tuple[Kind, ...] = (
    Kind("cube", "cubes", "box", 1.0, (0.04, 0.10), flat_top=True),
    Kind("box", "boxes", "box", 1.0, (0.04, 0.18), flat_top=True),
    Kind("ball", "balls", "sphere", 0.8, (0.05, 0.13)),
    Kind("cylinder", "cylinders", "cylinder", 0.9, (0.05, 0.20), flat_top=True),
    Kind("mug", "mugs", "mesh", 1.0, (0.08, 0.13), "objects/mug.obj", "objects/mug_col.obj"),
    Kind("duck", "ducks", "mesh", 0.6, (0.06, 0.13), "duck.obj", "duck_vhacd.obj", _UP_Y),
    Kind("teddy bear", "teddy bears", "mesh", 0.4, (0.12, 0.22), "teddy2_VHACD_CHs.obj", "teddy2_VHACD_CHs.obj", _UP_Y),
    Kind("bunny", "bunnies", "mesh", 0.5, (0.08, 0.16), "bunny.obj", "bunny.obj", _UP_Y),
    Kind("ring", "rings", "mesh", 0.4, (0.08, 0.16), "torus/torus_textured.obj", "torus/torus_textured.obj", _UP_Y,
         size_is_width=True),
    Kind("tray", "trays", "mesh", 0.0, (0.28, 0.40), "tray/tray_textured.obj", "", container=True, size_is_width=True),
)
KIND_BY_SHAPE = {k.shape: k for k in KINDS}

# pybullet_data's tray/traybox.urdf collision boxes (half extents, position, rpy), at visual scale 0.5
_TRAY_BOXES = (
    ((0.30, 0.30, 0.005), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),  # the visual floor's slab (the URDF puts it 1 cm higher)
    ((0.01, 0.30, 0.075), (0.25, 0.0, 0.059), (0.0, 0.575469961, 0.0)),
    ((0.01, 0.30, 0.075), (-0.25, 0.0, 0.059), (0.0, -0.575469961, 0.0)),
    ((0.30, 0.01, 0.075), (0.0, -0.25, 0.059), (0.575469961, 0.0, 0.0)),
    ((0.30, 0.01, 0.075), (0.0, 0.25, 0.059), (-0.575469961, 0.0, 0.0)),
)
_TRAY_VISUAL_SCALE = 0.5
SPHERE_MESH = "sphere_smooth.obj"  # unit sphere, 898 vertices


def data_path() -> Path:
    import pybullet_data

    return Path(pybullet_data.getDataPath())


@functools.lru_cache(maxsize=None)
def obj_vertices(file: str) -> np.ndarray:
    """The `v` lines of a Wavefront OBJ file under pybullet_data, (N, 3)."""
    path = data_path() / file
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read mesh {path}: {exc}") from exc
    V = np.array([[float(t) for t in ln.split()[1:4]] for ln in lines if ln.startswith("v ")], dtype=np.float64)
    if V.size == 0:
        raise DataError(f"mesh {path} has no vertices")
    V.setflags(write=False)
    return V


def _unit_sphere(n_lat: int = 24, n_lon: int = 48) -> np.ndarray:
    th = np.linspace(0, math.pi, n_lat + 1)
    ph = np.linspace(0, 2 * math.pi, n_lon, endpoint=False)
    T, P = np.meshgrid(th, ph, indexing="ij")
    return np.stack([np.sin(T) * np.cos(P), np.sin(T) * np.sin(P), np.cos(T)], axis=-1).reshape(-1, 3)


def _circle(n: int = 64) -> np.ndarray:
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def body_vertices(spec: dict) -> np.ndarray:
    """Points whose convex hull is the visual shape's hull, in the body frame, (N, 3)."""
    t = spec["type"]
    if t == "box":
        h = np.asarray(spec["half_extents"], dtype=np.float64)
        return np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=np.float64) * h
    if t == "sphere":
        return _unit_sphere() * float(spec["radius"])
    if t == "cylinder":
        c = _circle() * float(spec["radius"])
        h = float(spec["height"]) / 2
        return np.concatenate([np.c_[c, np.full(len(c), -h)], np.c_[c, np.full(len(c), h)]])
    if t == "mesh":
        R = quat_to_matrix(spec["frame_rotation"])
        return (obj_vertices(spec["file"]) * float(spec["scale"])) @ R.T + np.asarray(spec["frame_position"])
    raise DataError(f"unknown geometry type {t!r} (expected box, sphere, cylinder or mesh)")


def world_vertices(spec: dict, position, orientation) -> np.ndarray:
    return body_vertices(spec) @ quat_to_matrix(orientation).T + np.asarray(position, dtype=np.float64)


def sample_geometry(kind: Kind, rng: np.random.Generator) -> dict:
    """A random geometry spec of this kind, centred on its bounding box (body origin = box centre)."""
    lo, hi = kind.size
    if kind.geometry == "box":
        if kind.shape == "cube":
            return {"type": "box", "half_extents": [round(float(rng.uniform(lo, hi)) / 2, 4)] * 3}
        while True:
            h = rng.uniform(lo, hi, size=3) / 2
            h[2] = rng.uniform(0.03, 0.16) / 2
            if h.max() / h.min() > 1.3:  # clearly not a cube
                return {"type": "box", "half_extents": [round(float(v), 4) for v in h]}
    if kind.geometry == "sphere":
        return {"type": "sphere", "radius": round(float(rng.uniform(lo, hi)) / 2, 4)}
    if kind.geometry == "cylinder":
        return {"type": "cylinder", "radius": round(float(rng.uniform(0.02, 0.05)), 4),
                "height": round(float(rng.uniform(lo, hi)), 4)}
    # meshes: uniform scale so the height (or the width) is drawn from the range
    R = rpy_to_matrix(*kind.up_rpy)
    V = obj_vertices(kind.file) @ R.T
    vmin, vmax = V.min(axis=0), V.max(axis=0)
    extent = (vmax - vmin)[:2].max() if kind.size_is_width else (vmax - vmin)[2]
    scale = float(rng.uniform(lo, hi)) / float(extent)
    offset = -(vmin + vmax) / 2 * scale
    spec = {"type": "mesh", "file": kind.file, "scale": round(scale, 6),
            "frame_rotation": [round(float(v), 9) for v in matrix_to_quat(R)],
            "frame_position": [round(float(v), 6) for v in offset]}
    if kind.container:
        k = scale / _TRAY_VISUAL_SCALE
        spec["collision_boxes"] = [
            {"half_extents": [round(v * k, 6) for v in he],
             "position": [round(p * k + o, 6) for p, o in zip(pos, offset)],
             "rotation": [round(float(v), 9) for v in matrix_to_quat(rpy_to_matrix(*rpy))]}
            for he, pos, rpy in _TRAY_BOXES]
    else:
        spec["collision_file"] = kind.collision_file
    return spec


def approx_volume(spec: dict) -> float:
    t = spec["type"]
    if t == "box":
        return float(np.prod(np.asarray(spec["half_extents"]) * 2))
    if t == "sphere":
        return 4 / 3 * math.pi * float(spec["radius"]) ** 3
    if t == "cylinder":
        return math.pi * float(spec["radius"]) ** 2 * float(spec["height"])
    V = body_vertices(spec)
    return float(np.prod(V.max(axis=0) - V.min(axis=0))) * 0.5


def create_body(p, client: int, spec: dict, rgba, position, orientation, mass: float = 0.0) -> int:
    """A pybullet body for a geometry spec (p is the pybullet module)."""
    t = spec["type"]
    kw = {"physicsClientId": client}
    rgba = list(rgba)
    if t == "box":
        col = p.createCollisionShape(p.GEOM_BOX, halfExtents=spec["half_extents"], **kw)
        vis = p.createVisualShape(p.GEOM_BOX, halfExtents=spec["half_extents"], rgbaColor=rgba, **kw)
    elif t == "sphere":  # drawn from a finely tessellated mesh: pybullet's own sphere is visibly faceted
        col = p.createCollisionShape(p.GEOM_SPHERE, radius=spec["radius"], **kw)
        vis = p.createVisualShape(p.GEOM_MESH, fileName=str(data_path() / SPHERE_MESH), meshScale=[spec["radius"]] * 3,
                                  rgbaColor=rgba, **kw)
    elif t == "cylinder":
        col = p.createCollisionShape(p.GEOM_CYLINDER, radius=spec["radius"], height=spec["height"], **kw)
        vis = p.createVisualShape(p.GEOM_CYLINDER, radius=spec["radius"], length=spec["height"], rgbaColor=rgba, **kw)
    elif t == "mesh":
        root = data_path()
        s = [spec["scale"]] * 3
        vis = p.createVisualShape(p.GEOM_MESH, fileName=str(root / spec["file"]), meshScale=s, rgbaColor=rgba,
                                  visualFramePosition=spec["frame_position"],
                                  visualFrameOrientation=spec["frame_rotation"], **kw)
        if "collision_boxes" in spec:
            boxes = spec["collision_boxes"]
            col = p.createCollisionShapeArray(
                [p.GEOM_BOX] * len(boxes), halfExtents=[b["half_extents"] for b in boxes],
                collisionFramePositions=[b["position"] for b in boxes],
                collisionFrameOrientations=[b["rotation"] for b in boxes], **kw)
        else:
            col = p.createCollisionShape(p.GEOM_MESH, fileName=str(root / spec["collision_file"]), meshScale=s,
                                         collisionFramePosition=spec["frame_position"],
                                         collisionFrameOrientation=spec["frame_rotation"], **kw)
    else:
        raise DataError(f"unknown geometry type {t!r}")
    if vis < 0 or col < 0:
        raise DataError(f"pybullet could not create the shape {spec}")
    body = p.createMultiBody(baseMass=mass, baseCollisionShapeIndex=col, baseVisualShapeIndex=vis,
                             basePosition=list(position), baseOrientation=list(orientation), **kw)
    if t in ("mesh", "sphere"):  # drop the file's texture so the colour is the object's colour
        p.changeVisualShape(body, -1, textureUniqueId=-1, rgbaColor=rgba, **kw)
    p.changeVisualShape(body, -1, specularColor=[0.4, 0.4, 0.4], **kw)
    return body
