"""2D shape images and questions as a JSONL table (image, question, answer, kind, truth).

    python make_shapes.py KIND OUT_DIR N_IMAGES SEED

KIND: "one"       one shape per image: "Is the object on the left or the right side of the image?"
      "side"      2-4 shapes: "Is the {name} on the left or the right side of the image?"
      "point"     2-4 shapes: "Where is the {name}? ..." -> "Column C, row R." (0-9 bins of the image)
      "point1"    the same with one shape per image
      "relations" 2-4 shapes: left/right, above/below, bigger/smaller yes/no (the data engine's
                  templates) and "which is more to the left / higher up / bigger" pair choices.
      "pointrel"  2-4 shapes: the "point" and the "relations" questions of each image.
      "pointrelcot" the same, but left/right/above/below answers first give both shapes' places:
                  "The {a} is at column C, row R, the {b} at column C, row R: yes." (rows "cot": true)
Every row carries the image's shapes ("objects": name and [x, y, w, h] box) and "size"; relation rows
also the two shapes they name, in the question's order ("named").
Shapes are named like the engine's objects ("{colour} {cube|ball|box|cylinder}") and never overlap.
"""
import json
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from phi3v_spatial.spatial import templates as T
from phi3v_spatial.spatial.catalog import COLOURS

W, H = 448, 336
SHAPES = ["cube", "ball", "box", "cylinder"]
OPP = {"left": "right", "right": "left", "above": "below", "below": "above", "bigger": "smaller", "smaller": "bigger"}


def draw(rng, single: bool):
    bg = tuple(int(c) for c in (rng.randint(150, 210), rng.randint(140, 200), rng.randint(120, 190)))
    img = Image.new("RGB", (W, H), bg)
    d = ImageDraw.Draw(img)
    k = 1 if single else rng.randint(2, 4)
    objs, names, tries = [], set(), 0
    while len(objs) < k and tries < 200:
        tries += 1
        cname, rgb = rng.choice(COLOURS)
        shape = rng.choice(SHAPES)
        name = f"{cname} {shape}"
        if name in names:
            continue
        s = rng.randint(24, 80)
        w, h = {"cube": (s, s), "ball": (s, s), "box": (int(s * 1.6), s), "cylinder": (int(s * 0.6), int(s * 1.5))}[shape]
        x, y = rng.randint(4, W - w - 4), rng.randint(4, H - h - 4)
        if any(not (x + w < o["x"] or o["x"] + o["w"] < x or y + h < o["y"] or o["y"] + o["h"] < y) for o in objs):
            continue
        (d.ellipse if shape == "ball" else d.rectangle)([x, y, x + w, y + h], fill=tuple(int(255 * c) for c in rgb), outline=(30, 30, 30))
        names.add(name)
        objs.append(dict(name=name, x=x, y=y, w=w, h=h, cx=x + w / 2, cy=y + h / 2, area=w * h))
    return img, objs


def side_questions(objs, fn, named):
    rows = []
    for o in objs[:2]:
        if 0.4 * W < o["cx"] < 0.6 * W:
            continue
        side = "left" if o["cx"] < W / 2 else "right"
        what = f"the {o['name']}" if named else "the object"
        rows.append({"image": fn, "question": f"Is {what} on the left or the right side of the image?",
                     "answer": side.capitalize() + ".", "kind": "choice", "truth": side})
    return rows


def place(o) -> tuple[int, int]:
    """The 0-9 column and row bins of a shape's centre."""
    return min(9, int(o["cx"] / W * 10)), min(9, int(o["cy"] / H * 10))


def point_questions(objs, fn):
    """Dense grounding: each digit is a 10-way answer that attending to the named shape improves."""
    rows = []
    for o in objs:
        col, row = place(o)
        rows.append({"image": fn, "question": f"Where is the {o['name']}? Answer with its column and row, 0 to 9.",
                     "answer": f"Column {col}, row {row}.", "kind": "point", "truth": [col, row],
                     "box": [o["x"], o["y"], o["w"], o["h"]], "size": [W, H]})
    return rows


