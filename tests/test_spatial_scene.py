"""Rendered scenes checked against their stored facts with the test's own geometry: 2D boxes are
projections of the 3D shapes through the stored camera, depth lies on the stored surfaces, nothing
floats or interpenetrates, mirroring swaps left and right, and lifting RGB-D lands near the truth."""
import math

import numpy as np
import pytest

pytest.importorskip("pybullet")

from phi3v_spatial.spatial import facts  # noqa: E402
from phi3v_spatial.spatial.catalog import data_path  # noqa: E402
from phi3v_spatial.spatial.generate import generate_scene  # noqa: E402
from phi3v_spatial.spatial.lift import lift, lift_rgb  # noqa: E402
from phi3v_spatial.spatial.questions import make_samples  # noqa: E402
from phi3v_spatial.spatial.render import render  # noqa: E402
from phi3v_spatial.spatial.world import World, build_world  # noqa: E402

SEEDS = (0, 1, 3, 7, 18)  # tabletop with robot, tray, stacks, floor; every kind of object between them


@pytest.fixture(scope="module")
def world():
    w = World()
    yield w
    w.close()


@pytest.fixture(scope="module")
def scenes(world):
    return [generate_scene(world, seed, (640, 480)) for seed in SEEDS]


# ---- the test's own geometry (independent of the generator's code) ------------------------------

def _quat_matrix(q):
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _obj_vertices(path):
    return np.array([[float(v) for v in line.split()[1:4]] for line in open(path) if line.startswith("v ")])


def _shape_points(obj):
    g = obj.geometry
    if g["type"] == "box":
        local = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)]) * g["half_extents"]
    elif g["type"] == "sphere":
        t, p = np.meshgrid(np.linspace(0, math.pi, 90), np.linspace(0, 2 * math.pi, 180))
        local = g["radius"] * np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    elif g["type"] == "cylinder":
        a = np.linspace(0, 2 * math.pi, 360)
        ring = np.stack([g["radius"] * np.cos(a), g["radius"] * np.sin(a)], 1)
        local = np.concatenate([np.c_[ring, np.full(360, s * g["height"] / 2)] for s in (-1, 1)])
    else:
        local = _obj_vertices(data_path() / g["file"]) * g["scale"] @ _quat_matrix(g["frame_rotation"]).T + g["frame_position"]
    return local @ _quat_matrix(obj.orientation).T + obj.position


def _project(cam: dict, P):
    T = np.asarray(cam["world_to_camera"])
    Pc = P @ T[:3, :3].T + T[:3, 3]
    return np.stack([cam["fx"] * Pc[:, 0] / Pc[:, 2] + cam["cx"], cam["fy"] * Pc[:, 1] / Pc[:, 2] + cam["cy"]], 1)


def _mask_box(m):
    rows, cols = np.nonzero(m)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])


def _objects(scene):
    return [o for o in scene.objects if o.role == "object"]


# ---- 2D boxes ----------------------------------------------------------------------------------

def test_every_2d_box_is_the_projection_of_the_3d_shape(scenes):
    fully_visible = 0
    for scene, _, _, mask in scenes:
        cam = scene.to_dict()["camera"]
        W, H = cam["width"], cam["height"]
        for o in _objects(scene):
            uv = _project(cam, _shape_points(o))
            proj = np.r_[uv.min(0), uv.max(0)]
            clipped = np.clip(proj, 0, [W, H, W, H])
            assert np.abs(np.asarray(o.bbox_2d) - clipped).max() <= 2.0, (scene.scene_id, o.name)
            if o.visible_pixels:
                visible = _mask_box(mask == o.mask_id)
                assert list(visible) == o.bbox_2d_visible
                assert (visible[:2] >= clipped[:2] - 2).all() and (visible[2:] <= clipped[2:] + 2).all()
            if o.visible_fraction >= 0.999 and not o.truncated:
                # unoccluded and inside the image: the mask's box IS the projection
                assert np.abs(_mask_box(mask == o.mask_id) - proj).max() <= 2.0, (scene.scene_id, o.name, proj)
                fully_visible += 1
    assert fully_visible >= 15


