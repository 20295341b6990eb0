"""The Python API: chat / stream / chat_batch on the tiny checkpoint, from messages and image files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import phi3v_spatial
from goldens import model_case
from phi3v_spatial.api import render_messages
from phi3v_spatial.errors import GenerationError, ImageError, PromptError

GREEDY12 = dict(max_new_tokens=12, ignore_eos=True)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vlm(tiny_checkpoint):
    return phi3v_spatial.load(str(tiny_checkpoint), device="cpu", dtype="float32")


@pytest.fixture
def vision_calls(vlm):
    calls = []
    handle = vlm.model.model.vision_embed_tokens.register_forward_hook(lambda mod, args, out: calls.append(len(out)))
    vlm.clear_image_cache()
    yield calls
    handle.remove()


def case_conversation(reference_dir, manifest, name, row=None):
    inputs = model_case(manifest, name)["inputs"]
    messages, images = inputs["messages"], inputs["images"]
    if row is not None:
        messages, images = messages[row], images[row]
    return messages, [str(reference_dir / "images" / f) for f in images]


@pytest.mark.parametrize("name", ["m_text_short", "m_image_one", "m_image_two", "m_multi_turn"])
def test_chat_reproduces_goldens_from_messages(vlm, reference_dir, manifest, name):
    messages, images = case_conversation(reference_dir, manifest, name)
    golden = np.load(reference_dir / "model" / f"{name}.npz")
    r = vlm.chat(messages, images, **GREEDY12)
    assert r.token_ids == golden["gen_cache_tokens"][0].tolist()
    assert r.prompt_tokens == golden["input_ids"].shape[1]
    assert r.completion_tokens == 12 and r.finish_reason == "length"
    assert r.text == vlm.tokenizer.decode(r.token_ids, skip_special_tokens=True)
    assert r.timings["total_seconds"] >= r.timings["prefill_seconds"] > 0


def test_chat_batch_reproduces_batched_goldens(vlm, reference_dir, manifest):
    convs, images = zip(*(case_conversation(reference_dir, manifest, "m_batch2_image", r) for r in range(2)))
    golden = np.load(reference_dir / "model" / "m_batch2_image.npz")
    results = vlm.chat_batch(list(convs), list(images), **GREEDY12)
    assert [r.token_ids for r in results] == golden["gen_cache_tokens"].tolist()


def test_batch_of_conversations_equals_each_alone(vlm, reference_dir):
    img = lambda n: str(reference_dir / "images" / n)  # noqa: E731
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": img("img_640x480.png")}, {"type": "text", "text": "What is this?"}]}],
        [{"role": "system", "content": "You are a robot."}, {"role": "user", "content": "Name three colors."}],
        [{"role": "user", "content": [{"type": "image", "image": img("img_1000x200.png")},
                                      {"type": "image", "image": img("img_336x336.png")},
                                      {"type": "text", "text": "Compare the two images, which is wider?"}]}],
    ]
    batch = vlm.chat_batch(conversations, max_new_tokens=10, ignore_eos=True)
    alone = [vlm.chat(c, max_new_tokens=10, ignore_eos=True) for c in conversations]
    assert len({r.prompt_tokens for r in batch}) == 3  # really different lengths
    for b, a in zip(batch, alone):
        assert b.token_ids == a.token_ids and b.text == a.text and b.prompt_tokens == a.prompt_tokens
    # batches of 2 (three conversations in two chunks) give the same answers
    assert [r.token_ids for r in vlm.chat_batch(conversations, batch_size=2, max_new_tokens=10, ignore_eos=True)] == [
        r.token_ids for r in alone]


def test_stream_equals_chat(vlm, reference_dir, manifest):
    messages, images = case_conversation(reference_dir, manifest, "m_image_one")
    for opts in (dict(max_new_tokens=16, ignore_eos=True), dict(max_new_tokens=16, ignore_eos=True, stop=["am"])):
        r = vlm.chat(messages, images, **opts)
        stream = vlm.stream(messages, images, **opts)
        pieces = []
        for piece in stream:
            assert not torch.is_inference_mode_enabled()  # the engine holds no mode across a yield
            pieces.append(piece)
        assert len(pieces) > 1
        assert "".join(pieces) == r.text == stream.result.text
        assert stream.result.token_ids == r.token_ids


def test_vision_tower_runs_once_across_a_three_turn_chat(vlm, reference_dir, vision_calls):
    chat = vlm.start_chat(max_new_tokens=6)
    chat.attach(str(reference_dir / "images" / "img_640x480.png"))
    answers = [chat.ask(q) for q in ("What is shown?", "Where is the red part?", "Anything else?")]
    assert vision_calls == [1]  # one image, encoded on the first turn only
    assert answers[2].prompt_tokens > answers[1].prompt_tokens > answers[0].prompt_tokens > 757
    assert [m["role"] for m in chat.messages] == ["user", "assistant"] * 3
    # the same image in a different conversation (a PIL copy, so content-hashed) is not re-encoded either
    from PIL import Image

    pil = Image.open(reference_dir / "images" / "img_640x480.png").copy()
    vlm.chat([{"role": "user", "content": [{"type": "image", "image": pil}, {"type": "text", "text": "Hi"}]}], max_new_tokens=2)
    assert vision_calls == [1]
    chat.reset()
    assert chat.messages == [] and chat.pending == []


def test_parts_and_tags_render_the_same_prompt(vlm, reference_dir):
    path = str(reference_dir / "images" / "img_336x336.png")
    tagged, imgs = render_messages([{"role": "user", "content": "<|image_1|>\nWhat?"}], [path])
    parts, imgs2 = render_messages([{"role": "user", "content": [{"type": "image", "image": path}, {"type": "text", "text": "What?"}]}])
    bare, imgs3 = render_messages([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}], [path])
    assert tagged == parts == bare and imgs == imgs2 == imgs3 == [path]


def test_bad_requests_are_clear_errors(vlm, reference_dir):
    with pytest.raises(PromptError, match="role"):
        vlm.chat([{"role": "robot", "content": "hi"}])
    with pytest.raises(PromptError):
        vlm.chat([{"role": "user", "content": "<|image_1|> what?"}])  # a tag without an image
    with pytest.raises(ImageError, match="not found"):
        vlm.chat([{"role": "user", "content": [{"type": "image", "image": "/no/such.png"}, {"type": "text", "text": "?"}]}])
    with pytest.raises(GenerationError, match="unknown generation arguments"):
        vlm.chat([{"role": "user", "content": "hi"}], max_tokens=3)
    with pytest.raises(GenerationError, match="temperature"):
        vlm.chat([{"role": "user", "content": "hi"}], temperature=-1)
    with pytest.raises(PromptError, match="context"):
        vlm.chat([{"role": "user", "content": "word " * 5000}])


def test_sampling_and_logprobs_through_the_api(vlm):
    msgs = [{"role": "user", "content": "Tell me a story."}]
    a = vlm.chat(msgs, temperature=0.9, top_p=0.9, seed=7, max_new_tokens=8, ignore_eos=True, logprobs=True)
    b = vlm.chat(msgs, temperature=0.9, top_p=0.9, seed=7, max_new_tokens=8, ignore_eos=True, logprobs=True)
    assert a.token_ids == b.token_ids and a.logprobs == b.logprobs and len(a.logprobs) == 8
    assert all(lp <= 0 for lp in a.logprobs)


def test_evaluation_harness_contract(tiny_checkpoint, reference_dir):
    """What the evaluation runner calls: load(path, device, dtype).chat_batch(..., temperature=0.0)."""
    model = phi3v_spatial.load(str(tiny_checkpoint), device="cpu", dtype="float32")
    convs = [[{"role": "user", "content": [{"type": "image", "image": reference_dir / "images" / "img_336x336.png"},
                                           {"type": "text", "text": "Is the cube left of the ball?"}]}]] * 2
    results = model.chat_batch(convs, max_new_tokens=4, temperature=0.0)
    assert len(results) == 2 and all(isinstance(r.text, str) for r in results)
    assert results[0].token_ids == results[1].token_ids


def test_hf_generate_with_streamer(vlm, reference_dir, manifest):
    """The model card's flow: processor -> model.generate(**inputs, ...) with a streamer."""
    from phi3v_spatial.streaming import TextIteratorStreamer

    messages, images = case_conversation(reference_dir, manifest, "m_image_one")
    prompt = vlm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = vlm.processor(prompt, images)
    before = inputs["input_ids"].clone()
    streamer = TextIteratorStreamer(vlm.tokenizer, skip_prompt=True)
    out = vlm.model.generate(**inputs, max_new_tokens=12, do_sample=False, ignore_eos=True, streamer=streamer)
    golden = np.load(reference_dir / "model" / "m_image_one.npz")["gen_cache_tokens"]
    assert torch.equal(inputs["input_ids"], before) and torch.equal(out[:, : before.shape[1]], before)
    assert out[0, before.shape[1] :].tolist() == golden[0].tolist()
    assert "".join(streamer) == vlm.tokenizer.decode(golden[0].tolist(), skip_special_tokens=True)


def test_load_defaults_to_the_embedded_model():
    vlm = phi3v_spatial.load(device="cpu")
    r = vlm.chat([{"role": "user", "content": "Is the cup left of the plate?"}], max_new_tokens=8)
    assert isinstance(r.text, str) and 1 <= r.completion_tokens <= 8 and r.finish_reason in ("stop", "length")
