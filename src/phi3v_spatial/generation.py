"""The generation engine: prefill, decode loop, per-row stopping, LongRoPE recompute.

One call (`Generation`, or `generate()` which runs it to the end):

1. Prefill. Rows are left-padded (right-padded input is repacked; the prompt handed back is the one
   given). Every image goes through the vision tower once (or its cached features are passed in as
   `image_features`); the prompts run through the model in one forward that fills a preallocated
   KV cache of `prompt + max_new_tokens` slots and returns only the last position's logits.
2. Decode. One token per row per step through `model.decode.DecodeStep` (no checks, no mask
   building, RoPE from tables; float32 matmuls of large weights through oneDNN on CPU, packed for
   several rows when memory allows: see that module). The first
   generation on CPU stores the float32 Linear weights that BLAS multiplies (all of them on a build
   without oneDNN, else the small ones) column-major in place (`model.decode.prepare_cpu_decode`):
   same values, faster BLAS. Each row's position is its own count of real tokens, so a padded
   row computes what it computes alone.
3. Stopping, per row: an end token (`stop_token_ids`: the checkpoint's eos, `<|end|>` 32007 and
   `<|endoftext|>` 32000 by default), a stop string (the text is cut before it; needs a tokenizer),
   or `max_new_tokens` (also capped by the context length). A finished row stops counting; once a
   quarter of the batch has finished, finished rows are dropped from the cache so they cost nothing.

LongRoPE ("su"/"longrope") policy. A sequence of length n uses the short factors while n <=
`original_max_position_embeddings` and the long factors beyond, as in the original: that is what a
fresh uncached forward over the sequence computes. The original's cached generation switches the
factors for the new token only, leaving the cached keys rotated with the short ones (its cached and
uncached runs then disagree). Here, when a row's length crosses the boundary during decoding, that
row's whole cache is recomputed under the long factors (one forward over its prompt and the tokens
generated so far, image features reused), and the step's logits come from that forward. So every
generated token is the one an uncached forward over the sequence so far would pick. Rows decide
independently; the recompute happens at most once per row and touches only that row's cache.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from .errors import GenerationError, PromptError
from .model.cache import KVCache
from .model.decode import DecodeStep, prepare_cpu_decode
from .sampling import SamplingParams, make_generator, next_tokens, seen_tokens, token_logprobs

END_OF_TEXT_ID = 32000  # <|endoftext|> in the Phi-3 vocabulary
END_OF_TURN_ID = 32007  # <|end|>


# ------------------------------------------------------------------------------------ defaults
def generation_config(model) -> dict:
    """The checkpoint's generation_config.json (empty when there is none), read once per model."""
    cached = getattr(model, "_generation_config", None)
    if cached is None:
        cached = {}
        folder = getattr(model, "name_or_path", None)
        if folder and (Path(folder) / "generation_config.json").is_file():
            cached = json.loads((Path(folder) / "generation_config.json").read_text())
        model._generation_config = cached
    return cached


def default_stop_ids(model) -> tuple[int, ...]:
    """The checkpoint's eos ids plus the chat end markers <|end|> and <|endoftext|>."""
    eos = generation_config(model).get("eos_token_id", model.config.raw.get("eos_token_id"))
    ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    ids += [END_OF_TURN_ID, END_OF_TEXT_ID]
    return tuple(sorted({i for i in ids if 0 <= i < model.config.vocab_size}))


def default_pad_id(model) -> int:
    pad = generation_config(model).get("pad_token_id", model.config.raw.get("pad_token_id"))
    return int(pad) if pad is not None else 0


def default_params(model) -> SamplingParams:
    """SamplingParams from generation_config.json: sampling settings apply when it says do_sample."""
    gc = generation_config(model)
    kwargs = {}
    if gc.get("max_new_tokens"):
        kwargs["max_new_tokens"] = int(gc["max_new_tokens"])
    if gc.get("do_sample"):
        kwargs["temperature"] = float(gc.get("temperature", 1.0))
        kwargs["top_k"] = int(gc.get("top_k", 0) or 0)
        kwargs["top_p"] = float(gc.get("top_p", 1.0) or 1.0)
    if gc.get("repetition_penalty"):
        kwargs["repetition_penalty"] = float(gc["repetition_penalty"])
    return SamplingParams(**kwargs)


