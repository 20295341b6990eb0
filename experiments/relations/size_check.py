"""Reasoned size answers, checked part by part (the "size_cot" rows of an engine_table.py --sizes table).

    python size_check.py MODEL_DIR TABLE [N]

For the first N (400) size rows: does the answer parse ("The {a} is S {measure}, the {b} S {measure}:
yes/no."), is the measure word the question's (wide / tall / big), are both stated sizes within one
16-pixel step of the visible boxes', is their order right, is the final yes/no right, and does the
decision follow the sizes the model itself stated (by relation word; rows where it stated two equal
sizes are left out of that)?
"""
import collections
import json
import re
import sys
from pathlib import Path

import torch

import phi3v_spatial

ANSWER = re.compile(r"is (\d) (wide|tall|big), the .* (\d) (wide|tall|big): (yes|no)")
FIRST_LARGER = {"wider": True, "thinner": False, "taller": True, "shorter": False, "bigger": True, "smaller": False}


def main(model: str, table: Path, n: int = 400):
    torch.set_num_threads(2)
    rows = [r for r in map(json.loads, open(table)) if r.get("size_cot")][:n]
    vlm = phi3v_spatial.load(model, device="cpu", dtype="float32")
    res = vlm.chat_batch([[{"role": "user", "content": "<|image_1|>\n" + r["question"]}] for r in rows],
                         images=[[str(table.parent / r["image"])] for r in rows], max_new_tokens=48, batch_size=32)
    stats = collections.defaultdict(list)
    for r, out in zip(rows, res):
        said, truth = ANSWER.search(out.text.strip()), ANSWER.search(r["answer"])
        stats["parsed"].append(said is not None)
        if said is None:
            continue
        va, vb, decision = int(said.group(1)), int(said.group(3)), said.group(5) == "yes"
        ta, tb = int(truth.group(1)), int(truth.group(3))
        stats["measure_word_ok"].append(said.group(2) == truth.group(2))
        stats["sizes_within_one"].append(abs(va - ta) <= 1 and abs(vb - tb) <= 1)
        stats["order_right"].append(va != vb and (va > vb) == (ta > tb))
        stats["decision_right"].append(decision == r["truth"])
        if va != vb:
            stats["consistent_" + r["relation"]].append(((va > vb) == FIRST_LARGER[r["relation"]]) == decision)
    print({k: f"{100 * sum(v) / len(v):.1f} ({len(v)})" for k, v in stats.items()})


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), *(int(x) for x in sys.argv[3:4]))
