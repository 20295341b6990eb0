"""Robot pick-and-place conversations in the form Phi3V-Spatial was trained on.

The conversation: the robot system prompt sent as a user turn, answered "Got it."; then a user
turn with the image, the end-effector's current pose and an instruction; the answer is the
sequence of absolute end-effector poses, one JSON object per line:
{"x":0.45,"y":-0.1,"z":0.2,"roll":0.0,"pitch":1.57,"yaw":0.3,"grasp":1.0}.

Conventions (the prompt's, made precise): world = robot base frame, x forward, y left, z up,
metres. The pose is the tool centre point between the fingertips. Orientation R = Rz(yaw) Ry(pitch)
Rx(roll); the tool's x axis is the approach direction (pitch pi/2 points straight down) and its y
axis is the jaw-closing axis. grasp 1.0 = open, 0.0 = closed (the prompt's "Gripper Close").
A pick is: pre-grasp above the object (open), descend, close, lift. A place continues: move above
the target, descend, open, retreat up.
"""
from __future__ import annotations

import json
import math

import numpy as np

from . import templates as T
from .geometry import quat_to_matrix, wrap_angle
from .scene import Scene, SceneObject
from .units import format_quantity

ROBOT_SYSTEM_PROMPT = (
    '"When requested for actions, you output the next absolute poses and grasps (in m and radians) to move the robot\'s end-effector in order to complete the requested task.\\n\n'
    'You remember that x means forward, y means left and z means up.\\n\n'
    '\n'
    "For example, if the robot's end-effector is at {x=0.3, y=0.1, z=0.4, roll=3.0, pitch=0.0, yaw=-0.1, grasp=1.0} and the task is to grasp the object directly below, you output the following:\\n\n"
    '\n'
    '    {"x":0.3,"y":0.1,"z":0.3,"roll":3.0,"pitch":1.57,"yaw":-0.1,"grasp":1.0} # Move Down, Pitch 90 degrees down\n'
    '    {"x":0.3,"y":0.1,"z":0.3,"roll":3.0,"pitch":1.57,"yaw":-0.1,"grasp":0.0}  # Gripper Close\n'
    '\n'
    '\n'
    'REMEMBER: Only output the actions if actions were requested. An  example request is "What are the next set of actions to move the cup to the right?"\n'
)
GOT_IT = "Got it."

APPROACH_CLEARANCE = 0.08  # pre-grasp: this far above the object's top (at least APPROACH_MIN above the grasp)
APPROACH_MIN = 0.10
GRIP_DEPTH = 0.04  # fingertips reach this far below the top of a tall object
MAX_JAW_SPAN = 0.07  # what the jaws can straddle (the panda opens 8 cm)
PLACE_GAP = 0.01  # release this far above the resting height
REACH = (0.25, 0.85)  # horizontal distance from the base the arm can work at
MOVE_DISTANCES = (0.05, 0.08, 0.1, 0.12, 0.15, 0.2)
POS_DECIMALS, ANGLE_DECIMALS = 3, 2


def pose(x, y, z, roll, pitch, yaw, grasp) -> dict:
    r = lambda v, d: round(float(v), d) + 0.0  # noqa: E731  (+0.0 turns -0.0 into 0.0)
    return {"x": r(x, POS_DECIMALS), "y": r(y, POS_DECIMALS), "z": r(z, POS_DECIMALS), "roll": r(roll, ANGLE_DECIMALS),
            "pitch": r(pitch, ANGLE_DECIMALS), "yaw": r(yaw, ANGLE_DECIMALS), "grasp": float(grasp)}


def format_pose_inline(p: dict) -> str:
    """The prompt's inline style: {x=0.3, y=0.1, z=0.4, roll=3.0, pitch=0.0, yaw=-0.1, grasp=1.0}."""
    return "{" + ", ".join(f"{k}={p[k]}" for k in ("x", "y", "z", "roll", "pitch", "yaw", "grasp")) + "}"


def format_actions(poses: list[dict]) -> str:
    return "\n".join(json.dumps(p, separators=(",", ":")) for p in poses)


