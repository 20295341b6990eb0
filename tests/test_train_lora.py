"""LoRA on the tiny reference checkpoint: training lowers the loss, B = 0 is a no-op, merged ==
base + adapter, and the exported folder is the original's layout, reloaded bit-exact."""
from __future__ import annotations

import json

import pytest
import torch

from train_helpers import toy_samples

pytest.importorskip("peft")


def _load(path):
    from phi3v_spatial.model import Phi3VForCausalLM

    return Phi3VForCausalLM.from_pretrained(path, torch_dtype=torch.float32)


@pytest.fixture(scope="module")
def batch(tiny_checkpoint):
    from phi3v_spatial.processing import Phi3VProcessor
    from phi3v_spatial.train.collator import Collator

    return Collator(Phi3VProcessor.from_pretrained(tiny_checkpoint, num_crops=1))(toy_samples(2))


def _loss(model, batch):
    with torch.no_grad():
        return float(model(**batch).loss)


def test_lora_20_steps_lower_the_loss_on_a_fixed_batch(tiny_checkpoint, tmp_path, batch):
    from phi3v_spatial.train.config import TrainConfig
    from phi3v_spatial.train.data import Source
    from phi3v_spatial.train.loop import LossModule, train

    model = _load(tiny_checkpoint)
    before = _loss(model, batch)
    cfg = TrainConfig(model=str(tiny_checkpoint), out=str(tmp_path), method="lora", lr=1e-2, max_steps=20, batch_size=2,
                      micro_batch_size=2, num_crops=1, save_every=0, progress=False, lora_r=8, lora_alpha=16)
    result = train(cfg, model=model, sources=[Source("toy", samples=toy_samples(2))])
    after = _loss(model, batch)
    assert after < 0.5 * before, (before, after)
    assert result["losses"][-1] < result["losses"][0]
    # the loop's sparse loss is the model's own loss
    n = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        assert float(LossModule(model)(**batch)) / n == pytest.approx(after, rel=1e-5)
    # only LoRA weights were trained, and the adapter is in PEFT's format
    adapter = tmp_path / "checkpoint-20" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    from safetensors.torch import load_file

    keys = load_file(str(adapter / "adapter_model.safetensors"))
    assert keys and all("lora_" in k for k in keys)
    assert {k.split(".")[-3] for k in keys} == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}


def test_lora_with_b_zero_changes_nothing(tiny_checkpoint, batch):
    from phi3v_spatial.train.methods import LoraOptions, apply_lora

    base = _load(tiny_checkpoint)
    with torch.no_grad():
        ref = base(**batch).logits
    model = apply_lora(_load(tiny_checkpoint), LoraOptions(r=4, alpha=8))
    bs = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert bs and all(bool((b == 0).all()) for b in bs)
    assert any(bool((p != 0).any()) for n, p in model.named_parameters() if "lora_A" in n)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, ref)


def _random_adapter(tiny_checkpoint, out):
    from phi3v_spatial.train.methods import LoraOptions, apply_lora

    model = apply_lora(_load(tiny_checkpoint), LoraOptions(r=4, alpha=8))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(out)
    return model


def test_merged_equals_base_plus_adapter(tiny_checkpoint, tmp_path, batch):
    from phi3v_spatial.train.export import merge_lora

    peft_model = _random_adapter(tiny_checkpoint, tmp_path / "adapter")
    with torch.no_grad():
        unmerged = peft_model(**batch).logits
    base = _load(tiny_checkpoint).state_dict()
    merged = merge_lora(_load(tiny_checkpoint), tmp_path / "adapter")
    sd = merged.state_dict()
    assert list(sd) == list(base)
    lora = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    for name in sd:
        stem = name.removesuffix(".weight")
        a = lora.get(f"base_model.model.{stem}.lora_A.default.weight")
        if a is None:
            assert torch.equal(sd[name], base[name]), name
            continue
        b = lora[f"base_model.model.{stem}.lora_B.default.weight"]
        torch.testing.assert_close(sd[name], base[name] + (8 / 4) * b @ a, atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_export_reloads_bit_exact_with_the_original_keys(tiny_checkpoint, tmp_path):
    from safetensors import safe_open

    from phi3v_spatial.cli import main
    from phi3v_spatial.train.export import merge_lora

    _random_adapter(tiny_checkpoint, tmp_path / "adapter")
    assert main(["export", "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "out"),
                 "--model", str(tiny_checkpoint)]) == 0
    out = tmp_path / "out"

    def keys(folder):
        names = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                names.update({k: tuple(h.get_slice(k).get_shape()) for k in h.keys()})
        return names

    assert keys(out) == keys(tiny_checkpoint)  # exactly the original's names and shapes
    original = json.loads((tiny_checkpoint / "config.json").read_text())
    exported = json.loads((out / "config.json").read_text())
    assert exported == original
    for f in ("tokenizer.json", "preprocessor_config.json"):
        assert (out / f).read_bytes() == (tiny_checkpoint / f).read_bytes()
    merged = merge_lora(_load(tiny_checkpoint), tmp_path / "adapter").state_dict()
    reloaded = _load(out).state_dict()
    assert list(reloaded) == list(merged)
    for k in merged:
        assert torch.equal(reloaded[k], merged[k]), k


def test_qlora_without_cuda_is_a_clear_error(tiny_checkpoint):
    from phi3v_spatial.errors import ConfigError
    from phi3v_spatial.train.methods import prepare

    if torch.cuda.is_available():
        pytest.skip("CUDA present: QLoRA is supported here")
    with pytest.raises(ConfigError, match="QLoRA needs a CUDA GPU"):
        prepare(_load(tiny_checkpoint), "qlora")


def test_full_with_frozen_vision_and_projector(tiny_checkpoint):
    from phi3v_spatial.train.methods import prepare

    model = prepare(_load(tiny_checkpoint), "full", freeze_vision=True, freeze_projector=True)
    for n, p in model.named_parameters():
        assert p.requires_grad == (not n.startswith("model.vision_embed_tokens.")), n
