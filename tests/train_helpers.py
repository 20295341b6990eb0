"""Shared helpers of the training tests: a tiny in-memory dataset of coloured-square images."""
from __future__ import annotations

from pathlib import Path

from PIL import Image


def square_image(x: int, color=(255, 0, 0), size=(64, 48)) -> Image.Image:
    im = Image.new("RGB", size, (255, 255, 255))
    im.paste(Image.new("RGB", (12, 12), color), (x, 18))
    return im


def toy_samples(n: int = 8, folder: Path | None = None, images: bool = True) -> list[dict]:
    """n one-turn samples 'Is the square on the left?' with PNGs written to folder (or PIL images)."""
    out = []
    for i in range(n):
        left = i % 2 == 0
        im = square_image(6 if left else 46, ((i * 40) % 256, 0, 255 - (i * 40) % 256))
        if folder is not None:
            path = Path(folder) / f"im{i}.png"
            im.save(path)
            im = str(path)
        if not images:
            out.append({"id": f"toy-{i}", "images": [], "messages": [
                {"role": "user", "content": f"Is square {i} on the left?"},
                {"role": "assistant", "content": "Yes." if left else "No."}]})
            continue
        out.append({
            "id": f"toy-{i}",
            "messages": [{"role": "user", "content": "<|image_1|>\nIs the square on the left?"},
                         {"role": "assistant", "content": "Yes." if left else "No."}],
            "images": [im],
        })
    return out