def parse_actions(text: str) -> list[dict]:
    """The poses in an answer, one JSON object per line; other lines and trailing comments ignored."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("{"):
            try:
                p = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(p, dict) and all(k in p for k in ("x", "y", "z", "roll", "pitch", "yaw", "grasp")):
                out.append(p)
    return out


def grasp_for(obj: SceneObject) -> tuple[float, float, float, float] | None:
    """(x, y, z, tool yaw) of a top-down grasp, or None when the jaws cannot hold it.

    Mugs and rings are taken by the rim (the jaws straddle the wall, on the side away from the
    handle); other objects across the shorter horizontal side of their box."""
    top, h = obj.box.top, obj.height
    if h < 0.02:
        return None
    if obj.shape in ("mug", "ring") and obj.geometry and obj.orientation is not None:
        R = quat_to_matrix(obj.orientation)
        if R[2, 2] < 0.95:  # not upright
            return None
        g = obj.geometry
        Rf = quat_to_matrix(g["frame_rotation"])
        axis = np.asarray(obj.position) + R @ np.asarray(g["frame_position"])  # mesh origin: the axis
        if obj.shape == "mug":
            outward = -(R @ Rf[:, 1])  # away from the handle (+y of the mug file)
            radius, wall = 0.041 * g["scale"], 0.006 * g["scale"]
            z = top - min(GRIP_DEPTH, h / 2)
        else:  # the ring's near side, toward the robot
            outward = -np.asarray(obj.center, dtype=np.float64)
            radius, wall = 0.503 * g["scale"], 2 * 0.247 * g["scale"]
            z = float(obj.center[2])
        if wall > MAX_JAW_SPAN:
            return None
        outward = outward[:2] / np.linalg.norm(outward[:2])
        x, y = axis[:2] + outward * (radius - wall / 2)
        jaw = math.atan2(outward[1], outward[0])
    else:
        if obj.depth > MAX_JAW_SPAN:
            return None
        x, y = obj.center[:2]
        z = float(obj.center[2]) if obj.shape == "ball" else top - min(GRIP_DEPTH, h / 2)
        jaw = obj.box.yaw + math.pi / 2  # across the shorter side
    yaw = wrap_angle(jaw - math.pi / 2, math.pi)  # tool y (the jaw axis) is at yaw + pi/2 when pointing down
    return float(x), float(y), float(z), yaw


def _reachable(x: float, y: float) -> bool:
    return REACH[0] <= math.hypot(x, y) <= REACH[1] and x > 0.1


def pick_poses(obj: SceneObject, grasp) -> list[dict]:
    x, y, z, yaw = grasp
    above = max(obj.box.top + APPROACH_CLEARANCE, z + APPROACH_MIN)
    down = math.pi / 2
    return [pose(x, y, above, 0, down, yaw, 1.0), pose(x, y, z, 0, down, yaw, 1.0),
            pose(x, y, z, 0, down, yaw, 0.0), pose(x, y, above, 0, down, yaw, 0.0)]


def place_poses(obj: SceneObject, grasp, target_xy, rest_z: float, carry_z: float) -> list[dict]:
    """After a pick: carry to above target_xy, descend so the object's bottom is PLACE_GAP above
    rest_z, open, retreat."""
    x, y, z, yaw = grasp
    release = rest_z + (z - obj.box.bottom) + PLACE_GAP
    carry = max(carry_z, release + APPROACH_MIN)
    down = math.pi / 2
    tx, ty = target_xy
    return [pose(tx, ty, carry, 0, down, yaw, 0.0), pose(tx, ty, release, 0, down, yaw, 0.0),
            pose(tx, ty, release, 0, down, yaw, 1.0), pose(tx, ty, carry, 0, down, yaw, 1.0)]


def _radius(o: SceneObject) -> float:
    return float(np.hypot(o.box.size[0], o.box.size[1]) / 2)


def _free(xy, radius: float, others: list[SceneObject]) -> bool:
    return all(np.linalg.norm(np.asarray(xy) - o.center[:2]) > radius + _radius(o) + 0.01 for o in others)


def action_candidates(scene: Scene, askable: list[SceneObject]) -> list[dict]:
    """Every instruction this scene supports: {"action", "a", "b"?, "direction"?, "distance"?, "poses"}."""
    if not scene.robot or scene.support.get("type") != "table":
        return []
    objs = [o for o in scene.objects if o.role == "object"]
    holding_up = {m for o in objs for m in o.supported_by}
    (x0, x1), (y0, y1) = scene.support["x_range"], scene.support["y_range"]
    out = []
    for a in askable:
        if a.shape == "tray" or a.mask_id in holding_up:
            continue
        g = grasp_for(a)
        if g is None or not _reachable(g[0], g[1]):
            continue
        picked = pick_poses(a, g)
        out.append({"action": "pick", "a": a, "poses": picked})
        carry = picked[-1]["z"]
        others = [o for o in objs if o is not a]
        for b in askable:
            if b is a or b.mask_id in holding_up or not _reachable(*b.center[:2]):
                continue
            if b.shape == "tray":
                inside = [o for o in objs if b.mask_id in o.supported_by]
                if _free(b.center[:2], _radius(a), inside) and _radius(a) < b.width / 2 * 0.75:
                    rest = b.box.bottom + 0.015  # the tray's floor
                    out.append({"action": "place_in", "a": a, "b": b,
                                "poses": picked + place_poses(a, g, b.center[:2], rest, carry)})
            elif b.shape in ("cube", "box", "cylinder") and b.depth >= 0.8 * a.depth and b.height >= 0.02:
                if quat_to_matrix(b.orientation)[2, 2] > 0.99:  # standing, flat top up
                    out.append({"action": "place_on", "a": a, "b": b,
                                "poses": picked + place_poses(a, g, b.center[:2], b.box.top, carry)})
        if a.supported_by != [0]:
            continue
        for direction, (dx, dy) in T.ROBOT_DIRECTIONS.items():
            for dist in MOVE_DISTANCES:
                tx, ty = a.center[0] + dx * dist, a.center[1] + dy * dist
                r = _radius(a)
                if (x0 + r < tx < x1 - r and y0 + r < ty < y1 - r and _reachable(g[0] + dx * dist, g[1] + dy * dist)
                        and _free((tx, ty), r, others)):
                    gx, gy = g[0] + dx * dist, g[1] + dy * dist
                    out.append({"action": "move", "a": a, "direction": direction, "distance": dist,
                                "poses": picked + place_poses(a, g, (gx, gy), 0.0, carry)})
    return out


def robot_conversation(scene: Scene, cand: dict, rng: np.random.Generator) -> tuple[list[dict], dict, dict]:
    """(messages, answer, meta) for one candidate instruction."""
    a, b = cand["a"], cand.get("b")
    current = scene.robot["tool_pose"]
    current = pose(current["x"], current["y"], current["z"], current["roll"], current["pitch"], current["yaw"],
                   scene.robot.get("grasp", 1.0))
    task_templates = T.ROBOT_TASKS[cand["action"]]
    ti = int(rng.integers(len(task_templates)))
    fields = {"a": a.name, "b": b.name if b else ""}
    if cand["action"] == "move":
        fields["q"] = format_quantity(cand["distance"], "cm")
        fields["direction"] = T.ROBOT_DIRECTION_WORDS[cand["direction"]]
    task = task_templates[ti].format(**fields)
    ui = int(rng.integers(len(T.ROBOT_USER)))
    text = T.ROBOT_USER[ui].format(pose=format_pose_inline(current), task=task, Task=task[0].upper() + task[1:])
    messages = [{"role": "user", "content": ROBOT_SYSTEM_PROMPT}, {"role": "assistant", "content": GOT_IT},
                {"role": "user", "content": "<|image_1|>\n" + text},
                {"role": "assistant", "content": format_actions(cand["poses"])}]
    answer = {"type": "poses", "value": cand["poses"]}
    meta = {"action": cand["action"], "subject": a.name, "subject_id": a.mask_id,
            "target": b.name if b else None, "target_id": b.mask_id if b else None,
            "direction": cand.get("direction"), "distance_m": cand.get("distance"), "current_pose": current,
            "template": ui, "task_template": ti}
    return messages, answer, meta
