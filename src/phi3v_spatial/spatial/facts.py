"""3D predicates between objects of a scene, decided from the scene facts only.

Each predicate answers True, False, or None when the case is ambiguous (the objects are level
within a margin on the asked axis); questions are asked only about decided cases.
- left/right and in front/behind are as the camera sees them: left/right along the camera's
  horizontal right axis, and it must agree with the order of the projected centres in the image;
  front/behind along the camera's horizontal viewing direction, agreeing with the horizontal
  distance to the camera.
- above/below is by gravity: one object lies entirely higher than the other.
- bigger (3D box volume), taller (height), wider (the longer horizontal side) compare sizes.
"""
from __future__ import annotations

import math

import numpy as np

from .camera import project
from .geometry import matrix_to_quat, quat_to_matrix, reflect_rotation, wrap_angle
from .scene import Scene, SceneObject

LATERAL_MARGIN = 0.03  # metres
IMAGE_MARGIN = 0.02  # of the image width
DEPTH_MARGIN = 0.04  # metres
VERTICAL_TOL = 0.01  # metres of overlap tolerated between "entirely higher" objects
SIZE_RATIO = {"bigger": 1.3, "taller": 1.15, "wider": 1.15}
SIZE_MIN_DIFF = {"bigger": 0.0, "taller": 0.02, "wider": 0.02}
CLOCK_MIN_DISTANCE = 0.06
CLOCK_MARGIN_DEG = 5.0  # a direction this close to the boundary between two hours is ambiguous

RELATIONS = ("left", "right", "front", "behind", "above", "below", "bigger", "smaller", "taller", "shorter",
             "wider", "thinner")
OPPOSITE = {"left": "right", "right": "left", "front": "behind", "behind": "front", "above": "below",
            "below": "above", "bigger": "smaller", "smaller": "bigger", "taller": "shorter", "shorter": "taller",
            "wider": "thinner", "thinner": "wider"}


