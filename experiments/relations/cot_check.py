"""Reasoned relation answers, checked part by part (a "pointrelcot" table of make_shapes.py).

    python cot_check.py MODEL_DIR TABLE

For every "cot" row: are both stated places within one bin of the named shapes' (places_ok), are the
names copied from the question (names_ok), is the final yes/no or choice right (decision_right), and
does the decision follow from the places the model itself stated (consistent; yes/no rows)?
"""
import json
import re
import sys
from pathlib import Path

import torch

import phi3v_spatial
from make_shapes import relation_of

PLACE = re.compile(r"column (\d), row (\d)")


def main(model: str, table: Path):
    torch.set_num_threads(2)
    vlm = phi3v_spatial.load(model, device="cpu", dtype="float32")
    rows = [r for r in map(json.loads, open(table)) if r.get("cot")]
    res = vlm.chat_batch([[{"role": "user", "content": "<|image_1|>\n" + r["question"]}] for r in rows],
                         images=[[str(table.parent / r["image"])] for r in rows], max_new_tokens=48, batch_size=32)
    stats = dict.fromkeys(("parsed", "places_ok", "names_ok", "decision_right", "consistent"), 0)
    n_yesno = sum(r["kind"] == "yesno" for r in rows)
    by_rel: dict[str, list[bool]] = {}
    for r, o in zip(rows, res):
        text = o.text.strip()
        truth = [tuple(map(int, m)) for m in PLACE.findall(r["answer"])]
        said = [tuple(map(int, m)) for m in PLACE.findall(text)]
        decision = text.rsplit(":", 1)[-1].strip().lower()
        if r["kind"] == "yesno":
            stats["decision_right"] += decision[:3] in ("yes", "no") and decision.startswith("yes") == bool(r["truth"])
        else:
            stats["decision_right"] += r["truth"] in decision
        if len(said) != 2:
            continue
        stats["parsed"] += 1
        stats["places_ok"] += all(abs(a - b) <= 1 and abs(c - d) <= 1 for (a, c), (b, d) in zip(said, truth))
        stats["names_ok"] += re.findall(r"[Tt]he (\w+ \w+) (?:is )?at", text)[:2] == r["named"]
        if r["kind"] == "yesno":
            rel, axis = relation_of(r["question"])
            first, second = said[0][axis], said[1][axis]
            holds = first < second if rel in ("left", "above") else first > second
            stats["consistent"] += decision.startswith("yes") == holds
            by_rel.setdefault(rel, []).append(decision.startswith("yes") == holds)
    out = {k: f"{100 * v / len(rows):.1f}" for k, v in stats.items() if k != "consistent"}
    out["consistent (yes/no)"] = f"{100 * stats['consistent'] / max(1, n_yesno):.1f}"
    print(out, "of", len(rows), "rows,", n_yesno, "yes/no")
    print("consistent by relation word:", {k: f"{100 * sum(v) / len(v):.1f} of {len(v)}" for k, v in sorted(by_rel.items())})


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
