"""Geometry and camera helpers of the data engine (numpy only)."""
import math

import numpy as np
import pytest

from phi3v_spatial.spatial.camera import Camera, backproject, look_at, project, rigid_inverse, transform
from phi3v_spatial.spatial.geometry import (bbox_of_mask, gravity_box, interior_point, matrix_to_quat, matrix_to_rpy,
                                            min_area_rect, normalize_box, quat_to_matrix, rpy_to_matrix)


def test_rpy_and_quaternion_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        r, p, y = rng.uniform(-3, 3), rng.uniform(-1.5, 1.5), rng.uniform(-3, 3)
        R = rpy_to_matrix(r, p, y)
        assert np.allclose(rpy_to_matrix(*matrix_to_rpy(R)), R, atol=1e-9)
        assert np.allclose(quat_to_matrix(matrix_to_quat(R)), R, atol=1e-9)


def test_pitch_half_pi_points_the_tool_x_axis_down():
    R = rpy_to_matrix(0.0, math.pi / 2, 0.3)
    assert np.allclose(R[:, 0], [0, 0, -1], atol=1e-12)
    roll, pitch, yaw = matrix_to_rpy(R)
    assert (roll, pitch) == (0.0, pytest.approx(math.pi / 2)) and yaw == pytest.approx(0.3)


def test_min_area_rect_recovers_rotated_rectangles():
    rng = np.random.default_rng(1)
    for _ in range(20):
        L, W, yaw = rng.uniform(0.1, 0.5), rng.uniform(0.02, 0.09), rng.uniform(-1.5, 1.5)
        c = rng.uniform(-1, 1, 2)
        local = np.array([[sx * L / 2, sy * W / 2] for sx in (-1, 1) for sy in (-1, 1)])
        pts = np.concatenate([local, rng.uniform(-0.5, 0.5, (30, 2)) * [L, W]])
        R = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
        centre, size, got = min_area_rect(pts @ R.T + c)
        assert np.allclose(centre, c, atol=1e-9) and np.allclose(size, [L, W], atol=1e-9)
        assert abs(math.sin(got - yaw)) < 1e-9


def test_gravity_box_of_points():
    P = np.array([[x, y, z] for x in (0, 0.2) for y in (0, 0.1) for z in (0.05, 0.3)])
    box = gravity_box(P)
    assert np.allclose(box.center, [0.1, 0.05, 0.175]) and np.allclose(box.size, [0.2, 0.1, 0.25])
    assert np.allclose(np.sort(box.corners(), axis=0), np.sort(P, axis=0))


def test_project_backproject_round_trip():
    cam = look_at([0.0, 0.4, 0.9], [0.6, 0.0, 0.0], 640, 480, 50.0)
    assert np.allclose(rigid_inverse(rigid_inverse(cam.world_to_camera)), cam.world_to_camera)
    assert abs(cam.right[2]) < 1e-12  # no roll
    uv, z = project(cam, np.array([[0.6, 0.0, 0.0]]))
    assert np.allclose(uv, [[320, 240]]) and z[0] > 0
    depth = np.full((480, 640), 1.25, dtype=np.float32)
    pts = backproject(cam, depth)
    uv2, z2 = project(cam, transform(cam.camera_to_world, pts[:5]))
    assert np.allclose(z2, 1.25, atol=1e-6) and np.allclose(uv2 % 1, 0.5, atol=1e-6)


def test_camera_dict_round_trip():
    cam = look_at([1.0, 0.2, 0.7], [0.5, 0.0, 0.05], 320, 240, 45.0)
    back = Camera.from_dict(cam.to_dict())
    assert np.allclose(back.K, cam.K) and np.allclose(back.world_to_camera, cam.world_to_camera, atol=1e-8)


def test_mask_box_normalisation_and_interior_point():
    m = np.zeros((100, 200), bool)
    m[10:30, 50:150] = True
    assert bbox_of_mask(m) == [50, 10, 150, 30]
    assert normalize_box([50, 10, 150, 30], 200, 100) == [250, 100, 750, 300]
    x, y = interior_point(m)
    assert m[int(y), int(x)] and abs(y - 20) <= 1
    ring = np.zeros((60, 60), bool)
    ring[10:50, 10:50] = True
    ring[20:40, 20:40] = False
    x, y = interior_point(ring)
    assert ring[int(y), int(x)]
    assert bbox_of_mask(np.zeros((4, 4), bool)) is None
