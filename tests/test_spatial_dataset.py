"""A generated dataset checked against its own scene files with the test's own arithmetic: every
answer follows from the stored facts, numbers parse back, grounding matches the masks, robot poses
fit the objects; and the folder is deterministic, resumable, splittable and loads in `datasets`."""
import json
import math
import shutil

import numpy as np
import pytest

pytest.importorskip("pybullet")

from PIL import Image  # noqa: E402

from phi3v_spatial import cli  # noqa: E402
from phi3v_spatial.errors import DataError  # noqa: E402
from phi3v_spatial.spatial import EVAL_SEED_BASE, TASKS, iter_samples, load_info, synthesize  # noqa: E402
from phi3v_spatial.spatial.camera import Camera  # noqa: E402
from phi3v_spatial.spatial.generate import MIN_VISIBLE_FRACTION, min_visible_pixels  # noqa: E402
from phi3v_spatial.spatial.robot import ROBOT_SYSTEM_PROMPT, parse_actions  # noqa: E402
from phi3v_spatial.spatial.scene import load_scene  # noqa: E402
from phi3v_spatial.spatial.units import parse_quantity, rounding_step  # noqa: E402

N, SIZE = 6, (320, 240)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("spatial") / "ds", N, seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def samples(ds):
    return list(iter_samples(ds))


@pytest.fixture(scope="module")
def scenes(ds):
    return {p.stem: json.loads(p.read_text()) for p in (ds / "scenes").glob("*.json")}


def _scene(scenes, sample):
    return scenes[sample["scene"].split("/")[-1][:-5]]


def _obj(scene, mask_id):
    return next(o for o in scene["objects"] if o["mask_id"] == mask_id)


def _by_task(samples, task):
    out = [s for s in samples if s["task"] == task]
    assert out, task
    return out


def _horizontal_axes(scene):
    T = np.asarray(scene["camera"]["world_to_camera"])
    right = T[0, :3].copy()  # camera x axis in world coordinates
    right[2] = 0
    right /= np.linalg.norm(right)
    return right, np.array([right[1], -right[0], 0.0])


def _c(o):
    return np.asarray(o["box_3d"]["center"])


# ---- format ------------------------------------------------------------------------------------

def test_samples_cover_every_task_in_the_chat_format(ds, samples, scenes):
    assert {s["task"] for s in samples} == set(TASKS)
    assert len({s["id"] for s in samples}) == len(samples)
    info = load_info(ds)
    assert info["complete"] and info["counts"]["samples"] == len(samples) and info["counts"]["scenes"] == N
    for s in samples:
        assert s["id"].startswith(s["scene"].split("/")[-1][:-5] + "-" + s["task"] + "-")
        assert (ds / s["image"]).is_file() and s["images"] == [s["image"]] and (ds / s["scene"]).is_file()
        msgs = s["messages"]
        assert [m["role"] for m in msgs[-2:]] == ["user", "assistant"]
        assert sum(m["content"].count("<|image_1|>") for m in msgs) == 1 and "<|image_1|>" in msgs[-2]["content"]
        assert isinstance(s["answer"], dict) and s["answer"]["type"] and isinstance(s["meta"], dict)


def test_huggingface_datasets_reads_the_folder_as_is(ds, samples):
    datasets = pytest.importorskip("datasets")
    d = datasets.load_dataset("json", data_files=str(ds / "data" / "*.jsonl"), split="train")
    assert len(d) == len(samples)
    assert set(d.column_names) == {"id", "image", "images", "messages", "task", "answer", "scene", "meta"}
    assert d[0]["id"] == samples[0]["id"] and json.loads(d[0]["answer"]) == samples[0]["answer"]
    raw = list(iter_samples(ds, decode=False))
    assert all(isinstance(r["answer"], str) for r in raw)


# ---- answers against the stored facts ------------------------------------------------------------