# ------------------------------------------------------------------------------------ results
@dataclass
class Timings:
    prefill_seconds: float = 0.0  # call -> first new token (vision tower, prompt forward, first pick)
    decode_seconds: float = 0.0  # first -> last new token
    total_seconds: float = 0.0
    vision_seconds: float = 0.0  # part of prefill
    decode_steps: int = 0  # steps after the first token

    @property
    def decode_tokens_per_second(self) -> float:
        """Steps per second after the first token (per row: a batch makes B tokens per step)."""
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["decode_tokens_per_second"] = self.decode_tokens_per_second
        return d


@dataclass
class Step:
    """One decode step as it happens. Rows are the caller's rows."""

    tokens: list[int | None]  # the new token of every row, None where the row had already finished
    text: list[str] | None  # the new text of every row (with a tokenizer; "" while held back)
    finished: list[int]  # rows that finished at this step


@dataclass
class GenerationResult:
    sequences: torch.Tensor  # (B, L + T): the prompt as given, then the new tokens, pad after a row ends
    tokens: list[list[int]]  # new tokens per row (an end token that stopped the row included)
    finish_reasons: list[str]  # "stop" (end token or stop string) or "length"
    prompt_lengths: list[int]  # real prompt tokens per row (image slots included, padding not)
    texts: list[str] | None = None  # with a tokenizer: decoded new text, cut before a stop string
    logprobs: list[list[float]] | None = None
    top_logprobs: list[list[dict[int, float]]] | None = None
    step_logits: list[torch.Tensor] | None = None  # per step (B, V) raw logits; rows already finished are NaN
    timings: Timings = field(default_factory=Timings)


# ------------------------------------------------------------------------------------ text / stop strings
class _RowText:
    """Incremental text of one row, cut at the first stop string. Text that could still become the
    start of a stop string is held back, so what was emitted is never taken back."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        from .processing.text import IncrementalDetokenizer

        self.detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=True)
        self.stops = stops
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def push(self, token: int) -> str:
        self.text += self.detok.push(token)
        return self._advance(final=False)

    def finish(self) -> str:
        if not self.stopped:
            self.text += self.detok.flush()
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.stopped:
            return ""
        end = len(self.text)
        if self.stops:
            hits = [i for i in (self.text.find(s, self.emitted) for s in self.stops) if i >= 0]
            if hits:
                end = min(hits)
                self.text = self.text[:end]
                self.stopped = True
            elif not final:
                end -= self._held_back()
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of the unemitted text that begins some stop string."""
        tail = self.text[self.emitted :]
        for k in range(min(len(tail), max(len(s) for s in self.stops) - 1), 0, -1):
            if any(s.startswith(tail[-k:]) for s in self.stops):
                return k
        return 0


