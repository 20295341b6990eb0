"""Label masking, token by token, against an independent derivation from chat-template prefixes;
bad samples are skipped with a reason."""
from __future__ import annotations

import pytest
import torch

from train_helpers import square_image

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    from phi3v_spatial.processing import Phi3VProcessor

    return Phi3VProcessor.from_pretrained(tiny_checkpoint, num_crops=1)


MULTI_TURN = [
    {"role": "system", "content": "You are a robot."},
    {"role": "user", "content": "<|image_1|>\nIs the red cube left of the blue ball?"},
    {"role": "assistant", "content": "Yes, it is."},
    {"role": "user", "content": "How far apart are they?"},
    {"role": "assistant", "content": "About 0.3 m."},
    {"role": "user", "content": "And <|image_2|> this one?"},
    {"role": "assistant", "content": "No."},
]


def expected_labels(processor, messages, images):
    """Independent derivation: the assistant turn k's targets are the ids between the tokenization
    of the conversation up to the turn's generation prompt and up to the end of the turn
    (dropping the template's newline after <|end|>), in the full conversation's ids."""
    tok = processor.tokenizer
    end_id = tok.convert_tokens_to_ids("<|end|>")
    full = processor(tok.apply_chat_template(messages, tokenize=False), images=images)["input_ids"][0].tolist()
    labels = [-100] * len(full)
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        n_img = sum(f"<|image_{i}|>" in "".join(x["content"] for x in messages[:k]) for i in range(1, len(images) + 1))
        before = tok.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
        upto = tok.apply_chat_template(messages[:k + 1], tokenize=False)
        a = processor(before, images=images[:n_img] or None)["input_ids"][0].tolist()
        b = processor(upto, images=images[:n_img] or None)["input_ids"][0].tolist()
        assert full[:len(a)] == a and full[:len(b)] == b  # both are prefixes of the full conversation
        stop = max(i for i in range(len(b)) if b[i] == end_id) + 1  # through this turn's <|end|>
        for i in range(len(a), stop):
            labels[i] = full[i]
    return full, labels


def test_labels_token_by_token_multi_turn(processor):
    from phi3v_spatial.train.collator import Collator

    images = [square_image(6), square_image(40, (0, 0, 255))]
    batch = Collator(processor)([{"messages": MULTI_TURN, "images": images}])
    full, labels = expected_labels(processor, MULTI_TURN, images)
    assert batch["input_ids"][0].tolist() == full
    assert batch["labels"][0].tolist() == labels
    tok = processor.tokenizer
    targets = [t for t in labels if t != -100]
    # every assistant turn, each with its <|end|>, and nothing else
    assert tok.decode(targets) == "Yes, it is.<|end|> About 0.3 m.<|end|> No.<|end|>"
    assert targets.count(tok.convert_tokens_to_ids("<|end|>")) == 3
    ids = batch["input_ids"][0]
    assert (batch["labels"][0][ids < 0] == -100).all()  # never an image slot
    assert batch["pixel_values"].shape[0] == 2


def test_padding_is_never_a_target(processor):
    from phi3v_spatial.train.collator import Collator

    short = {"messages": [{"role": "user", "content": "<|image_1|>\nHi?"}, {"role": "assistant", "content": "Yes."}],
             "images": [square_image(6)]}
    batch = Collator(processor)([short, {"messages": MULTI_TURN, "images": [square_image(6), square_image(9)]}])
    pad = batch["attention_mask"] == 0
    assert pad.any()
    assert (batch["labels"][pad] == -100).all()
    assert (batch["input_ids"][pad] == processor.tokenizer.pad_token_id).all()
    # row 0's labels are the same as when collated alone
    alone = Collator(processor)([short])["labels"][0]
    assert torch.equal(batch["labels"][0, : alone.shape[0]], alone)


def test_bad_samples_are_skipped_with_reasons(processor, tmp_path):
    from phi3v_spatial.train.collator import Collator

    good = {"messages": [{"role": "user", "content": "<|image_1|>\nQ?"}, {"role": "assistant", "content": "A."}],
            "images": [square_image(6)]}
    missing = {**good, "images": [str(tmp_path / "nope.png")]}
    mismatch = {**good, "images": []}
    no_answer = {"messages": [{"role": "user", "content": "hello"}], "images": []}
    c = Collator(processor, max_length=400)
    long_ = {"messages": [{"role": "user", "content": "<|image_1|>\n" + "word " * 200}, {"role": "assistant", "content": "A."}],
             "images": [square_image(6)]}
    batch = c([good, missing, mismatch, no_answer, long_])
    assert batch["input_ids"].shape[0] == 1
    assert sum(c.skipped.values()) == 4
    assert c.skipped["too long"] == 1 and c.skipped["tag/image mismatch"] == 1
    assert c([missing]) is None


def test_mixture_is_deterministic_and_resumable():
    from phi3v_spatial.train.data import MixedStream, Source

    a = Source("a", samples=[{"i": ("a", k)} for k in range(5)])
    b = Source("b", stream=lambda: iter([{"i": ("b", k)} for k in range(3)]))
    s = MixedStream([a, b], [0.7, 0.3], seed=1)
    full = [next(s)["i"] for _ in range(40)]
    resumed = MixedStream([a, b], [0.7, 0.3], seed=1, start=17)
    assert [next(resumed)["i"] for _ in range(23)] == full[17:]
    share_a = sum(x[0] == "a" for x in full) / len(full)
    assert 0.5 < share_a < 0.9
    # map-style source: each epoch visits every sample once
    first_a = [x for x in full if x[0] == "a"][:5]
    assert sorted(first_a) == [("a", k) for k in range(5)]


def test_engine_folder_refuses_eval_seeds(tmp_path):
    import json

    from phi3v_spatial.errors import DataError
    from phi3v_spatial.train.data import load_engine_folder

    (tmp_path / "data").mkdir()
    row = {"id": "s1000000005-relation_yesno-0", "images": ["images/s1000000005.png"], "task": "relation_yesno",
           "messages": [{"role": "user", "content": "<|image_1|>\nQ?"}, {"role": "assistant", "content": "Yes."}],
           "scene": "scenes/s1000000005.json"}
    (tmp_path / "data" / "shard-0.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="held-out"):
        load_engine_folder(tmp_path)
    row = {**row, "id": "s0000000005-relation_yesno-0", "scene": "scenes/s0000000005.json"}
    (tmp_path / "data" / "shard-0.jsonl").write_text(json.dumps(row) + "\n")
    src = load_engine_folder(tmp_path)
    assert src.samples[0]["images"] == [str(tmp_path / "images/s1000000005.png")]