def test_relations_follow_from_the_scene_facts(samples, scenes):
    checked = 0
    for s in samples:
        if s["task"] != "relation_yesno":
            continue
        sc = _scene(scenes, s)
        a, b = _obj(sc, s["meta"]["subject_id"]), _obj(sc, s["meta"]["object_id"])
        right, forward = _horizontal_axes(sc)
        rel, d = s["meta"]["relation"], _c(b) - _c(a)
        truth = {
            "left": d @ right > 0, "right": d @ right < 0, "front": d @ forward > 0, "behind": d @ forward < 0,
            "above": a["box_3d"]["center"][2] > b["box_3d"]["center"][2],
            "below": a["box_3d"]["center"][2] < b["box_3d"]["center"][2],
            "bigger": np.prod(a["box_3d"]["size"]) > np.prod(b["box_3d"]["size"]),
            "smaller": np.prod(a["box_3d"]["size"]) < np.prod(b["box_3d"]["size"]),
            "taller": a["size"]["height"] > b["size"]["height"], "shorter": a["size"]["height"] < b["size"]["height"],
            "wider": a["size"]["width"] > b["size"]["width"], "thinner": a["size"]["width"] < b["size"]["width"],
        }[rel]
        assert s["answer"]["value"] == bool(truth), s["id"]
        assert s["messages"][-1]["content"].startswith("Yes" if truth else "No")
        checked += 1
    assert checked >= 10


def test_choice_answers_name_the_right_option(samples, scenes):
    for s in _by_task(samples, "relation_choice"):
        sc = _scene(scenes, s)
        options = [_obj(sc, m) for m in s["meta"]["option_ids"]]
        assert [o["name"] for o in options] == s["answer"]["options"]
        rel = s["meta"]["relation"]
        key = {"taller": lambda o: o["size"]["height"], "shorter": lambda o: -o["size"]["height"],
               "wider": lambda o: o["size"]["width"], "thinner": lambda o: -o["size"]["width"],
               "bigger": lambda o: np.prod(o["box_3d"]["size"]), "smaller": lambda o: -np.prod(o["box_3d"]["size"]),
               "above": lambda o: o["box_3d"]["center"][2], "below": lambda o: -o["box_3d"]["center"][2]}
        right, forward = _horizontal_axes(sc)
        key.update({"left": lambda o: -_c(o) @ right, "right": lambda o: _c(o) @ right,
                    "front": lambda o: -_c(o) @ forward, "behind": lambda o: _c(o) @ forward})
        assert int(np.argmax([key[rel](o) for o in options])) == s["answer"]["value"], s["id"]
        letter = "ABCD"[s["answer"]["value"]]
        assert s["messages"][-1]["content"].split(".")[0] == letter


def test_every_numeric_answer_parses_back_to_the_truth(samples, scenes):
    kinds = set()
    for s in _by_task(samples, "distance") + _by_task(samples, "size"):
        sc, ans = _scene(scenes, s), s["answer"]
        a = _obj(sc, s["meta"]["subject_id"])
        if s["task"] == "size":
            truth = a["size"][ans["quantity"]]
        else:
            d = _c(_obj(sc, s["meta"]["object_id"])) - _c(a)
            truth = {"center_distance": np.linalg.norm(d), "horizontal_distance": np.linalg.norm(d[:2]),
                     "vertical_distance": abs(d[2])}[ans["quantity"]]
        assert ans["value_m"] == pytest.approx(truth, abs=1e-4)
        back = parse_quantity(s["messages"][-1]["content"])
        assert abs(back - truth) <= rounding_step(truth, ans["unit"]) / 2 + 2e-4, (s["id"], s["messages"][-1])
        kinds.add(ans["quantity"])
    assert kinds >= {"center_distance", "horizontal_distance", "height", "width"}


def test_clock_directions_from_the_facts(samples, scenes):
    for s in _by_task(samples, "direction_clock"):
        sc = _scene(scenes, s)
        right, forward = _horizontal_axes(sc)
        d = _c(_obj(sc, s["meta"]["object_id"])) - _c(_obj(sc, s["meta"]["subject_id"]))
        hour = math.degrees(math.atan2(d @ right, d @ forward)) % 360 / 30
        assert (round(hour) - 1) % 12 + 1 == s["answer"]["value"] and abs(hour - round(hour)) < 0.5
        assert f"{s['answer']['value']} o'clock" in s["messages"][-1]["content"]


