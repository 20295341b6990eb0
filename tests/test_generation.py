"""The generation engine reproduces the original's greedy tokens on every golden model case, and its
cached decoding is uncached decoding (LongRoPE recompute included)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from goldens import load_model_case
from phi3v_spatial.errors import GenerationError, PromptError
from phi3v_spatial.generation import END_OF_TURN_ID, Generation, generate
from phi3v_spatial.model import Phi3VForCausalLM
from phi3v_spatial.model.phi3v import positions_from_mask
from phi3v_spatial.sampling import SamplingParams

GREEDY12 = SamplingParams(max_new_tokens=12, ignore_eos=True)
CASES = ["m_text_short", "m_text_cross", "m_text_long", "m_image_one", "m_image_two", "m_multi_turn",
         "m_batch2_text", "m_batch2_image"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return Phi3VForCausalLM.from_pretrained(tiny_checkpoint)


def gen_inputs(reference_dir, manifest, name):
    """The left-padded generation prompt of a case (gen_input_ids for batches) and its images."""
    case, z, inputs = load_model_case(reference_dir, manifest, name)
    ids = torch.from_numpy(z["gen_input_ids"]) if "gen_input_ids" in z else inputs["input_ids"]
    mask = torch.from_numpy(z["gen_attention_mask"]) if "gen_attention_mask" in z else inputs["attention_mask"]
    images = {k: inputs[k] for k in ("pixel_values", "image_sizes") if k in inputs}
    return case, z, ids, mask, images


@pytest.mark.parametrize("name", CASES)
def test_greedy_reproduces_goldens(model, reference_dir, manifest, name):
    case, z, ids, mask, images = gen_inputs(reference_dir, manifest, name)
    before = ids.clone()
    res = generate(model, ids, mask, params=GREEDY12, **images)
    got = np.array(res.tokens)
    if case["facts"]["gen"]["cache_equals_clean_nocache"]:
        np.testing.assert_array_equal(got, z["gen_cache_tokens"])
    else:  # m_text_cross: the original's cached run mixes RoPE regimes; ours equals its clean recompute
        assert name == "m_text_cross"
        np.testing.assert_array_equal(got, z["gen_nocache_clean_tokens"])
        assert not np.array_equal(got, z["gen_cache_tokens"])
    assert torch.equal(ids, before)  # inputs never mutated
    assert torch.equal(res.sequences[:, : ids.shape[1]], before)  # the prompt, unchanged, comes first
    np.testing.assert_array_equal(res.sequences[:, ids.shape[1] :].numpy(), got)
    assert res.finish_reasons == ["length"] * ids.shape[0]


def test_straddling_batch_rows_equal_their_solo_runs(model, reference_dir, manifest):
    """The original picks the long RoPE factors for the whole batch; we pick them per row, so the
    short row generates what it generates alone (and the long row matches the goldens)."""
    case, z, ids, mask, _ = gen_inputs(reference_dir, manifest, "m_batch2_text_straddle")
    res = generate(model, ids, mask, params=GREEDY12)
    lengths = mask.sum(1).tolist()
    short, long_ = int(np.argmin(lengths)), int(np.argmax(lengths))
    assert lengths[short] + 12 <= model.config.original_max_position_embeddings < lengths[long_]
    assert res.tokens[long_] == z["gen_cache_tokens"][long_].tolist()
    solo = generate(model, ids[short : short + 1, -lengths[short] :], params=GREEDY12)
    assert res.tokens[short] == solo.tokens[0]
    assert res.tokens[short] != z["gen_cache_tokens"][short].tolist()  # the original's batch-wide choice differs


def uncached_logits(model, ids, mask, images, new_tokens):
    """Last-position logits of a fresh forward over the prompt + new tokens (positions from the mask)."""
    ids = torch.cat([ids, torch.tensor(new_tokens, dtype=ids.dtype)], dim=1)
    mask = torch.cat([mask, torch.ones(mask.shape[0], len(new_tokens[0]), dtype=mask.dtype)], dim=1)
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), **images).logits[:, -1]


def assert_same_decode(model, ids, mask, got, want, steps=(0, 6, 11), images=None):
    """Two generations through different decode paths: the same tokens, step logits within 1e-4, and
    `got`'s equal to a fresh uncached forward (1e-4) at `steps`."""
    assert got.tokens == want.tokens
    for t in steps:
        assert (got.step_logits[t] - want.step_logits[t]).abs().max() <= 1e-4, f"step {t}"
        expected = uncached_logits(model, ids, mask, images or {}, [row[:t] for row in got.tokens])
        assert (got.step_logits[t] - expected).abs().max() <= 1e-4, f"step {t}"


