"""The training loop: one entry point for a single CPU process and for `accelerate launch` /
`torchrun` on many processes, GPUs or nodes: DDP by default, fully sharded with `sharding: fsdp`
(train/sharding.py; also what an accelerate FSDP config gets), DeepSpeed ZeRO stage 1 or 2 with
`sharding: deepspeed` (train/zero.py; also what an accelerate DeepSpeed config gets).

Every process draws the same global batch of `batch_size` samples from the mixed stream (its
position is the number of samples drawn), takes its contiguous share, and runs it in micro-batches
of `micro_batch_size`. The loss of a step is the sum of the token losses of the global batch
divided by its number of target tokens (counted over all processes first), so N processes with
accumulation give the same gradients as one process with the same global batch.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .collator import IGNORE, Collator
from .config import TrainConfig
from .data import MixedStream, Source, open_source
from .methods import LoraOptions, prepare, trainable_parameters

log = logging.getLogger("phi3v_spatial.train")


class LossModule(nn.Module):
    """Summed token cross-entropy of a batch. The LM head runs only on target positions (the
    vocabulary is the costliest matmul of a small model), which equals the model's own `.loss`
    times the number of targets.

    With `aux_heads` (name -> heads: train/mask_aux.py, train/position_aux.py; a single module is
    named "mask") and a batch holding `image_token_labels` (two columns per head, in order), it adds
    per head its weight x its mean image-token loss x the batch's targets (so after the loop's
    division by the targets it weighs against the mean token loss); `last_aux` keeps the values."""

    def __init__(self, model, aux_heads: nn.Module | None = None, aux_weight: float | dict[str, float] = 0.0):
        super().__init__()
        self.model = model  # Phi3VForCausalLM (LoRA layers, if any, are inside it)
        if aux_heads is not None and not isinstance(aux_heads, nn.ModuleDict):
            aux_heads, aux_weight = nn.ModuleDict({"mask": aux_heads}), {"mask": float(aux_weight)}
        self.aux_heads = aux_heads
        self.aux_weight = dict(aux_weight) if isinstance(aux_weight, dict) else {}
        self.last_aux: dict[str, float] = {}

    def forward(self, input_ids, attention_mask, labels, pixel_values=None, image_sizes=None, image_token_labels=None):
        features = None
        if self.aux_heads is not None and image_token_labels is not None and pixel_values is not None:
            features = self.model.model.encode_images(pixel_values, image_sizes)
            h, _ = self.model.model(input_ids, attention_mask, None, None, None, image_features=features)
        else:
            h, _ = self.model.model(input_ids, attention_mask, None, pixel_values, image_sizes)
        targets = labels[:, 1:]
        keep = targets != IGNORE
        logits = self.model.lm_head(h[:, :-1][keep]).float()  # (n_targets, vocab)
        loss = F.cross_entropy(logits, targets[keep], reduction="sum")
        if features is not None:
            for i, (name, heads) in enumerate(self.aux_heads.items()):
                aux = heads(features, image_token_labels[:, 2 * i : 2 * i + 2])
                self.last_aux[name] = float(aux.detach())
                loss = loss + self.aux_weight[name] * aux * keep.sum()
        return loss


def _aux_heads(cfg, hidden: int) -> tuple[nn.ModuleDict | None, dict[str, float]]:
    """The training-only heads the config asks for, by name, and their weights."""
    wanted = {"mask": cfg.mask_aux_weight, "position": cfg.position_aux_weight}
    wanted = {name: w for name, w in wanted.items() if w}
    if not wanted:
        return None, {}
    if cfg.method != "full" or min(wanted.values()) < 0:
        raise ConfigError(f"{' and '.join(f'{n}_aux_weight' for n in wanted)} needs method 'full' and a weight > 0 "
                          "(it trains the vision tower)")
    from .mask_aux import MaskAuxHeads
    from .position_aux import PositionAuxHeads

    make = {"mask": MaskAuxHeads, "position": PositionAuxHeads}
    return nn.ModuleDict({name: make[name](hidden) for name in wanted}), wanted


def param_groups(model: nn.Module, lr: float, vision_scale: float = 1.0) -> list[dict]:
    """The trainable parameters as optimizer groups: the image side (`vision_embed_tokens`: CLIP
    tower, separators, projector) at lr x vision_scale when that is not 1, the rest at lr."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if vision_scale == 1.0:
        return [{"params": [p for _, p in named], "lr": lr}]
    if vision_scale <= 0:
        raise ConfigError(f"lr_vision_scale must be > 0 (got {vision_scale})")
    vision = [p for n, p in named if ".vision_embed_tokens." in f".{n}"]
    rest = [p for n, p in named if ".vision_embed_tokens." not in f".{n}"]
    return [g for g in ({"params": rest, "lr": lr}, {"params": vision, "lr": lr * vision_scale}) if g["params"]]


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """lr multiplier: linear 0->1 over `warmup` steps, then cosine 1->min_ratio at `total`."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _accelerator(cfg: TrainConfig):
    try:
        from accelerate import Accelerator
    except ImportError as e:
        raise ConfigError("training needs accelerate: pip install 'phi3v-spatial[train]'") from e
    precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}.get(cfg.precision)
    if precision is None:
        raise ConfigError(f"precision must be fp32, bf16 or fp16 (got {cfg.precision!r})")
    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("fp16 autocast needs a GPU; use --precision bf16 or fp32 on a CPU")
    from accelerate import DistributedDataParallelKwargs

    # a process whose micro-batch has no image (or no auxiliary labels) leaves the vision side unused
    # while the others train it: DDP must not wait for those gradients
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])


def _mode(cfg: TrainConfig, acc) -> tuple[str, int]:
    """(sharding, ZeRO stage): the config's, or what an accelerate FSDP / DeepSpeed config asks for
    (only its choice of mode and ZeRO stage is read; the loop applies the mode itself). Read from
    the accelerator's state and from the variables `accelerate launch` sets: on a CPU the
    accelerator itself stays plain multi-process whatever the config says."""
    from . import sharding

    kind = str(acc.distributed_type).upper()
    mode, stage = cfg.sharding, cfg.zero_stage
    if ("FSDP" in kind or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true") and mode != "fsdp":
        mode = "fsdp"
        log.info("accelerate's FSDP config: sharding with train/sharding.py (its FSDP options are not read)")
    elif ("DEEPSPEED" in kind or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true") and mode != "deepspeed":
        mode, stage = "deepspeed", _accelerate_zero_stage(acc) or stage
        log.info("accelerate's DeepSpeed config: ZeRO stage %d through train/zero.py (its other options are not read)", stage)
    sharding.check(mode, cfg.method, cfg.precision, stage)
    return mode, stage


def _accelerate_zero_stage(acc) -> int | None:
    """The ZeRO stage of an accelerate DeepSpeed config: its plugin's, the launcher's variable, or
    the stage in its DeepSpeed config file."""
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if getattr(plugin, "zero_stage", None) is not None:
        return int(plugin.zero_stage)
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        return int(os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"])
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path and Path(path).is_file():
        stage = json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage")
        return None if stage in (None, "auto") else int(stage)
    return None


class _Reporter:
    """metrics.jsonl always (rank 0); TensorBoard or W&B only when asked."""

    def __init__(self, out: Path, report_to: str, cfg: TrainConfig, enabled: bool):
        self.enabled, self.tb, self.wandb = enabled, None, None
        if not enabled:
            return
        self.file = (out / "metrics.jsonl").open("a", encoding="utf-8")
        if report_to == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError("--report-to tensorboard needs `pip install tensorboard`") from e
            self.tb = SummaryWriter(str(out / "tensorboard"))
        elif report_to == "wandb":
            try:
                import wandb
            except ImportError as e:
                raise ConfigError("--report-to wandb needs `pip install wandb`") from e
            self.wandb = wandb.init(project="phi3v-spatial", config=cfg.to_dict(), dir=str(out))
        elif report_to not in ("none", None):
            raise ConfigError(f"report_to must be none, tensorboard or wandb (got {report_to!r})")

    def __call__(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.tb:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, step)
        if self.wandb:
            self.wandb.log(metrics, step=step)

    def close(self):
        if self.enabled:
            self.file.close()
            if self.tb:
                self.tb.close()
            if self.wandb:
                self.wandb.finish()


def build_sources(cfg: TrainConfig) -> list[Source]:
    return [open_source(spec) for spec in cfg.data]


def train(cfg: TrainConfig, model=None, processor=None, sources: list[Source] | None = None,
          on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Run (or resume) a training run; returns {"step", "losses", "out", "skipped"}.

    model / processor / sources default to loading cfg.model and opening cfg.data. on_step(step,
    metrics) is called after every optimizer step (on every process).
    """
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    from . import sharding, zero

    sharding.check(cfg.sharding, cfg.method, cfg.precision, cfg.zero_stage)
    acc = _accelerator(cfg)
    world, rank = acc.num_processes, acc.process_index
    mode, zero_stage = _mode(cfg, acc)
    sharded, ds = mode == "fsdp", mode == "deepspeed"
    if cfg.batch_size % (cfg.micro_batch_size * world):
        raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of micro_batch_size x processes "
                          f"({cfg.micro_batch_size} x {world})")
    out = Path(cfg.out)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    seed_everything(cfg.seed)

    # fully sharded over many processes, loading the model itself: only rank 0 reads the weights; the
    # others build it on the meta device and receive their shards from rank 0 (sharding.shard)
    from_rank0 = model is None and sharded and world > 1
    on_meta = from_rank0 and rank != 0
    if model is None:
        from ..model import Phi3VForCausalLM

        model = Phi3VForCausalLM.from_pretrained(cfg.model, torch_dtype=torch.float32,
                                                 device_map="meta" if on_meta else None)
        if on_meta:
            log.info("process %d: the model on the meta device; its shards come from rank 0", rank)
    if processor is None:
        from ..processing import Phi3VProcessor

        processor = Phi3VProcessor.from_pretrained(cfg.model, num_crops=cfg.num_crops)
    sources = sources if sources is not None else build_sources(cfg)
    base = model  # the Phi3VForCausalLM; PEFT swaps its Linears in place
    lora = LoraOptions(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.lora_targets), tuple(cfg.lora_modules_to_save))
    trained = prepare(model, cfg.method, lora, cfg.freeze_vision, cfg.freeze_projector)
    aux_heads, aux_weights = _aux_heads(cfg, base.config.hidden_size)
    base.train()
    if cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable()
    n_train, n_total = trainable_parameters(trained)
    ckpt = latest_checkpoint(out) if cfg.resume else None
    if ckpt is not None and not on_meta:  # weights before sharding (the meta processes get rank 0's)
        _load_weights(ckpt, cfg.method, base, trained)
        for name, heads in (aux_heads or {}).items():
            if (ckpt / f"{name}_aux_heads.safetensors").is_file():
                from safetensors.torch import load_file

                heads.load_state_dict(load_file(str(ckpt / f"{name}_aux_heads.safetensors")))
    loss_module = LossModule(base, aux_heads, aux_weights)
    if sharded:  # parameters become shards (DTensors); the optimizer is built over those
        sharding.shard(loss_module.to("meta" if on_meta else acc.device), acc.device, world, cfg.precision,
                       from_rank0=from_rank0)
    groups = param_groups(trained, cfg.lr, cfg.lr_vision_scale)
    if aux_heads is not None:  # the heads learn with the image side
        groups.append({"params": list(aux_heads.parameters()), "lr": cfg.lr * cfg.lr_vision_scale})
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio))
    run = None
    if ds:  # DeepSpeed steps our AdamW (its groups keep their lr, which the schedule sets)
        run = zero.ZeroRun(loss_module.to(acc.device), optimizer, zero_stage, cfg.micro_batch_size,
                           cfg.batch_size // (cfg.micro_batch_size * world), cfg.max_grad_norm, cfg.precision,
                           keep_frozen=cfg.method == "full")

    # tokenizer / preprocessor files of the starting checkpoint, read now: every saved model folder is
    # complete even if that folder is gone by then
    from ..weights import AUX_FILES

    src = getattr(base, "name_or_path", None)
    aux_files = {f: (Path(src) / f).read_bytes() for f in AUX_FILES
                 if src and (Path(src) / f).is_file()} if cfg.method == "full" else {}

    def save_weights(folder: Path, full: dict | None = None) -> None:
        """The model (or adapter) and training-only heads; `full`: the LossModule's state gathered
        from the shards (sharded runs), else the modules' own tensors are written."""

        def part(prefix: str) -> dict | None:
            return None if full is None else {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}

        if cfg.method == "full":
            base.save_pretrained(folder / "model", state_dict=part("model."))
            for name, data in aux_files.items():
                if not (folder / "model" / name).is_file():
                    (folder / "model" / name).write_bytes(data)
            if aux_heads is not None:  # training-only; kept beside the model for an exact resume
                from safetensors.torch import save_file

                for name, heads in aux_heads.items():
                    tensors = part(f"aux_heads.{name}.") if full is not None else heads.state_dict()
                    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / f"{name}_aux_heads.safetensors"))
        elif full is None:
            trained.save_pretrained(folder / "adapter")
        else:  # PEFT's names are the base model's under base_model.model.
            trained.save_pretrained(folder / "adapter", state_dict={f"base_model.model.{k}": v for k, v in part("model.").items()})

    # the optimizer state's layout: by index (none) or by name (fsdp, deepspeed: full tensors, any stage)
    state = {"step": 0, "data_position": 0, "losses": [], "skipped": {}, "sharding": mode}
    if ckpt is not None:
        written = json.loads((ckpt / "trainer_state.json").read_text()).get("sharding", "none")
        if written != state["sharding"]:  # the optimizer state is keyed by name (sharded) or by index
            from ..errors import CheckpointError

            raise CheckpointError(f"{ckpt} was written with sharding {written!r}; resume it with the same sharding "
                                  f"(this run: {state['sharding']!r}) or start over with --no-resume")
        load_optimizer = ((lambda sd: sharding.load_optimizer_state(loss_module, optimizer, sd)) if sharded
                          else run.load_optimizer_state if ds
                          else optimizer.load_state_dict)
        state = load_checkpoint(ckpt, load_optimizer, scheduler)
        if acc.is_main_process:
            log.info("resumed from %s (step %d)", ckpt, state["step"])

    image_labels = None
    if aux_heads is not None:
        from .collator import StackedLabels
        from .mask_aux import EngineMaskLabels
        from .position_aux import PositionLabels

        crops, order = processor.num_crops if cfg.num_crops is None else cfg.num_crops, base.config.hd_transform_order
        labellers = {"mask": EngineMaskLabels, "position": PositionLabels}
        image_labels = StackedLabels([labellers[name](crops, order) for name in aux_heads])
    collator = Collator(processor, cfg.max_length, cfg.num_crops, image_labels=image_labels)
    collator.skipped.update(state.get("skipped", {}))
    stream = MixedStream(sources, cfg.probs, cfg.seed, start=state["data_position"])
    if not (sharded or ds):
        loss_module, optimizer = acc.prepare(loss_module, optimizer)
    core = loss_module if sharded or ds else acc.unwrap_model(loss_module)
    report = _Reporter(out, cfg.report_to, cfg, acc.is_main_process)
    if acc.is_main_process:
        log.info("method %s: %d trainable of %d parameters; %d process(es)", cfg.method, n_train, n_total, world)

    bar = None
    if cfg.progress and acc.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=state["step"], desc="train", dynamic_ncols=True)
    share = cfg.batch_size // world
    last_batch = None
    step = state["step"]
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        samples = [next(stream) for _ in range(cfg.batch_size)]
        mine = samples[rank * share:(rank + 1) * share]
        micro = [collator(mine[i:i + cfg.micro_batch_size]) for i in range(0, share, cfg.micro_batch_size)]
        counts = torch.tensor([sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro if b is not None),
                               sum(int(b["attention_mask"].sum()) for b in micro if b is not None)], dtype=torch.float64)
        counts = acc.reduce(counts.to(acc.device), reduction="sum").cpu() if world > 1 else counts
        n_targets, n_tokens = max(1.0, float(counts[0])), float(counts[1])
        loss_sum = torch.zeros((), dtype=torch.float64)
        for i, batch in enumerate(micro):
            scale = world / n_targets
            if batch is None:  # every sample of this micro-batch was bad: a zero-weighted stand-in keeps the
                # processes' collectives (DDP's reduction, FSDP's gathers) in step
                batch, scale = (last_batch if last_batch is not None else collator([_PLACEHOLDER])), 0.0
            last_batch = batch
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            sync = i == len(micro) - 1
            if sharded:  # accumulate unsharded gradients; reduce-scatter after the last micro-batch
                loss_module.set_requires_gradient_sync(sync)
            if ds:  # DeepSpeed reduces at the accumulation boundary, the last micro-batch
                loss = run.forward(batch)
                run.backward_and_step(loss * scale)
            else:
                with acc.no_sync(loss_module) if not sync and world > 1 and not sharded else _null():
                    loss = loss_module(**batch)
                    acc.backward(loss * scale)
            loss_sum += loss.detach().double().cpu() * (scale > 0)
        if world > 1:
            loss_sum = acc.reduce(loss_sum.to(acc.device), reduction="sum").cpu()
        grad_norm = None
        if ds:  # the boundary's engine.step() clipped, stepped and zeroed
            grad_norm = run.grad_norm() if cfg.max_grad_norm else None
        else:
            if cfg.max_grad_norm:
                grad_norm = (sharding.unshard_value(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)) if sharded
                             else acc.clip_grad_norm_(params, cfg.max_grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        dt = time.perf_counter() - t0
        loss_value = float(loss_sum) / n_targets
        metrics = {"loss": loss_value, "lr": scheduler.get_last_lr()[0], "tokens_per_s": n_tokens / dt,
                   "samples_per_s": cfg.batch_size / dt, "grad_norm": float(grad_norm) if grad_norm is not None else None}
        for name, value in core.last_aux.items():  # `loss` includes weight x this
            metrics[f"{name}_aux"] = value
        state["losses"].append(loss_value)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            report(step, metrics)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{metrics['lr']:.2e}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        if on_step is not None:
            on_step(step, metrics)
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
            state.update(data_position=stream.position, skipped=dict(collator.skipped))
            if sharded:
                full, optimizer_state = sharding.full_state(loss_module, optimizer)
            elif ds:  # (ZeRO 1-2, fp32: every process holds the full weights; bf16: the fp32 masters are gathered)
                full, optimizer_state = run.full_weights(), run.full_optimizer_state()
            else:
                full, optimizer_state = None, optimizer.state_dict()
            if acc.is_main_process:
                save_checkpoint(out, step, lambda folder: save_weights(folder, full), optimizer_state, scheduler, state,
                                cfg.keep_checkpoints)
            acc.wait_for_everyone()
    if bar is not None:
        bar.close()
    report.close()
    if collator.skipped and acc.is_main_process:
        log.warning("skipped samples: %s", dict(collator.skipped))
    # sharded runs: the returned model's parameters are this process's shards (DTensors); the
    # checkpoint holds the full weights
    return {"step": step, "losses": state["losses"], "out": str(out), "skipped": dict(collator.skipped),
            "model": trained}


def end_distributed() -> None:
    """For a process's entry point, after its last `train()`: wait for every process and tear the
    process group down (a process that exits with it alive can abort in the backend's threads).
    Nothing to do in a single plain process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# a valid text-only sample, run with weight 0 when a process has no good sample yet to stand in
_PLACEHOLDER = {"id": "placeholder", "images": [], "messages": [{"role": "user", "content": "."},
                                                                {"role": "assistant", "content": "."}]}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _load_weights(ckpt: Path, method: str, base, trained) -> None:
    from safetensors.torch import load_file

    if method == "full":
        from ..weights import iter_tensors, weight_files

        tensors = dict(iter_tensors(weight_files(ckpt / "model")))
        missing, unexpected = base.load_state_dict(tensors, strict=False)
        allowed = {"lm_head.weight"} if base.config.tie_word_embeddings else set()
        if set(missing) - allowed or unexpected:
            from ..errors import CheckpointError

            raise CheckpointError(f"{ckpt}: checkpoint does not match the model (missing {missing}, unexpected {unexpected})")
    else:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(trained, load_file(str(ckpt / "adapter" / "adapter_model.safetensors")))