def test_depth_under_each_mask_lies_on_the_stored_surface(scenes):
    checked = set()
    for scene, _, depth, mask in scenes:
        cam = scene.to_dict()["camera"]
        c2w = np.linalg.inv(np.asarray(cam["world_to_camera"]))
        for o in _objects(scene):
            m = mask == o.mask_id
            m &= np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)  # off the edges
            rows, cols = np.nonzero(m)
            if len(rows) < 20:
                continue
            z = depth[rows, cols].astype(np.float64)
            Pc = np.stack([(cols + 0.5 - cam["cx"]) / cam["fx"] * z, (rows + 0.5 - cam["cy"]) / cam["fy"] * z, z], 1)
            Pw = Pc @ c2w[:3, :3].T + c2w[:3, 3]
            q = (Pw - o.position) @ _quat_matrix(o.orientation)  # object frame
            g, tol = o.geometry, 0.004
            if g["type"] == "box":
                h = np.asarray(g["half_extents"])
                assert (np.abs(q) <= h + tol).all()
                assert (np.abs(np.abs(q) - h).min(axis=1) <= tol).all()
            elif g["type"] == "sphere":
                assert np.abs(np.linalg.norm(q, axis=1) - g["radius"]).max() <= tol
            elif g["type"] == "cylinder":
                radial, hz = np.hypot(q[:, 0], q[:, 1]), g["height"] / 2
                assert (radial <= g["radius"] + tol).all() and (np.abs(q[:, 2]) <= hz + tol).all()
                assert (np.minimum(np.abs(radial - g["radius"]), np.abs(np.abs(q[:, 2]) - hz)) <= tol).all()
            else:  # meshes: inside the stored gravity-aligned 3D box
                c, s = math.cos(o.box.yaw), math.sin(o.box.yaw)
                local = (Pw - o.box.center) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
                assert (np.abs(local) <= o.box.size / 2 + tol).all(), (scene.scene_id, o.name)
            checked.add(g["type"])
    assert checked == {"box", "sphere", "cylinder", "mesh"}


# ---- physics -----------------------------------------------------------------------------------

def test_nothing_floats_or_interpenetrates_and_everything_stays_put(world, scenes):
    p, kw = world.p, world.kw
    stacked = 0
    for scene, _, _, _ in scenes:
        bodies = build_world(world, scene, robot=False)
        p.performCollisionDetection(**kw)
        ids = list(bodies)
        for i, a in enumerate(ids):
            for b in ids[i + 1:] + [None]:
                other = world.support_body if b is None else bodies[b]
                for c in p.getClosestPoints(bodies[a], other, 0.0, **kw):
                    assert c[8] > -0.004, (scene.scene_id, a, b, c[8])  # no interpenetration
        for o in _objects(scene):
            holders = [world.support_body if m == 0 else bodies[m] for m in o.supported_by]
            assert holders, o.name
            for h in holders:  # touching what holds it up, from below
                gap = min(c[8] for c in p.getClosestPoints(bodies[o.mask_id], h, 0.01, **kw))
                assert gap < 0.002, (scene.scene_id, o.name, gap)
            if 0 in o.supported_by:
                assert o.box.bottom == pytest.approx(0.0, abs=0.004)
            stacked += o.supported_by != [0]
        start = {m: p.getBasePositionAndOrientation(b, **kw) for m, b in bodies.items()}
        for _ in range(120):  # half a second: objects at rest stay at rest
            p.stepSimulation(**kw)
        for m, b in bodies.items():
            pos, orn = p.getBasePositionAndOrientation(b, **kw)
            assert np.linalg.norm(np.subtract(pos, start[m][0])) < 0.005, (scene.scene_id, m)
            assert abs(abs(np.dot(orn, start[m][1])) - 1) < 1e-3
    assert stacked >= 3


def test_robot_clear_of_objects(world, scenes):
    p, kw = world.p, world.kw
    with_robot = 0
    for scene, _, _, _ in scenes:
        if not scene.robot:
            continue
        with_robot += 1
        bodies = build_world(world, scene)
        robot = bodies[scene.robot["mask_id"]]
        p.performCollisionDetection(**kw)
        for o in _objects(scene):
            assert not p.getClosestPoints(robot, bodies[o.mask_id], 0.01, **kw)
    assert with_robot >= 2


def test_generation_is_deterministic(world, scenes):
    scene, rgb, depth, mask = generate_scene(world, SEEDS[1], (640, 480))
    s0, rgb0, depth0, mask0 = scenes[1]
    assert scene.to_dict() == s0.to_dict()
    assert np.array_equal(rgb, rgb0) and np.array_equal(depth, depth0) and np.array_equal(mask, mask0)


# ---- viewpoint relations -----------------------------------------------------------------------

def test_left_right_follow_the_image(scenes):
    """'a left of b' (as decided) means a's pixels are left of b's in the picture."""
    decided = 0
    for scene, _, _, mask in scenes:
        objs = [o for o in _objects(scene) if o.visible_fraction > 0.9]
        for a in objs:
            for b in objs:
                if a is not b and facts.relation(scene, a, b, "left") is True:
                    ua = np.nonzero(mask == a.mask_id)[1].mean()
                    ub = np.nonzero(mask == b.mask_id)[1].mean()
                    assert ua < ub, (scene.scene_id, a.name, b.name)
                    decided += 1
    assert decided >= 10


