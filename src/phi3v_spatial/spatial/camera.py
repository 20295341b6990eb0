"""Pinhole camera: intrinsics, extrinsics, projection and back-projection, and pybullet's matrices.

Conventions (every module of the data engine uses these):
- World frame: x forward, y left, z up, metres (the frame of the robot prompt).
- Camera frame: OpenCV, x right, y down, z forward along the optical axis.
- `world_to_camera` is the 4x4 rigid transform taking world points to camera points.
- Pixel coordinates are continuous: pixel (col i, row j) covers [i, i+1) x [j, j+1) and its centre
  is (i + 0.5, j + 0.5); u = fx * x / z + cx, v = fy * y / z + cy.
- Depth is metric z-depth (distance along the optical axis), not the length of the ray.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

# OpenCV camera axes expressed in OpenGL camera axes (x right, y up, z backward) and back.
_CV_FROM_GL = np.diag([1.0, -1.0, -1.0, 1.0])
_HALF = 0.5


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    world_to_camera: np.ndarray = field(default_factory=lambda: np.eye(4))  # (4, 4)
    near: float = 0.02
    far: float = 20.0

    def __post_init__(self):
        if self.width <= 0 or self.height <= 0 or self.fx <= 0 or self.fy <= 0:
            raise DataError(f"bad camera: size {self.width}x{self.height}, fx={self.fx}, fy={self.fy} (all must be > 0)")
        T = np.asarray(self.world_to_camera, dtype=np.float64)
        if T.shape != (4, 4):
            raise DataError(f"world_to_camera must be 4x4, got shape {T.shape}")
        object.__setattr__(self, "world_to_camera", T)

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def camera_to_world(self) -> np.ndarray:
        return rigid_inverse(self.world_to_camera)

    @property
    def position(self) -> np.ndarray:
        """Camera centre in the world frame."""
        return self.camera_to_world[:3, 3]

    @property
    def right(self) -> np.ndarray:
        """The camera's +x (image right) axis in the world frame."""
        return self.camera_to_world[:3, 0]

    @property
    def forward(self) -> np.ndarray:
        """The optical axis (+z) in the world frame."""
        return self.camera_to_world[:3, 2]

    def to_dict(self) -> dict:
        return {
            "width": self.width, "height": self.height,
            "fx": round(self.fx, 6), "fy": round(self.fy, 6), "cx": round(self.cx, 6), "cy": round(self.cy, 6),
            "world_to_camera": np.round(self.world_to_camera, 9).tolist(),
            "near": self.near, "far": self.far,
            "convention": "opencv: x right, y down, z forward; world x forward, y left, z up; depth is z-depth",
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Camera":
        try:
            return cls(int(d["width"]), int(d["height"]), float(d["fx"]), float(d["fy"]), float(d["cx"]),
                       float(d["cy"]), np.asarray(d["world_to_camera"], dtype=np.float64),
                       float(d.get("near", 0.02)), float(d.get("far", 20.0)))
        except KeyError as exc:
            raise DataError(f"camera is missing the field {exc.args[0]!r}") from None


def rigid_inverse(T: np.ndarray) -> np.ndarray:
    R, t = T[:3, :3], T[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ t
    return out


def intrinsics_from_fov(width: int, height: int, fov_y_deg: float) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of a centred pinhole with square pixels and the given vertical field of view."""
    fy = height / (2.0 * math.tan(math.radians(fov_y_deg) / 2.0))
    return fy, fy, width / 2.0, height / 2.0


def look_at(eye, target, width: int, height: int, fov_y_deg: float, up=(0.0, 0.0, 1.0), **kw) -> Camera:
    """A camera at `eye` looking at `target` with no roll (image x axis horizontal)."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:
        raise DataError("look_at: the viewing direction is parallel to up; tilt the camera")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return Camera(width, height, *intrinsics_from_fov(width, height, fov_y_deg), rigid_inverse(c2w), **kw)


def to_camera(camera: Camera, points_world: np.ndarray) -> np.ndarray:
    """(N, 3) world points -> (N, 3) camera-frame points."""
    P = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
    return P @ camera.world_to_camera[:3, :3].T + camera.world_to_camera[:3, 3]


def project(camera: Camera, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) world points -> ((N, 2) continuous pixel coordinates, (N,) z-depth)."""
    Pc = to_camera(camera, points_world)
    z = Pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([camera.fx * Pc[:, 0] / z + camera.cx, camera.fy * Pc[:, 1] / z + camera.cy], axis=1)
    return uv, z


def backproject(camera_or_K, depth: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Pixels with depth > 0 (and inside `mask`) -> (N, 3) camera-frame points, taken at pixel centres.

    `camera_or_K` is a Camera or an (fx, fy, cx, cy) tuple."""
    fx, fy, cx, cy = ((camera_or_K.fx, camera_or_K.fy, camera_or_K.cx, camera_or_K.cy)
                      if isinstance(camera_or_K, Camera) else camera_or_K)
    valid = depth > 0
    if mask is not None:
        valid &= mask
    rows, cols = np.nonzero(valid)
    z = depth[rows, cols].astype(np.float64)
    x = (cols + 0.5 - cx) / fx * z
    y = (rows + 0.5 - cy) / fy * z
    return np.stack([x, y, z], axis=1)


def transform(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    P = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return P @ T[:3, :3].T + T[:3, 3]


# ---- pybullet (OpenGL) matrices -------------------------------------------------------------

def gl_view_matrix(camera: Camera) -> list[float]:
    """pybullet's viewMatrix (column-major 16 floats) for this camera."""
    T_gl = _CV_FROM_GL @ camera.world_to_camera  # world -> OpenGL camera (diag is its own inverse)
    return T_gl.T.reshape(-1).tolist()


def gl_projection_matrix(camera: Camera, crop: tuple[int, int, int, int] | None = None) -> list[float]:
    """pybullet's projectionMatrix (column-major) for the full image, or for the pixel window
    crop = (u0, v0, u1, v1) rendered at the same pixel density (an off-centre frustum)."""
    u0, v0, u1, v1 = crop if crop is not None else (0, 0, camera.width, camera.height)
    n, f = camera.near, camera.far
    # TinyRenderer samples pixel (i, j) at the window point (i, j + 1) (x right, y down), not at its
    # centre (i + 0.5, j + 0.5): shift the window half a pixel so it samples at pixel centres.
    u0, u1, v0, v1 = u0 + _HALF, u1 + _HALF, v0 - _HALF, v1 - _HALF
    left, right = (u0 - camera.cx) / camera.fx * n, (u1 - camera.cx) / camera.fx * n
    top, bottom = (camera.cy - v0) / camera.fy * n, (camera.cy - v1) / camera.fy * n
    # glFrustum
    M = np.zeros((4, 4))
    M[0, 0] = 2 * n / (right - left)
    M[1, 1] = 2 * n / (top - bottom)
    M[0, 2] = (right + left) / (right - left)
    M[1, 2] = (top + bottom) / (top - bottom)
    M[2, 2] = -(f + n) / (f - n)
    M[2, 3] = -2 * f * n / (f - n)
    M[3, 2] = -1.0
    return M.T.reshape(-1).tolist()


def linear_depth(buffer: np.ndarray, near: float, far: float) -> np.ndarray:
    """pybullet's nonlinear depth buffer in [0, 1] -> metric z-depth; 0 where nothing was hit."""
    buffer = np.asarray(buffer, dtype=np.float64)
    z = far * near / (far - (far - near) * buffer)
    z[buffer >= 1.0 - 1e-7] = 0.0
    return z.astype(np.float32)
