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
    sizes = set(filter(None, a.sizes.split(",")))
    wanted = set(a.relations.split(",")) | sizes
    rng = random.Random(a.seed)
    scenes, rows, kept, dropped = {}, [], {}, {}
    samples = [decode_sample(line) for f in sorted((root / "data").glob("*.jsonl")) for line in open(f)]
    for s in samples:
        if s.get("task") != "relation_yesno":
            continue
        rel = s["meta"]["relation"]
        if rel not in wanted:
            continue
        if s["scene"] not in scenes:
            sc = load_scene(root / s["scene"])
            W, H = sc.camera.width, sc.camera.height
            objs = [o for o in sc.objects if well_seen(o, sc.camera) and o.bbox_2d_visible]
            shapes = [{"name": o.name, "box": [o.bbox_2d_visible[0], o.bbox_2d_visible[1],
                                               o.bbox_2d_visible[2] - o.bbox_2d_visible[0],
                                               o.bbox_2d_visible[3] - o.bbox_2d_visible[1]],
                       "place": place(o.bbox_2d_visible, W, H)} for o in objs]
            scenes[s["scene"]] = (shapes, [W, H], s["image"])
            for o in shapes:
                if rng.random() < a.point_share:
                    rows.append({"image": s["image"], "question": f"Where is the {o['name']}? Answer with its column and row, 0 to 9.",
                                 "answer": "Column {}, row {}.".format(*o["place"]), "kind": "point", "truth": list(o["place"]),
                                 "box": o["box"], "size": [W, H]})
        shapes, size, image = scenes[s["scene"]]
        by_name = {o["name"]: o for o in shapes}
        m = s["meta"]
        if m["subject"] not in by_name or m["object"] not in by_name:
            dropped["not well seen"] = dropped.get("not well seen", 0) + 1
            continue
        truth = bool(s["answer"]["value"])
        if rel in SIZE:
            what, first_larger = SIZE[rel]
            va, vb = (measure(by_name[n]["box"], what) for n in (m["subject"], m["object"]))
            if va == vb or ((va > vb) == first_larger) != truth:
                dropped["sizes do not decide"] = dropped.get("sizes do not decide", 0) + 1
                continue
            answer = f"The {m['subject']} is {va} {what}, the {m['object']} {vb} {what}: {'yes' if truth else 'no'}."
            rows.append({"image": image, "question": s["messages"][-2]["content"].replace("<|image_1|>", "").strip(),
                         "answer": answer, "kind": "yesno", "truth": truth, "named": [m["subject"], m["object"]],
                         "cot": True, "size_cot": True, "relation": rel})
            kept[rel] = kept.get(rel, 0) + 1
            continue
        pa, pb = by_name[m["subject"]]["place"], by_name[m["object"]]["place"]
        axis, first_smaller = AXIS[rel]
        if pa[axis] == pb[axis] or ((pa[axis] < pb[axis]) == first_smaller) != truth:
            dropped["places do not decide"] = dropped.get("places do not decide", 0) + 1
            continue
        decision = "yes" if truth else "no"
        answer = f"The {m['subject']} is at column {pa[0]}, row {pa[1]}, the {m['object']} at column {pb[0]}, row {pb[1]}: {decision}."
        rows.append({"image": image, "question": s["messages"][-2]["content"].replace("<|image_1|>", "").strip(),
                     "answer": answer, "kind": "yesno", "truth": truth, "named": [m["subject"], m["object"]], "cot": True,
                     "relation": rel})
        kept[rel] = kept.get(rel, 0) + 1
    by_image = {image: (shapes, size) for shapes, size, image in scenes.values()}
    for r in rows:
        shapes, size = by_image[r["image"]]
        r["size"] = size
        r["objects"] = [{"name": o["name"], "box": o["box"]} for o in shapes]
    rng.shuffle(rows)
    with open(a.out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"{len(rows)} rows ({sum(r['kind'] == 'point' for r in rows)} pointing) from {len(scenes)} scenes; "
          f"relation rows kept {kept}, dropped {dropped}")


if __name__ == "__main__":
    main()
