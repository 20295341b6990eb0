"""Small geometry helpers shared by scene generation and RGB-D lifting (numpy only, no simulator).

Rotations: quaternions are (x, y, z, w) like pybullet; roll/pitch/yaw are the extrinsic x-y-z angles,
R = Rz(yaw) @ Ry(pitch) @ Rx(roll) (URDF and pybullet's getQuaternionFromEuler).
Gravity-aligned boxes: z up; `yaw` is the angle of the box's first (longer) horizontal axis from +x.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def quat_to_matrix(q) -> np.ndarray:
    x, y, z, w = (float(v) for v in q)
    n = x * x + y * y + z * z + w * w
    s = 2.0 / n if n > 0 else 0.0
    return np.array([
        [1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
        [s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)],
        [s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)],
    ])


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """3x3 rotation -> (x, y, z, w) with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = math.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = math.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def rpy_to_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw)
    Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def matrix_to_rpy(R: np.ndarray) -> tuple[float, float, float]:
    """Inverse of rpy_to_matrix, pitch in [-pi/2, pi/2]; at pitch = +-pi/2 roll is set to 0."""
    R = np.asarray(R, dtype=np.float64)
    pitch = math.asin(max(-1.0, min(1.0, -R[2, 0])))
    if abs(R[2, 0]) < 1 - 1e-7:  # pitch further than ~0.03 degrees from +-90
        roll = math.atan2(R[2, 1], R[2, 2])
        yaw = math.atan2(R[1, 0], R[0, 0])
    else:  # gimbal lock: only yaw - roll (pitch > 0) or yaw + roll (pitch < 0) is defined
        roll = 0.0
        pitch = math.copysign(math.pi / 2, pitch)
        yaw = math.atan2(-R[0, 1], R[1, 1])
    return roll, pitch, yaw


def wrap_angle(a: float, period: float = 2 * math.pi) -> float:
    """Angle wrapped to (-period/2, period/2]."""
    a = math.fmod(a + period / 2, period)
    if a <= 0:
        a += period
    return a - period / 2


