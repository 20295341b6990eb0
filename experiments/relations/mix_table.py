"""Mix the relation chain's table with plain rows of a whole data-engine folder (a diagnosis, not
part of the package): the chain's model answers everything with places, so to keep its relations
and get the other tasks back it trains on both at once.

    python mix_table.py ENGINE_DIR CHAIN_TABLE OUT.jsonl [--repeat N] [--plain-repeat M] [--also DIR ...] [--seed S]

Plain rows: every one-turn question of ENGINE_DIR (image-question-answer, marked "plain": the
language loss only in attn_sup.py) except the relation yes/no questions about left/right/above/below,
which the chain's table answers with reasons, and the robot tasks (multi-turn, not in the embedded
model's tasks). The chain's rows are repeated N times, the plain rows M times. `--also` adds the plain
rows of more folders in the same format (the recipe's object-crop and zoomed-scene views,
train/views.py). Image paths become absolute, so rows of several folders can share one table.
"""
import argparse
import json
import random
from pathlib import Path

PLACES = {"left", "right", "above", "below"}


def plain_rows(engine: Path) -> list[dict]:
    rows = []
    for shard in sorted((engine / "data").glob("*.jsonl")):
        for line in shard.open():
            r = json.loads(line)
            if len(r["messages"]) != 2 or len(r["images"]) != 1:
                continue
            if r["task"] == "relation_yesno" and json.loads(r.get("meta") or "{}").get("relation") in PLACES:
                continue
            question = r["messages"][0]["content"].removeprefix("<|image_1|>\n")
            rows.append({"image": str((engine / r["images"][0]).resolve()), "question": question,
                         "answer": r["messages"][1]["content"], "plain": True, "task": r["task"]})
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("engine")
    ap.add_argument("chain_table")
    ap.add_argument("out")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--plain-repeat", type=int, default=1)
    ap.add_argument("--also", action="append", default=[], help="another engine-format folder's plain rows")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    table = Path(a.chain_table)
    chain = []
    for line in table.open():
        r = json.loads(line)
        r["image"] = str((table.parent / r["image"]).resolve())
        chain.append(r)
    plain = [r for d in [a.engine, *a.also] for r in plain_rows(Path(d))] * a.plain_repeat
    rows = plain + chain * a.repeat
    random.Random(a.seed).shuffle(rows)
    with open(a.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"{len(rows)} rows: {len(plain)} plain, {len(chain)} x {a.repeat} from the chain")


if __name__ == "__main__":
    main()
