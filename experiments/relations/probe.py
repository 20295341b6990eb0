# does each image token's feature (after the projector) tell its column? ridge probe, held-out images
import json, sys, torch
from pathlib import Path
import phi3v_spatial
torch.set_num_threads(2)
vlm = phi3v_spatial.load(sys.argv[1], device="cpu", dtype="float32")
m, proc = vlm.model, vlm.processor
table = Path(sys.argv[2])
rows = [json.loads(l) for l in open(table)][:120]
X, Y, Xo, Yo = [], [], [], []
with torch.inference_mode():
    for r in rows:
        inp = proc("<|user|>\n<|image_1|>\nhi<|end|>\n<|assistant|>\n", [str(table.parent / r["image"])])
        f = m.model.encode_images(inp["pixel_values"], inp["image_sizes"])[0]  # (N, D)
        n = f.shape[0]; sub = f[: 12 * 13].view(12, 13, -1)[:, :12]  # sub grid rows x cols
        cols = torch.arange(12).expand(12, 12).float()
        X.append(sub.reshape(144, -1)); Y.append(cols.reshape(144))
X, Y = torch.cat(X), torch.cat(Y)
k = X.shape[0] * 2 // 3
def ridge(Xa, Ya, Xb, Yb, lam=1.0):
    mu, sd = Xa.mean(0), Xa.std(0) + 1e-6
    A = (Xa - mu) / sd; B = (Xb - mu) / sd
    A = torch.cat([A, torch.ones(len(A), 1)], 1); B = torch.cat([B, torch.ones(len(B), 1)], 1)
    w = torch.linalg.solve(A.T @ A + lam * torch.eye(A.shape[1]), A.T @ Ya)
    p = B @ w
    return 1 - ((p - Yb) ** 2).mean() / Yb.var()
print("feature dim", X.shape, "R2 of column from token feature:", ridge(X[:k], Y[:k], X[k:], Y[k:]).item())
