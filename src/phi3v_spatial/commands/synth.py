"""`phi3v-spatial synth`: generate synthetic spatial scenes and question-answer data, or turn
RGB-D captures into the same dataset format."""
from __future__ import annotations

import argparse


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must look like 640x480, got {text!r}") from None
    return w, h


def _part(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"part must look like K/N (e.g. 0/4), got {text!r}") from None
    return k, n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to write (or resume)")
    parser.add_argument("--scenes", type=int, help="number of scenes to generate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first scene; scene i uses seed + i")
    parser.add_argument("--tasks", nargs="+", help="task names (default: all), space or comma separated")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering scenes in parallel")
    parser.add_argument("--samples-per-scene", type=int, help="total samples per scene (default: a fixed number per task)")
    parser.add_argument("--image-size", type=_size, default=(640, 480), help="WxH (default 640x480)")
    parser.add_argument("--scenes-per-shard", type=int, default=500)
    parser.add_argument("--part", type=_part, help="K/N: do only the shards whose index is K modulo N (split a run over machines)")
    parser.add_argument("--allow-eval-seeds", action="store_true",
                        help="allow scene seeds >= EVAL_SEED_BASE, which are held out for evaluation")
    parser.add_argument("--from-rgbd", metavar="DIR", help="lift RGB-D captures from DIR instead of generating scenes")
    parser.add_argument("--preview", type=int, default=0, metavar="N", help="also draw the first N scenes with their questions")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..errors import DataError
    from ..spatial import EVAL_SEED_BASE, iter_samples, load_info, synthesize
    from ..spatial.rgbd import synthesize_from_rgbd

    tasks = [t for chunk in args.tasks for t in chunk.split(",") if t] if args.tasks else None
    if args.from_rgbd:
        out = synthesize_from_rgbd(args.from_rgbd, args.out, tasks, args.samples_per_scene, progress=not args.quiet)
    else:
        if args.scenes is None:
            raise DataError("give --scenes N (or --from-rgbd DIR)")
        last = args.seed + args.scenes - 1
        if last >= EVAL_SEED_BASE and not args.allow_eval_seeds:
            raise DataError(f"scene seeds {args.seed}..{last} reach into the held-out evaluation range (>= {EVAL_SEED_BASE}); "
                            "choose a lower --seed, or pass --allow-eval-seeds to build evaluation data")
        out = synthesize(args.out, args.scenes, seed=args.seed, tasks=tasks, workers=args.workers,
                         samples_per_scene=args.samples_per_scene, image_size=args.image_size,
                         progress=not args.quiet, scenes_per_shard=args.scenes_per_shard, part=args.part)
    if args.preview:
        from ..spatial.preview import render_preview

        by_scene: dict[str, list] = {}
        for s in iter_samples(out):
            sid = s["scene"].split("/")[-1].removesuffix(".json")
            if sid in by_scene or len(by_scene) < args.preview:
                by_scene.setdefault(sid, []).append(s)
        for sid, samples in by_scene.items():
            print(render_preview(out, sid, samples, out / "previews" / f"{sid}.png"))
    info = load_info(out)
    c = info["counts"]
    print(f"{out}: {c['scenes']} scenes, {c['samples']} samples"
          + ("" if info.get("complete", True) else " (incomplete: run the same command again to resume)"))
    return 0
