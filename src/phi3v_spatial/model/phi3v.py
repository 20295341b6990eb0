"""Phi-3-Vision: the image embedding and the Phi-3 decoder composed, with a Hugging Face-shaped
surface (`from_pretrained`, `save_pretrained`, `forward(...) -> .logits/.loss`, `generate`).

`Phi3VForCausalLM().state_dict()` has exactly the checkpoint's key names.

Where the original is wrong, this model is right (see docs/differences.md):
- inputs are never mutated (the original clamps the caller's `input_ids` in place);
- image N is placed where `<|image_N|>` stands: the processor writes tag N as the id -N, and the
  block of id -N in row b receives row b's N-th image (the original fills blocks in order of
  appearance);
- the RoPE regime (short/long factors) is chosen per row (the original picks one for the batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..config import Phi3VConfig
from ..errors import PromptError
from .attention import build_attention_mask, check_attn_implementation, is_plain_causal
from .cache import KVCache
from .language import Phi3DecoderLayer, Phi3RMSNorm
from .projector import Phi3ImageEmbedding
from .rope import rope_cos_sin, rope_inv_freq, rope_is_long


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    past_key_values: KVCache | None = None

    def __getitem__(self, key):  # HF outputs are indexable by name too
        return getattr(self, key)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) 0/1 mask -> position ids counting only real tokens (left padding works); pads get 1."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def image_slots(input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Find the image placeholder blocks (ids < 0; tag N written as -N).

    Returns rows, cols (positions of every slot), tag (N for each slot) and offset (index of each
    slot inside its block).
    """
    neg = input_ids < 0
    rows, cols = neg.nonzero(as_tuple=True)
    tag = -input_ids[rows, cols]
    # a block starts where the previous position is not the same tag
    prev = torch.full_like(input_ids, 0)
    prev[:, 1:] = input_ids[:, :-1]
    starts = neg & (prev != input_ids)
    start_col = torch.where(starts, torch.arange(input_ids.shape[1], device=input_ids.device), -1)
    start_col = start_col.cummax(dim=1).values  # the start of the block each position belongs to
    offset = cols - start_col[rows, cols]
    return rows, cols, tag, offset


class Phi3VModel(nn.Module):
    def __init__(self, config: Phi3VConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.vision_embed_tokens = Phi3ImageEmbedding(config)
        self.layers = nn.ModuleList(Phi3DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = Phi3RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn_implementation = "sdpa"
        self.gradient_checkpointing = False
        self._inv_freq: dict = {}

    # ------------------------------------------------------------------ embeddings
    def encode_images(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> list[torch.Tensor]:
        """Per image, its projected embeddings (num_image_tokens, hidden). Reusable across turns."""
        return self.vision_embed_tokens(pixel_values, image_sizes)

    def embed(self, input_ids, pixel_values=None, image_sizes=None, image_features=None) -> torch.Tensor:
        """Token embeddings with image features written into the image slots. Does not modify input_ids."""
        if bool((input_ids >= self.config.vocab_size).any()):
            bad = int(input_ids.max())
            raise PromptError(f"token id {bad} is outside the vocabulary (size {self.config.vocab_size})")
        x = self.embed_tokens(input_ids.clamp(min=0))
        if not bool((input_ids < 0).any()):
            if image_features or (pixel_values is not None and pixel_values.numel()):
                raise PromptError("images were given but the prompt has no <|image_N|> tag")
            return x
        rows, cols, tag, offset = image_slots(input_ids)
        # images of row b are rows b's tags 1..K_b, stored row-major in pixel_values / image_features
        per_row = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        per_row.scatter_reduce_(0, rows, tag, reduce="amax")
        row_start = per_row.cumsum(0) - per_row
        n_images = int(per_row.sum())
        if image_features is None:
            if pixel_values is None or image_sizes is None:
                raise PromptError("the prompt has image slots but no pixel_values/image_sizes were given")
            if pixel_values.shape[0] != n_images:
                raise PromptError(f"the prompts reference {n_images} images but pixel_values holds {pixel_values.shape[0]}")
            image_features = self.encode_images(pixel_values, image_sizes)
        elif len(image_features) != n_images:
            raise PromptError(f"the prompts reference {n_images} images but {len(image_features)} image features were given")
        image_index = row_start[rows] + tag - 1
        lengths = torch.tensor([f.shape[0] for f in image_features], device=input_ids.device)
        if bool((offset >= lengths[image_index]).any()):
            i = int(image_index[offset >= lengths[image_index]][0])
            raise PromptError(f"an <|image_N|> block is longer than image {i}'s {int(lengths[i])} tokens")
        # every block must be exactly its image's length: its last slot's offset + 1
        block_end = torch.ones_like(cols, dtype=torch.bool)
        block_end[:-1] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1] + 1) | (tag[1:] != tag[:-1])
        short = block_end & (offset + 1 != lengths[image_index])
        if bool(short.any()):
            i = int(image_index[short][0])
            raise PromptError(f"an <|image_N|> block has {int(offset[short][0]) + 1} slots but image {i} has {int(lengths[i])} tokens")
        feats = torch.cat(image_features).to(x.dtype)
        starts = lengths.cumsum(0) - lengths
        x = x.index_put((rows, cols), feats[starts[image_index] + offset])
        return x

    # ------------------------------------------------------------------ rope
    def rope(self, position_ids, rope_long, dtype):
        dev = position_ids.device
        if dev not in self._inv_freq:
            self._inv_freq[dev] = (rope_inv_freq(self.config, False, dev), rope_inv_freq(self.config, True, dev))
        short, long_ = self._inv_freq[dev]
        return rope_cos_sin(short, long_, rope_long, position_ids, self.config.rope_attention_factor, dtype)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        pixel_values=None,
        image_sizes=None,
        image_features=None,
        inputs_embeds=None,
        cache: KVCache | None = None,
        cache_start: int = 0,
        rope_long: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ):
        """Returns (final hidden states after norm, tuple of hidden states or None).

        With a cache, the T new tokens are written at slots cache_start..cache_start+T and
        attention_mask covers all slots 0..cache_start+T.
        """
        x = inputs_embeds if inputs_embeds is not None else self.embed(input_ids, pixel_values, image_sizes, image_features)
        B, T, _ = x.shape
        kv_len = cache_start + T
        if position_ids is None:
            if attention_mask is not None:
                position_ids = positions_from_mask(attention_mask)[:, cache_start:kv_len]
            else:
                position_ids = torch.arange(cache_start, kv_len, device=x.device).expand(B, T)
        if rope_long is None:
            valid = position_ids if attention_mask is None else position_ids.masked_fill(attention_mask[:, cache_start:kv_len] == 0, 0)
            rope_long = rope_is_long(self.config, valid.max(dim=1).values + 1)
        cos, sin = self.rope(position_ids, rope_long, x.dtype)

        window = self.config.sliding_window
        if is_plain_causal(attention_mask, T, kv_len, window):
            mask, causal = None, True
        else:
            mask = build_attention_mask(attention_mask, T, kv_len, window, x.dtype, x.device)
            causal = mask is None
        impl = self.attn_implementation
        hidden = [x] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, mask, causal, impl, cache, i, cache_start, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, causal, impl, cache, i, cache_start)
            if output_hidden_states and i < len(self.layers) - 1:
                hidden.append(x)
        x = self.norm(x)
        if output_hidden_states:
            hidden.append(x)
        if cache is not None:
            cache.length = kv_len
        return x, (tuple(hidden) if output_hidden_states else None)


