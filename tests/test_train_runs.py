"""Runs that survive and scale: SIGKILL mid-run + resume == uninterrupted; 2 processes (gloo, CPU),
DDP or fully sharded (FSDP2), == 1 process with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("accelerate")

WORKER = str(Path(__file__).resolve().parent / "train_worker.py")


def _run(args, env=None, check=True):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=e, timeout=240)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stderr[-3000:]}")
    return p


def _losses(out):
    return [json.loads(line)["loss"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_kill_and_resume_reproduces_the_loss_curve(tiny_checkpoint, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    _run([WORKER, str(ref), str(tiny_checkpoint), "--method", "full"])
    killed = _run([WORKER, str(run), str(tiny_checkpoint), "--method", "full", "--kill-at", "5"], check=False)
    assert killed.returncode == -9  # SIGKILL, between the checkpoints of steps 4 and 6
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    _run([WORKER, str(run), str(tiny_checkpoint), "--method", "full"])
    expected = json.loads((ref / "result.json").read_text())
    resumed = json.loads((run / "result.json").read_text())
    assert len(resumed["losses"]) == 6
    assert resumed["losses"] == pytest.approx(expected["losses"], rel=1e-6, abs=1e-7)
    assert resumed["params"] == pytest.approx(expected["params"], rel=1e-6, abs=1e-7)
    # metrics.jsonl holds steps 1-5 of the killed run, then 5-6 again after resuming from step 4
    assert _losses(run)[:5] == pytest.approx(expected["losses"][:5], rel=1e-6)


def test_two_process_ddp_equals_one_process(tiny_checkpoint, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--steps", "3", "--batch", "2", "--images"]
    _run([WORKER, str(one), str(tiny_checkpoint), *common, "--micro", "1"])
    _run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", WORKER, str(two),
          str(tiny_checkpoint), *common, "--micro", "1"], env={"ACCELERATE_USE_CPU": "1"})
    a = json.loads((one / "result.json").read_text())
    b = json.loads((two / "result.json").read_text())
    assert (a["world"], b["world"]) == (1, 2)
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-5)
    assert a["params"].keys() == b["params"].keys()
    assert list(a["params"].values()) == pytest.approx(list(b["params"].values()), rel=1e-5, abs=1e-6)
    assert a["losses"][-1] != a["losses"][0]  # it did train


def _two_processes(args, port):
    return _run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), WORKER, *args],
                env={"ACCELERATE_USE_CPU": "1"})


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_two_process_ddp_full_with_text_only_samples_equals_one_process(tiny_checkpoint, tmp_path):
    """Half the samples have no image: in a step where one process's micro-batch is text-only, its
    vision tower gets no gradient while the other's does; DDP must still reduce and stay in step."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--steps", "4", "--batch", "2", "--mixed", "--method", "full"]
    _run([WORKER, str(one), str(tiny_checkpoint), *common])
    _two_processes([str(two), str(tiny_checkpoint), *common], 29518)
    a, b = (json.loads((d / "result.json").read_text()) for d in (one, two))
    assert b["world"] == 2 and a["losses"] == pytest.approx(b["losses"], rel=1e-6)
    assert list(a["params"].values()) == pytest.approx(list(b["params"].values()), rel=1e-6, abs=1e-7)


def _equals_one_process(tiny_checkpoint, tmp_path, method, sharding_args, port):
    """4 steps of `method` on 2 processes with `sharding_args`, text-only and image samples mixed:
    the same losses and the same saved weights (full: the model folder; lora: the PEFT adapter,
    same keys) as one plain process."""
    import torch

    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--steps", "4", "--batch", "2", "--mixed", "--method", method]
    _run([WORKER, str(one), str(tiny_checkpoint), *common])
    _two_processes([str(two), str(tiny_checkpoint), *common, *sharding_args], port)
    a, b = (json.loads((d / "result.json").read_text()) for d in (one, two))
    assert b["world"] == 2 and a["losses"] == pytest.approx(b["losses"], rel=1e-6)
    assert a["losses"][-1] < a["losses"][0]
    weights = "model/model.safetensors" if method == "full" else "adapter/adapter_model.safetensors"
    x, y = (_tensors(d / "checkpoint-4" / weights) for d in (one, two))
    assert x.keys() == y.keys()
    for k in x:
        assert x[k].dtype == y[k].dtype == torch.float32
        # CLIP's key bias has an exactly zero true gradient (softmax ignores a per-query constant):
        # Adam's normalised update follows round-off there, which the reduce order changes. Its
        # moves are bounded by lr (1e-3) x steps.
        atol = 4e-3 if k.endswith("k_proj.bias") else 1e-6
        assert (x[k] - y[k]).abs().max() <= atol, k