def _well_seen(o, sc):
    return o["role"] == "object" and o["visible_fraction"] >= MIN_VISIBLE_FRACTION and \
        o["visible_pixels"] >= min_visible_pixels(Camera.from_dict(sc["camera"]))


def test_counts_and_existence_from_the_facts(samples, scenes):
    for s in _by_task(samples, "counting"):
        sc, meta = _scene(scenes, s), s["meta"]
        match = [o for o in sc["objects"] if o["role"] == "object" and o[meta["category"]] == meta["value"]]
        assert s["answer"]["value"] == sum(_well_seen(o, sc) for o in match), s["id"]
        assert not any(o["visible_pixels"] and not _well_seen(o, sc) for o in match)  # no half-seen ones
        assert str(s["answer"]["value"]) in s["messages"][-1]["content"] or s["answer"]["value"] == 0
    kinds = set()
    for s in _by_task(samples, "existence"):
        sc, q = _scene(scenes, s), s["meta"]["query"]
        objs = [o for o in sc["objects"] if o["role"] == "object"]
        present = [o for o in objs if q in (o["name"], o["shape"])]
        if s["answer"]["value"]:
            assert any(_well_seen(o, sc) for o in present) and s["answer"]["negative"] is None
        else:
            assert not present and s["answer"]["negative"] in ("random", "popular", "adversarial")
            kinds.add(s["answer"]["negative"])
    assert kinds


def test_grounding_boxes_and_points_match_the_masks(ds, samples, scenes):
    masks = {}
    for s in _by_task(samples, "grounding_box") + _by_task(samples, "grounding_point"):
        sc = _scene(scenes, s)
        path = ds / sc["files"]["mask"]
        mask = masks.setdefault(path, np.asarray(Image.open(path)))
        H, W = mask.shape
        value = s["answer"]["value"]
        text = json.loads(s["messages"][-1]["content"])
        assert (text if isinstance(text, list) else [text]) == value
        for entry, mid in zip(value, s["meta"]["object_ids"]):
            assert entry["label"] == _obj(sc, mid)["name"]
            rows, cols = np.nonzero(mask == mid)
            if "bbox_2d" in entry:
                box = [cols.min() / W, rows.min() / H, (cols.max() + 1) / W, (rows.max() + 1) / H]
                assert np.abs(np.asarray(entry["bbox_2d"]) - np.asarray(box) * 1000).max() <= 0.5 + 1e-9
                assert all(isinstance(v, int) and 0 <= v <= 1000 for v in entry["bbox_2d"])
            else:
                x, y = entry["point_2d"]
                assert mask[min(H - 1, int(y / 1000 * H)), min(W - 1, int(x / 1000 * W))] == mid
                assert s["answer"]["mask"] == sc["files"]["mask"]


