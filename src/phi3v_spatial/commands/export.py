"""`phi3v-spatial export`: merge a LoRA adapter into its base (or take fully fine-tuned weights)
and write a Hugging Face Phi-3-V folder with the original key names and config.

    phi3v-spatial export --adapter runs/x --out merged/   (run folder, checkpoint-N or adapter folder)
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", required=True, help="run folder, checkpoint-N folder or PEFT adapter folder")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--model", help="base checkpoint (default: the adapter's base_model_name_or_path)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype (default float32)")
    p.add_argument("--max-shard-size", default="5GB")


def run(args) -> int:
    import torch

    from ..train.export import export

    dtype = getattr(torch, args.dtype) if args.dtype else None
    out = export(args.adapter, args.out, model=args.model, dtype=dtype, max_shard_size=args.max_shard_size)
    print(f"exported to {out}")
    return 0