@pytest.mark.parametrize("name", ["m_text_cross", "m_image_one", "m_batch2_text_straddle"])
def test_cached_logits_equal_uncached_forward(model, reference_dir, manifest, name):
    _, _, ids, mask, images = gen_inputs(reference_dir, manifest, name)
    res = generate(model, ids, mask, params=GREEDY12, return_step_logits=True, **images)
    steps = [0, 5, 6, 7, 8, 11] if name == "m_text_cross" else [0, 6, 11]  # m_text_cross crosses 64 at step 7
    for t in steps:
        expected = uncached_logits(model, ids, mask, images, [row[:t] for row in res.tokens])
        assert (res.step_logits[t] - expected).abs().max() <= 1e-4, f"step {t}"


def test_batch_with_images_equals_rows_alone(model, reference_dir, manifest):
    _, _, ids, mask, images = gen_inputs(reference_dir, manifest, "m_batch2_image")
    res = generate(model, ids, mask, params=GREEDY12, **images)
    for r in range(2):
        n = int(mask[r].sum())
        solo = generate(model, ids[r : r + 1, -n:], params=GREEDY12, pixel_values=images["pixel_values"][r : r + 1],
                        image_sizes=images["image_sizes"][r : r + 1])
        assert res.tokens[r] == solo.tokens[0]


