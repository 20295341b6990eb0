"""Hugging Face-style streamers for `model.generate(..., streamer=...)`.

`generate` calls `streamer.put(prompt_ids)` once before the prefill, `streamer.put(new_ids)` after
every step and `streamer.end()` at the end, exactly as transformers does, so code written for
transformers' `TextStreamer` / `TextIteratorStreamer` works unchanged. Text comes from the
processor's `IncrementalDetokenizer`: the concatenation of everything a streamer emits equals
`tokenizer.decode(new_ids, skip_special_tokens=True)`, and no half UTF-8 character is ever emitted.
Like transformers' streamers, these handle one sequence (batch size 1).
"""
from __future__ import annotations

import queue
import sys
from typing import Iterator

import torch

from .errors import GenerationError


class BaseStreamer:
    """The interface `generate` calls."""

    def put(self, value) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


def _ids(value) -> list[int]:
    """A (1, L) / (L,) / (1,) tensor, a list or an int -> flat ids; batches are an error."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 1 and value.shape[0] > 1:
            raise GenerationError("streamers handle one sequence at a time (batch size 1)")
        return value.reshape(-1).tolist()
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


class TextStreamer(BaseStreamer):
    """Prints text to stdout as it is generated. With `skip_prompt`, the prompt is not printed."""

    def __init__(self, tokenizer, skip_prompt: bool = False, skip_special_tokens: bool = True, **decode_kwargs):
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.skip_special_tokens = skip_special_tokens
        self._prompt_seen = False
        self._detok = self._new_detokenizer()

    def _new_detokenizer(self):
        from .processing.text import IncrementalDetokenizer

        return IncrementalDetokenizer(self.tokenizer, skip_special_tokens=self.skip_special_tokens)

    def put(self, value) -> None:
        ids = _ids(value)
        if not self._prompt_seen:
            self._prompt_seen = True
            if self.skip_prompt:
                return
            text = "".join(self._detok.push(i) for i in ids) + self._detok.flush()
            self._detok = self._new_detokenizer()  # new tokens start a fresh text, as decode(new_ids)
            if text:
                self.on_finalized_text(text)
            return
        text = "".join(self._detok.push(i) for i in ids)
        if text:
            self.on_finalized_text(text)

    def end(self) -> None:
        self.on_finalized_text(self._detok.flush(), stream_end=True)
        self._detok = self._new_detokenizer()
        self._prompt_seen = False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        print(text, flush=True, end="" if not stream_end else "\n")


class TextIteratorStreamer(TextStreamer):
    """Collects the text in a queue for another thread to iterate over (run `generate` in a thread,
    iterate the streamer in the caller). `timeout` (seconds) bounds each wait for the next piece."""

    def __init__(self, tokenizer, skip_prompt: bool = False, timeout: float | None = None, skip_special_tokens: bool = True, **decode_kwargs):
        super().__init__(tokenizer, skip_prompt=skip_prompt, skip_special_tokens=skip_special_tokens)
        self.text_queue: queue.Queue = queue.Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            raise StopIteration
        return value


class CallbackStreamer(TextStreamer):
    """Calls `callback(text)` with every new piece of text (e.g. to write to a file or a socket)."""

    def __init__(self, tokenizer, callback, skip_prompt: bool = True, skip_special_tokens: bool = True):
        super().__init__(tokenizer, skip_prompt=skip_prompt, skip_special_tokens=skip_special_tokens)
        self.callback = callback

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.callback(text)


def print_stream(pieces, file=None) -> str:
    """Write text pieces to `file` (stdout) as they come; return the whole text."""
    out = file or sys.stdout
    parts = []
    for piece in pieces:
        out.write(piece)
        out.flush()
        parts.append(piece)
    return "".join(parts)
