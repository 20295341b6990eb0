"""Metric functions against hand-computed values, for every answer shape and unit."""
import json

import numpy as np
import pytest
from PIL import Image

from phi3v_spatial.errors import DataError
from phi3v_spatial.evaluate import metrics as M

FT, IN = 0.3048, 0.0254


def test_relative_error_and_success_criteria():
    assert M.relative_error(1.5, 2.0) == 0.25
    assert M.relative_error(3.0, 2.0) == 0.5
    assert M.within_relative(1.5, 2.0) and M.within_relative(2.5, 2.0)  # boundary: exactly 25% passes
    assert not M.within_relative(1.49, 2.0)
    assert M.within_factor(1.0, 2.0) and M.within_factor(4.0, 2.0)  # boundaries of [0.5x, 2x]
    assert not M.within_factor(0.99, 2.0) and not M.within_factor(4.01, 2.0)
    assert not M.within_factor(-2.0, 2.0)


@pytest.mark.parametrize("pred, truth, mra", [
    (2.0, 2.0, 1.0),      # exact
    (2.08, 2.0, 1.0),     # 4% < 5%: every threshold
    (2.1, 2.0, 0.9),      # 5% is not < 1 - 0.95
    (1.5, 2.0, 0.5),      # 25% < 1 - theta for theta in .50 .. .70: 5 of 10
    (2.9, 2.0, 0.1),      # 45%: only theta = .50
    (3.0, 2.0, 0.0),      # 50%: none
    (0.1, 2.0, 0.0),
])
def test_mean_relative_accuracy(pred, truth, mra):
    assert M.MRA_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    assert M.mean_relative_accuracy(pred, truth) == pytest.approx(mra)


def Q(value_m, unit="m"):
    return {"type": "quantity", "value_m": value_m, "unit": unit, "quantity": "center_distance"}


@pytest.mark.parametrize("answer, text, pred_m", [
    (Q(2.0, "m"), "1.46 m", 1.46),
    (Q(2.0, "cm"), "146 cm", 1.46),
    (Q(2.0, "cm"), "146", 1.46),             # bare number read in the asked unit
    (Q(2.0, "m"), "1460 mm", 1.46),
    (Q(2.0, "m"), "1460 millimetres", 1.46),
    (Q(2.0, "in"), f"{1.46 / IN:.6f} in", 1.46),
    (Q(2.0, "in"), f"{1.46 / IN:.6f} inches", 1.46),
    (Q(2.0, "ft"), f"{1.46 / FT:.6f} ft", 1.46),
    (Q(2.0, "ft"), f"{1.46 / FT:.6f} feet", 1.46),
    (Q(2.0, "m"), "4 ft 9.480315 in", 1.46),
])
def test_quantity_score_every_unit(answer, text, pred_m):
    # relative error 0.27: within [0.5x, 2x], not within 25%, MRA 5/10 (1 - theta > 0.27 for theta < 0.73)
    r = M.score(answer, text)
    assert r["pred_m"] == pytest.approx(pred_m, rel=1e-6)
    assert r["rel_err"] == pytest.approx(0.27, rel=1e-5)
    assert r["within_2x"] and r["answered"] and not r["within_25"] and not r["correct"]
    assert r["mra"] == pytest.approx(0.5)


def test_quantity_aggregate():
    truth = Q(2.0)
    records = [dict(M.score(truth, t), task="distance") for t in ("2 m", "2.5 m", "4 m", "no idea")]
    # rel errors 0, 0.25, 1.0 and unanswered
    agg = M.summarize(records)["tasks"]["distance"]
    assert agg["n"] == 4 and agg["answer_rate"] == 0.75
    assert agg["within_25"] == 0.5            # 0 and 0.25
    assert agg["within_2x"] == 0.75           # 0, 0.25 and exactly 2x
    assert agg["mra"] == pytest.approx((1.0 + 0.5 + 0.0 + 0.0) / 4)
    assert agg["median_rel_err"] == 0.25      # over answered only
    assert agg["score"] == 0.5