def test_mirrored_scene_swaps_every_left_right_answer(scenes):
    swapped = 0
    for scene, _, _, mask in scenes:
        mirror = facts.mirror_scene(scene)
        objs = _objects(scene)
        for a in objs:
            for b in objs:
                if a is b:
                    continue
                ma, mb = mirror.object(a.mask_id), mirror.object(b.mask_id)
                for rel in ("left", "right"):
                    r, rm = facts.relation(scene, a, b, rel), facts.relation(mirror, ma, mb, rel)
                    assert (r is None and rm is None) or rm == (not r)
                    swapped += r is not None
                for rel in ("front", "above", "bigger", "taller", "wider"):
                    assert facts.relation(mirror, ma, mb, rel) == facts.relation(scene, a, b, rel)
                h, hm = facts.clock_direction(scene, a, b), facts.clock_direction(mirror, ma, mb)
                assert (h is None and hm is None) or hm % 12 == (12 - h) % 12
        # every left/right question asked about the mirror gets the opposite answer in the original
        for s in make_samples(mirror, None, ["relation_yesno", "relation_choice"], 40):
            rel = s["meta"]["relation"]
            if rel not in ("left", "right") or s["task"] != "relation_yesno":
                continue
            a, b = scene.object(s["meta"]["subject_id"]), scene.object(s["meta"]["object_id"])
            assert facts.relation(scene, a, b, rel) == (not s["answer"]["value"])
    assert swapped >= 20


def test_mirrored_scene_renders_as_the_flipped_image(world, scenes):
    """Rebuild the boxes, balls and cylinders of a scene and of its mirror: the mirror's instance
    mask is the original's flipped left-right."""
    scene = scenes[3][0]
    keep = [o.mask_id for o in _objects(scene) if o.geometry["type"] != "mesh"]
    assert len(keep) >= 3
    light = {"direction": [0, 0, 1], "color": [1, 1, 1], "ambient": 1.0, "diffuse": 0.0, "specular": 0.0, "shadow": False}
    masks = []
    for s in (scene, facts.mirror_scene(scene)):
        bodies = build_world(world, s, mask_ids=keep, robot=False)
        _, _, seg = render(world, s.camera, light)
        masks.append(np.select([seg == b for b in bodies.values()], list(bodies), 0))
    original, mirrored = masks
    on = (original > 0) | (mirrored[:, ::-1] > 0)
    assert (original == mirrored[:, ::-1])[on].mean() > 0.98
    assert on.sum() > 2000


# ---- lifting RGB-D -----------------------------------------------------------------------------

def test_lifted_centres_and_heights_match_the_truth(scenes):
    checked = 0
    for scene, rgb, depth, mask in scenes:
        cam = scene.to_dict()["camera"]
        labels = {o.mask_id: o.name for o in scene.objects}
        lifted = lift(depth, mask, labels, (cam["fx"], cam["fy"], cam["cx"], cam["cy"]))
        to_world = np.linalg.inv(np.asarray(cam["world_to_camera"])) @ np.linalg.inv(lifted.camera_to_gravity)
        assert lifted.camera_to_gravity[:3, :3] @ lifted.plane[0] == pytest.approx([0, 0, 1], abs=1e-9)
        up = to_world[:3, :3] @ [0, 0, 1]
        assert up[2] > 0.9999  # the fitted support plane is the true horizontal
        for lo in lifted.objects:
            o = scene.object(lo.mask_id)
            if o.role != "object" or o.visible_fraction < 0.999 or o.truncated or o.shape == "teddy bear":
                continue
            centre = to_world[:3, :3] @ lo.box.center + to_world[:3, 3]
            assert np.linalg.norm(centre - o.center) < 0.02, (scene.scene_id, o.name, centre - o.center)
            assert abs(lo.box.size[2] - o.height) / o.height < 0.05, (scene.scene_id, o.name)
            checked += 1
    assert checked >= 15


def test_lift_plugs_in_depth_and_segmentation_models(scenes):
    scene, rgb, depth, mask = scenes[2]
    labels = {o.mask_id: o.name for o in scene.objects}

    class Depth:
        def __call__(self, image):
            assert image is rgb
            return depth

    class Segment:
        def __call__(self, image):
            return mask, labels

    cam = scene.camera
    K = (cam.fx, cam.fy, cam.cx, cam.cy)
    a, b = lift_rgb(rgb, Depth(), Segment(), K), lift(depth, mask, labels, K)
    assert [o.label for o in a.objects] == [o.label for o in b.objects]
    assert np.allclose([o.box.center for o in a.objects], [o.box.center for o in b.objects])
    # unknown intrinsics: an assumed focal length still gives boxes, with the right labels
    c = lift(depth, mask, labels)
    assert sorted(o.label for o in c.objects) == sorted(o.label for o in b.objects)
