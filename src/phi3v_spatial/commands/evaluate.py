"""`phi3v-spatial eval`: score a model (or a reference answerer) on a suite, resumably."""
from __future__ import annotations

import argparse
import json
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--model", metavar="DIR",
                     help="this package's model from a checkpoint folder (default, when no answerer is given: the embedded model)")
    who.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible server (http://host:port[/v1])")
    who.add_argument("--oracle", nargs="?", const="structured", choices=("structured", "reference"),
                     help="answer with the ground truth (structured: formatted answer object; reference: the dataset's own answer text)")
    who.add_argument("--baseline", metavar="KIND",
                     help="'random' (seeded uniform guesses) or a constant answer such as 'yes' or 'no'")
    parser.add_argument("--suite", required=True,
                        help="spatial-mini | spatial-full | dir:PATH | vsr:PATH | pope:PATH | mc:PATH")
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder (results.jsonl, report); rerun to resume")
    parser.add_argument("--limit", type=int, help="score only the first N samples")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per model batch / parallel requests (default 8)")
    parser.add_argument("--image-dir", metavar="DIR", help="images of a public benchmark file (default: beside the file)")
    parser.add_argument("--cache-dir", metavar="DIR", help="where generated suites are cached (default ~/.cache/phi3v_spatial/suites)")
    parser.add_argument("--workers", type=int, default=1, help="processes for generating a suite (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit (default 256)")
    parser.add_argument("--device", default="cpu", help="--model: torch device (default cpu)")
    parser.add_argument("--dtype", default="float32", help="--model: float32 | bfloat16 | float16 (default float32)")
    parser.add_argument("--num-crops", type=int, help="--model: HD crops per image (default: the checkpoint's)")
    parser.add_argument("--endpoint-model", metavar="NAME", help="--endpoint: model name (default: the first the server lists)")
    parser.add_argument("--api-key", default=None, help="--endpoint: bearer token (default $OPENAI_API_KEY)")
    parser.add_argument("--timeout", type=float, default=120.0, help="--endpoint: seconds per request (default 120)")
    parser.add_argument("--seed", type=int, default=0, help="--baseline random: seed (default 0)")
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def make_answerer(args):
    from ..errors import ConfigError
    from ..evaluate import answerers

    if not (args.model or args.endpoint or args.oracle or args.baseline is not None):
        from ..assets import default_model_path

        args.model = str(default_model_path())
    if args.model:
        return answerers.LocalModelAnswerer.from_path(args.model, device=args.device, dtype=args.dtype,
                                                      max_new_tokens=args.max_new_tokens, num_crops=args.num_crops)
    if args.endpoint:
        return answerers.EndpointAnswerer(args.endpoint, model=args.endpoint_model,
                                          api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
                                          max_tokens=args.max_new_tokens, timeout=args.timeout,
                                          concurrency=args.batch_size)
    if args.oracle:
        return answerers.OracleAnswerer(args.oracle)
    if args.baseline == "random":
        return answerers.RandomAnswerer(seed=args.seed)
    if not args.baseline.strip():
        raise ConfigError("--baseline needs 'random' or a constant answer text")
    return answerers.ConstantAnswerer(args.baseline)


def run(args) -> int:
    from ..evaluate import evaluate, load_suite

    samples = load_suite(args.suite, root=args.cache_dir, image_dir=args.image_dir, workers=args.workers,
                         progress=not args.no_progress)
    answerer = make_answerer(args)
    summary = evaluate(samples, answerer, args.out, suite=args.suite, batch_size=args.batch_size, limit=args.limit,
                       progress=not args.no_progress, charts=not args.no_charts)
    with open(os.path.join(args.out, "report.md"), encoding="utf-8") as f:
        print(f.read())
    print(json.dumps({"suite": args.suite, "answerer": answerer.name, "num_samples": summary["num_samples"],
                      "score": summary["score"], "task_mean_score": summary["task_mean_score"], "out": args.out}))
    return 0
