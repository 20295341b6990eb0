"""Checkpoint loading and saving: formats, dtypes, strict key checks, round trips, memory."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from phi3v_spatial.config import Phi3VConfig
from phi3v_spatial.errors import CheckpointError
from phi3v_spatial.model import Phi3VForCausalLM
from phi3v_spatial.random_init import random_config, random_model


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return Phi3VForCausalLM.from_pretrained(tiny_checkpoint)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_loaded_state_dict_is_the_file(tiny, tiny_checkpoint):
    file = load_file(str(tiny_checkpoint / "model.safetensors"))
    sd = tiny.state_dict()
    assert set(sd) == set(file)
    assert all(torch.equal(sd[k], file[k]) for k in file)


def test_save_load_round_trip_sharded(tiny, tmp_path):
    tiny.save_pretrained(tmp_path, max_shard_size="4MB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2 and all((tmp_path / s).is_file() for s in shards)
    assert (tmp_path / "tokenizer.json").is_file()  # a complete folder, tokenizer included
    again = Phi3VForCausalLM.from_pretrained(tmp_path)
    assert_same_weights(tiny, again)
    assert again.config == tiny.config


def test_save_single_file_round_trip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "model.safetensors.index.json").exists()
    assert_same_weights(tiny, Phi3VForCausalLM.from_pretrained(tmp_path))


def _write_bin_shards(model, folder, n=3):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    keys = sorted(sd)
    wmap = {}
    for i in range(n):
        name = f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin"
        part = {k: sd[k] for k in keys[i::n]}
        torch.save(part, folder / name)
        wmap.update({k: name for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))


def test_bin_shards(tiny, tmp_path):
    _write_bin_shards(tiny, tmp_path)
    assert_same_weights(tiny, Phi3VForCausalLM.from_pretrained(tmp_path))


def test_single_bin(tiny, tmp_path):
    torch.save(tiny.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(tiny.config.to_dict()))
    assert_same_weights(tiny, Phi3VForCausalLM.from_pretrained(tmp_path))


def test_bin_is_loaded_with_weights_only(tiny, tmp_path):
    """A pickle that would run code is refused, not executed."""
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(tiny.config.to_dict()))
    with pytest.raises(CheckpointError, match="weights_only"):
        Phi3VForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "bfloat16", "auto"])
def test_dtype_cast(tiny, tiny_checkpoint, dtype):
    m = Phi3VForCausalLM.from_pretrained(tiny_checkpoint, torch_dtype=dtype)
    want = torch.float32 if dtype == "auto" else (torch.bfloat16 if dtype == "bfloat16" else dtype)
    assert all(p.dtype == want for p in m.parameters())
    ref = tiny.state_dict()
    for k, v in m.state_dict().items():
        assert torch.equal(v, ref[k].to(want)), k
    ids = torch.tensor([[1, 32010, 29871, 13, 15043, 32007, 29871, 13, 32001]])
    with torch.no_grad():
        out = m(input_ids=ids).logits
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def _edit_checkpoint(tiny, folder, edit):
    sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    edit(sd)
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(tiny.config.to_dict()))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop("model.layers.1.mlp.down_proj.weight"), "missing tensors: model.layers.1.mlp.down_proj.weight"),
        (lambda sd: sd.update({"model.layers.7.mlp.extra.weight": torch.zeros(2)}), "unexpected tensors: model.layers.7.mlp.extra.weight"),
        (lambda sd: sd.update({"model.norm.weight": torch.zeros(65)}), r"wrongly shaped tensors: model.norm.weight \(65,\) \(expected \(64,\)\)"),
    ],
)
def test_checkpoint_errors_name_the_tensors(tiny, tmp_path, edit, message):
    _edit_checkpoint(tiny, tmp_path, edit)
    with pytest.raises(CheckpointError, match=message):
        Phi3VForCausalLM.from_pretrained(tmp_path)


def test_tolerated_extra_keys(tiny, tmp_path):
    """Keys older saves carry (tied wte copy, CLIP position_ids buffer) are accepted and dropped."""
    def add(sd):
        sd["model.vision_embed_tokens.wte.weight"] = sd["model.embed_tokens.weight"].clone()
        sd["model.vision_embed_tokens.img_processor.vision_model.embeddings.position_ids"] = torch.arange(577)[None]
    _edit_checkpoint(tiny, tmp_path, add)
    assert_same_weights(tiny, Phi3VForCausalLM.from_pretrained(tmp_path))


def test_missing_shard_and_no_weights(tiny, tmp_path):
    tiny.save_pretrained(tmp_path, max_shard_size="4MB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        Phi3VForCausalLM.from_pretrained(tmp_path)
    for f in tmp_path.glob("model*"):
        f.unlink()
    with pytest.raises(CheckpointError, match="has no weights"):
        Phi3VForCausalLM.from_pretrained(tmp_path)


def test_corrupt_safetensors(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cannot read"):
        Phi3VForCausalLM.from_pretrained(tmp_path)


def test_missing_folder_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="does not exist"):
        Phi3VForCausalLM.from_pretrained(tmp_path / "nope")
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="Hugging Face hub"):
        Phi3VForCausalLM.from_pretrained("someone/some-model")


def test_hub_id_resolves_through_huggingface_hub(tiny_checkpoint, monkeypatch):
    import huggingface_hub

    calls = []

    def fake(repo_id, revision=None, allow_patterns=None):
        calls.append(repo_id)
        return str(tiny_checkpoint)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    m = Phi3VForCausalLM.from_pretrained("MbodiAI/phi3v-spatial", trust_remote_code=True, torch_dtype="auto", device_map="cpu")
    assert calls == ["MbodiAI/phi3v-spatial"] and m.device.type == "cpu"


def test_tied_embeddings_round_trip(tmp_path):
    c = random_config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      vision=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2),
                      tie_word_embeddings=True)
    m = random_model(c)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    m.save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))
    again = Phi3VForCausalLM.from_pretrained(tmp_path)
    assert again.lm_head.weight is again.model.embed_tokens.weight
    assert_same_weights(m, again)


def test_load_peak_memory_stays_near_the_weights_size(tmp_path):
    """Loading (and then touching every weight in a forward) holds the weights about once:
    peak RSS growth <= 1.3x the weights' size. The ~1 GB case is benchmarks/bench_load.py."""
    c = random_config(hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8)
    random_model(c).save_pretrained(tmp_path, max_shard_size="60MB")
    script = textwrap.dedent(f"""
        import json, os, torch
        from phi3v_spatial.model import Phi3VForCausalLM
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        # torch's first nn.Embedding (even on the meta device) costs a fixed ~76 MB of one-time
        # library set-up, whatever the model size: paid before the baseline
        with torch.device("meta"):
            torch.nn.Embedding(2, 2)
        base = rss()
        m = Phi3VForCausalLM.from_pretrained({str(tmp_path)!r})
        size = sum(p.numel() * p.element_size() for p in m.parameters())
        with torch.no_grad():
            m(input_ids=torch.tensor([[1, 2, 3]]))
        # VmHWM, not ru_maxrss: ru_maxrss survives fork+exec and would report the parent's peak
        peak = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) * 1024
        print(json.dumps(dict(base=base, peak=peak, size=size)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["size"] > 100e6
    assert r["peak"] - r["base"] <= 1.3 * r["size"], r