@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_process_fsdp_equals_one_process(tiny_checkpoint, tmp_path, method):
    """`sharding: fsdp` (the full weights gathered from the shards; the processes other than rank 0
    built on the meta device and filled from rank 0) == one unsharded process."""
    _equals_one_process(tiny_checkpoint, tmp_path, method, ["--sharding", "fsdp"], 29519)


def test_two_process_fsdp_with_bad_samples_equals_one_process(tiny_checkpoint, tmp_path):
    """Every third sample's image is missing: skipped and counted. A process whose first micro-batch
    has no good sample runs a zero-weighted stand-in instead of nothing (which left the other
    process waiting in a gather for ever); the losses are one process's."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--steps", "4", "--batch", "2", "--bad", "--method", "full"]
    _run([WORKER, str(one), str(tiny_checkpoint), *common])
    _two_processes([str(two), str(tiny_checkpoint), *common, "--sharding", "fsdp"], 29523)
    a, b = (json.loads((d / "result.json").read_text()) for d in (one, two))
    assert b["world"] == 2 and a["losses"] == pytest.approx(b["losses"], rel=1e-6)
    state = json.loads((two / "checkpoint-4" / "trainer_state.json").read_text())
    assert sum(state["skipped"].values()) > 0


def _kill_and_resume(tmp_path, common, steps, kill_at, ports):
    """A 2-process run, the same run SIGKILLed after step `kill_at` and resumed by 2 processes, and
    its checkpoint resumed by 1 process: both resumed runs give the uninterrupted losses, the 2-process
    one bit-exact weights. `common`: the worker's arguments after OUT; `ports`: four free ports."""
    import shutil

    ref, run, one = tmp_path / "ref", tmp_path / "run", tmp_path / "one"
    _two_processes([str(ref), *common], ports[0])
    with pytest.raises(AssertionError):  # both processes SIGKILL themselves after step `kill_at`
        _two_processes([str(run), *common, "--kill-at", str(kill_at)], ports[1])
    saved = [f"checkpoint-{s}" for s in range(2, kill_at + 1, 2)]  # the worker saves every 2 steps
    assert sorted(p.name for p in run.glob("checkpoint-*")) == saved
    shutil.copytree(run, one)  # the same checkpoint, resumed by a single process
    _two_processes([str(run), *common], ports[2])
    _run(["-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(ports[3]), WORKER, str(one),
          *common], env={"ACCELERATE_USE_CPU": "1"})
    a, b, c = (json.loads((d / "result.json").read_text()) for d in (ref, run, one))
    assert len(b["losses"]) == steps and b["losses"] == pytest.approx(a["losses"], rel=1e-6)
    assert c["world"] == 1 and c["losses"] == pytest.approx(a["losses"], rel=1e-6)
    x, y = (_tensors(d / f"checkpoint-{steps}" / "model" / "model.safetensors") for d in (ref, run))
    assert all(bool((x[k] == y[k]).all()) for k in x)


def test_fsdp_kill_and_resume_reproduces_the_loss_curve(tiny_checkpoint, tmp_path):
    """Sharded checkpoints hold full tensors (optimizer keyed by parameter name): SIGKILL at step 5
    and resuming from step 4 gives the uninterrupted sharded run's losses and weights, also when
    one process resumes what two wrote."""
    common = [str(tiny_checkpoint), "--method", "full", "--mixed", "--sharding", "fsdp"]
    _kill_and_resume(tmp_path, common, 6, 5, (29520, 29521, 29522, 29524))


