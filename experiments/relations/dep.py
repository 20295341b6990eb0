import json, sys, torch
from pathlib import Path
import phi3v_spatial
torch.set_num_threads(2)
vlm = phi3v_spatial.load(sys.argv[1], device="cpu", dtype="float32")
m, proc = vlm.model, vlm.processor
tok = proc.tokenizer
L = tok.encode("Left", add_special_tokens=False)[-1]; R = tok.encode("Right", add_special_tokens=False)[-1]
table = Path(sys.argv[2])
rows = [json.loads(l) for l in open(table)][:60]
ds, ts = [], []
with torch.inference_mode():
    for r in rows:
        prompt = tok.apply_chat_template([{"role": "user", "content": "<|image_1|>\n" + r["question"]}], tokenize=False, add_generation_prompt=True)
        inp = proc(prompt, [str(table.parent / r["image"])])
        lg = m(**inp).logits[0, -1].log_softmax(-1)
        ds.append(float(lg[L] - lg[R])); ts.append(1.0 if r["truth"] == "left" else -1.0)
d, t = torch.tensor(ds), torch.tensor(ts)
print("mean diff", d.mean().item(), "std", d.std().item(), "corr with truth", torch.corrcoef(torch.stack([d, t]))[0, 1].item())
