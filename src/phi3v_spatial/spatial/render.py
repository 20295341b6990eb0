"""Rendering with pybullet's CPU renderer (TinyRenderer): RGB, metric depth and instance ids.

Runs headless (DIRECT mode). Depth is converted from the renderer's nonlinear buffer to metric
z-depth; the segmentation buffer gives, per pixel, the pybullet body in front.
"""
from __future__ import annotations

import numpy as np

from .camera import Camera, gl_projection_matrix, gl_view_matrix, linear_depth

_AWAY = [0.0, 0.0, -100.0]


def render(world, camera: Camera, light: dict, crop: tuple[int, int, int, int] | None = None):
    """(rgb (H, W, 3) uint8, depth (H, W) float32 metres (0 = nothing), body ids (H, W) int32 (-1 = none)).

    With `crop` = (u0, v0, u1, v1) only that pixel window is rendered (it may extend past the image)."""
    p = world.p
    u0, v0, u1, v1 = crop if crop is not None else (0, 0, camera.width, camera.height)
    w, h = u1 - u0, v1 - v0
    out = p.getCameraImage(
        w, h, viewMatrix=gl_view_matrix(camera), projectionMatrix=gl_projection_matrix(camera, crop),
        renderer=p.ER_TINY_RENDERER, shadow=int(light.get("shadow", True)), lightDirection=light["direction"],
        lightColor=light["color"], lightAmbientCoeff=light["ambient"], lightDiffuseCoeff=light["diffuse"],
        lightSpecularCoeff=light["specular"], physicsClientId=world.client)
    rgb = np.asarray(out[2], dtype=np.uint8).reshape(h, w, 4)[:, :, :3]
    depth = linear_depth(np.asarray(out[3], dtype=np.float32).reshape(h, w), camera.near, camera.far)
    seg = np.asarray(out[4], dtype=np.int64).reshape(h, w)
    seg = np.where(seg < 0, -1, seg & ((1 << 24) - 1)).astype(np.int32)  # drop link bits if any
    return np.ascontiguousarray(rgb), depth, seg


def render_alone(world, camera: Camera, body: int, others: list[int], crop: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean mask of `body` inside `crop` with the `others` moved out of view (amodal mask)."""
    p, kw = world.p, world.kw
    saved = [p.getBasePositionAndOrientation(b, **kw) for b in others]
    for b in others:
        p.resetBasePositionAndOrientation(b, _AWAY, [0, 0, 0, 1], **kw)
    try:
        _, _, seg = render(world, camera, {"direction": [0, 0, 1], "color": [1, 1, 1], "ambient": 1.0,
                                           "diffuse": 0.0, "specular": 0.0, "shadow": False}, crop)
    finally:
        for b, (pos, orn) in zip(others, saved):
            p.resetBasePositionAndOrientation(b, pos, orn, **kw)
    return seg == body