def test_right_padding_is_repacked(model, reference_dir, manifest):
    _, z, inputs = load_model_case(reference_dir, manifest, "m_batch2_text")  # right-padded forward inputs
    res = generate(model, inputs["input_ids"], inputs["attention_mask"], params=GREEDY12)
    np.testing.assert_array_equal(np.array(res.tokens), z["gen_cache_tokens"])
    assert torch.equal(res.sequences[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


# ------------------------------------------------------------------------------ stopping
def test_end_token_stops_its_row_only(model, reference_dir, manifest):
    _, z, ids, mask, _ = gen_inputs(reference_dir, manifest, "m_batch2_text")
    golden = z["gen_cache_tokens"]
    stop = int(golden[0][4])  # row 0's fifth token ends row 0 there
    assert stop not in golden[1].tolist()
    res = generate(model, ids, mask, params=SamplingParams(max_new_tokens=12, stop_token_ids=(stop,)), pad_token_id=32000)
    assert res.tokens[0] == golden[0][:5].tolist() and res.finish_reasons[0] == "stop"
    assert res.tokens[1] == golden[1].tolist() and res.finish_reasons[1] == "length"
    L = ids.shape[1]
    assert res.sequences.shape == (2, L + 12)
    assert (res.sequences[0, L + 5 :] == 32000).all()


def test_default_stop_tokens_include_chat_end_markers(model):
    run = Generation(model, torch.tensor([[1, 2, 3]]))
    assert {END_OF_TURN_ID, 32000, 2} <= run.stop_ids
    assert not Generation(model, torch.tensor([[1, 2, 3]]), params=SamplingParams(ignore_eos=True)).stop_ids


def test_max_new_tokens_and_context_limit(model):
    res = generate(model, torch.tensor([[1, 450, 4799]]), params=SamplingParams(max_new_tokens=3, ignore_eos=True))
    assert [len(t) for t in res.tokens] == [3] and res.finish_reasons == ["length"]
    limit = model.config.max_position_embeddings
    with pytest.raises(PromptError, match="context"):
        Generation(model, torch.ones(1, limit, dtype=torch.long))
    near = Generation(model, torch.ones(1, limit - 2, dtype=torch.long), params=SamplingParams(max_new_tokens=50))
    assert near.max_new == 2


def test_stop_strings_cut_the_text(model, tokenizer):
    ids = torch.tensor([tokenizer.encode("<|user|>\nName three colors.<|end|>\n<|assistant|>\n")])
    full = generate(model, ids, params=SamplingParams(max_new_tokens=12, ignore_eos=True), tokenizer=tokenizer)
    text = full.texts[0]
    assert text == tokenizer.decode(full.tokens[0], skip_special_tokens=True)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = generate(model, ids, params=SamplingParams(max_new_tokens=12, ignore_eos=True, stop=(stop,)), tokenizer=tokenizer)
    assert cut.texts[0] == text[: text.index(stop)]
    assert cut.finish_reasons == ["stop"] and len(cut.tokens[0]) < 12
    assert cut.tokens[0] == full.tokens[0][: len(cut.tokens[0])]
    with pytest.raises(GenerationError, match="tokenizer"):
        Generation(model, ids, params=SamplingParams(stop=("x",)))


def test_streamed_steps_concatenate_to_the_text(model, tokenizer):
    ids = torch.tensor([tokenizer.encode("<|user|>\nWhere is the mug?<|end|>\n<|assistant|>\n")])
    params = SamplingParams(max_new_tokens=20, ignore_eos=True, stop=("zz", "the"))
    run = Generation(model, ids, params=params, tokenizer=tokenizer)
    pieces = [s.text[0] for s in run]
    assert "".join(pieces) == run.result.texts[0]


# ------------------------------------------------------------------------------ sampling
def test_same_seed_same_samples(model):
    ids = torch.tensor([[1, 450, 4799, 338], [1, 1724, 338, 263]])
    p = SamplingParams(max_new_tokens=10, temperature=1.0, top_k=50, top_p=0.95, seed=1234, ignore_eos=True)
    a, b = generate(model, ids, params=p), generate(model, ids, params=p)
    c = generate(model, ids, params=p.replace(seed=4321))
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens
    greedy = generate(model, ids, params=SamplingParams(max_new_tokens=10, ignore_eos=True))
    assert generate(model, ids, params=p.replace(top_k=1)).tokens == greedy.tokens


def test_repetition_penalty_avoids_prompt_tokens(model):
    ids = torch.tensor([[1, 450, 4799, 338]])
    base = generate(model, ids, params=SamplingParams(max_new_tokens=8, ignore_eos=True))
    pen = generate(model, ids, params=SamplingParams(max_new_tokens=8, ignore_eos=True, repetition_penalty=1e6))
    assert len(set(pen.tokens[0])) == 8 and not set(pen.tokens[0]) & {1, 450, 4799, 338}
    assert pen.tokens != base.tokens or len(set(base.tokens[0])) == 8


def test_logprobs_are_the_models(model):
    ids = torch.tensor([[1, 450, 4799, 338]])
    res = generate(model, ids, params=SamplingParams(max_new_tokens=4, ignore_eos=True, logprobs=True, top_logprobs=3),
                   return_step_logits=True)
    for t, tok in enumerate(res.tokens[0]):
        logp = torch.log_softmax(res.step_logits[t][0], -1)
        assert res.logprobs[0][t] == pytest.approx(float(logp[tok]), abs=1e-5)
        top = res.top_logprobs[0][t]
        assert list(top)[0] == tok and len(top) == 3  # greedy: the chosen token is the most likely


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    from phi3v_spatial.processing import Phi3VTokenizer

    return Phi3VTokenizer.from_pretrained(tiny_checkpoint)


def test_rows_cross_the_long_rope_boundary_independently(model, reference_dir, manifest):
    """A row crossing original_max_position_embeddings mid-generation, batched with one that does
    not: each row equals its solo run, and the crossing row equals the original's clean recompute."""
    _, cross, ids_c, _, _ = gen_inputs(reference_dir, manifest, "m_text_cross")
    _, short, ids_s, _, _ = gen_inputs(reference_dir, manifest, "m_text_short")
    L = ids_c.shape[1]
    ids = torch.full((2, L), 32000)
    mask = torch.zeros(2, L, dtype=torch.long)
    ids[0], mask[0] = ids_c[0], 1
    ids[1, L - ids_s.shape[1] :], mask[1, L - ids_s.shape[1] :] = ids_s[0], 1
    res = generate(model, ids, mask, params=GREEDY12, return_step_logits=True)
    assert res.tokens[0] == cross["gen_nocache_clean_tokens"][0].tolist()
    assert res.tokens[1] == short["gen_cache_tokens"][0].tolist()
    for t in (6, 7, 11):
        expected = uncached_logits(model, ids, mask, {}, [row[:t] for row in res.tokens])
        assert (res.step_logits[t] - expected).abs().max() <= 1e-4, f"step {t}"


def test_cpu_weight_layout_keeps_values_and_outputs(tiny_checkpoint, reference_dir, manifest):
    from phi3v_spatial.model.decode import cpu_weight_layout

    fresh = Phi3VForCausalLM.from_pretrained(tiny_checkpoint)
    _, _, inputs = load_model_case(reference_dir, manifest, "m_image_one")
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with torch.inference_mode():
        ref = fresh(**inputs).logits
        cpu_weight_layout(fresh)
        out = fresh(**inputs).logits
    after = fresh.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not fresh.model.layers[0].self_attn.qkv_proj.weight.is_contiguous()  # really re-laid out
    assert (out - ref).abs().max() <= 1e-5


def test_onednn_decode_matches_the_blas_fallback(monkeypatch):
    """The decode step's float32 CPU matmuls over weights of >= 1 MiB go to oneDNN when the build
    has it; without it (forced here) they are BLAS `F.linear` on column-major weights. Same
    tokens, logits within float32 rounding, and both equal the uncached forward."""
    from phi3v_spatial.model import decode
    from phi3v_spatial.random_init import random_config, random_model

    assert decode.onednn_linear_available()  # the PyPI CPU build of torch ships oneDNN
    config = random_config(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                           num_key_value_heads=2)  # GQA, 1.5 MiB qkv_proj weight
    ids = torch.randint(3, 30000, (2, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # a left-padded row
    fast = random_model(config, seed=0)
    assert decode.use_onednn(fast)
    a = generate(fast, ids, mask, params=GREEDY12, return_step_logits=True)
    # oneDNN reads the large weights row-major as they are; the small ones (BLAS's) go column-major
    linears = [m.weight for m in fast.modules() if type(m) is torch.nn.Linear]
    assert all(w.is_contiguous() == (w.numel() >= decode._ONEDNN_MIN_WEIGHT) for w in linears)
    assert any(w.is_contiguous() for w in linears) and not all(w.is_contiguous() for w in linears)
    with monkeypatch.context() as m:
        m.setattr(decode, "_SDPA_MIN_KEYS", 0)  # the fused attention with GQA and a padded row
        m.setattr(decode, "attend_usable", lambda *a: False)  # (rather than the compiled kernel)
        fused = generate(fast, ids, mask, params=GREEDY12, return_step_logits=True)
    assert fused.tokens == a.tokens
    assert max((x - y).abs().max() for x, y in zip(fused.step_logits, a.step_logits)) <= 1e-4

    monkeypatch.setattr(decode, "use_onednn", lambda model: False)
    blas = random_model(config, seed=0)
    b = generate(blas, ids, mask, params=GREEDY12, return_step_logits=True)
    assert not blas.model.layers[0].self_attn.qkv_proj.weight.is_contiguous()  # the fallback's layout
    assert_same_decode(fast, ids, mask, a, b)


def test_native_gemv_decode_matches_onednn(monkeypatch):
    """At batch 1 the large float32 CPU weights are multiplied by the compiled GEMV (model/native.py)
    where it builds: equal to F.linear to float32 rounding (row tails, blocks, strided rows), and a
    batch-1 generation through it gives oneDNN's tokens and logits (1e-4), both == uncached."""
    from phi3v_spatial.model import decode, native as gemv
    from phi3v_spatial.random_init import random_config, random_model

    if not gemv.native_available():
        pytest.skip(f"compiled kernels unavailable here: {gemv._STATE.get('error')}")
    g = torch.Generator().manual_seed(0)
    for n, k in ((1, 1), (3, 63), (129, 64), (257, 1000), (64, 3072)):
        w, x = torch.randn(n, k + 5, generator=g)[:, :k], torch.randn(1, 1, k, generator=g)  # rows 5 floats apart
        assert gemv.usable(w) and w.stride(0) == k + 5
        assert torch.allclose(gemv.native_gemv(x, w), torch.nn.functional.linear(x, w), rtol=1e-5, atol=1e-4)
    config = random_config(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                           num_key_value_heads=2)
    ids = torch.randint(3, 30000, (1, 40), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    model = random_model(config, seed=0)
    assert decode.use_onednn(model)
    monkeypatch.setattr(decode, "_native_layers", lambda *a: None)  # one kernel call per matmul (the fused layer: below)
    calls = []
    monkeypatch.setattr(decode, "native_gemv", lambda x, w: calls.append(1) or gemv.native_gemv(x, w))
    native = generate(model, ids, mask, params=GREEDY12, return_step_logits=True)
    assert len(calls) >= 12 * 5  # every large weight (qkv, gate_up, down, lm_head...) of every step
    monkeypatch.setattr(decode, "native_available", lambda: False)
    onednn = generate(model, ids, mask, params=GREEDY12, return_step_logits=True)
    assert_same_decode(model, ids, mask, native, onednn)


@pytest.mark.parametrize("window, rows", [(None, 1), (30, 1), (None, 3), (30, 8)])
def test_native_layer_decode_matches_the_per_op_path(monkeypatch, window, rows):
    """At batch 1-8, where the compiled kernels build, each decoder layer of a decode step is one call
    (model/native.py `NativeLayer`, kernels/layer.c): the same tokens as the step's torch ops around
    the same kernels, logits within 1e-4, and == the uncached forward; with GQA, left-padded rows
    and, when given, a sliding window shorter than the sequence (the attention then starts past slot 0)."""
    from phi3v_spatial.model import decode, native
    from phi3v_spatial.random_init import random_config, random_model

    if not native.native_available():
        pytest.skip(f"compiled kernels unavailable here: {native._STATE.get('error')}")
    config = random_config(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                           num_key_value_heads=2, sliding_window=window)
    ids = torch.randint(3, 30000, (rows, 40), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1:, : 5 + rows] = 0  # left padding on all rows but the first
    model = random_model(config, seed=0)
    calls = []
    real = decode.DecodeStep._native_step
    monkeypatch.setattr(decode.DecodeStep, "_native_step", lambda self, *a: calls.append(1) or real(self, *a))
    fused = generate(model, ids, mask, params=GREEDY12, return_step_logits=True)
    assert len(calls) == 11  # every decode step (the first token comes from the prefill)
    monkeypatch.setattr(decode, "native_norm_gemv", lambda *a, **kw: calls.append(2) or native.native_norm_gemv(*a, **kw))
    assert generate(model, ids, mask, params=GREEDY12).tokens == fused.tokens and calls.count(2) == 11  # lm_head too
    monkeypatch.setattr(decode, "_native_layers", lambda *a: None)
    per_op = generate(model, ids, mask, params=GREEDY12, return_step_logits=True)
    assert_same_decode(model, ids, mask, fused, per_op, steps=(1, 6, 11))


def test_native_layer_continues_a_padded_row_alone(monkeypatch):
    """When the other rows of a batch finish and are dropped, a left-padded row goes on alone through
    the compiled layer with its padding bias: the same tokens as the row generated by itself."""
    from phi3v_spatial.model import decode, native
    from phi3v_spatial.random_init import random_config, random_model

    if not native.native_available():
        pytest.skip(f"compiled kernels unavailable here: {native._STATE.get('error')}")
    config = random_config(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                           num_key_value_heads=2)
    model = random_model(config, seed=0)
    ids = torch.randint(3, 30000, (2, 40), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    alone = [generate(model, ids[r : r + 1, 7 * r :], params=GREEDY12).tokens[0] for r in range(2)]
    stop = alone[0][2]
    assert stop not in alone[1]
    biases = []
    real = decode.DecodeStep._native_step
    monkeypatch.setattr(decode.DecodeStep, "_native_step", lambda self, *a: (biases.append(a[-1] is not None), real(self, *a))[1])
    res = generate(model, ids, mask, params=SamplingParams(max_new_tokens=12, stop_token_ids=(stop,)))
    assert res.tokens == [alone[0][:3], alone[1]]
    assert biases and all(biases)  # row 1 alone, with its padding


def test_native_layer_stands_aside_for_swapped_in_modules():
    """A layer the compiled kernel cannot stand in for (here a hooked linear) keeps the per-op step."""
    from phi3v_spatial.model import decode, native
    from phi3v_spatial.random_init import random_config, random_model

    if not native.native_available():
        pytest.skip(f"compiled kernels unavailable here: {native._STATE.get('error')}")
    config = random_config(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                           num_key_value_heads=2)
    model = random_model(config, seed=0)
    assert decode.DecodeStep(model, 64).native is not None
    model.model.layers[1].mlp.down_proj.register_forward_hook(lambda *a: None)
    assert decode.DecodeStep(model, 64).native is None


def test_native_few_row_kernel_decode_matches_onednn(monkeypatch):
    """Batched decode steps of 2-8 rows multiply the large weights with the compiled few-row kernel
    (model/native.py; two weight rows at a time up to 3 rows, three from 4): equal to F.linear to
    float32 rounding (tails, odd blocks, strided rows, more than 8 rows), and batched generations of
    left-padded prompts through it give oneDNN's tokens and logits (1e-4), both == uncached."""
    from phi3v_spatial.model import decode, native
    from phi3v_spatial.random_init import random_config, random_model

    if not native.native_available():
        pytest.skip(f"compiled kernels unavailable here: {native._STATE.get('error')}")
    g = torch.Generator().manual_seed(0)
    for m, n, k in ((2, 1, 1), (3, 63, 17), (2, 129, 64), (5, 257, 1000), (8, 64, 3072), (11, 33, 40), (4, 2, 9),
                    (7, 131, 100), (16, 70, 33)):
        w, x = torch.randn(n, k + 5, generator=g)[:, :k], torch.randn(m, 1, k, generator=g)  # rows 5 floats apart
        torch.testing.assert_close(native.native_gemm_rows(x, w), torch.nn.functional.linear(x, w), rtol=1e-5, atol=1e-4)
    config = random_config(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                           num_key_value_heads=2)
    model = random_model(config, seed=0)
    assert decode.use_onednn(model)
    monkeypatch.setattr(decode, "_native_layers", lambda *a: None)  # the per-op step (the fused layer: the test above)
    for rows in (2, 3, 5, 8):
        ids = torch.randint(3, 30000, (rows, 40), generator=torch.Generator().manual_seed(rows))
        mask = torch.ones_like(ids)
        mask[1:, :7] = 0  # left padding on all rows but the first
        calls = []
        monkeypatch.setattr(decode, "native_gemm_rows", lambda x, w: calls.append(1) or native.native_gemm_rows(x, w))
        fast = generate(model, ids, mask, params=GREEDY12, return_step_logits=True)
        assert len(calls) >= 12 * 5  # every large weight of every step
        monkeypatch.setattr(decode, "native_available", lambda: False)
        onednn = generate(model, ids, mask, params=GREEDY12, return_step_logits=True)
        monkeypatch.undo()
        monkeypatch.setattr(decode, "_native_layers", lambda *a: None)
        assert_same_decode(model, ids, mask, fast, onednn)


def test_native_attention_kernel_matches_torch():
    """The compiled single-query attention (model/native.py, kernels/attend.c) == softmax(q k^T) v in
    torch: GQA groups, padding bias, strided cache slices, odd sizes, batch rows, the vector path (attend.h)."""
    from phi3v_spatial.model import native

    if not native.native_available():
        pytest.skip(f"compiled kernels unavailable here: {native._STATE.get('error')}")
    g = torch.Generator().manual_seed(0)
    for B, H, KVH, S, d in ((1, 32, 32, 775, 96), (3, 8, 2, 129, 64), (2, 6, 3, 1, 17), (1, 4, 1, 4100, 32), (2, 5, 5, 33, 128),
                            (1, 3, 3, 1, 16)):  # (one query per KV head, d a multiple of 16: the vector path)
        kc, vc = torch.randn(B, KVH, S + 9, d, generator=g), torch.randn(B, KVH, S + 9, d, generator=g)
        k, v = kc[:, :, 4 : S + 4], vc[:, :, 2 : S + 2]  # cache slices: rows S + 9 apart, not contiguous
        q = torch.randn(B, H + 2 * KVH, d, generator=g)[:, :H]  # the q heads of a fused qkv row
        bias = torch.zeros(B, 1, 1, S + 9)
        bias[-1, ..., : S // 2] = torch.finfo(torch.float32).min  # a left-padded row
        for bb in (None, bias[..., 3 : S + 3]):
            assert native.attend_usable(q, k, v, bb)
            got = native.native_attend_one(q, k, v, bb, d**-0.5)
            torch.testing.assert_close(got, native.attend_reference(q, k, v, bb, d**-0.5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["m_batch2_image", "m_text_cross"])
def test_fused_sdpa_decode_attention_equals_uncached_forward(model, reference_dir, manifest, monkeypatch, name):
    """From enough rows x cached keys the decode step attends with the fused SDPA kernel instead of
    two matmuls; forced on here for the small golden cases (padded image batch, RoPE crossing)."""
    from phi3v_spatial.model import decode

    _, z, ids, mask, images = gen_inputs(reference_dir, manifest, name)
    monkeypatch.setattr(decode, "attend_usable", lambda *a: False)  # torch's paths, not the compiled kernel
    matmuls = generate(model, ids, mask, params=GREEDY12, return_step_logits=True, **images)
    monkeypatch.setattr(decode, "_SDPA_MIN_KEYS", 0)
    fused = generate(model, ids, mask, params=GREEDY12, return_step_logits=True, **images)
    assert fused.tokens == matmuls.tokens
    for t in (0, 6, 11):
        expected = uncached_logits(model, ids, mask, images, [row[:t] for row in fused.tokens])
        assert (fused.step_logits[t] - expected).abs().max() <= 1e-4


def test_batched_cpu_decode_packed_weights(monkeypatch):
    """Batched float32 CPU decoding multiplies oneDNN-packed copies of the large weights: same
    tokens and logits (1e-4) as the plain weights, packed once and reused by the next generation,
    rebuilt when a weight changes, freed by `release_packed_weights`, off with the env switch."""
    from phi3v_spatial.model import decode
    from phi3v_spatial.random_init import random_config, random_model

    config = random_config(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                           num_key_value_heads=2)
    ids = torch.randint(3, 30000, (9, 24), generator=torch.Generator().manual_seed(1))  # 9 rows: 2-8 go to native.py
    mask = torch.ones_like(ids)
    mask[2, :5] = 0
    model = random_model(config, seed=0)
    qkv = model.model.layers[0].self_attn.qkv_proj.weight
    monkeypatch.setenv("PHI3V_CPU_PACKED_WEIGHTS", "0")
    plain = generate(model, ids, mask, params=GREEDY12, return_step_logits=True)
    assert id(qkv) not in decode._PACKED
    monkeypatch.setenv("PHI3V_CPU_PACKED_WEIGHTS", "1")
    packed = generate(model, ids, mask, params=GREEDY12, return_step_logits=True)
    assert id(qkv) in decode._PACKED
    first = decode._PACKED[id(qkv)][1]
    assert packed.tokens == plain.tokens
    assert max((x - y).abs().max() for x, y in zip(packed.step_logits, plain.step_logits)) <= 1e-4
    monkeypatch.delenv("PHI3V_CPU_PACKED_WEIGHTS")
    assert decode.packing_allowed(model)  # everything is packed already
    again = generate(model, ids, mask, params=GREEDY12)
    assert again.tokens == packed.tokens and decode._PACKED[id(qkv)][1] is first  # reused, not repacked
    with torch.no_grad():
        qkv.mul_(0.5)  # a changed weight is packed again
    changed = generate(model, ids, mask, params=GREEDY12, return_step_logits=True)
    assert decode._PACKED[id(qkv)][1] is not first
    monkeypatch.setenv("PHI3V_CPU_PACKED_WEIGHTS", "0")
    assert generate(model, ids, mask, params=GREEDY12).tokens == changed.tokens
    assert decode.release_packed_weights(model) > 0 and id(qkv) not in decode._PACKED
