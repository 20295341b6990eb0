"""From RGB-D to 3D, for users' own captures: point clouds, support plane, gravity frame, 3D boxes.

Input: metric depth (H, W), an instance-id image (0 = background) with a label per id, and the
intrinsics (fx, fy, cx, cy), or, when they are unknown, those of an assumed 60 degree horizontal
field of view. Depth and segmentation models plug in through the `DepthEstimator` and `Segmenter`
protocols; none ships with the package.

The support plane is found by RANSAC among background pixels around the objects, and is taken as
horizontal (gravity is its normal). The gravity frame has z up along that normal, x the camera's
viewing direction along the plane, y to the left, and its origin on the plane below the camera.
Each object's box: top = its highest point; bottom = the surface it rests on (see `_bottom`);
footprint = the smallest rectangle around its points seen from above, with the side hidden from
the camera completed by symmetry (see `_complete_box`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import DataError
from .camera import backproject
from .geometry import Box3D, gravity_box

DEFAULT_HFOV_DEG = 60.0
SNAP_TO_PLANE = 0.02  # metres
RANSAC_ITERS = 256
RANSAC_THRESHOLD = 0.008  # metres (grows with depth, see fit_plane)
MIN_OBJECT_POINTS = 20
SUPPORT_REACH = 0.01  # metres around an object's seen footprint searched for what holds it up


@runtime_checkable
class DepthEstimator(Protocol):
    """A monocular metric depth model: rgb (H, W, 3) uint8 -> depth (H, W) float metres, 0 = unknown."""

    def __call__(self, rgb: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Segmenter(Protocol):
    """An instance segmenter: rgb -> (instance ids (H, W) int, 0 = background; {id: label})."""

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, dict[int, str]]: ...


@dataclass
class LiftedObject:
    mask_id: int
    label: str
    box: Box3D  # gravity frame
    points: np.ndarray  # (N, 3) gravity frame
    pixels: int


@dataclass
class Lifted:
    intrinsics: tuple[float, float, float, float]
    camera_to_gravity: np.ndarray  # (4, 4)
    plane: tuple[np.ndarray, float]  # camera frame: n . p + d = 0, n toward the camera
    objects: list[LiftedObject]


def assumed_intrinsics(width: int, height: int, hfov_deg: float = DEFAULT_HFOV_DEG) -> tuple[float, float, float, float]:
    f = width / (2.0 * math.tan(math.radians(hfov_deg) / 2.0))
    return f, f, width / 2.0, height / 2.0


def fit_plane(points: np.ndarray, rng: np.random.Generator, iters: int = RANSAC_ITERS,
              threshold: float = RANSAC_THRESHOLD) -> tuple[np.ndarray, float, np.ndarray]:
    """RANSAC plane through camera-frame points, refined by least squares on the inliers:
    (unit normal pointing toward the camera, d, inlier mask) with n . p + d = 0."""
    P = np.asarray(points, dtype=np.float64)
    if len(P) < 3:
        raise DataError("too few valid depth pixels to find the support plane")
    tol = threshold * np.maximum(1.0, P[:, 2])  # depth noise grows with distance
    best, best_count = None, -1
    idx = rng.integers(0, len(P), size=(iters, 3))
    for i, j, k in idx:
        n = np.cross(P[j] - P[i], P[k] - P[i])
        norm = np.linalg.norm(n)
        if norm < 1e-12:
            continue
        n /= norm
        count = int((np.abs(P @ n - n @ P[i]) < tol).sum())
        if count > best_count:
            best, best_count = (n, -float(n @ P[i])), count
    if best is None:
        raise DataError("could not fit a support plane (degenerate depth)")
    n, d = best
    for _ in range(2):  # least-squares refinement on the inliers
        inl = np.abs(P @ n + d) < tol
        Q = P[inl]
        c = Q.mean(axis=0)
        n = np.linalg.svd(Q - c, full_matrices=False)[2][-1]
        d = -float(n @ c)
    if d < 0:  # the camera (origin) is on the positive side
        n, d = -n, -d
    return n, d, np.abs(P @ n + d) < tol


def gravity_frame(n: np.ndarray, d: float) -> np.ndarray:
    """camera -> gravity transform (4, 4) for the plane n . p + d = 0 (camera frame)."""
    z = n / np.linalg.norm(n)
    forward = np.array([0.0, 0.0, 1.0])
    x = forward - (forward @ z) * z
    if np.linalg.norm(x) < 1e-6:  # looking straight down: forward is the image's up direction
        up_img = np.array([0.0, -1.0, 0.0])
        x = up_img - (up_img @ z) * z
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    origin = -d * z  # foot of the camera on the plane
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z])
    T[:3, 3] = -T[:3, :3] @ origin
    return T


def _erode(mask: np.ndarray) -> np.ndarray:
    m = mask.copy()
    m[1:, :] &= mask[:-1, :]
    m[:-1, :] &= mask[1:, :]
    m[:, 1:] &= mask[:, :-1]
    m[:, :-1] &= mask[:, 1:]
    return m


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(r):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def lift(depth: np.ndarray, instances: np.ndarray, labels: dict[int, str],
         intrinsics: tuple[float, float, float, float] | None = None, seed: int = 0,
         assume_resting: bool = True) -> Lifted:
    """Lift labelled instances of a metric depth image to 3D boxes in a gravity-aligned frame.

    assume_resting: every object rests on the plane or on another object (so a bottom hidden from
    the camera is put on its support); False keeps the lowest seen point as the bottom."""
    depth = np.asarray(depth, dtype=np.float32)
    instances = np.asarray(instances)
    if depth.ndim != 2 or instances.shape != depth.shape:
        raise DataError(f"depth {depth.shape} and instance mask {instances.shape} must be the same (H, W)")
    H, W = depth.shape
    K = tuple(float(v) for v in intrinsics) if intrinsics is not None else assumed_intrinsics(W, H)
    if len(K) != 4 or K[0] <= 0 or K[1] <= 0:
        raise DataError(f"intrinsics must be (fx, fy, cx, cy) with positive focal lengths, got {intrinsics}")
    valid = np.isfinite(depth) & (depth > 0)
    depth = np.where(valid, depth, 0.0)
    objects_mask = instances > 0
    ring = _dilate(objects_mask, max(4, round(max(H, W) / 25))) & ~objects_mask & valid
    support = ring if ring.sum() >= 200 else (~objects_mask & valid)
    if support.sum() < 50:
        raise DataError("not enough background depth around the objects to find the support plane")
    rng = np.random.default_rng(seed)
    pts = backproject(K, depth, support)
    if len(pts) > 20000:
        pts = pts[rng.choice(len(pts), 20000, replace=False)]
    n, d, _ = fit_plane(pts, rng)
    T = gravity_frame(n, d)
    clouds = {}
    for mid in sorted(int(v) for v in np.unique(instances) if v > 0):
        m = instances == mid
        core = _erode(m) & valid
        if core.sum() < MIN_OBJECT_POINTS:
            core = m & valid
        P = backproject(K, depth, core) @ T[:3, :3].T + T[:3, 3]
        P = P[P[:, 2] > -SNAP_TO_PLANE]  # nothing of an object is under the support
        if len(P) < MIN_OBJECT_POINTS:
            continue
        lo, hi = np.percentile(P, 0.5, axis=0), np.percentile(P, 99.5, axis=0)
        P = P[((P >= lo - 0.01) & (P <= hi + 0.01)).all(axis=1)]  # drop flying pixels
        clouds[mid] = (P, m)
    bottoms = {mid: _bottom(mid, clouds, assume_resting) for mid in clouds}
    objects = []
    for mid, (P, m) in clouds.items():
        box = _complete_box(P, m, bottoms[mid], K, T)
        objects.append(LiftedObject(mid, labels.get(mid, f"object {mid}"), box, P, int(m.sum())))
    return Lifted(K, T, (n, d), objects)


def _bottom(mid: int, clouds: dict, assume_resting: bool) -> float:
    """Height of an object's bottom: the highest surface under it (the plane, or the points of an
    object whose footprint holds this one's centre: a box it stands on, a tray's floor), never above
    its lowest seen point."""
    P = clouds[mid][0]
    zmin = float(P[:, 2].min())
    centre = P[:, :2].mean(axis=0)
    lo_xy, hi_xy = P[:, :2].min(axis=0) - SUPPORT_REACH, P[:, :2].max(axis=0) + SUPPORT_REACH
    surface = None
    for other, (Q, _) in clouds.items():
        if other == mid or not ((Q[:, :2].min(axis=0) <= centre).all() and (centre <= Q[:, :2].max(axis=0)).all()):
            continue
        near = Q[((Q[:, :2] >= lo_xy) & (Q[:, :2] <= hi_xy)).all(axis=1)]
        z = near[near[:, 2] <= zmin + 0.01, 2]
        if len(z) >= 5:
            # the highest well-populated 4 mm layer: a flat top or floor, not a wall's scattered points
            bins = np.floor((z - z.min()) / 0.004).astype(int)
            counts = np.bincount(bins)
            layer = int(np.flatnonzero(counts >= max(3, 0.2 * counts.max()))[-1])
            h = float(np.median(z[bins == layer]))
            surface = h if surface is None else max(surface, h)
    if surface is not None:
        return min(surface, zmin)
    if assume_resting or zmin < SNAP_TO_PLANE:
        return 0.0
    return zmin


def _complete_box(P: np.ndarray, mask: np.ndarray, bottom: float, K, T: np.ndarray) -> Box3D:
    """The gravity-aligned box, with the side hidden from the camera completed by symmetry.

    Seen from one viewpoint the far side of an object is hidden, so its seen points pull the
    centre toward the camera. Along the horizontal viewing direction the centre is taken as the
    farther of (a) the middle of the seen extent and (b) where the ray through the centre of the
    object's 2D box meets the object's mid-height; the seen points are then mirrored through that
    centre before the footprint rectangle is fitted."""
    top = float(P[:, 2].max())
    zmid = (top + bottom) / 2
    xy = P[:, :2]
    view = xy.mean(axis=0) - T[:2, 3]  # from the camera's foot (gravity x, y of the camera) to the object
    view = view / max(np.linalg.norm(view), 1e-9)
    side = np.array([-view[1], view[0]])
    s, t = xy @ view, xy @ side
    s_c, t_c = (s.min() + s.max()) / 2, (t.min() + t.max()) / 2
    rows, cols = np.nonzero(mask)
    u, v = (cols.min() + cols.max() + 1) / 2, (rows.min() + rows.max() + 1) / 2
    fx, fy, cx, cy = K
    ray = T[:3, :3] @ np.array([(u - cx) / fx, (v - cy) / fy, 1.0])
    if ray[2] < -1e-6:
        hit = T[:3, 3] + (zmid - T[2, 3]) / ray[2] * ray
        s_c = max(s_c, float(hit[:2] @ view))
    c = s_c * view + t_c * side
    both = np.concatenate([xy, 2 * c - xy])
    box = gravity_box(np.c_[both, np.full(len(both), top)], bottom=bottom)
    return Box3D(np.array([box.center[0], box.center[1], zmid]), np.array([box.size[0], box.size[1], top - bottom]),
                 box.yaw)


def lift_rgb(rgb: np.ndarray, depth_estimator: DepthEstimator, segmenter: Segmenter,
             intrinsics: tuple[float, float, float, float] | None = None) -> Lifted:
    """lift() with depth and instances from the given models."""
    depth = np.asarray(depth_estimator(rgb), dtype=np.float32)
    instances, labels = segmenter(rgb)
    return lift(depth, instances, labels, intrinsics)