class Phi3VForCausalLM(nn.Module):
    def __init__(self, config: Phi3VConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.model = Phi3VModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.set_attn_implementation(attn_implementation)

    # ------------------------------------------------------------------ runtime options
    def set_attn_implementation(self, name: str) -> None:
        self.model.attn_implementation = check_attn_implementation(name)

    @property
    def attn_implementation(self) -> str:
        return self.model.attn_implementation

    def gradient_checkpointing_enable(self, **_) -> None:
        self.model.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.model.gradient_checkpointing = False

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def get_input_embeddings(self):
        return self.model.embed_tokens

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        pixel_values=None,
        image_sizes=None,
        labels=None,
        image_features=None,
        inputs_embeds=None,
        cache: KVCache | None = None,
        cache_start: int = 0,
        rope_long=None,
        output_hidden_states: bool = False,
        last_logits_only: bool = False,
        return_dict: bool = True,
        **unused,
    ) -> CausalLMOutput:
        unused.pop("use_cache", None), unused.pop("past_key_values", None), unused.pop("num_logits_to_keep", None)
        if unused:
            raise TypeError(f"unexpected arguments: {sorted(unused)}")
        h, hidden = self.model(
            input_ids, attention_mask, position_ids, pixel_values, image_sizes, image_features, inputs_embeds,
            cache, cache_start, rope_long, output_hidden_states,
        )
        if last_logits_only:
            h = h[:, -1:]
        logits = self.lm_head(h).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100
            )
        return CausalLMOutput(logits=logits, loss=loss, hidden_states=hidden, past_key_values=cache)

    # ------------------------------------------------------------------ generation
    def generate(self, input_ids=None, attention_mask=None, pixel_values=None, image_sizes=None, **kwargs):
        """Hugging Face-style generate: (B, L + new) ids, the prompt first (unchanged). Keywords
        (max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, streamer, ...) are those
        of `phi3v_spatial.generation.hf_generate`, where the engine is."""
        from ..generation import hf_generate

        return hf_generate(self, input_ids, attention_mask, pixel_values, image_sizes, **kwargs)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | Path,
        torch_dtype=None,
        device_map=None,
        attn_implementation: str = "sdpa",
        revision: str | None = None,
        progress: bool = False,
        **ignored,
    ) -> "Phi3VForCausalLM":
        """Load a Hugging Face Phi-3-V folder (or hub id). `trust_remote_code` and other HF
        keywords are accepted and ignored; no remote code is ever run."""
        from ..weights import load_pretrained

        return load_pretrained(
            path_or_id, dtype=torch_dtype, device=device_map, attn_implementation=attn_implementation,
            revision=revision, progress=progress,
        )

    def save_pretrained(self, out_dir: str | Path, max_shard_size: int | str = "5GB", state_dict=None, **ignored) -> None:
        from ..weights import save_pretrained

        save_pretrained(self, out_dir, max_shard_size=max_shard_size, state_dict=state_dict)
