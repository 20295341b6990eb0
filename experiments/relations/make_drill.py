"""Comparison drills: reasoned relation rows whose question states the two places (random digits,
not the image's), so the decision can only come from comparing them. A text-only skill, drilled with
the images still attached (they do not decide the answer).

    python make_drill.py COT_TABLE OUT_TABLE SEED    (OUT_TABLE in the same folder as COT_TABLE)

Rows carry "drill": true; attn_sup.py supervises only their decision (--decision-to-digits).
"""
import json
import random
import sys

from make_shapes import relation_of


def drill(row: dict, rng: random.Random) -> dict:
    a, b = row["named"]
    q = row["question"]
    rel, axis = relation_of(q)
    first_smaller = rel in ("left", "above")
    pa, pb = [rng.randrange(10), rng.randrange(10)], [rng.randrange(10), rng.randrange(10)]
    while pa[axis] == pb[axis]:
        pb[axis] = rng.randrange(10)
    holds = (pa[axis] < pb[axis]) == first_smaller
    places = f"The {a} is at column {pa[0]}, row {pa[1]}, the {b} at column {pb[0]}, row {pb[1]}"
    if row["kind"] == "yesno":
        decision = "yes" if holds else "no"
    else:  # "which is more to the left / higher up": the one the relation word favours
        decision = f"the {a if holds else b}"
    return {**row, "question": f"{places}. {q}", "answer": f"{places}: {decision}.", "drill": True,
            "truth": holds if row["kind"] == "yesno" else (a if holds else b)}


def main(src: str, out: str, seed: int):
    rng = random.Random(seed)
    rows = [r for r in map(json.loads, open(src)) if r.get("cot")]
    with open(out, "w") as fh:
        fh.writelines(json.dumps(drill(r, rng)) + "\n" for r in rows)
    print(len(rows), "drill rows")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