# a question's relation word -> (relation, axis: 0 columns, 1 rows); choice questions say "higher up" / "lower down"
RELATION_WORDS = (("higher up", "above"), ("lower down", "below"), ("left", "left"), ("right", "right"),
                  ("above", "above"), ("below", "below"))


def relation_of(question: str) -> tuple[str, int] | None:
    """The left/right/above/below relation a question asks about and its axis, or None (size)."""
    rel = next((r for w, r in RELATION_WORDS if w in question), None)
    return None if rel is None else (rel, 0 if rel in ("left", "right") else 1)


def reasoned(a, b, decision: str) -> str:
    (ca, ra), (cb, rb) = place(a), place(b)
    return f"The {a['name']} is at column {ca}, row {ra}, the {b['name']} at column {cb}, row {rb}: {decision}."


def relation_questions(rng, objs, fn, cot: bool = False):
    cands = []
    for a in objs:
        for b in objs:
            if a is b:
                continue
            if a["cx"] < b["cx"] - 0.12 * W:
                cands.append((a, b, "left"))
            if a["cy"] < b["cy"] - 0.12 * H:
                cands.append((a, b, "above"))
            if a["area"] > 2.0 * b["area"]:
                cands.append((a, b, "bigger"))
    rng.shuffle(cands)
    rows = []
    for a, b, rel in cands[:3]:
        if rng.random() < 0.5:  # state the fact either way round
            a, b, rel = b, a, OPP[rel]
        truth = rng.random() < 0.5
        asked = rel if truth else OPP[rel]
        f = {"a": a["name"], "b": b["name"], "rel": T.REL_PHRASE[asked], "opp": T.REL_PHRASE[OPP[asked]]}
        if rng.random() < 0.75:
            q = rng.choice(T.YESNO_QUESTIONS).format(**f)
            ans = rng.choice(T.YES_ANSWERS if truth else T.NO_ANSWERS).format(**f)
            kind = "yesno"
        else:
            pair = [a, b]
            rng.shuffle(pair)
            q = rng.choice(T.CHOICE_PAIR_QUESTIONS).format(a=pair[0]["name"], b=pair[1]["name"], rel=T.CHOICE_PAIR_PHRASE[rel])
            ans, truth, kind = f"The {a['name']}.", a["name"], "choice"
            a, b = pair
        row = {"image": fn, "question": q, "answer": ans, "kind": kind, "truth": truth, "named": [a["name"], b["name"]]}
        if cot and rel not in ("bigger", "smaller"):
            decision = ("yes" if truth else "no") if kind == "yesno" else f"the {truth}"
            row.update(answer=reasoned(a, b, decision), cot=True)
        rows.append(row)
    return rows


def main(kind, out, n, seed):
    if kind not in ("one", "side", "point", "point1", "relations", "pointrel", "pointrelcot"):
        raise SystemExit(f"unknown kind {kind!r}: one, side, point, point1, relations, pointrel or pointrelcot")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        img, objs = draw(rng, single=kind in ("one", "point1"))
        fn = f"img{seed}_{i}.png"
        img.save(out / fn)
        if kind == "relations":
            new = relation_questions(rng, objs, fn)
        elif kind in ("point", "point1"):
            new = point_questions(objs, fn)
        elif kind in ("pointrel", "pointrelcot"):
            new = point_questions(objs, fn) + relation_questions(rng, objs, fn, cot=kind == "pointrelcot")
        else:
            new = side_questions(objs, fn, named=kind == "side")
        shapes = [{"name": o["name"], "box": [o["x"], o["y"], o["w"], o["h"]]} for o in objs]
        rows += [{**r, "objects": shapes, "size": [W, H]} for r in new]
    with open(out / "data.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    print(len(rows), "rows")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
