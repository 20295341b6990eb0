"""DeepSpeed ZeRO data parallel training (`sharding: deepspeed`, stages 1 and 2).

Every process keeps the full model; ZeRO partitions the optimizer state (stage 1) and the gradients
(stage 2) over the processes, so the AdamW moments, the largest memory item of full fine-tuning,
cost 1/N per process. The loop builds its own torch AdamW and schedule as for the other modes and
hands them to `deepspeed.initialize` (client optimizer): DeepSpeed runs the reduction, the
clipping and the optimizer step at each accumulation boundary; the loop still computes the loss
weights (tokens of the whole global batch), so the result is a single process's with the same
global batch. On GPUs DeepSpeed talks NCCL; on CPUs gloo (no oneCCL needed), which is how the tests
prove it.

Precision. fp32: the module keeps fp32 weights and DeepSpeed an fp32 copy of each partition, which on
a CPU in fp32 cancels most of what the partitioned moments save (bench_train: ZeRO-1 0.98x DDP's
memory per process at 2 processes; 0.78x in bf16). bf16 is DeepSpeed's bf16 mode, where ZeRO pays: the module
computes in bf16 (its weights a bf16 copy), the fp32 master weights and AdamW states live only in
the partitions (started from the exact fp32 weights, not their rounding), and checkpoints hold the
fp32 masters. That is what FSDP's bf16 computes too (bf16 compute from fp32 masters); plain DDP's
bf16 is autocast over fp32 weights, so the modes agree to bf16 rounding, not bit for bit.

Parameter sharding (ZeRO-3) is not offered here: `--sharding fsdp` (train/sharding.py) is this
project's fully sharded mode. Stage 3 also mishandles a parameter a step leaves unused (DeepSpeed
0.19 re-applies its previous gradient), which a vision tower skipped on a text-only micro-batch is.

Unused parameters. DeepSpeed reduces gradients in buckets filled as they arrive; a process whose
micro-batch has no image leaves the vision tower without gradients while another process has them,
and the buckets no longer match (a gloo size mismatch, a hang, or wrong sums). So the loss of every
micro-batch carries `0 x` one element of every trainable parameter (`ZeroRun.backward_and_step`): each parameter
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
adapter as in the other modes: in fp32 the module's own weights, which every process holds at stages
1-2; in bf16 the fp32 masters, gathered; the AdamW moments gathered by name): a run resumes under any
number of processes.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import CheckpointError, ConfigError

STAGES = (1, 2)
# elements per reduction / all-gather bucket (DeepSpeed's default 5e8 costs ~0.5 GB more per process on
# the bench's 277M-parameter model for no speed)
_BUCKET = 50_000_000
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
                          "or bf16")


def _deepspeed():
    try:
        import deepspeed
    except ImportError as e:
        raise ConfigError("sharding 'deepspeed' needs DeepSpeed: pip install 'phi3v-spatial[deepspeed]'") from e
    return deepspeed


def _image_side(name: str) -> bool:
    return "vision_embed_tokens." in name or name.startswith("aux_heads.")


class ZeroRun:
    """The DeepSpeed engine over a loop.LossModule and the loop's own AdamW, and what the loop asks of
    it: forward, backward + step, the grad norm, full-tensor checkpoints and their loading.

    `micro_steps`: micro-batches per process per optimizer step. `precision` "bf16" is DeepSpeed's
    bf16 mode: the module computes in bf16, fp32 master weights and AdamW states live in the
    partitions (started from the exact fp32 weights, not their bf16 rounding); `keep_frozen` keeps
    the fp32 values of frozen parameters for the saved model folder (full fine-tuning)."""

    def __init__(self, loss_module: nn.Module, optimizer: torch.optim.Optimizer, stage: int, micro_batch_size: int,
                 micro_steps: int, max_grad_norm: float | None, precision: str = "fp32", keep_frozen: bool = False):
        deepspeed = _deepspeed()
        if stage == 2:
            image_side = [n for n, p in loss_module.named_parameters() if p.requires_grad and _image_side(n)]
            if image_side:
                raise ConfigError(f"ZeRO stage 2 cannot train the image side ({image_side[0]} and {len(image_side) - 1} "
                                  "more): micro-batches with and without images reach it in a different order (see "
                                  "train/zero.py); use --zero-stage 1, --sharding fsdp, or --freeze-vision --freeze-projector")
        if not torch.distributed.is_initialized():
            raise ConfigError("sharding 'deepspeed' runs under a launcher: `accelerate launch` or "
                              "`torchrun --nproc_per_node N` (a single plain process trains with sharding 'none')")
        self.bf16 = precision == "bf16"
        self.rank = torch.distributed.get_rank()
        # the fp32 tensors themselves (no copy): DeepSpeed's bf16 cast replaces each parameter's data
        exact = {n: p.data for n, p in loss_module.named_parameters()} if self.bf16 else {}
        config = {
            "train_micro_batch_size_per_gpu": micro_batch_size,
            "gradient_accumulation_steps": micro_steps,
            "gradient_clipping": float(max_grad_norm or 0.0),
            "zero_optimization": {"stage": stage, "reduce_bucket_size": _BUCKET, "allgather_bucket_size": _BUCKET},
            "fp16": {"enabled": False},
            "bf16": {"enabled": self.bf16},
            "zero_allow_untested_optimizer": True,  # torch's AdamW, as in the other modes
            "steps_per_print": 2**62,
        }
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=loss_module, optimizer=optimizer, config=config,
                                                                 dist_init_required=False)
        self.trained = [(n, p) for n, p in self.engine.module.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.trained]
        self.frozen_fp32 = {}
        if self.bf16:
            from deepspeed.utils import safe_set_full_fp32_param

            for n, p in self.trained:
                safe_set_full_fp32_param(p, exact[n])
            if keep_frozen:
                trained = {n for n, _ in self.trained}
                self.frozen_fp32 = {n: t for n, t in exact.items() if n not in trained}

    def forward(self, batch: dict) -> torch.Tensor:
        if self.bf16 and batch.get("pixel_values") is not None:
            batch = dict(batch, pixel_values=batch["pixel_values"].to(torch.bfloat16))
        return self.engine(**batch)

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """Backward of a loss the loop already weighted for the global batch (no 1/accumulation),
        plus 0 x one element of every trained parameter (see the module doc); then DeepSpeed's
        step, which reduces, clips, steps and zeroes at the accumulation boundary only."""
        touch = sum(p.reshape(-1)[0] for p in self.params) * 0.0
        self.engine.backward(loss + touch, scale_wrt_gas=False)
        self.engine.step()

    def grad_norm(self) -> float | None:
        return self.engine.get_global_grad_norm()

    def full_weights(self) -> dict | None:
        """For a checkpoint: None when the module's own tensors are the full fp32 weights (fp32),
        else {name: fp32 tensor} of the trained (master) and, when kept, frozen parameters.
        Collective: every process calls it; rank 0 gets the tensors, the others an empty dict."""
        if not self.bf16:
            return None
        from deepspeed.utils import safe_get_full_fp32_param

        full = {}
        for n, p in self.trained:  # gathered one at a time, kept by rank 0 only
            t = safe_get_full_fp32_param(p)
            if self.rank == 0:
                full[n] = t.detach().cpu().reshape(p.shape)
        return {**self.frozen_fp32, **full} if self.rank == 0 else {}

    def full_optimizer_state(self) -> dict:
        """The AdamW state as full tensors keyed by parameter name, with the groups' settings:
        {"state": {name: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [...]}. Collective:
        every process calls it; rank 0 gets the tensors, the others the groups only."""
        from deepspeed.utils import safe_get_full_optimizer_state

        inner = self.optimizer.optimizer
        steps = [s.get("step") for s in inner.state.values() if "step" in s]
        state = {}
        for name, p in self.trained:
            moments = {k: safe_get_full_optimizer_state(p, k) for k in _MOMENTS}
            if self.rank == 0 and steps and all(m is not None for m in moments.values()):
                state[name] = {"step": torch.as_tensor(steps[0], dtype=torch.float32).clone(),
                               **{k: m.detach().cpu().reshape(p.shape).clone() for k, m in moments.items()}}
        groups = [{k: v for k, v in g.items() if k != "params"} for g in inner.param_groups]
        return {"state": state, "param_groups": groups}

    def load_optimizer_state(self, saved: dict) -> None:
        """Load a `full_optimizer_state` dict (read by every process) into the partitioned optimizer."""
        from deepspeed.utils import safe_set_full_optimizer_state

        inner = self.optimizer.optimizer
        names = [n for n, _ in self.trained]
        state = saved.get("state", {})
        if state and set(state) != set(names):
            missing, extra = sorted(set(names) - set(state)), sorted(set(state) - set(names))
            raise CheckpointError(f"optimizer state does not match the trained parameters (missing {missing[:5]}, "
                                  f"unexpected {extra[:5]})")
        for group, saved_group in zip(inner.param_groups, saved.get("param_groups", [])):
            group.update({k: v for k, v in saved_group.items() if k in group and k != "params"})
        if not state:  # saved before the first optimizer step
            return
        # torch's AdamW makes its state at the first step: make it now for the flat partitions, let
        # DeepSpeed link each parameter's view into it (private, idempotent), and fill those views
        for group in inner.param_groups:
            for flat in group["params"]:
                if not inner.state[flat]:
                    inner.state[flat] = {"step": torch.zeros((), dtype=torch.float32),
                                         **{k: torch.zeros_like(flat) for k in _MOMENTS}}
        self.optimizer._lazy_init_hp_params_optimizer_state()
        for name, p in self.trained:
            for k in _MOMENTS:
                safe_set_full_optimizer_state(p, state[name][k].to(p.device), k)
        step = next(iter(state.values()))["step"]
        for s in inner.state.values():
            s["step"] = torch.as_tensor(step, dtype=torch.float32).clone()
