"""DeepSpeed ZeRO data parallel training (`sharding: deepspeed`, stages 1 and 2).

Every process keeps the full model; ZeRO partitions the optimizer state (stage 1) and the gradients
(stage 2) over the processes, so the AdamW moments, the largest memory item of full fine-tuning,
cost 1/N per process. The loop builds its own torch AdamW and schedule as for the other modes and
hands them to `deepspeed.initialize` (client optimizer): DeepSpeed runs the reduction, the
clipping and the optimizer step at each accumulation boundary; the loop still computes the loss
weights (tokens of the whole global batch), so the result is a single process's with the same
global batch. On GPUs DeepSpeed talks NCCL; on CPUs gloo (no oneCCL needed), which is how the tests
prove it.

Parameter sharding (ZeRO-3) is not offered here: `--sharding fsdp` (train/sharding.py) is this
project's fully sharded mode. Stage 3 also mishandles a parameter a step leaves unused (DeepSpeed
0.19 re-applies its previous gradient), which a vision tower skipped on a text-only micro-batch is.

Unused parameters. DeepSpeed reduces gradients in buckets filled as they arrive; a process whose
micro-batch has no image leaves the vision tower without gradients while another process has them,
and the buckets no longer match (a gloo size mismatch, a hang, or wrong sums). So the loss of every
micro-batch carries `0 x` one element of every trainable parameter (`touch_all`): each parameter
gets a gradient on every process, exact zeros where it was not used, the values unchanged
elsewhere. Stage 1 then reduces at the accumulation boundary in parameter order: correct. Stage 2
reduces during the backward in the order the gradients arrive, which differs between a process
with an image and one without when the image side trains (its gradients arrive last through the
decoder, or first through the zero term): wrong sums with nothing to show for it. So stage 2 is
refused when any image-side parameter (vision tower, separators, projector, training-only heads)
trains: LoRA on the decoder and full fine-tuning with `--freeze-vision --freeze-projector` run
under stage 2; otherwise stage 1 or `--sharding fsdp`. One difference from plain torch remains: a
parameter that no sample of a whole global step used gets a zero gradient instead of none, so
AdamW still decays its moments (and applies weight decay) that step; torch's AdamW would skip it.

Checkpoints hold full tensors keyed by parameter name, written by rank 0 (the model folder / PEFT
adapter as in the other modes; every process has the full weights at stages 1-2): a run resumes
under any number of processes.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import CheckpointError, ConfigError

STAGES = (1, 2)
_MOMENTS = ("exp_avg", "exp_avg_sq")


def check(stage: int, method: str, precision: str) -> None:
    if stage == 3:
        raise ConfigError("ZeRO stage 3 (parameter sharding) is not supported with DeepSpeed here; "
                          "--sharding fsdp shards parameters, gradients and optimizer state")
    if stage not in STAGES:
        raise ConfigError(f"zero_stage must be 1 or 2 (got {stage!r})")
    if method == "qlora":
        raise ConfigError("sharding 'deepspeed' does not train 4-bit (qlora) weights; use lora or full, or DDP for qlora")
    if precision == "fp16":
        raise ConfigError("sharding 'deepspeed' does not train in fp16 (that needs DeepSpeed's loss scaler); use fp32 "
                          "or bf16 (autocast over fp32 weights)")


def _deepspeed():
    try:
        import deepspeed
    except ImportError as e:
        raise ConfigError("sharding 'deepspeed' needs DeepSpeed: pip install 'phi3v-spatial[deepspeed]'") from e
    return deepspeed


def initialize(loss_module: nn.Module, optimizer: torch.optim.Optimizer, stage: int, micro_batch_size: int,
               micro_steps: int, max_grad_norm: float | None):
    """The DeepSpeed engine over `loss_module` (a loop.LossModule) and the loop's own AdamW.
    `micro_steps`: micro-batches per process per optimizer step. Returns (engine, zero optimizer)."""
    deepspeed = _deepspeed()
    if stage == 2:
        image_side = [n for n, p in loss_module.named_parameters() if p.requires_grad and _image_side(n)]
        if image_side:
            raise ConfigError(f"ZeRO stage 2 cannot train the image side ({image_side[0]} and {len(image_side) - 1} more): "
                              "micro-batches with and without images reach it in a different order (see train/zero.py); "
                              "use --zero-stage 1, --sharding fsdp, or --freeze-vision --freeze-projector")
    if not torch.distributed.is_initialized():
        raise ConfigError("sharding 'deepspeed' runs under a launcher: `accelerate launch` or "
                          "`torchrun --nproc_per_node N` (a single plain process trains with sharding 'none')")
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": micro_steps,
        "gradient_clipping": float(max_grad_norm or 0.0),
        "zero_optimization": {"stage": stage},
        "fp16": {"enabled": False},
        "bf16": {"enabled": False},  # bf16 is autocast in the loop; DeepSpeed keeps fp32 weights and states
        "zero_allow_untested_optimizer": True,  # torch's AdamW, as in the other modes
        "steps_per_print": 2**62,
    }
    engine, zero_optimizer, _, _ = deepspeed.initialize(model=loss_module, optimizer=optimizer, config=config,
                                                        dist_init_required=False)
    return engine, zero_optimizer


def _image_side(name: str) -> bool:
    return "vision_embed_tokens." in name or name.startswith("aux_heads.")


def touch_all(params: list[torch.Tensor]) -> torch.Tensor:
    """0 x the first element of every parameter: added to a micro-batch's loss, every parameter gets
    a gradient (zeros where the micro-batch did not use it). See the module doc."""
    return sum(p.reshape(-1)[0] for p in params) * 0.0


def backward(engine, loss: torch.Tensor) -> None:
    """Backward of a loss the loop already weighted for the global batch (no 1/accumulation)."""
    engine.backward(loss, scale_wrt_gas=False)


def trained_named_parameters(engine) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]


def full_optimizer_state(engine, zero_optimizer) -> dict:
    """The AdamW state as full tensors keyed by parameter name, with the groups' settings:
    {"state": {name: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [...]}. Collective: every
    process calls it; all get the same dict."""
    from deepspeed.utils import safe_get_full_optimizer_state

    inner = zero_optimizer.optimizer
    steps = [s.get("step") for s in inner.state.values() if "step" in s]
    step = steps[0] if steps else None
    state = {}
    for name, p in trained_named_parameters(engine):
        moments = {k: safe_get_full_optimizer_state(p, k) for k in _MOMENTS}
        if step is not None and all(m is not None for m in moments.values()):
            state[name] = {"step": torch.as_tensor(step, dtype=torch.float32).clone(),
                           **{k: m.detach().cpu().reshape(p.shape).clone() for k, m in moments.items()}}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in inner.param_groups]
    return {"state": state, "param_groups": groups}


def load_optimizer_state(engine, zero_optimizer, saved: dict) -> None:
    """Load a `full_optimizer_state` dict (read by every process) into the partitioned optimizer."""
    from deepspeed.utils import safe_set_full_optimizer_state

    inner = zero_optimizer.optimizer
    names = [n for n, _ in trained_named_parameters(engine)]
    state = saved.get("state", {})
    if set(state) != set(names) and state:
        missing, extra = sorted(set(names) - set(state)), sorted(set(state) - set(names))
        raise CheckpointError(f"optimizer state does not match the trained parameters (missing {missing[:5]}, "
                              f"unexpected {extra[:5]})")
    for group, saved_group in zip(inner.param_groups, saved.get("param_groups", [])):
        group.update({k: v for k, v in saved_group.items() if k in group and k != "params"})
    if not state:  # saved before the first optimizer step
        return
    # torch's AdamW makes its state at the first step: make it now for the flat partitions, then let
    # DeepSpeed link each parameter's view into it, and fill those views
    for group in inner.param_groups:
        for flat in group["params"]:
            if not inner.state[flat]:
                inner.state[flat] = {"step": torch.zeros((), dtype=torch.float32),
                                     **{k: torch.zeros_like(flat) for k in _MOMENTS}}
    zero_optimizer._lazy_init_hp_params_optimizer_state()
    for name, p in trained_named_parameters(engine):
        for k in _MOMENTS:
            safe_set_full_optimizer_state(p, state[name][k].to(p.device), k)
    step = next(iter(state.values()))["step"]
    for s in inner.state.values():
        s["step"] = torch.as_tensor(step, dtype=torch.float32).clone()
