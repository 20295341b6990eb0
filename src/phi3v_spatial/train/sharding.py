"""Fully sharded data parallel training (`sharding: fsdp`): torch's FSDP2 (`fully_shard`).

Each process holds 1/N of every parameter, gradient and optimizer state; a layer's full weights
are gathered just before it runs and freed after. The loop applies it itself, on top of the
process group that `accelerate launch` / `torchrun` set up, so the same code runs on GPUs (NCCL)
and on CPUs (gloo, which is how the tests prove it equals one process).

Layout: every decoder layer is its own shard group (gathered in turn, so peak memory is one layer
plus the root); the root group holds the embeddings / LM head (tied), the final norm, the vision
tower, the projector and the training-only heads. The vision tower is deliberately not split into
groups of its own: a process whose micro-batch has no image does not run it, and every group's
gather must be entered by all processes. Parameters a process did not use (no image, no auxiliary
labels) reduce a zero gradient, so processes with different batches stay in step.

Loading: when the loop loads the model itself, only rank 0 reads the weights; the other processes
build the model on the meta device and get their shards from rank 0 (`shard(..., from_rank0=True)`).

Checkpoints hold full (unsharded) tensors with the usual key names, written by rank 0: a run can
resume under any number of processes, and the weights are a normal model folder / PEFT adapter.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError

MODES = ("none", "fsdp", "deepspeed")  # deepspeed: train/zero.py


def check(sharding: str, method: str, precision: str, zero_stage: int = 2) -> None:
    if sharding not in MODES:
        raise ConfigError(f"sharding must be one of {MODES} (got {sharding!r})")
    if sharding == "deepspeed":
        from . import zero

        zero.check(zero_stage, method, precision)
    if sharding == "fsdp" and method == "qlora":
        raise ConfigError("sharding 'fsdp' does not shard 4-bit (qlora) weights; use lora or full")
    if sharding == "fsdp" and precision == "fp16":
        raise ConfigError("sharding 'fsdp' trains in fp32 or bf16 (fp16 would need a sharded loss scaler)")


def shard(loss_module: nn.Module, device: torch.device, world: int, precision: str, from_rank0: bool = False) -> nn.Module:
    """Shard `loss_module` (a loop.LossModule on `device`) in place over `world` processes.

    `from_rank0` (every process passes the same): rank 0 holds the real weights and the other
    processes a skeleton on the meta device (no weights read, no memory); each process's shards are
    then sent from rank 0's full tensors, which rank 0 drops once they are out."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not torch.distributed.is_initialized():
        raise ConfigError("sharding 'fsdp' runs under a launcher: `accelerate launch` or `torchrun --nproc_per_node N` "
                          "(a single plain process trains with sharding 'none')")
    mesh = init_device_mesh(device.type, (world,))
    # bf16: the decoder layers compute in bf16 from fp32 master weights (their outputs and reduced
    # gradients fp32); the root group stays fp32. A group's gradients must share one dtype, and a
    # process that skips the vision tower reduces fp32 zeros for it.
    layer_mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, output_dtype=torch.float32)
                if precision == "bf16" else MixedPrecisionPolicy())
    full = loss_module.state_dict() if from_rank0 and torch.distributed.get_rank() == 0 else {}
    for layer in loss_module.model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=layer_mp)
    fully_shard(loss_module, mesh=mesh)
    loss_module.set_reduce_scatter_unused_params(True)
    if from_rank0:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        if any(p.is_meta for p in loss_module.parameters()):
            loss_module.to_empty(device=device)
        set_model_state_dict(loss_module, full, options=_options(broadcast_from_rank0=True))
        full.clear()
    return loss_module


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state(loss_module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state, optimizer state) as full CPU tensors keyed by parameter name. Collective: every
    process must call it; rank 0 gets the tensors, the others empty dicts."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return (get_model_state_dict(loss_module, options=_options(cpu_offload=True)),
            get_optimizer_state_dict(loss_module, optimizer, options=_options(cpu_offload=True)))


def load_optimizer_state(loss_module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a `full_state` optimizer state (read by every process) into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(loss_module, optimizer, state, options=_options())


def unshard_value(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a (possibly) sharded one: the gathered DTensor, or t itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