def horizontal_axes(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(camera position, horizontal right unit vector, horizontal forward unit vector), world frame."""
    cam = scene.camera
    right = cam.right.copy()
    right[2] = 0.0
    right /= np.linalg.norm(right)
    forward = np.array([right[1], -right[0], 0.0])  # right rotated +90 degrees about z
    return cam.position, right, forward


def _left(scene: Scene, a: SceneObject, b: SceneObject) -> bool | None:
    _, right, _ = horizontal_axes(scene)
    lateral = float((b.center - a.center) @ right)  # > 0: a is left of b
    uv, _ = project(scene.camera, np.stack([a.center, b.center]))
    du = float(uv[1, 0] - uv[0, 0])
    if lateral > LATERAL_MARGIN and du > IMAGE_MARGIN * scene.camera.width:
        return True
    if lateral < -LATERAL_MARGIN and du < -IMAGE_MARGIN * scene.camera.width:
        return False
    return None


def _front(scene: Scene, a: SceneObject, b: SceneObject) -> bool | None:
    pos, _, forward = horizontal_axes(scene)
    along = float((b.center - a.center) @ forward)  # > 0: a is nearer the camera
    dist = float(np.linalg.norm((b.center - pos)[:2]) - np.linalg.norm((a.center - pos)[:2]))
    if along > DEPTH_MARGIN and dist > 0:
        return True
    if along < -DEPTH_MARGIN and dist < 0:
        return False
    return None


def _above(a: SceneObject, b: SceneObject) -> bool | None:
    if a.box.bottom >= b.box.top - VERTICAL_TOL:
        return True
    if a.box.top <= b.box.bottom + VERTICAL_TOL:
        return False
    return None


def _compare(x: float, y: float, what: str) -> bool | None:
    ratio, diff = SIZE_RATIO[what], SIZE_MIN_DIFF[what]
    if x >= y * ratio and x - y >= diff:
        return True
    if y >= x * ratio and y - x >= diff:
        return False
    return None


def relation(scene: Scene, a: SceneObject, b: SceneObject, rel: str) -> bool | None:
    """Does `a <rel> b` hold ("a is left of b", "a is bigger than b")? None when ambiguous."""
    if rel in ("right", "behind", "below", "smaller", "shorter", "thinner"):
        r = relation(scene, a, b, OPPOSITE[rel])
        return None if r is None else not r
    if rel == "left":
        return _left(scene, a, b)
    if rel == "front":
        return _front(scene, a, b)
    if rel == "above":
        return _above(a, b)
    if rel == "bigger":
        return _compare(a.volume, b.volume, "bigger")
    if rel == "taller":
        return _compare(a.height, b.height, "taller")
    if rel == "wider":
        return _compare(a.width, b.width, "wider")
    raise ValueError(f"unknown relation {rel!r}; expected one of {RELATIONS}")


def extreme(scene: Scene, objects: list[SceneObject], rel: str) -> SceneObject | None:
    """The object that is `rel` of every other one (the leftmost, the tallest...), if decided."""
    for o in objects:
        if all(relation(scene, o, p, rel) is True for p in objects if p is not o):
            return o
    return None


def distance(a: SceneObject, b: SceneObject, kind: str) -> float:
    """center_distance, horizontal_distance (in the ground plane) or vertical_distance, metres."""
    d = b.center - a.center
    if kind == "center_distance":
        return float(np.linalg.norm(d))
    if kind == "horizontal_distance":
        return float(np.linalg.norm(d[:2]))
    if kind == "vertical_distance":
        return float(abs(d[2]))
    raise ValueError(f"unknown distance {kind!r}")


def clock_direction(scene: Scene, a: SceneObject, b: SceneObject) -> int | None:
    """Where b is seen from a as a clock hour (12: straight away from the camera, 3: to the right,
    6: toward the camera, 9: to the left), or None when too close or between two hours."""
    _, right, forward = horizontal_axes(scene)
    d = b.center - a.center
    f, r = float(d @ forward), float(d @ right)
    if math.hypot(f, r) < CLOCK_MIN_DISTANCE:
        return None
    deg = math.degrees(math.atan2(r, f)) % 360.0
    hours = deg / 30.0
    if abs(hours - round(hours)) * 30.0 > 15.0 - CLOCK_MARGIN_DEG:
        return None
    h = int(round(hours)) % 12
    return 12 if h == 0 else h


def mirror_scene(scene: Scene) -> Scene:
    """The scene reflected through the vertical plane that holds the camera's optical axis.

    The camera stays put and the image flips left-right: every left/right relation swaps, every
    other relation stays. Object orientations are mirrored by `reflect_rotation` (exact for boxes,
    cylinders and spheres; a mirrored mug has its handle on the other side, which no rotation gives)."""
    pos, right, _ = horizontal_axes(scene)
    M = np.eye(3) - 2 * np.outer(right, right)

    def refl(p):
        return None if p is None else pos + (np.asarray(p) - pos) @ M.T

    out = scene.normalized()
    for o in out.objects:
        o.box = type(o.box)(refl(o.box.center), o.box.size.copy(), _mirror_yaw(o.box.yaw, right))
        if o.position is not None:
            o.position = refl(o.position)
        if o.orientation is not None:
            o.orientation = matrix_to_quat(reflect_rotation(quat_to_matrix(o.orientation), right))
        W = scene.camera.width
        for key in ("bbox_2d", "bbox_2d_visible"):
            box = getattr(o, key)
            if box is not None:
                setattr(o, key, [W - box[2], box[1], W - box[0], box[3]])
    out.robot = None  # a mirrored arm is not a real robot; its poses would be meaningless
    out.objects = [o for o in out.objects if o.role != "robot"]
    return out


def _mirror_yaw(yaw: float, normal: np.ndarray) -> float:
    d = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    d = d - 2 * (d @ normal) * normal
    return wrap_angle(math.atan2(d[1], d[0]), math.pi)