def test_fsdp_needs_a_launcher_and_its_checkpoints_its_sharding(tiny_checkpoint, tmp_path):
    from train_helpers import toy_samples

    from phi3v_spatial.errors import CheckpointError, ConfigError
    from phi3v_spatial.train.config import TrainConfig
    from phi3v_spatial.train.data import Source
    from phi3v_spatial.train.loop import train

    cfg = TrainConfig(model=str(tiny_checkpoint), out=str(tmp_path / "run"), method="full", max_steps=1, batch_size=1,
                      num_crops=1, progress=False, num_threads=1)
    source = [Source("toy", samples=toy_samples(2))]
    with pytest.raises(ConfigError, match="launcher"):
        train(cfg.replace(sharding="fsdp"), sources=source)
    for bad, match in ((dict(sharding="zero3"), "sharding must be"), (dict(sharding="fsdp", method="qlora"), "qlora"),
                       (dict(sharding="fsdp", precision="fp16"), "fp16")):
        with pytest.raises(ConfigError, match=match):
            train(cfg.replace(**bad), sources=source)
    train(cfg, sources=source)
    state = tmp_path / "run" / "checkpoint-1" / "trainer_state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "sharding": "fsdp"}))
    with pytest.raises(CheckpointError, match="sharding 'fsdp'"):
        train(cfg.replace(max_steps=2), sources=source)


def test_full_checkpoints_are_complete_even_when_the_start_folder_is_gone(tiny_checkpoint, tmp_path):
    """A full fine-tuning checkpoint's model folder carries the tokenizer / preprocessor files of the
    checkpoint it started from, read at the start: deleting that folder mid-run loses nothing."""
    import shutil

    from train_helpers import toy_samples

    from phi3v_spatial.train.config import TrainConfig
    from phi3v_spatial.train.data import Source
    from phi3v_spatial.train.loop import train
    from phi3v_spatial.weights import AUX_FILES

    start = tmp_path / "start"
    shutil.copytree(tiny_checkpoint, start)
    present = [f for f in AUX_FILES if (start / f).is_file()]
    cfg = TrainConfig(model=str(start), out=str(tmp_path / "run"), method="full", max_steps=1, batch_size=2,
                      micro_batch_size=2, num_crops=1, progress=False, num_threads=1)
    train(cfg, sources=[Source("toy", samples=toy_samples(4))], on_step=lambda step, m: shutil.rmtree(start))
    model = tmp_path / "run" / "checkpoint-1" / "model"
    assert present and all((model / f).read_bytes() == (Path(tiny_checkpoint) / f).read_bytes() for f in present)


# ------------------------------------------------------------------------------------ DeepSpeed ZeRO
_needs_deepspeed = pytest.mark.skipif(not __import__("importlib").util.find_spec("deepspeed"),
                                      reason="DeepSpeed not installed (pip install 'phi3v-spatial[deepspeed]')")


@_needs_deepspeed
@pytest.mark.parametrize("method,stage", [("lora", 2), ("full", 1)])
def test_two_process_deepspeed_equals_one_process(tiny_checkpoint, tmp_path, method, stage):
    """`sharding: deepspeed` (ZeRO-2 with LoRA, ZeRO-1 with the whole model including the vision
    tower) == one plain process."""
    _equals_one_process(tiny_checkpoint, tmp_path, method, ["--sharding", "deepspeed", "--zero-stage", str(stage)],
                        29525 + stage)


