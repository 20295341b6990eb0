"""Image-processor speed: this package vs the original Phi-3-V processor, measured in the same run.

Cases: a 1920x1080 photo at num_crops 16 and 4, and a batch of 8 mixed-size images at num_crops 16.
The original is timed by ../shared/tools/reference/run.py (its own warm-up, then the median of
--repeat calls per image; images decoded outside the timing) in a subprocess; ours in this process
the same way. The two sides run back to back, `--rounds` times; each round gives a ratio (original
median / ours) and the reported ratio is the median over rounds, which keeps other load on a shared
machine from favouring either side. The original cannot batch, so its batch time is the sum of its
per-image medians (a lower bound: a list call to it also stacks the results). The first round also
checks that our pixels are bit-identical to the original's.

    .venv/bin/python benchmarks/bench_processor.py [--rounds 3] [--repeat 7]
    PHI3V_REF_PYTHON=/path/to/python ... (or --reference-python; that side is skipped if absent)

Prints a table, the ratios (original time / ours) and one JSON object as the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw, ImageFilter

from phi3v_spatial.processing import Phi3VImageProcessor, Phi3VProcessor

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REF_PYTHON = os.environ.get("PHI3V_REF_PYTHON", "/tmp/phi3v-reference-env/bin/python")
DEFAULT_REF_RUN = os.environ.get("PHI3V_REF_RUN", str(REPO.parent / "shared" / "tools" / "reference" / "run.py"))
BATCH_SIZES = [(1920, 1080), (1280, 960), (640, 480), (480, 640), (1000, 200), (336, 336), (720, 1280), (2048, 1536)]
TARGETS = {"photo_nc16": 1.5, "batch8_nc16": 2.5}


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic photo-like image: smooth shading, shapes, blur and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([120 + 80 * np.sin(x / 97 + seed), 110 + 70 * np.cos(y / 61), 90 + 60 * np.sin((x + y) / 151)], -1)
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        box = [x0, y0, x0 + rng.integers(10, width // 3 + 11), y0 + rng.integers(10, height // 3 + 11)]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    noisy = np.asarray(img).astype(np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8), "RGB")


def median_seconds(fn, repeat: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_reference(python: str, run_py: str, paths: list[Path], num_crops: int, repeat: int, warmup: int, out: Path | None):
    cmd = [python, run_py, "processor", "--images", *map(str, paths), "--num-crops", str(num_crops),
           "--repeat", str(repeat), "--warmup", str(warmup)]  # fmt: skip
    if out is not None:
        cmd += ["--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"reference runner failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-python", default=DEFAULT_REF_PYTHON)
    ap.add_argument("--reference-run", default=DEFAULT_REF_RUN)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()

    have_ref = Path(args.reference_python).is_file() and Path(args.reference_run).is_file()
    if not have_ref:
        print(f"reference skipped: {args.reference_python} or {args.reference_run} not found "
              "(bash ../shared/tools/reference/setup.sh builds it; or pass --reference-python)", file=sys.stderr)  # fmt: skip

    tmp = Path(tempfile.mkdtemp(prefix="bench_processor_"))
    big = photo(1920, 1080, seed=0)
    photo_path = tmp / "photo_1920x1080.png"
    big.save(photo_path)
    batch = [photo(w, h, seed=i + 1) for i, (w, h) in enumerate(BATCH_SIZES)]
    batch_paths = []
    for im in batch:
        batch_paths.append(tmp / f"batch_{im.size[0]}x{im.size[1]}.png")
        im.save(batch_paths[-1])
    # time on decoded images, as the reference runner does
    big, batch = Image.open(photo_path), [Image.open(p) for p in batch_paths]
    for im in (big, *batch):
        im.load()

    ours_ip = Phi3VImageProcessor()
    processor = Phi3VProcessor.from_pretrained(REPO.parent / "shared" / "fixtures" / "phi3v-spatial-meta") if (
        REPO.parent / "shared" / "fixtures" / "phi3v-spatial-meta").is_dir() else None  # fmt: skip
    prompt = "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"
    samples: dict[str, list[float]] = {k: [] for k in ("photo_nc16", "photo_nc4", "batch8_nc16")}
    ref_samples: dict[str, list[float]] = {k: [] for k in samples}
    extra: dict[str, list[float]] = {"processor_call_photo_nc16": []}
    identical = None
    ref_env = None
    for rnd in range(args.rounds):
        for nc, cases in ((16, ("photo_nc16", "batch8_nc16")), (4, ("photo_nc4",))):
            paths = [photo_path] + (batch_paths if nc == 16 else [])
            if have_ref:
                out = tmp / f"ref_nc{nc}.npz" if rnd == 0 else None
                ref = run_reference(args.reference_python, args.reference_run, paths, nc, args.repeat, args.warmup, out)
                ref_env = ref.get("env")
                per_image = [im["seconds"]["median"] for im in ref["images"]]
                ref_samples[f"photo_nc{nc}"].append(per_image[0])
                if nc == 16:
                    ref_samples["batch8_nc16"].append(sum(per_image[1:]))
                if out is not None:
                    saved = np.load(out)
                    ours = [ours_ip([big], num_crops=nc)] + ([ours_ip(batch, num_crops=nc)] if nc == 16 else [])
                    ours_pv = torch.cat([o["pixel_values"] for o in ours]).numpy()
                    ref_pv = np.concatenate([saved[f"pixel_values_{i}"] for i in range(len(paths))])
                    identical = bool(np.array_equal(ours_pv, ref_pv)) and identical is not False
            samples[f"photo_nc{nc}"].append(median_seconds(lambda: ours_ip([big], num_crops=nc), args.repeat, args.warmup))
            if nc == 16:
                samples["batch8_nc16"].append(median_seconds(lambda: ours_ip(batch, num_crops=16), args.repeat, args.warmup))
                if processor is not None:
                    extra["processor_call_photo_nc16"].append(
                        median_seconds(lambda: processor(prompt, [big], num_crops=16), args.repeat, args.warmup)
                    )
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)

    figures, ratios = {}, {}
    print(f"{'case':<14}{'original ms':>14}{'ours ms':>10}{'ratio':>8}{'target':>8}")
    for key in samples:
        ours_ms = 1e3 * statistics.median(samples[key])
        ref_ms = 1e3 * statistics.median(ref_samples[key]) if ref_samples[key] else None
        ratio = statistics.median(r / o for r, o in zip(ref_samples[key], samples[key])) if ref_ms else None
        figures[key] = {"ours_ms": round(ours_ms, 2), "original_ms": None if ref_ms is None else round(ref_ms, 2),
                        "ours_ms_rounds": [round(1e3 * s, 2) for s in samples[key]],
                        "original_ms_rounds": [round(1e3 * s, 2) for s in ref_samples[key]]}  # fmt: skip
        ratios[key] = None if ratio is None else round(ratio, 2)
        target = TARGETS.get(key)
        print(f"{key:<14}{'-' if ref_ms is None else f'{ref_ms:.1f}':>14}{ours_ms:>10.1f}"
              f"{'-' if ratio is None else f'{ratio:.2f}x':>8}{'' if target is None else f'{target}x':>8}")  # fmt: skip
    if extra["processor_call_photo_nc16"]:
        figures["processor_call_photo_nc16_ms"] = round(1e3 * statistics.median(extra["processor_call_photo_nc16"]), 2)
    if identical is not None:
        print(f"pixel_values bit-identical to the original: {identical}")
    result = {
        "benchmark": "processor",
        "figures": figures,
        "ratios": ratios,
        "targets": TARGETS,
        "targets_met": None if not have_ref else all(ratios[k] is not None and ratios[k] >= t for k, t in TARGETS.items()),
        "identical_to_original": identical,
        "rounds": args.rounds,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "batch_sizes_wh": BATCH_SIZES,
        "reference": {"python": args.reference_python if have_ref else None, "env": ref_env},
        "hardware": {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0))},
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "git_sha": git_sha(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
