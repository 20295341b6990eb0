"""Spatial data engine throughput: scenes/s and samples/s, and the time to 10,000 samples.

1. Stages, one process: median seconds per scene for layout + physics + robot + camera/render
   (generate_scene), writing the image/depth/mask/scene files, and question synthesis, over
   --stage-scenes scenes after a warm-up scene.
2. Baseline: `synthesize` with one worker on --baseline-scenes scenes.
3. The run: `synthesize` with --workers until at least --samples samples (default 10,000), timed
   end to end (process start-up included); the ratio to the baseline rate is printed.

    python benchmarks/bench_synth.py [--samples 10000] [--workers 2]
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import env_info, median, print_result  # noqa: E402

SEED = 500_000_000  # a range no test or default run uses


def stages(n: int, image_size) -> dict:
    from phi3v_spatial.spatial.dataset import write_scene_files
    from phi3v_spatial.spatial.generate import generate_scene
    from phi3v_spatial.spatial.questions import make_samples
    from phi3v_spatial.spatial.world import World

    t_gen, t_io, t_qa, counts = [], [], [], []
    with World() as world, tempfile.TemporaryDirectory() as tmp:
        for sub in ("images", "depth", "masks", "scenes"):
            (Path(tmp) / sub).mkdir()
        generate_scene(world, SEED - 1, image_size)  # warm-up: imports, mesh caches
        for seed in range(SEED, SEED + n):
            t0 = time.perf_counter()
            scene, rgb, depth, mask = generate_scene(world, seed, image_size)
            t1 = time.perf_counter()
            write_scene_files(Path(tmp), scene, rgb, depth, mask)
            t2 = time.perf_counter()
            counts.append(len(make_samples(scene, mask)))
            t3 = time.perf_counter()
            t_gen.append(t1 - t0)
            t_io.append(t2 - t1)
            t_qa.append(t3 - t2)
    return {"generate_s": median(t_gen), "write_s": median(t_io), "questions_s": median(t_qa),
            "samples_per_scene": sum(counts) / len(counts)}


def timed_run(num_scenes: int, workers: int, image_size) -> tuple[float, int]:
    from phi3v_spatial.spatial import load_info, synthesize

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        out = synthesize(Path(tmp) / "ds", num_scenes, seed=SEED, workers=workers, image_size=image_size)
        seconds = time.perf_counter() - t
        return seconds, load_info(out)["counts"]["samples"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stage-scenes", type=int, default=15)
    ap.add_argument("--baseline-scenes", type=int, default=30)
    ap.add_argument("--image-size", default="640x480")
    args = ap.parse_args()
    image_size = tuple(int(v) for v in args.image_size.split("x"))

    st = stages(args.stage_scenes, image_size)
    per_scene = st["generate_s"] + st["write_s"] + st["questions_s"]
    print(f"stages (median s/scene, 1 process): generate {st['generate_s']:.3f}, write {st['write_s']:.3f}, "
          f"questions {st['questions_s']:.3f}; {st['samples_per_scene']:.1f} samples/scene")

    base_s, base_samples = timed_run(args.baseline_scenes, 1, image_size)
    base_rate = args.baseline_scenes / base_s
    print(f"baseline, 1 worker: {args.baseline_scenes} scenes in {base_s:.1f} s = {base_rate:.2f} scenes/s")

    num_scenes = math.ceil(args.samples / st["samples_per_scene"] * 1.03)
    seconds, samples = timed_run(num_scenes, args.workers, image_size)
    while samples < args.samples:  # the estimate fell short: make the run bigger and time it again
        num_scenes = math.ceil(num_scenes * args.samples / samples) + 1
        seconds, samples = timed_run(num_scenes, args.workers, image_size)
    rate = num_scenes / seconds
    print(f"run, {args.workers} workers: {num_scenes} scenes, {samples} samples in {seconds:.1f} s = "
          f"{rate:.2f} scenes/s, {samples / seconds:.1f} samples/s ({rate / base_rate:.2f}x the 1-worker baseline)")
    print(f"time to {args.samples} samples: {seconds * args.samples / samples:.0f} s (target: under 600 s)")
    print_result({
        "benchmark": "synth", **env_info(), "workers": args.workers, "image_size": list(image_size),
        "scenes": num_scenes, "samples": samples, "seconds": round(seconds, 2),
        "scenes_per_s": round(rate, 3), "samples_per_s": round(samples / seconds, 2),
        "seconds_per_10k_samples": round(seconds * 10_000 / samples, 1),
        "baseline_1_worker_scenes_per_s": round(base_rate, 3), "speedup_vs_1_worker": round(rate / base_rate, 2),
        "stage_median_s": {k: round(v, 4) for k, v in st.items() if k.endswith("_s")},
        "samples_per_scene": round(st["samples_per_scene"], 2), "single_process_s_per_scene": round(per_scene, 3),
    })


if __name__ == "__main__":
    main()