def test_robot_actions_pick_the_named_object(samples, scenes, meta_dir):
    assert ROBOT_SYSTEM_PROMPT == (meta_dir / "robot_system_prompt.txt").read_text()
    for s in _by_task(samples, "robot_action"):
        sc, msgs = _scene(scenes, s), s["messages"]
        assert msgs[0] == {"role": "user", "content": ROBOT_SYSTEM_PROMPT}
        assert msgs[1] == {"role": "assistant", "content": "Got it."}
        assert "x={x}, y={y}".format(**s["meta"]["current_pose"]) in msgs[2]["content"]
        poses = parse_actions(msgs[3]["content"])
        assert poses == s["answer"]["value"] and len(msgs[3]["content"].splitlines()) == len(poses)
        a = _obj(sc, s["meta"]["subject_id"])
        assert a["name"] in msgs[2]["content"]
        box, (pre, down, _, lift) = a["box_3d"], poses[:4]
        c, sn = math.cos(box["yaw"]), math.sin(box["yaw"])
        local = np.array([[c, sn], [-sn, c]]) @ (np.array([down["x"], down["y"]]) - box["center"][:2])
        assert (np.abs(local) <= np.asarray(box["size"][:2]) / 2 + 0.005).all()  # over the object
        bottom, top = box["center"][2] - box["size"][2] / 2, box["center"][2] + box["size"][2] / 2
        assert bottom < down["z"] < top and pre["z"] > top + 0.05 and lift["z"] > top + 0.05
        assert [p["grasp"] for p in poses[:4]] == [1.0, 1.0, 0.0, 0.0]
        assert all(p["pitch"] == 1.57 and p["roll"] == 0.0 for p in poses)
        assert all((p["x"], p["y"]) == (down["x"], down["y"]) for p in poses[:4])
        if s["meta"]["action"] != "pick":
            carry, release, open_, retreat = poses[4:]
            assert [p["grasp"] for p in poses[4:]] == [0.0, 0.0, 1.0, 1.0]
            assert release["z"] < carry["z"] and retreat["z"] > release["z"]
            if s["meta"]["action"] == "place_on":
                target = _obj(sc, s["meta"]["target_id"])["box_3d"]
                target_top = target["center"][2] + target["size"][2] / 2
                assert release["z"] - (down["z"] - bottom) == pytest.approx(target_top + 0.01, abs=0.002)
                assert math.dist((release["x"], release["y"]), target["center"][:2]) < 0.002


# ---- the folder: determinism, resuming, splitting --------------------------------------------------

def _shard_bytes(d):
    return {p.name: p.read_bytes() for p in sorted((d / "data").glob("*.jsonl"))}


def test_workers_do_not_change_a_byte(ds, tmp_path):
    other = synthesize(tmp_path / "w2", N, seed=0, image_size=SIZE, workers=2)
    assert _shard_bytes(other) == _shard_bytes(ds)
    for sub in ("images", "masks", "depth", "scenes"):
        for p in (ds / sub).iterdir():
            assert (other / sub / p.name).read_bytes() == p.read_bytes(), p


def test_resume_after_a_crash_writes_no_duplicates(ds, tmp_path):
    crashed = tmp_path / "crashed"
    shutil.copytree(ds, crashed)
    shard = next((crashed / "data").glob("*.jsonl"))
    lines = shard.read_bytes().splitlines(keepends=True)
    first = [ln for ln in lines if json.loads(ln)["id"].startswith(("s0000000000-", "s0000000001-"))]
    # the crash: two scenes recorded, a third half written (and its line cut mid-way)
    shard.write_bytes(b"".join(lines[:len(first) + 3]) + lines[len(first) + 3][:20])
    (crashed / "progress" / "shard-00000.json").write_text(json.dumps(
        {"scenes_done": 2, "bytes": sum(map(len, first)), "samples": len(first), "by_task": {}}))
    assert len(list(iter_samples(crashed))) == len(first)  # readers stop at the last complete scene
    synthesize(crashed, N, seed=0, image_size=SIZE)
    assert _shard_bytes(crashed) == _shard_bytes(ds)
    synthesize(crashed, N, seed=0, image_size=SIZE)  # a finished run resumes to itself
    assert _shard_bytes(crashed) == _shard_bytes(ds)
    with pytest.raises(DataError, match="other settings"):
        synthesize(crashed, N, seed=1, image_size=SIZE)


def test_a_run_split_in_parts_equals_one_run(tmp_path):
    whole = synthesize(tmp_path / "whole", 4, seed=10, image_size=(160, 120), scenes_per_shard=2,
                       tasks=["distance", "counting"])
    parts = tmp_path / "parts"
    for k in (1, 0):
        synthesize(parts, 4, seed=10, image_size=(160, 120), scenes_per_shard=2, tasks=["distance", "counting"],
                   part=(k, 2))
    assert list(_shard_bytes(whole)) == ["shard-00000-of-00002.jsonl", "shard-00001-of-00002.jsonl"]
    assert _shard_bytes(parts) == _shard_bytes(whole)
    assert load_info(parts)["complete"] and {s["task"] for s in iter_samples(parts)} == {"distance", "counting"}
    ids = [s["id"] for s in iter_samples(whole)]
    assert ids[0].startswith("s0000000010-") and ids[-1].startswith("s0000000013-")