def test_pope_metrics_hand_computed():
    preds = [True, True, False, None, True]
    truths = [True, False, False, True, True]
    # TP = 2 (0, 4), FP = 1 (1), FN = 1 (3: unparsed counts as "no"), TN = 1 (2)
    m = M.pope_metrics(preds, truths)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(3 / 5) and m["yes_ratio"] == pytest.approx(3 / 5)
    none = M.pope_metrics([False, False], [True, False])
    assert none["precision"] == 0.0 and none["recall"] == 0.0 and none["f1"] == 0.0 and none["yes_ratio"] == 0.0


def test_yesno_and_pope_summary_with_subsets():
    answers = [{"type": "yesno", "value": v, "negative": neg} for v, neg in
               [(True, None), (False, "random"), (False, "adversarial"), (True, None)]]
    texts = ["Yes.", "yes", "No, there is none.", "I am unsure"]
    records = [dict(M.score(a, t), task="existence", relation=None) for a, t in zip(answers, texts)]
    s = M.summarize(records)
    t = s["tasks"]["existence"]
    assert t["accuracy"] == 0.5 and t["answer_rate"] == 0.75 and t["chance"] == 0.5
    assert t["pope_precision"] == 0.5 and t["pope_recall"] == 0.5 and t["pope_yes_ratio"] == 0.5
    assert t["truth_yes_ratio"] == 0.5
    assert s["pope_subsets"]["random"]["accuracy"] == 0.0 and s["pope_subsets"]["adversarial"]["accuracy"] == 1.0


def test_choice_clock_count_and_relations():
    choice = {"type": "choice", "options": ["left", "right", "above"], "value": 2}
    r = M.score(choice, "(C) above")
    assert r["correct"] and r["pred"] == 2 and r["n_options"] == 3
    assert not M.score(choice, "A")["correct"]
    assert M.score({"type": "clock", "value": 3}, "At 3 o'clock.")["correct"]
    assert not M.score({"type": "clock", "value": 3}, "9 o'clock")["correct"]
    assert M.score({"type": "count", "value": 2}, "There are two mugs.")["correct"]
    assert not M.score({"type": "count", "value": 2}, "many")["answered"]
    recs = [dict(M.score(choice, t), task="relation_choice", relation="above") for t in ("C", "A", "B", "C")]
    recs += [dict(M.score({"type": "yesno", "value": True}, "yes"), task="relation_yesno", relation="above")]
    s = M.summarize(recs)
    assert s["relations"]["above"]["n"] == 5 and s["relations"]["above"]["score"] == pytest.approx(3 / 5)
    assert s["tasks"]["relation_choice"]["chance"] == pytest.approx(1 / 3)
    assert s["score"] == pytest.approx(3 / 5) and s["task_mean_score"] == pytest.approx((0.5 + 1.0) / 2)


def test_box_iou_and_grounding():
    assert M.box_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert M.box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    truth = {"type": "boxes", "value": [{"label": "mug", "bbox_2d": [0, 0, 100, 100]}]}
    half = M.score(truth, '[{"label": "mug", "bbox_2d": [0, 0, 100, 50]}]')
    assert half["ious"] == [0.5] and half["correct"]                # IoU exactly 0.5 passes
    assert not M.score(truth, "[0, 0, 100, 49]")["correct"]         # 0.49
    assert not M.score(truth, "[[0, 0, 100, 100], [0, 0, 50, 50]]")["correct"]  # extra box
    two = {"type": "boxes", "value": [{"bbox_2d": [0, 0, 10, 10]}, {"bbox_2d": [20, 20, 30, 30]}]}
    r = M.score(two, "[[21, 20, 30, 30], [0, 0, 10, 10]]")           # order does not matter
    assert r["correct"] and r["ious"] == [1.0, pytest.approx(0.9)]
    r = M.score(two, "[0, 0, 10, 10]")
    assert not r["correct"] and r["mean_iou"] == 0.5
    agg = M.summarize([dict(r, task="grounding_box"), dict(half, task="grounding_box")])["tasks"]["grounding_box"]
    assert agg["acc_iou50"] == 0.5 and agg["mean_iou"] == pytest.approx((0.5 + 0.5) / 2)


