import json, sys, random
from pathlib import Path
from PIL import Image, ImageDraw
from phi3v_spatial.spatial.catalog import COLOURS
from phi3v_spatial.spatial import templates as T
out = Path(sys.argv[1]); n = int(sys.argv[2]); seed = int(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
rng = random.Random(seed)
W, H = 448, 336
KINDS = ["cube", "ball", "box", "cylinder"]
OPP = {"left": "right", "right": "left", "above": "below", "below": "above", "bigger": "smaller", "smaller": "bigger"}
rows = []
for i in range(n):
    bg = tuple(int(c) for c in (rng.randint(150, 210), rng.randint(140, 200), rng.randint(120, 190)))
    img = Image.new("RGB", (W, H), bg); d = ImageDraw.Draw(img)
    k = rng.randint(2, 4); objs = []; names = set(); tries = 0
    while len(objs) < k and tries < 200:
        tries += 1
        cname, rgb = rng.choice(COLOURS); kind = rng.choice(KINDS)
        name = f"{cname} {kind}"
        if name in names: continue
        s = rng.randint(24, 80)
        w, h = {"cube": (s, s), "ball": (s, s), "box": (int(s * 1.6), s), "cylinder": (int(s * 0.6), int(s * 1.5))}[kind]
        x, y = rng.randint(4, W - w - 4), rng.randint(4, H - h - 4)
        if any(not (x + w < o["x"] or o["x"] + o["w"] < x or y + h < o["y"] or o["y"] + o["h"] < y) for o in objs): continue
        col = tuple(int(255 * c) for c in rgb)
        (d.ellipse if kind == "ball" else d.rectangle)([x, y, x + w, y + h], fill=col, outline=(30, 30, 30))
        names.add(name); objs.append(dict(name=name, x=x, y=y, w=w, h=h, cx=x + w / 2, cy=y + h / 2, area=w * h))
    fn = f"img{seed}_{i}.png"; img.save(out / fn)
    for o in objs[:2]:
        if 0.4 * W < o["cx"] < 0.6 * W: continue
        side = "left" if o["cx"] < W / 2 else "right"
        rows.append({"image": fn, "question": f"Is the {o['name']} on the left or the right side of the image?", "answer": side.capitalize() + ".", "kind": "choice", "truth": side})
with open(out / "data.jsonl", "w") as fh:
    for r in rows: fh.write(json.dumps(r) + "\n")
print(len(rows), "rows")
