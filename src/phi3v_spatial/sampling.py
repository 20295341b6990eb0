"""Choosing the next token: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeds, logprobs.

Everything here works on a (B, V) float32 logits tensor and stays on its device (no host syncs):
the decode loop calls `next_tokens` once per step.

Order of the logits processors (Hugging Face's order): repetition penalty on the raw logits, then
temperature, then top-k, top-p and min-p filters, then a draw from the softmax. Greedy (temperature
0 or `do_sample=False`) takes the argmax after the repetition penalty; ties go to the lowest id, as
`torch.argmax` and the original's greedy search.

Logprobs are those of the model itself: `log_softmax` of the raw logits, before any processor, so
they do not depend on the sampling settings.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .errors import GenerationError


@dataclass(frozen=True)
class SamplingParams:
    """What to generate and how to pick each token. `temperature` 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    min_p: float = 0.0  # 0.0: off
    repetition_penalty: float = 1.0  # 1.0: off
    seed: int | None = None  # None: torch's global generator
    stop: tuple[str, ...] = ()  # stop strings: generation ends when the text contains one (cut there)
    stop_token_ids: tuple[int, ...] | None = None  # None: the model's end tokens (generation_config + chat markers)
    ignore_eos: bool = False  # never stop on a token: always max_new_tokens (benchmarks, parity tests)
    logprobs: bool = False  # return the chosen token's log-probability at every step
    top_logprobs: int = 0  # also the k most likely tokens and their log-probabilities

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop or ()))
        if self.stop_token_ids is not None:
            ids = (self.stop_token_ids,) if isinstance(self.stop_token_ids, int) else self.stop_token_ids
            object.__setattr__(self, "stop_token_ids", tuple(int(i) for i in ids))
        checks = [
            (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "max_new_tokens must be an integer >= 1"),
            (self.temperature >= 0, "temperature must be >= 0 (0 means greedy)"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an integer >= 0 (0 turns it off)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1] (1 turns it off)"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1) (0 turns it off)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0 (1 turns it off)"),
            (isinstance(self.top_logprobs, int) and self.top_logprobs >= 0, "top_logprobs must be an integer >= 0"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise GenerationError(f"{message}; got {self._describe()}")

    def _describe(self) -> str:
        return (f"max_new_tokens={self.max_new_tokens!r}, temperature={self.temperature!r}, top_k={self.top_k!r}, "
                f"top_p={self.top_p!r}, min_p={self.min_p!r}, repetition_penalty={self.repetition_penalty!r}, "
                f"stop={self.stop!r}, top_logprobs={self.top_logprobs!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes) -> "SamplingParams":
        return replace(self, **changes)


SAMPLING_FIELDS = tuple(SamplingParams.__dataclass_fields__)


def make_params(defaults: SamplingParams | None = None, do_sample: bool | None = None, **kwargs) -> SamplingParams:
    """SamplingParams from keyword arguments over `defaults`; unknown names are a GenerationError.

    `do_sample=False` forces greedy whatever the temperature (Hugging Face semantics);
    `do_sample=True` without a temperature samples at temperature 1.
    """
    unknown = sorted(set(kwargs) - set(SAMPLING_FIELDS))
    if unknown:
        raise GenerationError(f"unknown generation arguments {unknown}; known: {', '.join(SAMPLING_FIELDS)}, do_sample")
    given = {k: v for k, v in kwargs.items() if v is not None or k in ("seed", "stop_token_ids")}
    params = replace(defaults or SamplingParams(), **given)
    if do_sample is False and params.temperature != 0:
        params = replace(params, temperature=0.0)
    elif do_sample is True and params.temperature == 0:
        params = replace(params, temperature=1.0 if "temperature" not in given else params.temperature)
    return params


def make_generator(seed: int | None, device) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


# ---------------------------------------------------------------------------------- processors
def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on every token already in the row (prompt or generated): positive logits
    are divided by `penalty`, negative ones multiplied. seen: (B, V) bool."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (ties at the k-th value are kept too)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches p (at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = (cum - sorted_logits.softmax(-1)) >= p  # mass before this token already reaches p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def filter_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's."""
    if min_p <= 0:
        return logits
    probs = logits.softmax(-1)
    threshold = probs.max(-1, keepdim=True).values * min_p
    return logits.masked_fill(probs < threshold, float("-inf"))


def sample_from(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) processed-but-unfiltered logits -> (B,) sampled ids."""
    logits = logits / params.temperature
    logits = filter_top_k(logits, params.top_k)
    logits = filter_top_p(logits, params.top_p)
    logits = filter_min_p(logits, params.min_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def next_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, V) raw logits -> (B,) next ids."""
    if params.repetition_penalty != 1.0 and seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return logits.argmax(-1)
    return sample_from(logits, params, generator)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, top: int = 0):
    """The model's log-probabilities: (B,) of `tokens`, and with top > 0 also (B, top) values and ids."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(-1, tokens[:, None]).squeeze(-1)
    if top:
        values, ids = logp.topk(top, dim=-1)
        return chosen, values, ids
    return chosen, None, None


def seen_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, vocab_size: int) -> torch.Tensor:
    """(B, V) bool: the text tokens of each prompt row (image slots and padding excluded)."""
    valid = input_ids >= 0
    if attention_mask is not None:
        valid = valid & attention_mask.bool()
    seen = torch.zeros(input_ids.shape[0], vocab_size + 1, dtype=torch.bool, device=input_ids.device)
    ids = torch.where(valid, input_ids.clamp(0, vocab_size - 1), vocab_size)  # invalid -> a spare column
    seen.scatter_(1, ids, True)
    return seen[:, :vocab_size].contiguous()