def reflect_rotation(R: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """The orientation of a shape mirrored through a plane with this normal: M R F, with
    M = I - 2 n n^T and F the flip of the shape's own x axis (M R alone is not a rotation).

    Exact for shapes symmetric under that flip (boxes, cylinders about z, spheres)."""
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    M = np.eye(3) - 2 * np.outer(n, n)
    return M @ R @ np.diag([-1.0, 1.0, 1.0])


_HULL_DIRECTIONS = 512


def _cross2(a, b) -> float:
    return float(a[0] * b[1] - a[1] * b[0])


def convex_hull_2d(points: np.ndarray) -> np.ndarray:
    """(N, 2) -> hull vertices in counter-clockwise order (Andrew's monotone chain).

    Large sets are first cut to the ends of each 0.1 mm row, then to the points extreme in 512
    directions: every hull vertex with an exterior angle over 0.7 degrees survives, the rest lie
    within 2e-5 of the hull's radius (plus 0.1 mm) of the result."""
    P = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(P) > 4096:  # keep the leftmost and rightmost point of each 0.1 mm row
        rows = np.floor(P[:, 1] / 1e-4)
        order = np.lexsort((P[:, 0], rows))
        rows = rows[order]
        first = np.r_[True, rows[1:] != rows[:-1]]
        last = np.r_[rows[1:] != rows[:-1], True]
        P = P[order[first | last]]
    if len(P) > 512:
        a = np.linspace(0, 2 * math.pi, _HULL_DIRECTIONS, endpoint=False)
        P = P[np.unique(np.argmax(P @ np.stack([np.cos(a), np.sin(a)]), axis=0))]
    P = np.unique(P, axis=0)
    if len(P) <= 2:
        return P

    def half(pts):
        out: list = []
        for p in pts:
            while len(out) >= 2 and _cross2(out[-1] - out[-2], p - out[-2]) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(P), half(P[::-1])
    return np.array(lower[:-1] + upper[:-1])


def min_area_rect(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Smallest-area rectangle around 2D points: (centre (2,), size (2,) longer first, yaw of the
    longer side in (-pi/2, pi/2]). Rotating calipers over the convex hull's edges."""
    hull = convex_hull_2d(points)
    if len(hull) == 1:
        return hull[0].copy(), np.zeros(2), 0.0
    best = None
    edges = np.roll(hull, -1, axis=0) - hull
    for e in edges:
        n = np.linalg.norm(e)
        if n < 1e-12:
            continue
        a = math.atan2(e[1], e[0])
        c, s = math.cos(a), math.sin(a)
        local = hull @ np.array([[c, -s], [s, c]])  # (N, 2): coordinates along (e, e_perp)
        lo, hi = local.min(axis=0), local.max(axis=0)
        area = float(np.prod(hi - lo))
        if best is None or area < best[0] - 1e-12:
            best = (area, a, lo, hi)
    _, a, lo, hi = best
    c, s = math.cos(a), math.sin(a)
    mid = (lo + hi) / 2
    centre = np.array([c * mid[0] - s * mid[1], s * mid[0] + c * mid[1]])
    size = hi - lo
    if size[1] > size[0]:
        size = size[::-1]
        a += math.pi / 2
    return centre, size, wrap_angle(a, math.pi)


@dataclass(frozen=True)
class Box3D:
    """A gravity-aligned box: centre (3,), size (length >= width along yaw, height), yaw (radians)."""

    center: np.ndarray
    size: np.ndarray
    yaw: float

    @property
    def bottom(self) -> float:
        return float(self.center[2] - self.size[2] / 2)

    @property
    def top(self) -> float:
        return float(self.center[2] + self.size[2] / 2)

    def corners(self) -> np.ndarray:
        """(8, 3) corners."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        signs = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=np.float64)
        return (signs * self.size / 2) @ R.T + self.center

    def to_dict(self) -> dict:
        return {"center": [round(float(v), 6) for v in self.center],
                "size": [round(float(v), 6) for v in self.size], "yaw": round(float(self.yaw), 6)}

    @classmethod
    def from_dict(cls, d: dict) -> "Box3D":
        return cls(np.asarray(d["center"], dtype=np.float64), np.asarray(d["size"], dtype=np.float64), float(d["yaw"]))


def gravity_box(points: np.ndarray, bottom: float | None = None) -> Box3D:
    """The gravity-aligned box of (N, 3) points: min-area footprint rectangle, z from min (or
    `bottom`) to max."""
    P = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    centre2, size2, yaw = min_area_rect(P[:, :2])
    lo = float(P[:, 2].min()) if bottom is None else float(bottom)
    hi = float(P[:, 2].max())
    return Box3D(np.array([centre2[0], centre2[1], (lo + hi) / 2]), np.array([size2[0], size2[1], hi - lo]), yaw)


def bbox_of_mask(mask: np.ndarray) -> list[int] | None:
    """[x1, y1, x2, y2] pixel edges of a boolean mask (x2, y2 exclusive), None when empty."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def normalize_box(box, width: int, height: int) -> list[int]:
    """Pixel box -> integers 0-1000 relative to the image size (the grounding answer format)."""
    x1, y1, x2, y2 = box
    f = lambda v, n: int(min(1000, max(0, round(v / n * 1000))))  # noqa: E731
    return [f(x1, width), f(y1, height), f(x2, width), f(y2, height)]


def interior_point(mask: np.ndarray) -> tuple[float, float] | None:
    """The pixel centre deepest inside a mask (largest distance to its boundary), as (x, y)."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return None
    rows, cols = np.nonzero(m)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    cur = np.pad(m[r0:r1, c0:c1], 1)
    last = cur
    while cur.any():  # peel one 4-connected layer per step; the last non-empty layer is the core
        last = cur
        cur = cur & np.roll(cur, 1, 0) & np.roll(cur, -1, 0) & np.roll(cur, 1, 1) & np.roll(cur, -1, 1)
    rr, cc = np.nonzero(last)
    cy, cx = rr.mean(), cc.mean()
    k = int(np.argmin((rr - cy) ** 2 + (cc - cx) ** 2))
    return float(cc[k] - 1 + c0 + 0.5), float(rr[k] - 1 + r0 + 0.5)
