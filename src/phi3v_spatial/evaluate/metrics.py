"""Scoring: one model answer against one ground-truth `answer` object, and the aggregates.

`score(answer, text)` parses the text for the answer's shape (see `parsing`) and returns a flat
record of per-sample facts; `summarize(records)` turns records into per-task, per-relation and
per-shape numbers. Every aggregate counts an unparsable answer as wrong (it is in the
denominator) and reports `answer_rate` beside it.

Definitions (metres for every length, after unit conversion):
- relative error      |pred - truth| / |truth|
- within [0.5x, 2x]   truth / 2 <= pred <= 2 * truth            (SpatialVLM's success criterion)
- within 25%          relative error <= 0.25                      (SpatialRGPT-Bench's success rate)
- MRA                 mean relative accuracy, as in VSI-Bench (Yang et al., "Thinking in Space",
                      2024): the mean over thresholds theta in {0.50, 0.55, ..., 0.95} of
                      1[relative error < 1 - theta]; 1.0 for an answer within 5%, 0.0 beyond 50%;
                      an unanswered question scores 0.
- median relative error   over answered questions only.
- POPE                "yes" is the positive class; precision = TP / predicted yes, recall = TP /
                      true yes, F1 their harmonic mean, yes-ratio = predicted yes / all questions
                      (an unparsable answer counts as a "no" prediction, as in POPE's own script).
- grounding           a box sample is right when every ground-truth box is matched one-to-one by
                      a predicted box with IoU >= 0.5 and no extra box was predicted; a point
                      sample when every object's mask holds a distinct predicted point, no extras.
- actions             JSON validity: the answer held strict JSON with poses; position error: mean
                      Euclidean distance of the i-th predicted position to the i-th true one;
                      success: as many poses as the truth, each within 5 cm; grasp accuracy: every
                      grasp value equal to the truth's (as gripper opening: 1 open, 0 closed).

The per-sample `correct` is the task's headline score: exact match for yes/no, choice, clock and
count; within 25% for quantities; the grounding and success criteria above for the rest.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import parsing

MRA_THRESHOLDS = tuple(round(0.50 + 0.05 * i, 2) for i in range(10))
IOU_THRESHOLD = 0.5
SUCCESS_DISTANCE_M = 0.05
NORMALIZED_COORDS = 1000  # boxes and points are integers 0..1000 normalised to the image size


# ---------------------------------------------------------------------------------------------
# metric functions


def relative_error(pred: float, truth: float) -> float:
    if truth == 0:
        return 0.0 if pred == 0 else math.inf
    return abs(pred - truth) / abs(truth)


def within_factor(pred: float, truth: float, factor: float = 2.0) -> bool:
    """pred in [truth / factor, truth * factor] (same sign)."""
    if truth == 0:
        return pred == 0
    ratio = pred / truth
    return 1.0 / factor <= ratio <= factor


def within_relative(pred: float, truth: float, tolerance: float = 0.25) -> bool:
    return relative_error(pred, truth) <= tolerance + 1e-12


def mean_relative_accuracy(pred: float, truth: float) -> float:
    err = relative_error(pred, truth)
    return sum(err < 1.0 - t for t in MRA_THRESHOLDS) / len(MRA_THRESHOLDS)


def median(values: list[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def box_iou(a: list[float], b: list[float]) -> float:
    """IoU of two [x1, y1, x2, y2] boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(pred: list[list[float]], truth: list[list[float]]) -> list[float]:
    """For each true box, the IoU of the predicted box matched to it (greedy, highest IoU first,
    one-to-one); 0.0 for a true box left unmatched."""
    pairs = sorted(((box_iou(p, t), i, j) for j, t in enumerate(truth) for i, p in enumerate(pred)), reverse=True)
    used_p, ious = set(), [0.0] * len(truth)
    done_t = set()
    for iou, i, j in pairs:
        if i in used_p or j in done_t or iou <= 0:
            continue
        used_p.add(i)
        done_t.add(j)
        ious[j] = iou
    return ious


def mask_pixel(point: list[float], width: int, height: int) -> tuple[int, int]:
    """Pixel (col, row) of a point in 0..1000 normalised coordinates."""
    col = min(width - 1, max(0, int(point[0] / NORMALIZED_COORDS * width)))
    row = min(height - 1, max(0, int(point[1] / NORMALIZED_COORDS * height)))
    return col, row


def points_in_mask(pred: list[list[float]], mask: np.ndarray, ids: list[int]) -> list[bool]:
    """For each object id, whether a distinct predicted point lands on it (greedy, in order)."""
    h, w = mask.shape[:2]
    hit_ids = [int(mask[row, col]) for col, row in (mask_pixel(p, w, h) for p in pred)]
    hits, used = [], set()
    for obj in ids:
        k = next((k for k, v in enumerate(hit_ids) if v == obj and k not in used), None)
        if k is not None:
            used.add(k)
        hits.append(k is not None)
    return hits