def test_point_in_mask(tmp_path):
    mask = np.zeros((4, 8), dtype=np.uint8)   # height 4, width 8
    mask[0:2, 0:4] = 3                        # object 3: top-left quarter
    mask[2:4, 4:8] = 7                        # object 7: bottom-right quarter
    Image.fromarray(mask).save(tmp_path / "m.png")
    # (250, 250) -> col int(0.25 * 8) = 2, row int(0.25 * 4) = 1 -> id 3; (1000, 1000) clamps to (7, 3) -> 7
    assert M.mask_pixel([250, 250], 8, 4) == (2, 1) and M.mask_pixel([1000, 1000], 8, 4) == (7, 3)
    one = {"type": "points", "value": [{"label": "mug", "point_2d": [100, 100]}], "mask": "m.png", "mask_ids": [3]}
    assert M.score(one, '[{"point_2d": [250, 250]}]', tmp_path)["correct"]
    assert not M.score(one, "(900, 900)", tmp_path)["correct"]
    two = dict(one, mask_ids=[3, 7])
    r = M.score(two, "(900, 900) and (250, 250)", tmp_path)
    assert r["hits"] == [True, True] and r["correct"]
    r = M.score(two, "[[250, 250], [260, 260]]", tmp_path)      # both on object 3
    assert r["hits"] == [True, False] and not r["correct"]
    agg = M.summarize([dict(r, task="grounding_point")])["tasks"]["grounding_point"]
    assert agg["point_in_mask"] == 0.0 and agg["point_hit_rate"] == 0.5
    with pytest.raises(DataError):
        M.score(one, "(1, 1)", None)


def test_actions():
    truth = {"type": "poses", "value": [
        {"x": 0.5, "y": 0.0, "z": 0.1, "roll": 0, "pitch": 3.14, "yaw": 0.0, "grasp": True},
        {"x": 0.2, "y": 0.3, "z": 0.1, "roll": 0, "pitch": 3.14, "yaw": 0.0, "grasp": False},
    ]}
    good = [dict(p) for p in truth["value"]]
    good[0]["x"] = 0.53                              # 3 cm off
    good[1]["grasp"] = "close"   # truth False: closed
    good[0]["grasp"] = 1.0       # truth True: open
    r = M.score(truth, "Here is the plan: " + json.dumps(good))
    assert r["json_valid"] and r["success"] and r["grasp_correct"]
    assert r["pos_err"] == pytest.approx((0.03 + 0.0) / 2)
    bad = [dict(p) for p in truth["value"]]
    bad[1]["y"] = 0.36                               # 6 cm off
    bad[0]["grasp"] = False
    r2 = M.score(truth, json.dumps(bad))
    assert r2["json_valid"] and not r2["success"] and not r2["grasp_correct"]
    assert r2["pos_err"] == pytest.approx(0.03)
    r3 = M.score(truth, "x=0.5 y=0 z=0.1 grasp=true")  # pose line, one pose of two
    assert not r3["json_valid"] and r3["answered"] and not r3["success"] and r3["pos_err"] == pytest.approx(0.0)
    r4 = M.score(truth, "I would pick it up.")
    assert not r4["answered"] and not r4["json_valid"] and r4["pos_err"] is None
    agg = M.summarize([dict(x, task="robot_action") for x in (r, r2, r3, r4)])["tasks"]["robot_action"]
    assert agg["json_valid"] == 0.5 and agg["success_5cm"] == 0.25 and agg["grasp_accuracy"] == 0.25
    assert agg["mean_pos_err_m"] == pytest.approx((0.015 + 0.03 + 0.0) / 3)
    assert agg["median_pos_err_m"] == pytest.approx(0.015)


def test_normalize_grasp_and_chance():
    # gripper opening, as the data engine writes it: 1.0 open, 0.0 closed
    assert M.normalize_grasp("Close") is False and M.normalize_grasp(0) is False and M.normalize_grasp(1.0) is True
    assert M.normalize_grasp("open") is True and M.normalize_grasp(True) is True and M.normalize_grasp(0.2) is False
    assert M.normalize_grasp("top") == "top"
    assert M.chance_level({"type": "choice", "options": ["a", "b", "c", "d"], "value": 0}) == 0.25
    assert M.chance_level({"type": "clock", "value": 1}) == pytest.approx(1 / 12)
    assert M.chance_level({"type": "count", "value": 1}) is None


def test_unknown_answer_type():
    with pytest.raises(DataError):
        M.score({"type": "poem"}, "roses")
