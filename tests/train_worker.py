"""A small training run in its own process, for the kill-and-resume and DDP tests.

python tests/train_worker.py OUT CHECKPOINT [--kill-at STEP] [--method lora|full] [--steps N] [--sharding fsdp|deepspeed]
Under torchrun each process takes its share of the same global batch.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from train_helpers import toy_samples  # noqa: E402


def config(out, checkpoint, method="lora", steps=6, save_every=2, micro=1, batch=4, sharding="none", zero_stage=2, precision="fp32"):
    from phi3v_spatial.train.config import TrainConfig

    return TrainConfig(model=str(checkpoint), out=str(out), method=method, lr=1e-2 if method == "lora" else 1e-3,
                       max_steps=steps, batch_size=batch, micro_batch_size=micro, num_crops=1, save_every=save_every,
                       warmup_steps=2, progress=False, lora_r=4, lora_alpha=8, seed=3, sharding=sharding,
                       zero_stage=zero_stage, precision=precision)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("checkpoint")
    p.add_argument("--kill-at", type=int)
    p.add_argument("--method", default="lora")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--micro", type=int, default=1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--images", action="store_true")
    p.add_argument("--mixed", action="store_true", help="half the samples without an image")
    p.add_argument("--sharding", default="none")
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--bad", action="store_true", help="every third sample's image file is missing")
    a = p.parse_args()
    torch.set_num_threads(1)
    from phi3v_spatial.train.data import Source
    from phi3v_spatial.train.loop import end_distributed, train

    def on_step(step, metrics):
        if a.kill_at is not None and step == a.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = config(a.out, a.checkpoint, a.method, a.steps, micro=a.micro, batch=a.batch, sharding=a.sharding,
                 zero_stage=a.zero_stage, precision=a.precision)
    samples = toy_samples(8, images=a.images or a.mixed or a.bad)
    if a.mixed:  # odd samples text-only: the processes' micro-batches differ in whether the vision tower runs
        samples = [s if i % 2 == 0 else t for i, (s, t) in enumerate(zip(samples, toy_samples(8, images=False)))]
    if a.bad:  # skipped by the collator; a process left without a good sample runs a zero-weighted stand-in
        samples = [dict(s, images=["/nonexistent/missing.png"]) if i % 3 == 1 else s for i, s in enumerate(samples)]
    result = train(cfg, sources=[Source("toy", samples=samples)], on_step=on_step)
    from phi3v_spatial.train.sharding import unshard_value

    # every process gathers (sharded runs: a collective); rank 0 writes
    params = {k: unshard_value(v.detach()).double().sum().item() for k, v in result["model"].named_parameters() if v.requires_grad}
    if int(os.environ.get("RANK", "0")) == 0:
        from accelerate import PartialState

        Path(a.out, "result.json").write_text(json.dumps({"losses": result["losses"], "params": params,
                                                          "world": PartialState().num_processes}))
    end_distributed()


if __name__ == "__main__":
    main()
