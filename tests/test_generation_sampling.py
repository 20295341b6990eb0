"""Logits processors, sampling parameters, stop-string hold-back and the HF-style streamers."""
from __future__ import annotations


import pytest
import torch

from phi3v_spatial.errors import GenerationError
from phi3v_spatial.generation import _RowText
from phi3v_spatial.sampling import (
    SamplingParams, apply_repetition_penalty, filter_min_p, filter_top_k, filter_top_p, make_params, next_tokens,
    seen_tokens,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_top_k_top_p_min_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert torch.isinf(filter_top_k(logits, 2)[0, 2:]).all() and torch.isfinite(filter_top_k(logits, 2)[0, :2]).all()
    kept = torch.isfinite(filter_top_p(logits, 0.8)[0]).tolist()
    assert kept == [True, True, True, False, False]  # 0.5 + 0.2 < 0.8 <= 0.5 + 0.2 + 0.15
    assert torch.isfinite(filter_top_p(logits, 0.01)[0]).tolist() == [True, False, False, False, False]
    assert torch.isfinite(filter_min_p(logits, 0.3)[0]).tolist() == [True, True, True, False, False]  # >= 0.15
    assert torch.equal(filter_top_k(logits, 0), logits) and torch.equal(filter_top_p(logits, 1.0), logits)


def test_repetition_penalty_and_seen_tokens():
    ids = torch.tensor([[-1, -1, 5, 3, 32000], [0, 0, 2, 2, 4]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])
    seen = seen_tokens(ids, mask, vocab_size=8)
    assert seen[0].nonzero().flatten().tolist() == [3, 5]  # image slots and padding ignored
    assert seen[1].nonzero().flatten().tolist() == [0, 2, 4]
    logits = torch.tensor([[1.0, -1.0, 2.0, 4.0, 0.0, -2.0, 0.0, 0.0]] * 2)
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out[0, 3] == 2.0 and out[0, 5] == -4.0 and out[0, 2] == 2.0


def test_greedy_and_sampling_choices():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 5.0]])
    assert next_tokens(logits, SamplingParams()).tolist() == [1, 0]  # ties: lowest id
    g = torch.Generator().manual_seed(0)
    p = SamplingParams(temperature=1.0, top_k=1)
    assert next_tokens(logits, p, g).tolist()[0] == 1  # top_k=1 is greedy (ties at the k-th value are kept)
    draws = torch.stack([next_tokens(logits, SamplingParams(temperature=100.0), g) for _ in range(200)])
    assert len(set(draws[:, 0].tolist())) == 3  # a hot temperature spreads the draws


def test_params_validation_and_hf_semantics():
    with pytest.raises(GenerationError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(GenerationError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(GenerationError, match="unknown generation arguments"):
        make_params(None, max_tokens=5)
    assert make_params(None, temperature=0.7, do_sample=False).greedy
    assert make_params(None, do_sample=True).temperature == 1.0
    assert make_params(None, stop="END").stop == ("END",)
    assert make_params(SamplingParams(max_new_tokens=9), temperature=None).max_new_tokens == 9


class FakeDetok:
    """IncrementalDetokenizer stand-in: token i is the i-th character of a fixed text."""

    def __init__(self, text):
        self.text = text

    def push(self, i):
        return self.text[i]

    def flush(self):
        return ""


def row_text(text, stops):
    rt = object.__new__(_RowText)
    rt.detok, rt.stops, rt.text, rt.emitted, rt.stopped = FakeDetok(text), tuple(stops), "", 0, False
    return rt


def test_stop_strings_hold_back_only_what_could_start_one():
    rt = row_text("abcSTxSTOPyz", ["STOP"])
    pieces = [rt.push(i) for i in range(len(rt.detok.text))]
    assert pieces[:3] == ["a", "b", "c"]  # nothing held back: no stop string starts here
    assert pieces[3:5] == ["", ""]  # "S", "ST" could begin STOP
    assert pieces[5] == "STx"  # released when it cannot
    assert "".join(pieces) + rt.finish() == "abcSTx" and rt.stopped
    rt = row_text("hello wor", ["world"])
    assert "".join(rt.push(i) for i in range(9)) == "hello " and rt.finish() == "wor" and not rt.stopped


def test_text_streamers(tiny_checkpoint, capsys):
    from phi3v_spatial.processing import Phi3VTokenizer
    from phi3v_spatial.streaming import CallbackStreamer, TextIteratorStreamer, TextStreamer

    tok = Phi3VTokenizer.from_pretrained(tiny_checkpoint)
    prompt = torch.tensor([tok.encode("<|user|>\nHi<|end|>\n<|assistant|>\n")])
    new = tok.encode("Ünïcödé spaces  and\nlines 🙂", add_special_tokens=False) + [32007]
    expected = tok.decode(new, skip_special_tokens=True)

    it = TextIteratorStreamer(tok, skip_prompt=True)
    got = []
    cb = CallbackStreamer(tok, got.append)
    printer = TextStreamer(tok, skip_prompt=True)
    for s in (it, cb, printer):
        s.put(prompt)
        for t in new:
            s.put(torch.tensor([t]))
        s.end()
    assert "".join(it) == expected == "".join(got)
    assert capsys.readouterr().out == expected + "\n"
    with pytest.raises(GenerationError, match="batch size 1"):
        TextStreamer(tok).put(torch.ones(2, 3, dtype=torch.long))
