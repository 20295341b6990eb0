"""Training throughput on CPU: samples/s, tokens/s (real tokens incl. image slots) and peak RSS
for LoRA and full fine-tuning of a random mid-size Phi-3-V (the `mid` preset, ~300M parameters;
--preset tiny for a quick look). Warm-up steps are not counted; the median step time of several
is reported. Prints one JSON object last.

With --processes N it also runs full fine-tuning through the training loop itself on N CPU processes
(torchrun, gloo), as DDP, with `--sharding fsdp` and with `--sharding deepspeed` (ZeRO-1: the whole
model trains, vision tower included, which ZeRO-2 refuses, see train/zero.py), in `--precision` fp32
or bf16, and reports each process's peak RSS while training (before the final checkpoint, which
gathers the full tensors on rank 0) and after it.

    python benchmarks/bench_train.py [--preset mid] [--steps 3] [--batch 2] [--threads N] [--processes 2] [--precision bf16]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(method: str, preset: str, steps: int, batch: int, tokenizer_dir: str) -> dict:
    from train_helpers import toy_samples

    from phi3v_spatial.processing import Phi3VProcessor
    from phi3v_spatial.random_init import PRESETS, random_config, random_model
    from phi3v_spatial.train.collator import Collator
    from phi3v_spatial.train.loop import LossModule
    from phi3v_spatial.train.methods import prepare

    model = random_model(random_config(**PRESETS[preset]), seed=0)
    model = prepare(model, method)
    base = model.base_model.model if method != "full" else model
    base.train()
    loss_module = LossModule(base)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    proc = Phi3VProcessor.from_pretrained(tokenizer_dir, num_crops=1)
    b = Collator(proc)(toy_samples(batch))
    n_tokens = int(b["attention_mask"].sum())
    times = []
    for i in range(steps + 1):  # first step is warm-up
        t = time.perf_counter()
        loss = loss_module(**b) / int((b["labels"][:, 1:] != -100).sum())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t)
    dt = statistics.median(times)
    return {"method": method, "trainable_params": sum(p.numel() for p in params),
            "total_params": sum(p.numel() for p in model.parameters()), "step_s": dt,
            "samples_per_s": batch / dt, "tokens_per_s": n_tokens / dt, "tokens_per_sample": n_tokens / batch}


def loop_worker(sharding: str, preset: str, steps: int, batch: int, tokenizer_dir: str, out: str, precision: str) -> None:
    """One process of a torchrun group: the training loop, full method, on the random preset."""
    import os

    from train_helpers import toy_samples

    from phi3v_spatial.processing import Phi3VProcessor
    from phi3v_spatial.random_init import PRESETS, random_config, random_model
    from phi3v_spatial.train.config import TrainConfig
    from phi3v_spatial.train.data import Source
    from phi3v_spatial.train.loop import end_distributed, train

    rank = int(os.environ["RANK"])
    seen = {}

    def on_step(step, metrics):
        seen.setdefault("step_s", []).append(batch / metrics["samples_per_s"])
        seen["training_peak_rss_mb"] = peak_rss_mb()

    cfg = TrainConfig(out=str(Path(out) / "run"), method="full", max_steps=steps + 1, batch_size=batch, num_crops=1,
                      save_every=0, progress=False, sharding=sharding, zero_stage=1, lr=1e-5, precision=precision, warmup_steps=0, seed=0)
    train(cfg, model=random_model(random_config(**PRESETS[preset]), seed=0),
          processor=Phi3VProcessor.from_pretrained(tokenizer_dir, num_crops=1),
          sources=[Source("toy", samples=toy_samples(batch))], on_step=on_step)
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "step_s": statistics.median(seen["step_s"][1:]), "training_peak_rss_mb": seen["training_peak_rss_mb"],
        "peak_rss_mb_with_checkpoint": peak_rss_mb()}))
    end_distributed()


MODES = {"none": "ddp", "fsdp": "fsdp", "deepspeed": "zero1"}  # --sharding -> result name


def multi_process(n: int, preset: str, steps: int, batch: int, tokenizer_dir: str, precision: str = "fp32") -> dict:
    import os
    import tempfile

    results = {}
    for sharding in MODES:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port", "29561",
                   __file__, "--loop-worker", sharding, "--preset", preset, "--steps", str(steps), "--batch", str(batch),
                   "--tokenizer", tokenizer_dir, "--out", out, "--precision", precision]
            env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // n))}
            subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(n)]
        name = f"full_{n}proc_{MODES[sharding]}"
        results[name] = {"samples_per_s": batch / ranks[0]["step_s"], "precision": precision,
                         "training_peak_rss_mb_per_process": [r["training_peak_rss_mb"] for r in ranks],
                         "peak_rss_mb_with_checkpoint_per_process": [r["peak_rss_mb_with_checkpoint"] for r in ranks]}
        print(f"{name}: {results[name]['samples_per_s']:.2f} samples/s, training peak per process "
              f"{', '.join(f'{m:.0f}' for m in results[name]['training_peak_rss_mb_per_process'])} MB", file=sys.stderr)
    ddp, fsdp = results[f"full_{n}proc_ddp"], results[f"full_{n}proc_fsdp"]
    results["fsdp_over_ddp_training_peak"] = max(fsdp["training_peak_rss_mb_per_process"]) / max(ddp["training_peak_rss_mb_per_process"])
    zero = results[f"full_{n}proc_zero1"]
    results["zero1_over_ddp_training_peak"] = max(zero["training_peak_rss_mb_per_process"]) / max(ddp["training_peak_rss_mb_per_process"])
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mid")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--tokenizer", default=str(Path(__file__).resolve().parents[1] / "src/phi3v_spatial/assets/tiny-spatial"))
    ap.add_argument("--method", choices=["lora", "full"], help="internal: run one method in this process")
    ap.add_argument("--processes", type=int, help="also: full fine-tuning on N processes, DDP, FSDP and DeepSpeed ZeRO-1")
    ap.add_argument("--loop-worker", choices=list(MODES), help="internal: one process of a torchrun group")
    ap.add_argument("--out", help="internal: where --loop-worker writes")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="--processes runs: fp32, or bf16 (DDP/FSDP: bf16 compute from fp32 weights; DeepSpeed: its bf16 mode)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.loop_worker:
        loop_worker(a.loop_worker, a.preset, a.steps, a.batch, a.tokenizer, a.out, a.precision)
        return
    if a.method:  # child: one method, so peak memory is its own
        r = bench(a.method, a.preset, a.steps, a.batch, a.tokenizer)
        r["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(r))
        return
    results = {}
    for method in ("lora", "full"):
        cmd = [sys.executable, __file__, "--method", method, "--preset", a.preset, "--steps", str(a.steps),
               "--batch", str(a.batch), "--tokenizer", a.tokenizer] + (["--threads", str(a.threads)] if a.threads else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[method] = json.loads(out)
        print(f"{method}: {results[method]['samples_per_s']:.2f} samples/s, {results[method]['tokens_per_s']:.0f} tokens/s, "
              f"peak {results[method]['peak_rss_mb']:.0f} MB", file=sys.stderr)
    if a.processes:
        results.update(multi_process(a.processes, a.preset, a.steps, a.batch, a.tokenizer, a.precision))
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(json.dumps({"bench": "train", "preset": a.preset, "batch": a.batch, "hardware": platform.processor() or platform.machine(),
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "git": sha, **results,
                      "lora_over_full_speed": results["lora"]["samples_per_s"] / results["full"]["samples_per_s"],
                      "lora_over_full_memory": results["lora"]["peak_rss_mb"] / results["full"]["peak_rss_mb"]}))


if __name__ == "__main__":
    main()