def test_cli_refuses_evaluation_seeds(tmp_path, capsys):
    out = tmp_path / "refused"
    assert cli.main(["synth", "--scenes", "3", "--out", str(out), "--seed", str(EVAL_SEED_BASE - 2)]) == 2
    assert "held-out evaluation range" in capsys.readouterr().err and not out.exists()
    assert cli.main(["synth", "--out", str(out), "--scenes", "1", "--tasks", "bogus"]) == 2


def test_cli_lifts_rgbd_captures(ds, scenes, tmp_path, capsys):
    captures = tmp_path / "captures"
    captures.mkdir()
    for sid in sorted(scenes)[:2]:
        sc = scenes[sid]
        shutil.copy(ds / sc["files"]["image"], captures / f"{sid}.png")
        shutil.copy(ds / sc["files"]["depth"], captures / f"{sid}.depth.png")
        shutil.copy(ds / sc["files"]["mask"], captures / f"{sid}.mask.png")
        cam = sc["camera"]
        labels = {str(o["mask_id"]): o["name"] for o in sc["objects"]}
        (captures / f"{sid}.json").write_text(json.dumps(
            {"labels": labels, "intrinsics": {k: cam[k] for k in ("fx", "fy", "cx", "cy")}}))
    out = tmp_path / "lifted"
    assert cli.main(["synth", "--from-rgbd", str(captures), "--out", str(out), "--quiet"]) == 0
    lifted = list(iter_samples(out))
    assert lifted and "robot_action" not in {s["task"] for s in lifted}
    for sid in sorted(scenes)[:2]:
        truth = {o["name"]: o for o in scenes[sid]["objects"]}
        got = load_scene(out / "scenes" / f"c-{sid}.json")
        for o in got.objects:
            t = truth[o.name]
            if t["role"] == "object" and t["visible_fraction"] > 0.999 and not t["truncated"] and t["shape"] != "teddy bear":
                assert o.height == pytest.approx(t["size"]["height"], rel=0.08)


def test_a_seed_without_a_valid_scene_is_skipped_and_listed(tmp_path, monkeypatch):
    from phi3v_spatial.spatial import generate

    real = generate.generate_scene

    def flaky(world, seed, image_size):
        if seed == 21:
            raise DataError("seed 21: no valid scene")
        return real(world, seed, image_size)

    monkeypatch.setattr(generate, "generate_scene", flaky)
    out = synthesize(tmp_path / "skip", 2, seed=20, image_size=(160, 120), tasks=["size"])
    info = load_info(out)
    assert info["complete"] and info["counts"]["skipped_seeds"] == [21]
    assert {s["scene"] for s in iter_samples(out)} == {"scenes/s0000000020.json"}


def test_yes_no_wording_does_not_give_the_answer_away(ds):
    """Neither the relation word nor which object is named first may predict yes/no: over many
    draws every relation word is asked with both answers, near half and half."""
    import collections

    import numpy as np

    from phi3v_spatial.spatial import questions
    from phi3v_spatial.spatial.generate import well_seen

    tally = collections.Counter()
    for path in sorted((ds / "scenes").glob("*.json")):
        scene = load_scene(path)
        objs = [o for o in scene.objects if well_seen(o, scene.camera)]
        for k in range(20):
            for _, answer, meta in questions._relation_yesno(scene, objs, np.random.default_rng(k), 40, None):
                tally[(meta["relation"], answer["value"])] += 1
    words = {rel for rel, _ in tally}
    assert {"left", "right", "bigger", "smaller"} <= words
    for rel in words:
        yes, no = tally[(rel, True)], tally[(rel, False)]
        if yes + no >= 40:
            assert 0.3 < yes / (yes + no) < 0.7, (rel, yes, no)
