import json, re, sys, torch
from pathlib import Path
import phi3v_spatial
torch.set_num_threads(2)
model = sys.argv[1]; table = Path(sys.argv[2])
vlm = phi3v_spatial.load(model, device="cpu", dtype="float32")
rows = [json.loads(l) for l in open(table)]
convs = [[{"role": "user", "content": "<|image_1|>\n" + r["question"]}] for r in rows]
imgs = [[str(table.parent / r["image"])] for r in rows]
res = vlm.chat_batch(convs, images=imgs, max_new_tokens=48, batch_size=32)
acc = {}
for r, o in zip(rows, res):
    t = o.text.strip().lower()
    if r.get("cot"):  # a reasoned answer: the decision follows the places, after the colon
        t = t.rsplit(":", 1)[-1].strip()
    if r["kind"] == "yesno":
        ok = t.startswith("yes") == bool(r["truth"]) and (t.startswith("yes") or t.startswith("no"))
        key = "yesno_" + ("lr" if ("left" in r["question"] or "right" in r["question"]) else "ab" if ("above" in r["question"] or "below" in r["question"]) else "size")
    elif r["kind"] == "point":
        m = re.search(r"column (\d), row (\d)", t)
        col, row = (int(m.group(1)), int(m.group(2))) if m else (-9, -9)
        acc.setdefault("point_col_within1", []).append(abs(col - r["truth"][0]) <= 1)
        acc.setdefault("point_row_within1", []).append(abs(row - r["truth"][1]) <= 1)
        ok = (col, row) == tuple(r["truth"]); key = "point_exact"
        near = lambda t: abs(col - t[0]) <= 1 and abs(row - t[1]) <= 1  # noqa: E731
        others = [q["truth"] for q in rows if q["image"] == r["image"] and q is not r and q["kind"] == "point"]
        # within one bin of the named shape / else of another shape of the image / of none
        acc.setdefault("point_at_named", []).append(near(r["truth"]))
        acc.setdefault("point_at_another", []).append(not near(r["truth"]) and any(near(t) for t in others))
    else:
        ok = r["truth"] in t; key = "choice"
    acc.setdefault(key, []).append(ok)
print({k: f"{100*sum(v)/len(v):.1f} ({len(v)})" for k, v in acc.items()}, "yes-ratio", sum(o.text.strip().lower().startswith("yes") for o in res)/len(res))
