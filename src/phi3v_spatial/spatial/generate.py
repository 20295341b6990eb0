"""One synthetic scene from one seed: layout, physics, robot, camera, light, render, facts.

`generate_scene(world, seed)` is deterministic in (seed, image size): every random draw comes from
numpy generators seeded with (seed, attempt), pybullet runs with deterministic pair ordering, and
the world is reset before each scene. A draw that fails a check (something fell, floats,
interpenetrates, or the camera sees fewer than two objects well) is redrawn with the next attempt.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import __version__
from ..errors import DataError
from . import catalog
from .camera import Camera, look_at, project
from .geometry import bbox_of_mask, gravity_box
from .render import render, render_alone
from .scene import Scene, SceneObject
from .world import (ROBOT_URDF, World, check_resting, initial_heights, mass_of, sample_layout, sample_support,
                    yaw_quat)

GENERATOR = f"phi3v_spatial {__version__} spatial-engine 2"
MAX_ATTEMPTS = 12
CAMERA_TRIES = 4
# an object is "well seen" (questions may name it) with this much of it visible
MIN_VISIBLE_FRACTION = 0.3
MIN_VISIBLE_PIXELS_PER_MPIX = 500  # 154 pixels at 640x480
MAX_ROBOT_COVERAGE = 0.2  # of the image


def scene_id_for(seed: int) -> str:
    return f"s{seed:010d}"


def min_visible_pixels(camera: Camera) -> int:
    return max(40, int(MIN_VISIBLE_PIXELS_PER_MPIX * camera.width * camera.height / 1e6))


def well_seen(obj: SceneObject, camera: Camera) -> bool:
    return (obj.role == "object" and obj.visible_fraction >= MIN_VISIBLE_FRACTION
            and obj.visible_pixels >= min_visible_pixels(camera))


def generate_scene(world: World, seed: int, image_size: tuple[int, int] = (640, 480)):
    """(Scene, rgb (H, W, 3) uint8, depth (H, W) float32 metres, mask (H, W) uint8 of mask ids)."""
    width, height = image_size
    if width < 32 or height < 32:
        raise DataError(f"image size {width}x{height} is too small (need at least 32x32)")
    reasons = []
    for attempt in range(MAX_ATTEMPTS):
        rng = np.random.default_rng([seed, attempt])
        setting = "tabletop" if rng.random() < 0.75 else "floor"
        support = sample_support(rng, setting)
        placements = sample_layout(rng, setting)
        if len([pl for pl in placements if not pl.kind.container]) < 2:
            reasons.append("too few objects fit")
            continue
        world.reset()
        world.add_support(support)
        for pl, z in zip(placements, initial_heights(placements)):
            pl.body = world.add_object(pl.geometry, pl.rgba, [*pl.xy, z], yaw_quat(pl.yaw), mass_of(pl.geometry))
        bodies = [pl.body for pl in placements]
        if not world.settle(bodies):
            reasons.append("objects did not come to rest")
            continue
        why = check_resting(world, bodies, support)
        if why:
            reasons.append(why)
            continue
        objects = [_object_facts(world, pl, i + 1) for i, pl in enumerate(placements)]
        robot = None
        if setting == "tabletop" and rng.random() < 0.7:
            robot = _place_robot(world, rng, bodies, objects, mask_id=len(objects) + 1)
        body_of = {o.mask_id: pl.body for o, pl in zip(objects, placements)}
        if robot:
            body_of[robot["mask_id"]] = world.robot_body
        for _ in range(CAMERA_TRIES):
            camera = _sample_camera(rng, objects, width, height)
            light = _sample_light(rng)
            rgb, depth, seg = render(world, camera, light)
            if robot and (seg == world.robot_body).mean() > MAX_ROBOT_COVERAGE:
                continue  # the camera is up against the arm
            scene_objects = _image_facts(world, camera, objects, robot, body_of, seg)
            if sum(well_seen(o, camera) for o in scene_objects) >= 2:
                mask = np.zeros(seg.shape, dtype=np.uint8)
                for mid, body in body_of.items():
                    mask[seg == body] = mid
                sid = scene_id_for(seed)
                scene = Scene(
                    scene_id=sid, camera=camera, objects=scene_objects, seed=seed, source="synthetic", setting=setting,
                    support=support, robot=robot, light=light, generator=GENERATOR,
                    files={"image": f"images/{sid}.png", "depth": f"depth/{sid}.png", "mask": f"masks/{sid}.png"})
                return scene.normalized(), rgb, depth, mask
        reasons.append("no camera saw two objects well")
    raise DataError(f"seed {seed}: no valid scene in {MAX_ATTEMPTS} attempts ({'; '.join(reasons[-3:])})")


def _object_facts(world: World, pl, mask_id: int) -> SceneObject:
    pos, orn = world.pose(pl.body)
    V = catalog.world_vertices(pl.geometry, pos, orn)
    box = gravity_box(V)
    supporters = world.supporters(pl.body)
    return SceneObject(
        mask_id=mask_id, name=f"{pl.colour} {pl.kind.shape}", shape=pl.kind.shape, colour=pl.colour, box=box,
        position=pos, orientation=orn, geometry=pl.geometry, rgba=[round(float(v), 3) for v in pl.rgba],
        supported_by=sorted({0 if b == world.support_body else b for b in supporters}),  # bodies mapped below
    )


def _place_robot(world: World, rng, bodies, objects, mask_id: int) -> dict | None:
    world.add_robot()
    top = max(o.box.top for o in objects)
    for _ in range(6):
        target = [rng.uniform(0.30, 0.55), rng.uniform(-0.25, 0.25), rng.uniform(max(0.25, top + 0.15), 0.55)]
        yaw = float(rng.uniform(-math.pi / 2, math.pi / 2))
        pitch = math.pi / 2 - (float(rng.uniform(0.0, 0.5)) if rng.random() < 0.5 else 0.0)  # down or tilted forward
        joints, tool = world.pose_robot(target, (0.0, pitch, yaw))
        reached = math.dist(target, (tool["x"], tool["y"], tool["z"])) < 0.01 and abs(tool["pitch"] - pitch) < 0.02
        if reached and world.robot_clear(bodies):
            return {"model": ROBOT_URDF, "base_position": [0.0, 0.0, 0.0], "base_orientation": [0.0, 0.0, 0.0, 1.0],
                    "joints": [round(q, 6) for q in joints], "mask_id": mask_id, "grasp": 1.0,
                    "tool_pose": {k: round(float(v), 6) for k, v in tool.items()}}
    world.p.removeBody(world.robot_body, **world.kw)
    world.robot_body = -1
    return None


def _sample_camera(rng, objects: list[SceneObject], width: int, height: int) -> Camera:
    centres = np.array([o.center for o in objects])
    target = centres.mean(axis=0) + np.r_[rng.normal(0, 0.04, 2), 0.0]
    corners = np.concatenate([o.box.corners() for o in objects])
    radius = float(np.linalg.norm(corners - target, axis=1).max())
    fov_y = float(rng.uniform(40, 62))
    fy = height / (2 * math.tan(math.radians(fov_y) / 2))
    half = min(math.radians(fov_y) / 2, math.atan(width / 2 / fy))
    elevation = math.radians(rng.uniform(20, 70))
    azimuth = float(rng.uniform(-math.pi, math.pi))
    dist = max(0.45, radius / math.sin(half) * float(rng.uniform(0.9, 1.25)))
    eye = target + dist * np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                                    math.sin(elevation)])
    return look_at(eye, target, width, height, fov_y)


def _sample_light(rng) -> dict:
    a, e = rng.uniform(-math.pi, math.pi), math.radians(rng.uniform(35, 80))
    return {"direction": [round(math.cos(e) * math.cos(a), 4), round(math.cos(e) * math.sin(a), 4), round(math.sin(e), 4)],
            "color": [round(float(v), 3) for v in 1.0 - 0.12 * rng.random(3)],
            "ambient": round(float(rng.uniform(0.45, 0.65)), 3), "diffuse": round(float(rng.uniform(0.35, 0.55)), 3),
            "specular": round(float(rng.uniform(0.05, 0.25)), 3), "shadow": True}


def _image_facts(world: World, camera: Camera, objects, robot, body_of: dict, seg: np.ndarray) -> list[SceneObject]:
    """Per object: projected box, visible box and pixels, visible fraction; plus the robot as an object."""
    W, H = camera.width, camera.height
    mask_of_body = {b: m for m, b in body_of.items()}
    proj = {}
    for o in objects:
        uv, z = project(camera, catalog.world_vertices(o.geometry, o.position, o.orientation))
        proj[o.mask_id] = (uv.min(axis=0), uv.max(axis=0), bool((z <= camera.near).any()))
    if robot:
        lo, hi = _robot_aabb(world)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        uv, _ = project(camera, corners)
        proj[robot["mask_id"]] = (uv.min(axis=0), uv.max(axis=0), False)
    out = []
    for o in objects:
        lo, hi, behind = proj[o.mask_id]
        body = body_of[o.mask_id]
        visible = seg == body
        n_vis = int(visible.sum())
        truncated = behind or lo[0] < 0 or lo[1] < 0 or hi[0] > W or hi[1] > H
        overlapped = any(m != o.mask_id and (lo < hi2).all() and (lo2 < hi).all() for m, (lo2, hi2, _) in proj.items())
        fraction = 1.0 if n_vis else 0.0
        if n_vis and (truncated or overlapped) and not behind:
            crop = (int(math.floor(lo[0])) - 2, int(math.floor(lo[1])) - 2, int(math.ceil(hi[0])) + 2, int(math.ceil(hi[1])) + 2)
            if (crop[2] - crop[0]) * (crop[3] - crop[1]) <= 4 * W * H:
                others = [b for b in body_of.values() if b != body]
                n_alone = int(render_alone(world, camera, body, others, crop).sum())
                fraction = min(1.0, n_vis / max(n_alone, 1))
        out.append(dataclasses.replace(
            o, bbox_2d=[float(np.clip(lo[0], 0, W)), float(np.clip(lo[1], 0, H)), float(np.clip(hi[0], 0, W)),
                        float(np.clip(hi[1], 0, H))],
            bbox_2d_visible=bbox_of_mask(visible), visible_pixels=n_vis, visible_fraction=fraction, truncated=truncated,
            supported_by=sorted(0 if b == 0 else mask_of_body[b] for b in o.supported_by)))
    if robot:
        rmask = seg == body_of[robot["mask_id"]]
        lo, hi = _robot_aabb(world)
        out.append(SceneObject(
            mask_id=robot["mask_id"], name="robot arm", shape="robot arm", colour=None, role="robot",
            box=gravity_box(np.array([lo, hi])), bbox_2d_visible=bbox_of_mask(rmask), visible_pixels=int(rmask.sum()),
            visible_fraction=1.0 if rmask.any() else 0.0, supported_by=[0]))
    return out


def _robot_aabb(world: World) -> tuple[np.ndarray, np.ndarray]:
    p, kw, r = world.p, world.kw, world.robot_body
    boxes = [p.getAABB(r, link, **kw) for link in range(-1, p.getNumJoints(r, **kw))]
    lo = np.min([b[0] for b in boxes], axis=0)
    hi = np.max([b[1] for b in boxes], axis=0)
    return lo, hi
