"""The 2D chain's tables, made from data-engine scenes: pointing rows and reasoned relation rows.

    python engine_table.py ENGINE_DIR OUT_TABLE [--relations left,right,above,below] [--point-share 0.25] [--seed 0]

ENGINE_DIR: a data-engine folder (`phi3v-spatial synth`, with the relation_yesno task). OUT_TABLE is a
JSONL table in the format of make_shapes.py's "pointrelcot" (written inside ENGINE_DIR, image paths
relative to it), which attn_sup.py, make_canon.py, ev.py and cot_check.py read:
- pointing rows: "Where is the {name}? Answer with its column and row, 0 to 9." -> "Column C, row R."
  for every well-seen object (C, R: 0-9 bins of the centre of its visible box; "box": [x, y, w, h]);
  a random `--point-share` of them is kept;
- reasoned relation rows: the engine's own balanced yes/no questions (its templates, its truth) about
  the asked relations, answered "The {a} is at column C, row R, the {b} at column C, row R: yes." with
  the places of the two named objects (rows "cot", "named"). Only rows whose stated places decide the
  answer are kept (the compared bins differ, in the truth's direction): left/right compare columns,
  above/below rows (above = a smaller row). The engine decides above/below by gravity and left/right
  in 3D with an image-order check; the few pairs where the bins disagree with it are left out.
Every row carries the image's objects ("objects": name and box) and "size".
"""
import argparse
import json
import random
from pathlib import Path

from phi3v_spatial.spatial.dataset import decode_sample
from phi3v_spatial.spatial.generate import well_seen
from phi3v_spatial.spatial.scene import load_scene

AXIS = {"left": (0, True), "right": (0, False), "above": (1, True), "below": (1, False)}
# size relations (--sizes): the apparent size of the visible box in 16-pixel steps (0-9), the answer
# "The {a} is 3 wide, the {b} 2 wide: yes."; relation -> (measure, the first is larger when true)
SIZE = {"wider": ("wide", True), "thinner": ("wide", False), "taller": ("tall", True), "shorter": ("tall", False),
        "bigger": ("big", True), "smaller": ("big", False)}
SIZE_STEP = 16


def measure(box, what: str) -> int:
    w, h = box[2], box[3]
    return min(9, int({"wide": w, "tall": h, "big": (w * h) ** 0.5}[what] / SIZE_STEP))


def place(box, W, H) -> tuple[int, int]:
    x0, y0, x1, y1 = box
    return min(9, int((x0 + x1) / 2 / W * 10)), min(9, int((y0 + y1) / 2 / H * 10))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("engine")
    ap.add_argument("out")
    ap.add_argument("--relations", default="left,right,above,below")
    ap.add_argument("--point-share", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default="", help="size relations to answer with apparent sizes too (e.g. wider,thinner)")
    a = ap.parse_args()
    root = Path(a.engine)
    wanted = set(a.relations.split(",")) | set(filter(None, a.sizes.split(",")))
    rng = random.Random(a.seed)
    scenes, rows, kept, dropped = {}, [], {}, {}  # scenes: image -> (its well-seen objects, [W, H])
    samples = [decode_sample(line) for f in sorted((root / "data").glob("*.jsonl")) for line in open(f)]
    for s in samples:
        if s.get("task") != "relation_yesno" or s["meta"]["relation"] not in wanted:
            continue
        rel, image, m = s["meta"]["relation"], s["image"], s["meta"]
        if image not in scenes:
            sc = load_scene(root / s["scene"])
            W, H = sc.camera.width, sc.camera.height
            shapes = [{"name": o.name, "box": [x0, y0, x1 - x0, y1 - y0], "place": place((x0, y0, x1, y1), W, H)}
                      for o in sc.objects if well_seen(o, sc.camera) and o.bbox_2d_visible
                      for x0, y0, x1, y1 in [o.bbox_2d_visible]]
            scenes[image] = (shapes, [W, H])
            for o in shapes:
                if rng.random() < a.point_share:
                    rows.append({"image": image, "question": f"Where is the {o['name']}? Answer with its column and row, 0 to 9.",
                                 "answer": "Column {}, row {}.".format(*o["place"]), "kind": "point", "truth": list(o["place"]),
                                 "box": o["box"]})
        by_name = {o["name"]: o for o in scenes[image][0]}
        if m["subject"] not in by_name or m["object"] not in by_name:
            dropped["not well seen"] = dropped.get("not well seen", 0) + 1
            continue
        a_, b_ = by_name[m["subject"]], by_name[m["object"]]
        truth = bool(s["answer"]["value"])
        decision = "yes" if truth else "no"
        if rel in SIZE:
            what, first_larger = SIZE[rel]
            va, vb = measure(a_["box"], what), measure(b_["box"], what)
            decides = va != vb and ((va > vb) == first_larger) == truth
            answer, extra, why = f"The {m['subject']} is {va} {what}, the {m['object']} {vb} {what}: {decision}.", {"size_cot": True}, "sizes"
        else:
            (pa, pb), (axis, first_smaller) = (a_["place"], b_["place"]), AXIS[rel]
            decides = pa[axis] != pb[axis] and ((pa[axis] < pb[axis]) == first_smaller) == truth
            answer = f"The {m['subject']} is at column {pa[0]}, row {pa[1]}, the {m['object']} at column {pb[0]}, row {pb[1]}: {decision}."
            extra, why = {}, "places"
        if not decides:
            dropped[f"{why} do not decide"] = dropped.get(f"{why} do not decide", 0) + 1
            continue
        rows.append({"image": image, "question": s["messages"][-2]["content"].replace("<|image_1|>", "").strip(),
                     "answer": answer, "kind": "yesno", "truth": truth, "named": [m["subject"], m["object"]], "cot": True,
                     **extra, "relation": rel})
        kept[rel] = kept.get(rel, 0) + 1
    for r in rows:
        shapes, r["size"] = scenes[r["image"]]
        r["objects"] = [{"name": o["name"], "box": o["box"]} for o in shapes]
    rng.shuffle(rows)
    with open(a.out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"{len(rows)} rows ({sum(r['kind'] == 'point' for r in rows)} pointing) from {len(scenes)} scenes; "
          f"relation rows kept {kept}, dropped {dropped}")


if __name__ == "__main__":
    main()