def pope_metrics(preds: list[bool | None], truths: list[bool]) -> dict:
    """POPE precision / recall / F1 / accuracy / yes-ratio; None predictions count as "no"."""
    n = len(truths)
    yes = [p is True for p in preds]
    tp = sum(y and t for y, t in zip(yes, truths))
    fp = sum(y and not t for y, t in zip(yes, truths))
    fn = sum((not y) and t for y, t in zip(yes, truths))
    tn = n - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision, "recall": recall, "f1": f1,
        "accuracy": (tp + tn) / n if n else 0.0, "yes_ratio": sum(yes) / n if n else 0.0,
    }


def normalize_grasp(value):
    """A grasp value as the gripper opening the data engine writes (1.0 open, 0.0 closed), thresholded
    at 0.5: numbers and bools compare as open (True) / closed (False); "open"/"release" are open,
    "close"/"closed"/"grasp"/"grip" closed; any other string compares as itself."""
    if value is None:
        return None
    if isinstance(value, (bool, int, float)):
        return float(value) > 0.5
    low = str(value).strip().lower()
    if low in ("open", "opened", "release", "true", "1", "1.0"):
        return True
    if low in ("close", "closed", "grasp", "grip", "false", "0", "0.0"):
        return False
    return low


def position_error(pred: dict, truth: dict) -> float:
    return math.dist([pred[k] for k in "xyz"], [truth[k] for k in "xyz"])


def chance_level(answer: dict) -> float | None:
    """Accuracy of uniform guessing, where the answer space is finite and known."""
    kind = answer["type"]
    if kind == "yesno":
        return 0.5
    if kind == "choice":
        return 1.0 / len(answer["options"])
    if kind == "clock":
        return 1.0 / 12
    return None


# ---------------------------------------------------------------------------------------------
# one sample


def score(answer: dict, text: str, root: Path | None = None) -> dict:
    """Per-sample facts for `text` against the ground-truth `answer` (dataset schema shapes).

    `root` is the dataset folder, needed for point answers (their masks)."""
    kind = answer.get("type")
    if kind not in _SCORERS:
        raise DataError(f"unknown answer type {kind!r}; expected one of {sorted(_SCORERS)}")
    return {"type": kind, **_SCORERS[kind](answer, text, root)}


def _score_yesno(answer, text, root):
    pred = parsing.parse_yesno(text)
    truth = bool(answer["value"])
    return {"truth": truth, "pred": pred, "answered": pred is not None, "correct": pred == truth,
            "negative": answer.get("negative")}


def _score_choice(answer, text, root):
    pred = parsing.parse_choice(text, answer["options"])
    truth = int(answer["value"])
    return {"truth": truth, "pred": pred, "answered": pred is not None, "correct": pred == truth,
            "n_options": len(answer["options"])}


def _score_quantity(answer, text, root):
    truth = float(answer["value_m"])
    pred = parsing.parse_quantity(text, default_unit=answer.get("unit"))
    rec = {"truth_m": truth, "pred_m": pred, "unit": answer.get("unit"), "quantity": answer.get("quantity"),
           "answered": pred is not None}
    if pred is None:
        return {**rec, "rel_err": None, "within_2x": False, "within_25": False, "mra": 0.0, "correct": False}
    ok25 = within_relative(pred, truth)
    return {**rec, "rel_err": relative_error(pred, truth), "within_2x": within_factor(pred, truth),
            "within_25": ok25, "mra": mean_relative_accuracy(pred, truth), "correct": ok25}


def _score_exact(parse):
    def scorer(answer, text, root):
        pred = parse(text)
        truth = int(answer["value"])
        return {"truth": truth, "pred": pred, "answered": pred is not None, "correct": pred == truth}
    return scorer


def _score_boxes(answer, text, root):
    truth = [[float(v) for v in b["bbox_2d"]] for b in answer["value"]]
    pred = parsing.parse_boxes(text)
    if pred is None:
        return {"n_pred": 0, "ious": [0.0] * len(truth), "mean_iou": 0.0, "answered": False, "correct": False}
    ious = match_boxes(pred, truth)
    correct = len(pred) <= len(truth) and all(iou >= IOU_THRESHOLD for iou in ious)
    return {"n_pred": len(pred), "ious": ious, "mean_iou": sum(ious) / len(ious) if ious else 0.0,
            "answered": True, "correct": correct}


def _load_mask(answer, root) -> np.ndarray:
    from PIL import Image

    if root is None or not answer.get("mask"):
        raise DataError("a points answer needs its mask file and the dataset folder to score point-in-mask")
    path = Path(root) / answer["mask"]
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read instance mask {path}: {exc}") from exc


