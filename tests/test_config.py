"""Config parsing: the real and tiny configs, every supported option, and clear errors for the rest."""
from __future__ import annotations

import json
import math

import pytest
import torch

from phi3v_spatial.config import Phi3VConfig
from phi3v_spatial.errors import ConfigError
from phi3v_spatial.model import Phi3VForCausalLM


@pytest.fixture()
def real_dict(meta_dir):
    return json.loads((meta_dir / "config.json").read_text())


def test_real_config(real_dict):
    c = Phi3VConfig.from_dict(real_dict)
    assert (c.hidden_size, c.num_hidden_layers, c.head_dim, c.vocab_size) == (3072, 32, 96, 32064)
    assert c.rope_scaling.type == "su" and len(c.rope_scaling.long_factor) == 48
    assert c.vision.hidden_size == 1024 and c.vision.num_hidden_layers == 24  # CLIP ViT-L/14-336
    assert math.isclose(c.rope_attention_factor, 1.1902380714238083)
    assert c.hd_transform_order == "sub_glb" and c.projection_cls == "mlp"


def test_tiny_config_uses_vision_config(tiny_checkpoint):
    c = Phi3VConfig.from_pretrained(tiny_checkpoint)
    assert (c.vision.hidden_size, c.vision.num_hidden_layers, c.vision.intermediate_size) == (32, 3, 64)
    assert math.isclose(c.rope_attention_factor, math.sqrt(2))
    assert c.original_max_position_embeddings == 64 and c.sliding_window == 4096


def test_real_model_on_meta_has_exactly_the_checkpoint_names(real_dict, meta_dir):
    index = json.loads((meta_dir / "model.safetensors.index.json").read_text())["weight_map"]
    c = Phi3VConfig.from_dict(real_dict)
    with torch.device("meta"):
        model = Phi3VForCausalLM(c)
    sd = model.state_dict()
    assert set(sd) == set(index)
    assert len(sd) == 592
    p = "model.layers.0."
    expected = {
        "model.embed_tokens.weight": (32064, 3072),
        "lm_head.weight": (32064, 3072),
        p + "self_attn.qkv_proj.weight": (9216, 3072),
        p + "self_attn.o_proj.weight": (3072, 3072),
        p + "mlp.gate_up_proj.weight": (16384, 3072),
        p + "mlp.down_proj.weight": (3072, 8192),
        "model.vision_embed_tokens.glb_GN": (1, 1, 4096),
        "model.vision_embed_tokens.sub_GN": (1, 1, 1, 4096),
        "model.vision_embed_tokens.img_projection.0.weight": (3072, 4096),
        "model.vision_embed_tokens.img_projection.2.weight": (3072, 3072),
        "model.vision_embed_tokens.img_processor.vision_model.embeddings.position_embedding.weight": (577, 1024),
        "model.vision_embed_tokens.img_processor.vision_model.embeddings.patch_embedding.weight": (1024, 3, 14, 14),
        "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.23.mlp.fc1.weight": (4096, 1024),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    n = sum(t.numel() for t in sd.values())
    assert 4.1e9 < n < 4.3e9  # the "4.2B parameters" of the model card


@pytest.mark.parametrize("rtype", ["su", "longrope", "yarn"])
def test_rope_types(real_dict, rtype):
    real_dict["rope_scaling"]["type"] = rtype
    c = Phi3VConfig.from_dict(real_dict)
    scale = 131072 / 4096
    expected = 0.1 * math.log(scale) + 1 if rtype == "yarn" else math.sqrt(1 + math.log(scale) / math.log(4096))
    assert math.isclose(c.rope_attention_factor, expected)


def test_no_rope_scaling(real_dict):
    real_dict["rope_scaling"] = None
    c = Phi3VConfig.from_dict(real_dict)
    assert c.rope_scaling is None and c.rope_attention_factor == 1.0


def test_glb_sub_and_linear_projection(real_dict):
    real_dict["embd_layer"].update(hd_transform_order="glb_sub", projection_cls="linear")
    c = Phi3VConfig.from_dict(real_dict)
    with torch.device("meta"):
        m = Phi3VForCausalLM(c)
    assert tuple(m.state_dict()["model.vision_embed_tokens.img_projection.weight"].shape) == (3072, 4096)


def test_round_trip(tiny_checkpoint):
    c = Phi3VConfig.from_pretrained(tiny_checkpoint)
    assert Phi3VConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(model_type="llava"), "model_type"),
        (lambda d: d["rope_scaling"].update(type="dynamic"), "rope_scaling type"),
        (lambda d: d["rope_scaling"].update(short_factor=[1.0] * 3), "short_factor"),
        (lambda d: d["rope_scaling"].update(mscale=2.0), "not supported"),
        (lambda d: d["embd_layer"].update(hd_transform_order="sub_only"), "hd_transform_order"),
        (lambda d: d["embd_layer"].update(projection_cls="resampler"), "projection_cls"),
        (lambda d: d["embd_layer"].update(use_hd_transform=False, with_learnable_separator=False), "use_hd_transform"),
        (lambda d: d["img_processor"].update(type_feature="cls_patch"), "cls_patch"),
        (lambda d: d["img_processor"].update(layer_idx=40), "layer_idx"),
        (lambda d: d.update(hidden_act="gelu"), "hidden_act"),
        (lambda d: d.update(sliding_window=0), "sliding_window"),
        (lambda d: d["img_processor"].update(image_dim_out=512), "image_dim_out"),
    ],
)
def test_unsupported_values_are_config_errors(real_dict, edit, message):
    edit(real_dict)
    with pytest.raises(ConfigError, match=message):
        Phi3VConfig.from_dict(real_dict)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        Phi3VConfig.from_pretrained(tmp_path)