# ------------------------------------------------------------------------------------ the engine
def _left_pad(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real tokens to the right end (pads first), keeping their order."""
    order = torch.sort(mask.long(), dim=1, stable=True).indices  # zeros first, ones in order
    return ids.gather(1, order), mask.gather(1, order)


def _images_per_row(ids: torch.Tensor) -> list[int]:
    """Number of images each row references (its largest <|image_N|> tag)."""
    return (-ids.clamp(max=0)).amax(dim=1).tolist()


class Generation:
    """One generation run; iterate for `Step`s, then read `.result` (or call `generate`)."""

    def __init__(
        self,
        model,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_features: list[torch.Tensor] | None = None,
        params: SamplingParams | None = None,
        tokenizer=None,
        pad_token_id: int | None = None,
        return_step_logits: bool = False,
    ):
        self.model = model
        self.params = params = params or default_params(model)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
            attention_mask = None if attention_mask is None else attention_mask.reshape(1, -1)
        if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.dtype not in (torch.int64, torch.int32):
            raise PromptError(f"input_ids must be a non-empty (batch, length) integer tensor; got {tuple(input_ids.shape)} {input_ids.dtype}")
        if params.stop and tokenizer is None:
            raise GenerationError("stop strings need a tokenizer (pass tokenizer=...)")
        self.input_ids = input_ids  # never written to
        self.attention_mask = attention_mask
        self.pixel_values, self.image_sizes, self.image_features = pixel_values, image_sizes, image_features
        self.tokenizer = tokenizer
        self.pad_token_id = default_pad_id(model) if pad_token_id is None else int(pad_token_id)
        if params.ignore_eos:
            self.stop_ids = frozenset()
        elif params.stop_token_ids is not None:
            self.stop_ids = frozenset(params.stop_token_ids)
        else:
            self.stop_ids = frozenset(default_stop_ids(model))
        self.return_step_logits = return_step_logits
        B, L = input_ids.shape
        limit = model.config.max_position_embeddings
        if L >= limit:
            raise PromptError(
                f"the prompt has {L} tokens but the model's context holds {limit}; shorten the text, use fewer "
                "images or a smaller num_crops"
            )
        self.max_new = min(params.max_new_tokens, limit - L)
        self.result: GenerationResult | None = None

    # ------------------------------------------------------------------ main loop
    def __iter__(self) -> Iterator[Step]:
        """Tensor work runs in inference mode, never held across a `yield` (the caller's code
        between steps runs in whatever mode it chose)."""
        model, p = self.model, self.params
        cfg = model.config
        prepare_cpu_decode(model)  # once per model, before the clock starts
        t_start = time.perf_counter()
        device = model.device
        with torch.inference_mode():
            ids = self.input_ids.to(device=device, dtype=torch.long)
            mask = torch.ones_like(ids) if self.attention_mask is None else self.attention_mask.to(device=device, dtype=torch.long)
            padded = not bool(mask.all())
            if padded:
                ids, mask = _left_pad(ids, mask)
            B, L = ids.shape
            T = self.max_new
            lengths = mask.sum(1).tolist()
            if min(lengths) == 0:
                raise PromptError("a row of the batch is all padding (empty prompt)")

            # images: every one through the vision tower once; per-row lists kept for LongRoPE recomputes
            feats = self.image_features
            counts = _images_per_row(ids)
            timings = Timings()
            if feats is None and sum(counts):
                if self.pixel_values is None or self.image_sizes is None:
                    raise PromptError("the prompt has image slots but no pixel_values/image_sizes (or image_features) were given")
                t = time.perf_counter()
                feats = model.model.encode_images(self.pixel_values.to(device), self.image_sizes.to(device))
                timings.vision_seconds = time.perf_counter() - t
            feats = list(feats or [])
            starts = [sum(counts[:r]) for r in range(B)]
            row_feats = [feats[starts[r] : starts[r] + counts[r]] for r in range(B)]

            # prefill
            orig = cfg.original_max_position_embeddings if cfg.rope_scaling is not None else None
            long_rows = [orig is not None and n > orig for n in lengths]
            cache = KVCache.for_model(model, B, L + T)
            out = model(
                input_ids=ids, attention_mask=mask if padded else None, image_features=feats or None, cache=cache,
                rope_long=torch.tensor(long_rows, device=device), last_logits_only=True,
            )
            logits = out.logits[:, -1]
            del out

            step = DecodeStep(model, L + T, rows=B)
            bias = None
            if padded:
                slots = torch.ones(B, L + T, dtype=torch.bool, device=device)
                slots[:, :L] = mask.bool()
                bias = torch.zeros(B, 1, 1, L + T, dtype=model.dtype, device=device)
                bias.masked_fill_(~slots[:, None, None, :], torch.finfo(model.dtype).min)
            positions = torch.tensor(lengths, device=device)  # position of the token fed next, per batch row
            regime = torch.tensor(long_rows, dtype=torch.long, device=device)
            generator = make_generator(p.seed, device)
            seen = seen_tokens(ids, mask, cfg.vocab_size) if p.repetition_penalty != 1.0 else None

            rows = list(range(B))  # batch row -> caller's row
            tokens: list[list[int]] = [[] for _ in range(B)]
            reasons: list[str | None] = [None] * B
            texts = [_RowText(self.tokenizer, p.stop) for _ in range(B)] if self.tokenizer is not None else None
            want_logprobs = p.logprobs or p.top_logprobs > 0
            logprobs = [[] for _ in range(B)] if want_logprobs else None
            tops = [[] for _ in range(B)] if p.top_logprobs else None
            step_logits = [] if self.return_step_logits else None
            stop_ids = self.stop_ids
            t_first = t_last = None

        for t in range(T):
            with torch.inference_mode():
                tok = next_tokens(logits, p, generator, seen)  # (b,)
                if seen is not None:
                    seen[torch.arange(len(rows), device=device), tok] = True
                if step_logits is not None:
                    full = torch.full((B, logits.shape[-1]), float("nan"))
                    full[rows] = logits.float().cpu()
                    step_logits.append(full)
                if want_logprobs:
                    chosen, top_v, top_i = token_logprobs(logits, tok, p.top_logprobs)
                    chosen = chosen.tolist()
                    if top_v is not None:
                        top_v, top_i = top_v.tolist(), top_i.tolist()
                new = tok.tolist()
                now = time.perf_counter()
                t_first = t_first or now
                t_last = now
                step_tokens: list[int | None] = [None] * B
                step_text = [""] * B if texts is not None else None
                finished = []
                for j, r in enumerate(rows):
                    if reasons[r] is not None:
                        continue
                    token = new[j]
                    tokens[r].append(token)
                    step_tokens[r] = token
                    if logprobs is not None:
                        logprobs[r].append(chosen[j])
                        if tops is not None:
                            tops[r].append(dict(zip(top_i[j], top_v[j])))
                    if token in stop_ids:
                        reasons[r] = "stop"
                    if texts is not None:
                        step_text[r] = texts[r].push(token)
                        if texts[r].stopped:
                            reasons[r] = "stop"
                    if reasons[r] is None and t == T - 1:
                        reasons[r] = "length"
                    if reasons[r] is not None:
                        finished.append(r)
                        if texts is not None:
                            step_text[r] += texts[r].finish()
            yield Step(step_tokens, step_text, finished)
            running = [j for j, r in enumerate(rows) if reasons[r] is None]
            if not running:
                break

            with torch.inference_mode():  # drop finished rows once they are a quarter of the batch
                if len(rows) - len(running) >= max(1, len(rows) // 4):
                    keep = torch.tensor(running, device=device)
                    cache.select_rows(keep)
                    bias = None if bias is None else bias.index_select(0, keep)
                    positions, regime, tok = positions[keep], regime[keep], tok[keep]
                    seen = None if seen is None else seen[keep]
                    rows = [rows[j] for j in running]

                # feed the new tokens: slot L + t, each row at its own position
                crossing = [j for j, r in enumerate(rows) if reasons[r] is None and not long_rows[r] and orig is not None
                            and lengths[r] + t + 1 > orig]
                if crossing:
                    for j in crossing:
                        long_rows[rows[j]] = True
                    regime = torch.tensor([long_rows[r] for r in rows], dtype=torch.long, device=device)
                logits = step(tok, positions, regime, cache, L + t, bias)
                for j in crossing:
                    logits[j] = self._recompute_row(cache, j, ids[rows[j]], mask[rows[j]], tokens[rows[j]], row_feats[rows[j]], padded)
                positions += 1

        end = time.perf_counter()
        timings.prefill_seconds = (t_first or end) - t_start
        timings.decode_seconds = (t_last or end) - (t_first or end)
        timings.decode_steps = max(0, max(len(x) for x in tokens) - 1)
        timings.total_seconds = end - t_start
        self.result = self._result(tokens, reasons, lengths, texts, logprobs, tops, step_logits, timings)

    def _recompute_row(self, cache, j, row_ids, row_mask, row_tokens, row_feats, padded) -> torch.Tensor:
        """Rewrite batch row j's cache under the long RoPE factors; its logits at the last token."""
        device = row_ids.device
        new = torch.tensor(row_tokens, dtype=torch.long, device=device)
        full_ids = torch.cat([row_ids, new])[None]
        full_mask = torch.cat([row_mask, torch.ones_like(new)])[None] if padded else None
        out = self.model(
            input_ids=full_ids, attention_mask=full_mask, image_features=row_feats or None, cache=cache.row_view(j),
            rope_long=torch.tensor([True], device=device), last_logits_only=True,
        )
        return out.logits[0, -1]

    def _result(self, tokens, reasons, lengths, texts, logprobs, tops, step_logits, timings) -> GenerationResult:
        B, L = self.input_ids.shape
        n = max(len(x) for x in tokens)
        sequences = torch.full((B, L + n), self.pad_token_id, dtype=self.input_ids.dtype, device=self.input_ids.device)
        sequences[:, :L] = self.input_ids
        for r, row in enumerate(tokens):
            sequences[r, L : L + len(row)] = torch.tensor(row, dtype=sequences.dtype)
        return GenerationResult(
            sequences=sequences, tokens=tokens, finish_reasons=list(reasons), prompt_lengths=lengths,
            texts=None if texts is None else [x.text for x in texts], logprobs=logprobs, top_logprobs=tops,
            step_logits=step_logits, timings=timings,
        )


def generate(model, input_ids, attention_mask=None, *, on_step: Callable[[Step], None] | None = None, **kwargs) -> GenerationResult:
    """Run a `Generation` to the end (see its arguments); `on_step` sees every step."""
    run = Generation(model, input_ids, attention_mask, **kwargs)
    for s in run:
        if on_step is not None:
            on_step(s)
    return run.result


# ------------------------------------------------------------------------------------ Hugging Face surface
def hf_generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    image_sizes: torch.Tensor | None = None,
    *,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    streamer=None,
    seed: int | None = None,
    stop_strings: str | list[str] | None = None,
    tokenizer=None,
    ignore_eos: bool = False,
    image_features: list[torch.Tensor] | None = None,
    num_beams: int = 1,
    use_cache: bool = True,
    return_dict_in_generate: bool = False,
    output_logits: bool = False,
    output_scores: bool = False,
):
    """`model.generate` with transformers' semantics: returns (B, L + new) ids, the prompt first.

    do_sample decides greedy vs sampling (default: generation_config.json's, i.e. greedy); sampling
    without top_k uses top_k=50 as transformers does. Generation stops per row on `eos_token_id`
    (default: the checkpoint's) and always on <|end|> / <|endoftext|>, unless `ignore_eos`. With
    return_dict_in_generate, a `GenerationResult` (`.sequences`, `.step_logits` with output_logits).
    `use_cache` is accepted for compatibility: generation always uses the cache, and its tokens are
    those of uncached decoding (see the module docstring).
    """
    if num_beams != 1:
        raise GenerationError("beam search is not supported (num_beams must be 1)")
    gc = generation_config(model)
    L = input_ids.shape[-1]
    if max_new_tokens is None:
        max_new_tokens = (max_length - L) if max_length is not None else int(gc.get("max_new_tokens") or max(1, gc.get("max_length", 20) - L))
    if max_new_tokens < 1:
        raise GenerationError(f"max_length {max_length} leaves no room after the {L}-token prompt; use max_new_tokens")
    sample = gc.get("do_sample", False) if do_sample is None else do_sample
    kwargs = dict(max_new_tokens=int(max_new_tokens), seed=seed, ignore_eos=ignore_eos)
    if sample:
        kwargs.update(
            temperature=float(gc.get("temperature", 1.0) if temperature is None else temperature),
            top_k=int(gc.get("top_k", 50) if top_k is None else top_k),
            top_p=float(gc.get("top_p", 1.0) if top_p is None else top_p),
            min_p=float(min_p or 0.0),
        )
    if repetition_penalty is not None:
        kwargs["repetition_penalty"] = float(repetition_penalty)
    if eos_token_id is not None:
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        kwargs["stop_token_ids"] = tuple(sorted({*eos, *(i for i in (END_OF_TURN_ID, END_OF_TEXT_ID) if i < model.config.vocab_size)}))
    if stop_strings:
        kwargs["stop"] = (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings)
    params = SamplingParams(**kwargs)
    if streamer is not None:
        streamer.put(input_ids.detach().cpu())
    run = Generation(
        model, input_ids, attention_mask, pixel_values=pixel_values, image_sizes=image_sizes, image_features=image_features,
        params=params, tokenizer=tokenizer, pad_token_id=pad_token_id,
        return_step_logits=output_logits or output_scores,
    )
    for s in run:
        if streamer is not None:
            streamer.put(torch.tensor([t if t is not None else run.pad_token_id for t in s.tokens]))
    if streamer is not None:
        streamer.end()
    return run.result if return_dict_in_generate else run.result.sequences
