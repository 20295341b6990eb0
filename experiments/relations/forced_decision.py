"""The decision of a reasoned answer with its places given: teacher-force the true answer up to its
colon ("The gray cube is at column 2, row 6, the orange box at column 4, row 5:") after the image and
the question, and compare the "yes" and "no" logits. Separates the decision step from stating places.

    python forced_decision.py MODEL_DIR TABLE     (a "pointrelcot" table of make_shapes.py)
"""
import json
import sys
from pathlib import Path

import torch

import phi3v_spatial
from make_shapes import relation_of


def main(model: str, table: Path):
    torch.set_num_threads(2)
    vlm = phi3v_spatial.load(model, device="cpu", dtype="float32")
    m, proc = vlm.model, vlm.processor
    tok = proc.tokenizer
    yes, no = (tok.encode(f": {w}", add_special_tokens=False)[-1] for w in ("yes", "no"))
    rows = [r for r in map(json.loads, open(table)) if r.get("cot") and r["kind"] == "yesno"]
    by_rel: dict[str, list[bool]] = {}
    with torch.inference_mode():
        for r in rows:
            prompt = tok.apply_chat_template([{"role": "user", "content": "<|image_1|>\n" + r["question"]}],
                                             tokenize=False, add_generation_prompt=True)
            inp = proc(prompt + r["answer"].rsplit(":", 1)[0] + ":", [str(table.parent / r["image"])])
            logits = m(**inp).logits[0, -1]
            by_rel.setdefault(relation_of(r["question"])[0], []).append(bool(logits[yes] > logits[no]) == bool(r["truth"]))
    right = [x for v in by_rel.values() for x in v]
    print(f"decision right with the true places forced: {100 * sum(right) / len(right):.1f}% of {len(right)};",
          {k: f"{100 * sum(v) / len(v):.1f}" for k, v in sorted(by_rel.items())})


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
