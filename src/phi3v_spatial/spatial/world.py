"""The physical world of a scene, in pybullet: support, objects dropped and settled, a robot arm.

World frame: x forward, y left, z up, metres; z = 0 is the support surface (the table top or the
floor). On a table the robot's base sits at the origin, at the table's back edge, facing +x.
Objects are dropped a few millimetres above their support and simulated until at rest; a layout
is accepted only if nothing fell off, nothing still moves, no two bodies interpenetrate and every
object is held up from below (see `check_resting`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import catalog
from .geometry import matrix_to_quat, matrix_to_rpy, quat_to_matrix, rpy_to_matrix

TIME_STEP = 1.0 / 240.0
MAX_SETTLE_STEPS = 1440  # 6 s of simulated time
PENETRATION_TOL = 0.004  # metres of overlap allowed by the contact solver
SUPPORT_TOL = 0.004  # an object resting on the table has its lowest point within this of z = 0
TABLE_THICKNESS = 0.04
ROBOT_URDF = "franka_panda/panda.urdf"
ROBOT_ARM_JOINTS = tuple(range(7))
ROBOT_FINGER_JOINTS = (9, 10)
ROBOT_TCP_LINK = 11  # panda_grasptarget: the point between the fingertips
ROBOT_REST = (0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.79)
GRIPPER_MAX_OPENING = 0.08
# tool frame (x: approach, y: jaw axis, z = x cross y) expressed in the panda hand frame (z: approach)
TOOL_IN_HAND = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])

TABLE_COLOURS = ((0.66, 0.49, 0.33), (0.82, 0.71, 0.53), (0.42, 0.29, 0.18), (0.62, 0.62, 0.64), (0.88, 0.88, 0.85),
                 (0.30, 0.45, 0.35))
# (x range, y range) where objects are placed, per setting
REGIONS = {"tabletop": ((0.28, 0.82), (-0.38, 0.38)), "floor": ((0.5, 1.3), (-0.45, 0.45))}


@dataclass
class Placement:
    kind: catalog.Kind
    geometry: dict
    colour: str
    rgba: tuple
    xy: np.ndarray
    yaw: float
    on: int | None = None  # index of the placement it is stacked on or put into
    body: int = -1
    vertices: np.ndarray = field(default=None, repr=False)  # body frame


class World:
    """A pybullet DIRECT client, reused scene after scene (everything is reset in between)."""

    def __init__(self):
        import pybullet as p

        self.p = p
        self.client = p.connect(p.DIRECT)
        self.kw = {"physicsClientId": self.client}
        self.support_body = -1
        self.floor_body = -1
        self.robot_body = -1

    def close(self) -> None:
        if self.client >= 0:
            self.p.disconnect(**self.kw)
            self.client = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def reset(self) -> None:
        p = self.p
        p.resetSimulation(**self.kw)
        p.setPhysicsEngineParameter(deterministicOverlappingPairs=1, numSolverIterations=50, **self.kw)
        p.setGravity(0, 0, -9.81, **self.kw)
        p.setTimeStep(TIME_STEP, **self.kw)
        self.support_body = self.floor_body = self.robot_body = -1

    # ---- support -----------------------------------------------------------------------------
    def add_support(self, support: dict) -> None:
        """The floor, and for a tabletop the table whose top is z = 0."""
        p, kw = self.p, self.kw
        floor_z = -support["height"] if support["type"] == "table" else 0.0
        self.floor_body = p.loadURDF(str(catalog.data_path() / "plane.urdf"), [0, 0, floor_z], useFixedBase=True, **kw)
        floor = support["floor"]
        if floor["textured"]:
            p.changeVisualShape(self.floor_body, -1, rgbaColor=floor["rgba"], **kw)
        else:
            p.changeVisualShape(self.floor_body, -1, textureUniqueId=-1, rgbaColor=floor["rgba"], **kw)
        if support["type"] != "table":
            self.support_body = self.floor_body
            return
        (x0, x1), (y0, y1) = support["x_range"], support["y_range"]
        h = support["height"]
        top_half = [(x1 - x0) / 2, (y1 - y0) / 2, TABLE_THICKNESS / 2]
        leg = 0.03
        legs = [[x, y, -(h + TABLE_THICKNESS) / 2] for x in (x0 + 0.06, x1 - 0.06) for y in (y0 + 0.06, y1 - 0.06)]
        centre = [(x0 + x1) / 2, (y0 + y1) / 2, 0.0]
        half = [top_half] + [[leg, leg, (h - TABLE_THICKNESS) / 2]] * 4
        pos = [[0, 0, -TABLE_THICKNESS / 2]] + [[x - centre[0], y - centre[1], z] for x, y, z in legs]
        col = p.createCollisionShapeArray([p.GEOM_BOX] * 5, halfExtents=half, collisionFramePositions=pos, **kw)
        vis = p.createVisualShapeArray([p.GEOM_BOX] * 5, halfExtents=half, visualFramePositions=pos, **kw)
        self.support_body = p.createMultiBody(0, col, vis, centre, **kw)
        p.changeVisualShape(self.support_body, -1, rgbaColor=support["rgba"], specularColor=[0.2, 0.2, 0.2], **kw)
        p.changeDynamics(self.support_body, -1, lateralFriction=0.9, **kw)

    # ---- objects -----------------------------------------------------------------------------
    def add_object(self, geometry: dict, rgba, position, orientation, mass: float) -> int:
        body = catalog.create_body(self.p, self.client, geometry, rgba, position, orientation, mass)
        self.p.changeDynamics(body, -1, lateralFriction=0.8, rollingFriction=0.002, spinningFriction=0.002,
                              linearDamping=0.1, angularDamping=0.2, **self.kw)
        return body

    def pose(self, body: int) -> tuple[np.ndarray, np.ndarray]:
        pos, orn = self.p.getBasePositionAndOrientation(body, **self.kw)
        return np.asarray(pos), np.asarray(orn)

    def settle(self, bodies: list[int]) -> bool:
        """Step until every body is at rest; False if they still move after MAX_SETTLE_STEPS."""
        p, kw = self.p, self.kw
        calm = 0
        for step in range(1, MAX_SETTLE_STEPS + 1):
            p.stepSimulation(**kw)
            if step % 24:
                continue
            speeds = [p.getBaseVelocity(b, **kw) for b in bodies]
            if all(np.linalg.norm(v) < 2e-3 and np.linalg.norm(w) < 2e-2 for v, w in speeds):
                calm += 1
                if calm >= 2:
                    return True
            else:
                calm = 0
        return False

    def supporters(self, body: int) -> list[int]:
        """Bodies pushing this one up: contacts whose normal (from the other body to this) points up."""
        out = set()
        for c in self.p.getContactPoints(bodyA=body, **self.kw):
            other, normal_on_b = c[2], c[7]
            if normal_on_b[2] > 0.3 and c[8] < 0.002:
                out.add(other)
        return sorted(out)

    def max_penetration(self, bodies: list[int]) -> float:
        """Deepest overlap (metres, >= 0) between any two of these bodies, the support and the robot."""
        p, kw = self.p, self.kw
        p.performCollisionDetection(**kw)
        others = [b for b in (self.support_body, self.robot_body) if b >= 0]
        worst = 0.0
        for i, a in enumerate(bodies):
            for b in bodies[i + 1:] + others:
                for c in p.getClosestPoints(a, b, 0.0, **kw):
                    worst = max(worst, -c[8])
        return worst

    # ---- robot -------------------------------------------------------------------------------
    def add_robot(self) -> int:
        self.robot_body = self.p.loadURDF(str(catalog.data_path() / ROBOT_URDF), [0, 0, 0], useFixedBase=True,
                                          **self.kw)
        return self.robot_body

    def pose_robot(self, position, rpy, opening: float = GRIPPER_MAX_OPENING) -> tuple[list[float], dict]:
        """Joint angles reaching the tool pose (x forward approach convention, see robot.py);
        returns (joints, achieved tool pose)."""
        p, kw, r = self.p, self.kw, self.robot_body
        hand = rpy_to_matrix(*rpy) @ TOOL_IN_HAND.T
        for j, q in zip(ROBOT_ARM_JOINTS, ROBOT_REST):  # IK starts from a folded, elbow-up arm
            p.resetJointState(r, j, q, **kw)
        for _ in range(3):  # IK from the current state, refined
            q = p.calculateInverseKinematics(r, ROBOT_TCP_LINK, list(position), list(matrix_to_quat(hand)),
                                             maxNumIterations=200, residualThreshold=1e-5, **kw)
            for j, v in zip(ROBOT_ARM_JOINTS, q[:7]):
                p.resetJointState(r, j, v, **kw)
        for j in ROBOT_FINGER_JOINTS:
            p.resetJointState(r, j, opening / 2, **kw)
        joints = [float(p.getJointState(r, j, **kw)[0]) for j in ROBOT_ARM_JOINTS + ROBOT_FINGER_JOINTS]
        return joints, self.tool_pose()

    def tool_pose(self) -> dict:
        st = self.p.getLinkState(self.robot_body, ROBOT_TCP_LINK, computeForwardKinematics=True, **self.kw)
        R = quat_to_matrix(st[5]) @ TOOL_IN_HAND
        roll, pitch, yaw = matrix_to_rpy(R)
        return {"x": st[4][0], "y": st[4][1], "z": st[4][2], "roll": roll, "pitch": pitch, "yaw": yaw}

    def set_robot_joints(self, joints: list[float]) -> None:
        for j, q in zip(ROBOT_ARM_JOINTS + ROBOT_FINGER_JOINTS, joints):
            self.p.resetJointState(self.robot_body, j, q, **self.kw)

    def robot_clear(self, bodies: list[int], margin: float = 0.02) -> bool:
        p, kw = self.p, self.kw
        p.performCollisionDetection(**kw)
        if any(p.getClosestPoints(self.robot_body, b, margin, **kw) for b in bodies):
            return False
        # only the base may touch the table
        return all(c[3] < 0 for c in p.getClosestPoints(self.robot_body, self.support_body, 0.005, **kw))


# ---- layout sampling (pure numpy) ------------------------------------------------------------

def sample_support(rng: np.random.Generator, setting: str) -> dict:
    floor = {"textured": bool(rng.random() < 0.5), "rgba": [*(0.55 + 0.45 * rng.random(3)).round(3).tolist(), 1.0]}
    if setting == "floor":
        return {"type": "floor", "floor": floor}
    length, width = rng.uniform(1.0, 1.4), rng.uniform(1.0, 1.4)
    rgba = [*TABLE_COLOURS[rng.integers(len(TABLE_COLOURS))], 1.0]
    return {"type": "table", "height": round(float(rng.uniform(0.7, 0.8)), 3),
            "x_range": [-0.12, round(float(length - 0.12), 3)], "y_range": [round(float(-width / 2), 3), round(float(width / 2), 3)],
            "rgba": rgba, "floor": floor}


def _footprint_radius(vertices: np.ndarray) -> float:
    return float(np.linalg.norm(vertices[:, :2], axis=1).max())


def sample_layout(rng: np.random.Generator, setting: str) -> list[Placement]:
    """Kinds, geometry, colours and initial positions: no two names alike, footprints apart,
    some objects stacked on flat tops or put in a tray."""
    (x0, x1), (y0, y1) = REGIONS[setting]
    placed: list[Placement] = []
    used_names: set[str] = set()
    kinds = [k for k in catalog.KINDS if k.weight > 0]
    weights = np.array([k.weight for k in kinds])
    plan = ([catalog.KIND_BY_SHAPE["tray"]] if rng.random() < 0.3 else []) + \
        [kinds[i] for i in rng.choice(len(kinds), size=int(rng.integers(3, 8)), p=weights / weights.sum())]
    for kind in plan:
        colours = [c for c in catalog.COLOURS if f"{c[0]} {kind.shape}" not in used_names]
        name, rgb = colours[rng.integers(len(colours))]
        geometry = catalog.sample_geometry(kind, rng)
        V = catalog.body_vertices(geometry)
        pl = Placement(kind, geometry, name, (*rgb, 1.0), np.zeros(2), float(rng.uniform(-math.pi, math.pi)), vertices=V)
        r = _footprint_radius(V)
        if _place(pl, r, placed, rng, (x0, x1), (y0, y1)):
            placed.append(pl)
            used_names.add(f"{name} {kind.shape}")
    return placed


def _place(pl: Placement, r: float, placed: list[Placement], rng, xr, yr) -> bool:
    """Choose where `pl` goes: on a flat top, into a tray, or on the free support."""
    roll = rng.random()
    if not pl.kind.container:
        trays = [i for i, q in enumerate(placed) if q.kind.container]
        bases = [i for i, q in enumerate(placed) if q.kind.flat_top and q.on is None and
                 _top_half_side(q) >= 0.8 * r and not any(o.on == i for o in placed)]
        if trays and roll < 0.45:
            t = placed[trays[0]]
            half = float(t.geometry["collision_boxes"][0]["half_extents"][0]) * 0.8 - r
            inside = [q for q in placed if q.on == trays[0]]
            for _ in range(30 if half > 0 else 0):
                xy = t.xy + rng.uniform(-half, half, size=2)
                if all(np.linalg.norm(xy - q.xy) > r + _footprint_radius(q.vertices) + 0.01 for q in inside):
                    pl.xy, pl.on = xy, trays[0]
                    return True
        if bases and roll > 0.7:
            i = bases[rng.integers(len(bases))]
            pl.xy, pl.on = placed[i].xy + rng.uniform(-0.01, 0.01, size=2), i
            return True
    ground = [q for q in placed if q.on is None]
    if xr[1] - xr[0] <= 2 * r or yr[1] - yr[0] <= 2 * r:
        return False
    for _ in range(200):
        xy = np.array([rng.uniform(xr[0] + r, xr[1] - r), rng.uniform(yr[0] + r, yr[1] - r)])
        if all(np.linalg.norm(xy - q.xy) > r + _footprint_radius(q.vertices) + 0.015 for q in ground):
            pl.xy = xy
            return True
    return False


def _top_half_side(q: Placement) -> float:
    """Half the smaller side of a flat top (boxes and cylinders standing up)."""
    g = q.geometry
    if g["type"] == "box":
        return float(min(g["half_extents"][:2]))
    if g["type"] == "cylinder":
        return float(g["radius"]) * 0.8
    return 0.0


def initial_heights(placed: list[Placement]) -> list[float]:
    """Drop heights: 3 mm above the support, or above the top of what it is stacked on / the tray floor."""
    z = []
    for pl in placed:
        half_h = -float(pl.vertices[:, 2].min())
        if pl.on is None:
            z.append(half_h + 0.003)
        else:
            base = placed[pl.on]
            if base.kind.container:
                floor = base.geometry["collision_boxes"][0]
                top = z[pl.on] + floor["position"][2] + floor["half_extents"][2]
            else:
                top = z[pl.on] + float(base.vertices[:, 2].max())
            z.append(top + half_h + 0.003)
    return z


def mass_of(geometry: dict) -> float:
    return float(np.clip(catalog.approx_volume(geometry) * 400.0, 0.05, 1.5))


def yaw_quat(yaw: float) -> list[float]:
    return [0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)]


def check_resting(world: World, bodies: list[int], support: dict) -> str | None:
    """Why the settled bodies are not a valid resting layout, or None when they are."""
    if support["type"] == "table":
        (x0, x1), (y0, y1) = support["x_range"], support["y_range"]
    for b in bodies:
        pos, _ = world.pose(b)
        if pos[2] < -0.01 or (support["type"] == "table" and not (x0 < pos[0] < x1 and y0 < pos[1] < y1)):
            return f"body {b} fell off the support"
        if not world.supporters(b):
            return f"body {b} is not held up by anything"
    pen = world.max_penetration(bodies)
    if pen > PENETRATION_TOL:
        return f"bodies interpenetrate by {pen * 1000:.1f} mm"
    return None


def build_world(world: World, scene, mask_ids=None, robot: bool = True) -> dict[int, int]:
    """Rebuild a stored scene's bodies at their stored poses (no settling); returns {mask_id: body}.

    `mask_ids` limits the objects rebuilt. Lets a scene be checked or re-rendered from its facts."""
    world.reset()
    if scene.support.get("type") in ("table", "floor"):
        world.add_support(scene.support)
    bodies = {}
    for o in scene.objects:
        if o.geometry is None or (mask_ids is not None and o.mask_id not in mask_ids):
            continue
        bodies[o.mask_id] = world.add_object(o.geometry, o.rgba or (0.5, 0.5, 0.5, 1.0), o.position, o.orientation,
                                             mass_of(o.geometry))
    if robot and scene.robot:
        bodies[scene.robot["mask_id"]] = world.add_robot()
        world.set_robot_joints(scene.robot["joints"])
    return bodies
