"""A small training run in its own process, for the kill-and-resume and DDP tests.

python tests/train_worker.py OUT CHECKPOINT [--kill-at STEP] [--method lora|full] [--steps N]
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


def config(out, checkpoint, method="lora", steps=6, save_every=2, micro=1, batch=4):
    from phi3v_spatial.train.config import TrainConfig

    return TrainConfig(model=str(checkpoint), out=str(out), method=method, lr=1e-2 if method == "lora" else 1e-3,
                       max_steps=steps, batch_size=batch, micro_batch_size=micro, num_crops=1, save_every=save_every,
                       warmup_steps=2, progress=False, lora_r=4, lora_alpha=8, seed=3)


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
    a = p.parse_args()
    torch.set_num_threads(1)
    from phi3v_spatial.train.data import Source
    from phi3v_spatial.train.loop import train

    def on_step(step, metrics):
        if a.kill_at is not None and step == a.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = config(a.out, a.checkpoint, a.method, a.steps, micro=a.micro, batch=a.batch)
    result = train(cfg, sources=[Source("toy", samples=toy_samples(8, images=a.images))], on_step=on_step)
    if int(os.environ.get("RANK", "0")) == 0:
        model = result["model"]
        params = {k: v.detach().double().sum().item() for k, v in model.named_parameters() if v.requires_grad}
        from accelerate import PartialState

        Path(a.out, "result.json").write_text(json.dumps({"losses": result["losses"], "params": params,
                                                          "world": PartialState().num_processes}))


if __name__ == "__main__":
    main()
