# can the named shape's colour (and kind) be read from its image tokens? Nearest-class-mean and
# ridge-classifier probes on the mean projected feature of the tokens under each shape, held-out images.
# python colour_probe.py MODEL_DIR POINT_TABLE   (a make_shapes.py "point" table: rows carry the boxes)
import json, sys, torch
from pathlib import Path
import phi3v_spatial
sys.path.insert(0, str(Path(__file__).parent))
from attn_sup import object_tokens  # noqa: E402
torch.set_num_threads(2)
vlm = phi3v_spatial.load(sys.argv[1], device="cpu", dtype="float32")
m, proc = vlm.model, vlm.processor
table = Path(sys.argv[2])
rows = [json.loads(l) for l in open(table)]
feats, colours, kinds, cache = [], [], [], {}
with torch.inference_mode():
    for r in rows:
        if r["image"] not in cache:
            inp = proc("<|user|>\n<|image_1|>\nhi<|end|>\n<|assistant|>\n", [str(table.parent / r["image"])])
            cache[r["image"]] = m.model.encode_images(inp["pixel_values"], inp["image_sizes"])[0]
        sel = object_tokens(r, proc.num_crops, m.config.hd_transform_order)
        if sel.any():
            name = r["question"].split("Where is the ")[1].split("?")[0].split()
            feats.append(cache[r["image"]][sel].mean(0)); colours.append(name[0]); kinds.append(name[-1])
X = torch.stack(feats)
k = len(X) * 2 // 3
def probe(labels):
    classes = sorted(set(labels)); y = torch.tensor([classes.index(c) for c in labels])
    mu, sd = X[:k].mean(0), X[:k].std(0) + 1e-6
    A, B = (X[:k] - mu) / sd, (X[k:] - mu) / sd
    Y = torch.nn.functional.one_hot(y[:k], len(classes)).float()
    W = torch.linalg.solve(A.T @ A + 10.0 * torch.eye(A.shape[1]), A.T @ Y)
    ridge = ((B @ W).argmax(1) == y[k:]).float().mean().item()
    means = torch.stack([A[y[:k] == c].mean(0) if (y[:k] == c).any() else torch.full((A.shape[1],), 1e9) for c in range(len(classes))])
    ncm = (torch.cdist(B, means).argmin(1) == y[k:]).float().mean().item()
    return f"ridge {100 * ridge:.1f}% nearest-mean {100 * ncm:.1f}% ({len(classes)} classes, chance {100 / len(classes):.1f}%)"
print(f"{len(X)} shapes: colour {probe(colours)}; kind {probe(kinds)}")
