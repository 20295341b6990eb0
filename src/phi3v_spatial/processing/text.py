"""Phi-3-V tokenizer: the checkpoint's tokenizer.json through the `tokenizers` library, its special
tokens from tokenizer_config.json / special_tokens_map.json, its chat template rendered with jinja2,
and an exact incremental detokenizer for streaming.

It behaves as the original's LlamaTokenizerFast: every encode prepends one `<s>` (never an end
token); the normalizer prepends "▁" to each stretch of text between special tokens; `<|assistant|>`
and the placeholders eat whitespace to their right; decoding turns "▁" into spaces, fuses
byte-fallback pieces into UTF-8 and strips one leading space.
"""
from __future__ import annotations

import datetime
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer
from tokenizers.processors import TemplateProcessing

from ..errors import CheckpointError, PromptError

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")  # what the ByteFallback decoder fuses into UTF-8
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_content(value: Any) -> str | None:
    """A special token entry of the config files: a string or an AddedToken-like dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def clean_up_tokenization(text: str) -> str:
    """The classic post-processing of decoded text that glues punctuation and English contractions
    back ("a ." -> "a.", "do n't" -> "don't"); applied only when clean_up_tokenization_spaces is on."""
    for before, after in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
        (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):  # fmt: skip
        text = text.replace(before, after)
    return text


def _as_id_list(ids: Any) -> list[int]:
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    elif isinstance(ids, np.ndarray):
        ids = ids.tolist()
    elif isinstance(ids, (int, np.integer)):
        ids = [ids]
    return [int(i) for i in ids]


@lru_cache(maxsize=8)
def _compile_template(source: str):
    """The chat template compiled as Hugging Face does it: sandboxed, trim_blocks, lstrip_blocks."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise PromptError(f"chat template: {message}")

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