def _score_points(answer, text, root):
    ids = [int(i) for i in answer["mask_ids"]]
    pred = parsing.parse_points(text)
    if pred is None:
        return {"n_pred": 0, "hits": [False] * len(ids), "answered": False, "correct": False}
    hits = points_in_mask(pred, _load_mask(answer, root), ids)
    return {"n_pred": len(pred), "hits": hits, "answered": True,
            "correct": len(pred) <= len(ids) and all(hits)}


def _score_poses(answer, text, root):
    truth = answer["value"]
    pred, json_valid = parsing.parse_poses(text)
    if pred is None:
        return {"json_valid": False, "pos_err": None, "n_pred": 0, "grasp_correct": False,
                "answered": False, "success": False, "correct": False}
    errs = [position_error(p, t) for p, t in zip(pred, truth)]
    same_len = len(pred) == len(truth)
    success = same_len and all(e < SUCCESS_DISTANCE_M for e in errs)
    grasp = same_len and all(normalize_grasp(p.get("grasp")) == normalize_grasp(t.get("grasp")) for p, t in zip(pred, truth))
    return {"json_valid": json_valid, "pos_err": sum(errs) / len(errs) if errs else None, "n_pred": len(pred),
            "grasp_correct": grasp, "answered": True, "success": success, "correct": success}


_SCORERS = {
    "yesno": _score_yesno,
    "choice": _score_choice,
    "quantity": _score_quantity,
    "clock": _score_exact(parsing.parse_clock),
    "count": _score_exact(parsing.parse_count),
    "boxes": _score_boxes,
    "points": _score_points,
    "poses": _score_poses,
}


# ---------------------------------------------------------------------------------------------
# aggregates


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def aggregate(records: list[dict]) -> dict:
    """Numbers for records of one answer type (one task, or one relation)."""
    n = len(records)
    out = {"n": n, "answer_rate": _mean(r["answered"] for r in records), "score": _mean(r["correct"] for r in records)}
    kinds = {r["type"] for r in records}
    if len(kinds) != 1:
        return out
    kind = kinds.pop()
    if kind in ("yesno", "choice", "clock", "count"):
        out["accuracy"] = out["score"]
    if kind == "yesno":
        out.update({f"pope_{k}": v for k, v in pope_metrics([r["pred"] for r in records], [r["truth"] for r in records]).items()
                    if k != "accuracy"})
        out["truth_yes_ratio"] = _mean(r["truth"] for r in records)
    if kind in ("yesno", "choice"):
        out["chance"] = _mean(0.5 if kind == "yesno" else 1.0 / r["n_options"] for r in records)
    if kind == "clock":
        out["chance"] = 1.0 / 12
    if kind == "quantity":
        errs = [r["rel_err"] for r in records if r["rel_err"] is not None]
        out.update({
            "within_2x": _mean(r["within_2x"] for r in records),
            "within_25": _mean(r["within_25"] for r in records),
            "mra": _mean(r["mra"] for r in records),
            "median_rel_err": median(errs),
        })
    if kind == "boxes":
        out.update({"acc_iou50": out["score"], "mean_iou": _mean(r["mean_iou"] for r in records)})
    if kind == "points":
        out.update({"point_in_mask": out["score"],
                    "point_hit_rate": _mean(h for r in records for h in r["hits"])})
    if kind == "poses":
        errs = [r["pos_err"] for r in records if r["pos_err"] is not None]
        out.update({
            "json_valid": _mean(r["json_valid"] for r in records),
            "mean_pos_err_m": _mean(errs),
            "median_pos_err_m": median(errs),
            "success_5cm": out["score"],
            "grasp_accuracy": _mean(r["grasp_correct"] for r in records),
        })
    return out


def summarize(records: list[dict]) -> dict:
    """Overall, per-task, per-relation and per-POPE-subset numbers for scored records (each
    record: `score()` output plus `task` and optional `relation`)."""
    by_task, by_relation, by_negative = {}, {}, {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
        if r.get("relation") and r["type"] in ("yesno", "choice"):
            by_relation.setdefault(r["relation"], []).append(r)
        if r["type"] == "yesno" and r.get("negative"):
            by_negative.setdefault(r["negative"], []).append(r)
    tasks = {t: aggregate(rs) for t, rs in sorted(by_task.items())}
    return {
        "num_samples": len(records),
        "answer_rate": _mean(r["answered"] for r in records),
        "score": _mean(r["correct"] for r in records),
        "task_mean_score": _mean(t["score"] for t in tasks.values()),
        "tasks": tasks,
        "relations": {k: aggregate(rs) for k, rs in sorted(by_relation.items())},
        "pope_subsets": {k: aggregate(rs) for k, rs in sorted(by_negative.items())},
    }