@_needs_deepspeed
def test_two_process_deepspeed_bf16_keeps_fp32_masters(tiny_checkpoint, tmp_path):
    """`--precision bf16` under DeepSpeed is its bf16 mode (bf16 compute, fp32 master weights and
    AdamW states in the partitions): the losses follow one fp32 process's to bf16 rounding, and the
    saved model is the fp32 masters, not their bf16 rounding."""
    import torch

    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--steps", "4", "--batch", "2", "--mixed", "--method", "full"]
    _run([WORKER, str(one), str(tiny_checkpoint), *common])
    _two_processes([str(two), str(tiny_checkpoint), *common, "--precision", "bf16", "--sharding", "deepspeed",
                    "--zero-stage", "1"], 29532)
    a, b = (json.loads((d / "result.json").read_text()) for d in (one, two))
    assert b["losses"] == pytest.approx(a["losses"], rel=1e-3) and b["losses"] != a["losses"]
    x, y = (_tensors(d / "checkpoint-4" / "model" / "model.safetensors") for d in (one, two))
    assert x.keys() == y.keys()
    for k in y:
        assert y[k].dtype == torch.float32 and bool((y[k] != y[k].bfloat16().float()).any()), k
        assert (x[k] - y[k]).abs().max() <= 1e-2, k  # 4 Adam steps of lr 1e-3 apart at most


@_needs_deepspeed
def test_deepspeed_kill_and_resume_reproduces_the_loss_curve(tiny_checkpoint, tmp_path):
    """ZeRO checkpoints hold full tensors (the AdamW moments gathered from the partitions, keyed by
    name): SIGKILL after step 3 and resuming from step 2 gives the uninterrupted run's losses and
    weights, also when one process resumes what two wrote."""
    common = [str(tiny_checkpoint), "--method", "full", "--mixed", "--steps", "4", "--sharding", "deepspeed",
              "--zero-stage", "1"]
    _kill_and_resume(tmp_path, common, 4, 3, (29533, 29529, 29530, 29531))


def test_deepspeed_refusals(tiny_checkpoint, tmp_path, monkeypatch):
    """What `sharding: deepspeed` does not do is a clear ConfigError before any training: ZeRO-3,
    4-bit weights, fp16, stage 2 over a trainable image side (see train/zero.py), no launcher; an
    accelerate DeepSpeed config is mapped onto the same checks."""
    from types import SimpleNamespace

    from train_helpers import toy_samples

    from phi3v_spatial.errors import ConfigError
    from phi3v_spatial.train.config import TrainConfig
    from phi3v_spatial.train.data import Source
    from phi3v_spatial.train.loop import _mode, train

    cfg = TrainConfig(model=str(tiny_checkpoint), out=str(tmp_path / "run"), method="full", max_steps=1, batch_size=1,
                      num_crops=1, progress=False, num_threads=1, sharding="deepspeed")
    source = [Source("toy", samples=toy_samples(2))]
    for bad, match in ((dict(zero_stage=3), "--sharding fsdp"), (dict(zero_stage=0), "zero_stage must be"),
                       (dict(method="qlora"), "qlora"), (dict(precision="fp16"), "fp16")):
        with pytest.raises(ConfigError, match=match):
            train(cfg.replace(**bad), sources=source)
    if __import__("importlib").util.find_spec("deepspeed"):
        with pytest.raises(ConfigError, match="image side"):
            train(cfg, sources=source)
        with pytest.raises(ConfigError, match="launcher"):
            train(cfg.replace(freeze_vision=True, freeze_projector=True, zero_stage=1), sources=source)
    acc = SimpleNamespace(distributed_type="DistributedType.DEEPSPEED", state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=1)))
    assert _mode(cfg.replace(sharding="none"), acc) == ("deepspeed", 1)
    acc.state.deepspeed_plugin.zero_stage = 3
    with pytest.raises(ConfigError, match="--sharding fsdp"):
        _mode(cfg.replace(sharding="none"), acc)
    # on a CPU `accelerate launch --use_deepspeed` leaves the accelerator plain: its variables decide
    cpu = SimpleNamespace(distributed_type="DistributedType.MULTI_CPU", state=SimpleNamespace())
    assert _mode(cfg.replace(sharding="none"), cpu) == ("none", cfg.zero_stage)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "1")
    assert _mode(cfg.replace(sharding="none"), cpu) == ("deepspeed", 1)
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    ds_config = tmp_path / "ds.json"
    ds_config.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(ds_config))
    with pytest.raises(ConfigError, match="--sharding fsdp"):
        _mode(cfg.replace(sharding="none"), cpu)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert _mode(cfg.replace(sharding="none", method="lora"), cpu)[0] == "fsdp"