class Phi3VTokenizer:
    """The Phi-3-V tokenizer. Use `from_pretrained(checkpoint_folder)`."""

    def __init__(self, backend: Tokenizer, config: dict | None = None, special_tokens_map: dict | None = None):
        config = dict(config or {})
        for key, value in (special_tokens_map or {}).items():  # the map wins, as in transformers
            config[key] = value
        self._backend = backend
        self.config = config
        self.bos_token = _token_content(config.get("bos_token"))
        self.eos_token = _token_content(config.get("eos_token"))
        self.unk_token = _token_content(config.get("unk_token"))
        self.pad_token = _token_content(config.get("pad_token"))
        self.additional_special_tokens = [_token_content(t) for t in config.get("additional_special_tokens", [])]
        self.padding_side = config.get("padding_side", "right")
        self.model_max_length = config.get("model_max_length")
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.add_bos_token = bool(config.get("add_bos_token", True))
        self.add_eos_token = bool(config.get("add_eos_token", False))
        self.chat_template = config.get("chat_template")
        for key in _SPECIAL_KEYS:
            token = getattr(self, key)
            if token is not None and backend.token_to_id(token) is None:
                raise CheckpointError(f"tokenizer config: {key} {token!r} is not in tokenizer.json")
        self._set_post_processor()
        added = backend.get_added_tokens_decoder()
        #: ids that decode(skip_special_tokens=True) drops: added tokens flagged special in tokenizer.json
        self.special_ids = frozenset(i for i, tok in added.items() if tok.special)
        vocab = backend.get_vocab(with_added_tokens=True)
        #: ids of byte-fallback pieces (<0x00> .. <0xFF>), decoded together into UTF-8
        self.byte_ids = frozenset(i for tok, i in vocab.items() if _BYTE_TOKEN.match(tok))

    def _set_post_processor(self) -> None:
        """Prepend bos / append eos per add_bos_token / add_eos_token, as LlamaTokenizerFast does."""
        bos, eos = self.bos_token, self.eos_token
        if self.add_bos_token and bos is None or self.add_eos_token and eos is None:
            raise CheckpointError("tokenizer config asks for a bos/eos token it does not define")
        single = (f"{bos}:0 " if self.add_bos_token else "") + "$A:0" + (f" {eos}:0" if self.add_eos_token else "")
        pair = single + (f" {bos}:1" if self.add_bos_token else "") + " $B:1" + (f" {eos}:1" if self.add_eos_token else "")
        specials = [(t, self._backend.token_to_id(t)) for t, on in ((bos, self.add_bos_token), (eos, self.add_eos_token)) if on]
        self._backend.post_processor = TemplateProcessing(single=single, pair=pair, special_tokens=specials)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "Phi3VTokenizer":
        """From a folder with tokenizer.json (required), tokenizer_config.json, special_tokens_map.json."""
        folder = Path(path)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise CheckpointError(f"{file} not found: the tokenizer is read from the checkpoint's tokenizer.json")
        backend = Tokenizer.from_file(str(file))
        config, special = {}, {}
        if (folder / "tokenizer_config.json").is_file():
            config = json.loads((folder / "tokenizer_config.json").read_text())
        if (folder / "special_tokens_map.json").is_file():
            special = json.loads((folder / "special_tokens_map.json").read_text())
        return cls(backend, config, special)

    # -- vocabulary -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=False)

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def unk_token_id(self) -> int | None:
        return self._id(self.unk_token)

    @property
    def all_special_tokens(self) -> list[str]:
        tokens = [getattr(self, k) for k in _SPECIAL_KEYS] + self.additional_special_tokens
        return list(dict.fromkeys(t for t in tokens if t is not None))

    @property
    def all_special_ids(self) -> list[int]:
        return [self._backend.token_to_id(t) for t in self.all_special_tokens]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | None | list[int | None]:
        """Token string(s) -> id(s); unknown tokens map to the unk id."""
        if isinstance(tokens, str):
            found = self._backend.token_to_id(tokens)
            return self.unk_token_id if found is None else found
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | None | list[str | None]:
        if isinstance(ids, (int, np.integer)):
            return self._backend.id_to_token(int(ids))
        return [self._backend.id_to_token(i) for i in _as_id_list(ids)]

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Text -> ids; with add_special_tokens one `<s>` is prepended."""
        if not isinstance(text, str):
            raise PromptError(f"text must be a str (got {type(text).__name__})")
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        for t in texts:
            if not isinstance(t, str):
                raise PromptError(f"text must be a str (got {type(t).__name__})")
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return self._backend.encode(text, add_special_tokens=add_special_tokens).tokens

    def __call__(
        self,
        text: str | Sequence[str],
        add_special_tokens: bool = True,
        padding: bool | str = False,
        max_length: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
    ):
        """Tokenize one text or a batch -> BatchFeature(input_ids, attention_mask), padded with the
        pad token on `padding_side` (default: the config's, "right")."""
        from .processor import BatchFeature, pad_rows  # processor.py imports this module

        rows = self.encode_batch([text] if isinstance(text, str) else list(text), add_special_tokens)
        ids, mask = pad_rows(rows, self.pad_token_id, padding, max_length, padding_side or self.padding_side, return_tensors)
        if isinstance(text, str) and return_tensors is None:
            ids, mask = ids[0], mask[0]
        return BatchFeature(input_ids=ids, attention_mask=mask)

    # -- decoding -------------------------------------------------------------------------------
    def decode(
        self, ids: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ) -> str:
        """Ids -> text. Negative ids (image placeholders) and ids outside the vocabulary are dropped."""
        ids = [i for i in _as_id_list(ids) if i >= 0]
        text = self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces:
            text = clean_up_tokenization(text)
        return text

    def batch_decode(self, sequences: Iterable[Any], **kwargs) -> list[str]:
        if isinstance(sequences, (torch.Tensor, np.ndarray)) and sequences.ndim == 1:
            sequences = [sequences]
        return [self.decode(seq, **kwargs) for seq in sequences]

    # -- chat template --------------------------------------------------------------------------
    def apply_chat_template(
        self,
        conversation: Sequence[dict] | Sequence[Sequence[dict]],
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        chat_template: str | None = None,
        return_tensors: str | None = None,
        **template_kwargs,
    ):
        """Render messages with the checkpoint's jinja2 chat template (as transformers does).

        tokenize=False returns the prompt string (pass it to the processor, which adds `<s>`);
        tokenize=True returns its ids WITHOUT `<s>`, as transformers does. A list of conversations
        gives a list of results.
        """
        source = chat_template or self.chat_template
        if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t["name"]: t["template"] for t in source}
            source = named.get("default")
        if not source:
            raise PromptError("this tokenizer has no chat_template (tokenizer_config.json); pass chat_template=")
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        template = _compile_template(source)
        specials = {k: getattr(self, k) for k in _SPECIAL_KEYS}
        rendered = []
        for conv in conversations:
            _check_messages(conv)
            rendered.append(
                template.render(
                    messages=list(conv),
                    add_generation_prompt=add_generation_prompt,
                    additional_special_tokens=self.additional_special_tokens,
                    **specials,
                    **template_kwargs,
                )
            )
        if not tokenize:
            return rendered if batched else rendered[0]
        out = self(rendered if batched else rendered[0], add_special_tokens=False, padding=batched, return_tensors=return_tensors)
        return out["input_ids"]


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise PromptError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise PromptError(f"message {i} must be a dict with 'role' and 'content' (got {m!r:.80})")
        if not isinstance(m["content"], str):
            raise PromptError(
                f"message {i}: content must be a string (got {type(m['content']).__name__}); "
                "put images in the text as <|image_1|>, <|image_2|>, ... and pass them to the processor"
            )


