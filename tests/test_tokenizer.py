"""Tokenizer, chat template and streaming detokenizer on the real Phi-3-V tokenizer files."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from phi3v_spatial.errors import PromptError
from phi3v_spatial.processing import IncrementalDetokenizer, Phi3VTokenizer

REAL_VOCAB = 32045  # tokenizer.json: 32000 pieces + added tokens up to <|placeholder...|> 32044


@pytest.fixture(scope="module")
def tok(meta_dir) -> Phi3VTokenizer:
    return Phi3VTokenizer.from_pretrained(meta_dir)


def test_special_tokens_come_from_the_config(tok):
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 32000, 32000, 0)
    assert (tok.eos_token, tok.pad_token, tok.padding_side) == ("<|endoftext|>", "<|endoftext|>", "right")
    assert len(tok) == REAL_VOCAB and tok.vocab_size == 32000
    assert tok.convert_tokens_to_ids(["<|user|>", "<|assistant|>", "<|end|>", "<|system|>"]) == [32010, 32001, 32007, 32006]
    assert tok.convert_tokens_to_ids("no-such-token") == tok.unk_token_id
    assert tok.convert_ids_to_tokens([1, 13]) == ["<s>", "<0x0A>"]


def test_encode_like_the_original(tok):
    # one <s> per call, "▁" before text, <|assistant|> eats the whitespace to its right
    assert tok.encode("<|user|>\nhi<|end|>\n<|assistant|>\n  Hello") == [1, 32010, 29871, 13, 2918, 32007, 29871, 13, 32001, 15043]
    assert tok.encode("") == [1] and tok.encode(" x") == [1, 29871, 921]
    assert tok.encode("hi", add_special_tokens=False) == [7251]  # "▁hi"
    assert tok.tokenize("Hello world") == ["▁Hello", "▁world"]


def test_text_only_goldens(tok, manifest, reference_dir):
    for case in manifest["processor_cases"]:
        if case["inputs"]["images"]:
            continue
        gold = np.load(reference_dir / case["outputs"]["file"])
        out = tok(case["inputs"]["prompt"], return_tensors="pt")
        assert out["input_ids"].tolist() == gold["input_ids"].tolist(), case["name"]
        assert out["attention_mask"].tolist() == gold["attention_mask"].tolist()


def test_chat_template_renders_every_golden_prompt(tok, manifest):
    n = 0
    for case in manifest["processor_cases"] + manifest["model_cases"]:
        messages, prompts = case["inputs"].get("messages"), case["inputs"].get("prompts") or [case["inputs"]["prompt"]]
        if not messages:
            continue
        convs = messages if isinstance(messages[0], list) else [messages]
        for conv, prompt in zip(convs, prompts):
            assert tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == prompt, case["name"]
            n += 1
    assert n >= 20


def test_chat_template_options(tok):
    msgs = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == "<|user|>\nHi<|end|>\n"
    answered = msgs + [{"role": "assistant", "content": "Hello"}]
    assert tok.apply_chat_template(answered, tokenize=False, add_generation_prompt=True).endswith("Hello<|end|>\n")
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True)  # tokenize=True: no <s>, as transformers
    assert ids == tok.encode("<|user|>\nHi<|end|>\n<|assistant|>\n", add_special_tokens=False)
    assert tok.apply_chat_template([msgs, msgs], tokenize=False) == ["<|user|>\nHi<|end|>\n"] * 2
    custom = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}{% endfor %}"
    assert tok.apply_chat_template(msgs, tokenize=False, chat_template=custom) == "[user]Hi<|endoftext|>"
    with pytest.raises(PromptError):
        tok.apply_chat_template([{"role": "user"}], tokenize=False)
    with pytest.raises(PromptError, match="content must be a string"):
        tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}], tokenize=False)
    with pytest.raises(PromptError, match="oops"):
        tok.apply_chat_template(msgs, tokenize=False, chat_template="{{ raise_exception('oops') }}")


def test_decode(tok):
    ids = tok.encode("<|user|>\nWhere is the cup?<|end|>\n<|assistant|>\nLeft .")
    assert tok.decode(ids) == "<s><|user|> \nWhere is the cup?<|end|> \n<|assistant|> Left ."
    assert tok.decode(ids, skip_special_tokens=True) == "\nWhere is the cup? \n Left ."  # one leading space stripped
    assert tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True).endswith(" Left.")
    assert tok.decode([2, 32000], skip_special_tokens=True) == "</s>"  # </s> is not flagged special
    assert tok.decode([-1, -1, 15043, -2]) == "Hello"  # image placeholders are dropped
    batch = torch.tensor([[15043, 3186], [32000, 15043]])
    assert tok.batch_decode(batch, skip_special_tokens=True) == ["Hello world", "Hello"]
    assert tok.batch_decode(np.array([15043])) == ["Hello"]


def test_padding(tok):
    out = tok(["short", "a much longer prompt here"], padding=True, return_tensors="pt")
    assert out["input_ids"].tolist() == [[1, 3273, 32000, 32000, 32000, 32000], [1, 263, 1568, 5520, 9508, 1244]]
    assert out.attention_mask.tolist() == [[1, 1, 0, 0, 0, 0], [1] * 6]
    left = tok(["short", "a much longer prompt here"], padding=True, padding_side="left", return_tensors="np")
    assert left["input_ids"][0].tolist() == [32000] * 4 + [1, 3273]
    with pytest.raises(PromptError, match="padding"):
        tok(["short", "a much longer prompt here"], return_tensors="pt")


# -- streaming ----------------------------------------------------------------------------------


def stream(tok: Phi3VTokenizer, ids, skip: bool) -> list[str]:
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip)
    return [detok.push(i) for i in ids] + [detok.flush()]


@pytest.fixture(scope="module")
def piece_pools(tok):
    vocab = tok.get_vocab()
    space = sorted(i for t, i in vocab.items() if t.startswith("▁"))
    return {"space": space, "bytes": sorted(tok.byte_ids), "special": sorted(tok.special_ids | {2})}


def _ids_strategy(pools):
    return st.lists(
        st.one_of(
            st.integers(0, REAL_VOCAB - 1),
            st.sampled_from(pools["bytes"]),
            st.sampled_from(pools["bytes"][0xC0:]),  # lead bytes of multi-byte UTF-8 (<0xC0>..<0xFF>)
            st.sampled_from(pools["bytes"][0x80:0xC0]),  # continuation bytes
            st.sampled_from(pools["space"]),
            st.sampled_from(pools["special"]),
            st.integers(-4, -1),  # image placeholders
            st.integers(REAL_VOCAB, 32063),  # ids the model can emit beyond the tokenizer
        ),
        max_size=48,
    )


def test_streaming_concatenates_to_decode_property(tok, piece_pools):
    @settings(max_examples=400, deadline=None, derandomize=True)
    @given(ids=_ids_strategy(piece_pools), skip=st.booleans())
    def check(ids, skip):
        assert "".join(stream(tok, ids, skip)) == tok.decode(ids, skip_special_tokens=skip)

    check()


def test_streaming_long_random_sequences(tok, piece_pools):
    rng = random.Random(0)
    utf8 = [tok.encode(s, add_special_tokens=False) for s in ("€", "😀", "中文", "ü", "\u2581x")]
    for _ in range(60):
        ids = []
        while len(ids) < 300:
            r = rng.random()
            if r < 0.4:
                ids.append(rng.randrange(REAL_VOCAB))
            elif r < 0.6:
                ids.extend(rng.choice(utf8))
            elif r < 0.8:
                ids.append(rng.choice(piece_pools["bytes"]))
            elif r < 0.9:
                ids.append(rng.choice(piece_pools["space"]))
            else:
                ids.append(rng.choice(piece_pools["special"]))
        for skip in (True, False):
            assert "".join(stream(tok, ids, skip)) == tok.decode(ids, skip_special_tokens=skip)


def test_streaming_never_emits_broken_utf8_and_keeps_spaces(tok):
    text = "Look 😀 at the 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 mug, ü and 中文 ok."
    ids = tok.encode(text, add_special_tokens=False)
    assert len(tok.byte_ids & set(ids)) > 3  # byte-fallback pieces are exercised
    chunks = stream(tok, ids, skip=True)
    assert not any("\ufffd" in c for c in chunks)
    assert "".join(chunks) == tok.decode(ids) == text
    euro = tok.convert_tokens_to_ids(["<0xE2>", "<0x82>", "<0xAC>"])  # "€" as byte-fallback pieces
    detok = IncrementalDetokenizer(tok)
    assert [detok.push(i) for i in [15043, *euro]] == ["Hello", "", "", ""]  # a byte run waits for its end
    assert detok.push(tok.convert_tokens_to_ids("▁ok")) == "€ ok"


def test_streaming_after_skipped_special_keeps_the_space(tok):
    ids = [tok.convert_tokens_to_ids("▁Hi"), 32007, tok.convert_tokens_to_ids("▁there")]
    assert "".join(stream(tok, ids, skip=True)) == tok.decode(ids, skip_special_tokens=True) == "Hi there"
