"""Tables for the relation-word curriculum on images: the reasoned yes/no rows of a "pointrelcot"
table that ask one of the given words, and a random quarter of its point rows.

    python make_canon.py SRC_TABLE OUT_TABLE SEED WORD [WORD ...]    (OUT_TABLE beside SRC_TABLE)

canon.jsonl: left above (seed 0); canon3.jsonl: left right above (seed 1); canon4.jsonl: all four (seed 1).
"""
import json
import random
import sys

from make_shapes import relation_of


def main(src: str, out: str, seed: int, words: list[str]):
    rng = random.Random(seed)
    rows = [json.loads(line) for line in open(src)]
    keep = [r for r in rows if (r["kind"] == "yesno" and r.get("cot") and relation_of(r["question"])[0] in words)
            or (r["kind"] == "point" and rng.random() < 0.25)]
    with open(out, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in keep)
    print(len(keep), "rows")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:])
