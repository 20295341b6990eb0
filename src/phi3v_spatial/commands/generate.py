"""`phi3v-spatial generate`: answer one prompt about images.

    phi3v-spatial generate --model DIR --image cup.jpg --prompt "Where is the cup?" [--stream] [--json]

Thin over `phi3v_spatial.api`: the flags become a `load(...)` and a `chat(...)`/`stream(...)` call.
With --json, stdout is one JSON object (text, token_ids, finish_reason, token counts, timings); with
--stream --json, one {"delta": ...} line per piece of text comes first.
"""
from __future__ import annotations

import argparse
import json
import sys


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint folder or Hugging Face hub id (default: the embedded model)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto (float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--num-crops", type=int, default=None, help="HD crops per image (default: the checkpoint's)")
    p.add_argument("--attn-implementation", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"))
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar while the weights load")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=None, help="at most this many new tokens (default 256)")
    p.add_argument("--temperature", type=float, default=None, help="0 (default) is greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop on end tokens (always --max-new-tokens)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, help="the question; <|image_N|> tags place images, else they come first")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="an image (repeatable, in tag order)")
    p.add_argument("--system", default=None, help="a system message")
    p.add_argument("--raw", action="store_true", help="give --prompt to the processor as is (no chat template)")
    add_sampling_arguments(p)
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--json", action="store_true", help="print one JSON object (machine-readable)")


def sampling_options(args) -> dict:
    opts = {
        "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
        "top_p": args.top_p, "min_p": args.min_p, "repetition_penalty": args.repetition_penalty, "stop": args.stop,
    }
    opts = {k: v for k, v in opts.items() if v is not None}
    if args.seed is not None:
        opts["seed"] = args.seed
    if args.ignore_eos:
        opts["ignore_eos"] = True
    return opts


def load_from_args(args):
    import torch

    from ..api import load

    if args.threads:
        torch.set_num_threads(args.threads)
    return load(
        args.model, device=args.device, dtype=args.dtype, num_crops=args.num_crops,
        attn_implementation=args.attn_implementation, progress=not args.quiet,
    )


def result_dict(result) -> dict:
    return {
        "text": result.text, "token_ids": result.token_ids, "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens, "timings": result.timings,
    }


def run(args) -> int:
    from ..processing import load_image

    for path in args.image:  # a bad image fails before the weights load
        load_image(path)
    vlm = load_from_args(args)
    opts = sampling_options(args)
    if args.raw:
        result = vlm.generate(args.prompt, args.image, **opts)
        return _print(result, args)
    if "<|image_" in args.prompt or not args.image:
        content, images = args.prompt, args.image
    else:
        content, images = [{"type": "image", "image": p} for p in args.image] + [{"type": "text", "text": args.prompt}], None
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": content}]
    if args.stream:
        stream = vlm.stream(messages, images, **opts)
        for piece in stream:
            if args.json:
                print(json.dumps({"delta": piece}), flush=True)
            else:
                sys.stdout.write(piece)
                sys.stdout.flush()
        if not args.json:
            print()
            return 0
        return _print(stream.result, args)
    return _print(vlm.chat(messages, images, **opts), args)


def _print(result, args) -> int:
    if args.json:
        print(json.dumps(result_dict(result)))
    else:
        print(result.text)
    return 0
