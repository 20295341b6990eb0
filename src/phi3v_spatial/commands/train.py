"""`phi3v-spatial train`: fine-tune with LoRA, QLoRA or in full, or run a named recipe.

    phi3v-spatial train --model DIR --data DIR[:prob] ... --method lora --out runs/x
    phi3v-spatial train --config train.yaml [--max-steps 10 ...]
    phi3v-spatial train --recipe tiny-spatial --out runs/tiny-spatial   (stages; --max-steps caps each)
    accelerate launch -m phi3v_spatial.cli train ... [--sharding fsdp|deepspeed]   (DDP, fully sharded, or ZeRO 1-2)
"""
from __future__ import annotations

import argparse

# flag -> TrainConfig field, for the flags that map one to one
_FIELDS = ("out", "method", "lora_r", "lora_alpha", "lora_dropout", "lr", "lr_vision_scale", "mask_aux_weight", "position_aux_weight", "weight_decay", "warmup_steps", "max_steps",
           "batch_size", "micro_batch_size", "max_grad_norm", "precision", "seed", "max_length", "num_crops",
           "save_every", "log_every", "report_to", "num_threads", "sharding", "zero_stage")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint folder or hub id to start from (default: the embedded model)")
    p.add_argument("--data", action="append", metavar="SRC[:PROB]",
                   help="data source: data-engine folder, `datasets` folder/file, table, hf:NAME, hf-stream:NAME; "
                        "repeat to mix, with optional sampling probability")
    p.add_argument("--config", help="YAML/JSON file of training options (flags override it)")
    p.add_argument("--recipe", choices=["tiny-spatial"], help="a complete named run (builds model and data)")
    p.add_argument("--out", help="run folder (checkpoints, metrics.jsonl)")
    p.add_argument("--method", choices=["lora", "qlora", "full"])
    p.add_argument("--lora-r", type=int)
    p.add_argument("--lora-alpha", type=int)
    p.add_argument("--lora-dropout", type=float)
    p.add_argument("--lora-targets", help="comma-separated module names (default qkv_proj,o_proj,gate_up_proj,down_proj)")
    p.add_argument("--freeze-vision", action="store_true", default=None, help="full: keep the CLIP tower fixed")
    p.add_argument("--freeze-projector", action="store_true", default=None, help="full: keep the projector fixed")
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-vision-scale", type=float, help="the image side (CLIP, separators, projector) at lr x this")
    p.add_argument("--mask-aux-weight", type=float,
                   help="full method: add this x a per-image-token colour/kind loss read from data-engine masks")
    p.add_argument("--position-aux-weight", type=float,
                   help="full method: add this x a per-image-token column/row loss that keeps where each token is")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, help="samples per optimizer step over all processes")
    p.add_argument("--micro-batch-size", type=int, help="samples per forward pass and process")
    p.add_argument("--max-grad-norm", type=float)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--gradient-checkpointing", action="store_true", default=None)
    p.add_argument("--sharding", choices=["none", "fsdp", "deepspeed"],
                   help="with many processes: none = DDP (default), fsdp = fully sharded parameters, "
                        "gradients and optimizer states, deepspeed = DeepSpeed ZeRO (--zero-stage)")
    p.add_argument("--zero-stage", type=int, choices=[1, 2],
                   help="sharding deepspeed: 1 = optimizer states partitioned, 2 (default) = and gradients")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--num-crops", type=int)
    p.add_argument("--save-every", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--report-to", choices=["none", "tensorboard", "wandb"])
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT has checkpoints")
    p.add_argument("--num-threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--num-scenes", type=int, default=700, help="tiny-spatial: training scenes to synthesize")
    p.add_argument("--ship", metavar="DIR", help="tiny-spatial: after training, write the model (bf16) to DIR")


def build_config(args):
    from ..train.config import TrainConfig, load_config_file
    from ..train.data import parse_data_arg

    values = {}
    if args.config:
        values.update(load_config_file(args.config))
    for f in _FIELDS:
        v = getattr(args, f, None)
        if v is not None:
            values[f] = v
    for f in ("freeze_vision", "freeze_projector", "gradient_checkpointing"):
        if getattr(args, f):
            values[f] = True
    if args.lora_targets:
        values["lora_targets"] = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    if args.data:
        specs = [parse_data_arg(d) for d in args.data]
        values["data"] = [s for s, _ in specs]
        values["probs"] = [p for _, p in specs]
    if args.model:
        values["model"] = args.model
    if args.no_resume:
        values["resume"] = False
    if args.no_progress:
        values["progress"] = False
    if args.recipe == "tiny-spatial":
        from ..train.recipes import tiny_spatial_config

        return tiny_spatial_config(**{k: v for k, v in values.items() if k not in ("model", "data", "probs")}), values
    cfg = TrainConfig().replace(**values)
    return cfg, values


def run(args) -> int:
    import logging

    from ..errors import ConfigError
    from ..train.loop import end_distributed, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg, values = build_config(args)
    if args.recipe == "tiny-spatial":
        from ..assets import tokenizer_source
        from ..train.recipes import prepare_tiny_spatial, ship

        from ..train.recipes import run_tiny_spatial

        data = values.get("data", [None])[0]
        cfg = prepare_tiny_spatial(cfg, tokenizer_source(), num_scenes=args.num_scenes, data=data)
        result = run_tiny_spatial(cfg, max_steps=values.get("max_steps"))
        print(f"final model: {result['model_dir']}")
        if args.ship:
            print(f"shipped to {ship(result['model_dir'], args.ship)}")
    else:
        if cfg.model is None:
            from ..assets import default_model_path

            cfg = cfg.replace(model=str(default_model_path()))
        if not cfg.data:
            raise ConfigError("give at least one --data source (or a --config / --recipe)")
        result = train(cfg)
    end_distributed()
    losses = result["losses"]
    print(f"done: {result['step']} steps, last loss {losses[-1]:.4f}" if losses else "done: nothing to do",
          f"(skipped samples: {result['skipped']})" if result["skipped"] else "")
    print(f"checkpoints in {result['out']}")
    return 0
