"""Model behaviour beyond the goldens: dtypes, gradients, loss, sliding window, input checks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from goldens import load_model_case
from phi3v_spatial.errors import ConfigError, PromptError
from phi3v_spatial.model import Phi3VForCausalLM
from phi3v_spatial.random_init import random_config, random_model

SMALL_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return Phi3VForCausalLM.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def image_case(reference_dir, manifest):
    return load_model_case(reference_dir, manifest, "m_image_one")


@pytest.mark.parametrize("dtype, atol", [(torch.bfloat16, 0.6), (torch.float16, 0.1)])
def test_half_precision_forward(tiny_checkpoint, image_case, dtype, atol):
    _, z, inputs = image_case
    m = Phi3VForCausalLM.from_pretrained(tiny_checkpoint, torch_dtype=dtype)
    with torch.no_grad():
        out = m(**inputs, output_hidden_states=True)
    h = out.hidden_states[-1][0].float()
    golden = torch.from_numpy(z["hidden_states"][-1, 0])
    # unit-scale random weights make these logits peaky; the point is the path runs in half
    # precision end to end and stays close to float32
    assert out.hidden_states[-1].dtype == dtype
    assert (h - golden).abs().mean() < atol / 10
    assert (out.logits[0, -1].argmax() == int(z["logits_argmax"][0, -1])) or dtype == torch.bfloat16


def test_loss_ignores_minus_100(tiny, image_case):
    _, _, inputs = image_case
    labels = inputs["input_ids"].clone()
    labels[labels < 0] = -100
    labels[:, :700] = -100
    out = tiny(**inputs, labels=labels)
    logits = out.logits[0, :-1]
    target = labels[0, 1:]
    keep = target != -100
    manual = F.cross_entropy(logits[keep], target[keep])
    assert torch.allclose(out.loss, manual, atol=1e-6)


def test_gradients_flow_and_checkpointing_matches(tiny_checkpoint, image_case):
    _, _, inputs = image_case
    labels = inputs["input_ids"].clone()
    labels[labels < 0] = -100
    grads = []
    for ckpt in (False, True):
        m = Phi3VForCausalLM.from_pretrained(tiny_checkpoint).train()
        if ckpt:
            m.gradient_checkpointing_enable()
        m(**inputs, labels=labels).loss.backward()
        g = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        grads.append(g)
    plain, checkpointed = grads
    for name in ("model.layers.0.self_attn.qkv_proj.weight", "model.vision_embed_tokens.sub_GN",
                 "model.vision_embed_tokens.img_projection.0.weight",
                 "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.mlp.fc1.weight"):
        assert plain[name].abs().sum() > 0, name
    assert plain.keys() == checkpointed.keys()
    for k in plain:
        assert torch.allclose(plain[k], checkpointed[k], atol=1e-5, rtol=1e-4), k


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_sliding_window(impl):
    """With one layer, position p sees exactly keys p-W..p: the same as running that slice alone."""
    W = 4
    c = random_config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      vision=SMALL_VISION, sliding_window=W, original_max_position_embeddings=64)
    m = random_model(c, seed=3)
    m.set_attn_implementation(impl)
    ids = torch.randint(3, 1000, (1, 14), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = m(input_ids=ids).logits[0]
        for p in range(W, 14):
            pos = torch.arange(p - W, p + 1)[None]
            alone = m(input_ids=ids[:, p - W : p + 1], position_ids=pos).logits[0, -1]
            assert torch.allclose(full[p], alone, atol=1e-4), p
    # and the window really bites: the same weights without a window differ at position 13
    c2 = random_config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       vision=SMALL_VISION, original_max_position_embeddings=64)
    m2 = random_model(c2, seed=3)
    with torch.no_grad():
        assert not torch.allclose(m2(input_ids=ids).logits[0, 13], full[13], atol=1e-3)


def test_eager_equals_sdpa_on_left_padded_batch(tiny):
    ids = torch.tensor([[32000, 32000, 1, 32010, 29871, 13, 15043], [1, 32010, 29871, 13, 15043, 3186, 29991]])
    mask = (ids != 32000).long()
    outs = []
    for impl in ("eager", "sdpa"):
        tiny.set_attn_implementation(impl)
        with torch.no_grad():
            outs.append(tiny(input_ids=ids, attention_mask=mask).logits)
    tiny.set_attn_implementation("sdpa")
    assert torch.allclose(outs[0][mask.bool()], outs[1][mask.bool()], atol=1e-4)
    with torch.no_grad():
        solo = tiny(input_ids=ids[:1, 2:]).logits[0]
    assert torch.allclose(outs[1][0, 2:], solo, atol=1e-4)  # left padding changes nothing


def test_attention_backend_errors(tiny):
    with pytest.raises(ConfigError, match="not supported"):
        tiny.set_attn_implementation("xformers")
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="flash-attn"):
            tiny.set_attn_implementation("flash_attention_2")


def test_prompt_errors(tiny, image_case):
    _, _, inputs = image_case
    ids, pv, sizes = inputs["input_ids"], inputs["pixel_values"], inputs["image_sizes"]
    with pytest.raises(PromptError, match="reference 1 images but pixel_values holds 2"):
        tiny(input_ids=ids, pixel_values=torch.cat([pv, pv]), image_sizes=torch.cat([sizes, sizes]))
    with pytest.raises(PromptError, match="no pixel_values"):
        tiny(input_ids=ids)
    short = torch.cat([ids[:, :20], ids[:, 40:]], dim=1)  # image block 20 slots short
    with pytest.raises(PromptError, match="slots but image 0 has 757 tokens"):
        tiny(input_ids=short, pixel_values=pv, image_sizes=sizes)
    text = ids[ids >= 0][None]
    with pytest.raises(PromptError, match="no <\\|image_N\\|> tag"):
        tiny(input_ids=text, pixel_values=pv, image_sizes=sizes)
    with pytest.raises(PromptError, match="outside the vocabulary"):
        tiny(input_ids=torch.tensor([[1, 32064]]))