class IncrementalDetokenizer:
    """Streaming decode: `push(id)` returns the new text (maybe ""), `flush()` the rest at the end.

    The concatenation of everything returned equals `tokenizer.decode(all ids, skip_special_tokens)`
    exactly. The decoder (▁ -> space, byte fallback, fuse, strip one leading space) is local except
    for two things, handled here: a run of byte pieces is decoded as a whole (one invalid byte turns
    the whole run into U+FFFD), so a run is held back until a non-byte token ends it (no broken
    UTF-8 is ever emitted); and only the very first piece loses its leading space, so later pieces
    are decoded after an anchor token that keeps their spaces.
    """

    def __init__(self, tokenizer: Phi3VTokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._pending: list[int] = []  # byte pieces of a run not yet ended
        self._started = False  # whether the first piece (the one that loses its leading space) is out
        self._backend = tokenizer._backend
        self._vocab_size = len(tokenizer)
        self._anchor, self._anchor_text = self._find_anchor()

    def _find_anchor(self) -> tuple[int, str]:
        for text in ("a", "x", "0"):
            i = self._backend.token_to_id(text)
            if i is not None and self._backend.decode([i]) == text:
                return i, text
        raise CheckpointError("tokenizer has no plain one-letter token to anchor streaming decode on")

    def push(self, token_id: int) -> str:
        tid = int(token_id)
        self.ids.append(tid)
        if tid < 0 or tid >= self._vocab_size:  # image placeholders and padding rows: decode drops them
            return ""
        if self.skip_special_tokens and tid in self.tokenizer.special_ids:
            return ""
        if tid in self.tokenizer.byte_ids:
            self._pending.append(tid)
            return ""
        group, self._pending = self._pending + [tid], []
        return self._decode(group)

    def flush(self) -> str:
        group, self._pending = self._pending, []
        return self._decode(group) if group else ""

    def _decode(self, group: list[int]) -> str:
        if not self._started:
            self._started = True
            return self._backend.decode(group, skip_special_tokens=False)
        text = self._backend.decode([self._anchor, *group], skip_special_tokens=False)
        return text[len(self._anchor_text) :]
