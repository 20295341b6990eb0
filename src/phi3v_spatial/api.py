"""The high-level Python API: `load()` a checkpoint, then `chat`, `stream` or `chat_batch`.

    import phi3v_spatial
    vlm = phi3v_spatial.load("path/or/hub-id")
    msgs = [{"role": "user", "content": [{"type": "image", "image": "cup.jpg"},
                                         {"type": "text", "text": "Where is the cup?"}]}]
    print(vlm.chat(msgs).text)
    for piece in vlm.stream(msgs):
        print(piece, end="", flush=True)
    answers = vlm.chat_batch([msgs, other_msgs], max_new_tokens=64)

Messages are `{"role": "system" | "user" | "assistant", "content": ...}`. Content is a string whose
`<|image_N|>` tags refer to `images[N-1]`, or a list of parts: `{"type": "text", "text": ...}` and
`{"type": "image", "image": PIL image | path | bytes | array}` (a bare `{"type": "image"}` takes the
next image of `images`). Parts are joined with newlines, each image part becoming its tag.

Image embeddings are cached per `Phi3V` object, keyed by the image's pixels and num_crops: the
vision tower runs once for an image however many turns or conversations mention it.
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from .errors import PromptError
from .generation import Generation, GenerationResult, default_params, default_stop_ids
from .sampling import make_params

ROLES = ("system", "user", "assistant")


@dataclass
class ChatResult:
    text: str
    token_ids: list[int]  # new tokens; an end token that stopped generation is included
    finish_reason: str  # "stop" (end token or stop string) or "length"
    prompt_tokens: int  # image tokens included
    completion_tokens: int
    timings: dict = field(default_factory=dict)  # seconds: processor, vision, prefill (to first token), decode, total
    logprobs: list[float] | None = None  # the model's log-probability of each new token (logprobs=True)
    top_logprobs: list[dict[int, float]] | None = None


# ------------------------------------------------------------------------------------ loading
def resolve_runtime(device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> tuple[torch.device, torch.dtype]:
    """"auto": CUDA when present, else CPU; bfloat16 on GPUs that have it, float32 on CPU."""
    from .weights import resolve_device, resolve_dtype

    dev = resolve_device(device)
    if dtype == "auto":
        if dev.type == "cuda":
            return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return dev, torch.float32
    return dev, resolve_dtype(dtype, None)


def load(
    model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    num_crops: int | None = None,
    attn_implementation: str = "sdpa",
    progress: bool = False,
    image_cache_size: int = 32,
) -> "Phi3V":
    """Load a Phi-3-V checkpoint folder (or Hugging Face hub id; default: the embedded model) with its processor."""
    from .model import Phi3VForCausalLM
    from .processing import Phi3VProcessor

    if model is None:
        from .assets import default_model_path

        model = default_model_path()
    dev, dt = resolve_runtime(device, dtype)
    net = Phi3VForCausalLM.from_pretrained(model, torch_dtype=dt, device_map=dev, attn_implementation=attn_implementation, progress=progress)
    processor = Phi3VProcessor.from_pretrained(net.name_or_path, num_crops=num_crops)
    return Phi3V(net, processor, image_cache_size=image_cache_size)


# ------------------------------------------------------------------------------------ messages
def render_messages(messages: Sequence[dict], images: Sequence[Any] | None = None) -> tuple[list[dict], list[Any]]:
    """Messages with part lists -> messages with string content (image tags in place) and the images
    in tag order."""
    if isinstance(messages, dict) or not isinstance(messages, (list, tuple)) or not messages:
        raise PromptError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    given = list(images or [])
    extra: list[Any] = []
    bare = 0
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise PromptError(f"message {i} must be a dict with 'role' and 'content'")
        if msg["role"] not in ROLES:
            raise PromptError(f"message {i}: role {msg['role']!r} is not one of {ROLES}")
        content = msg["content"]
        if isinstance(content, (list, tuple)):
            pieces = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    pieces.append(str(part.get("text", "")))
                elif kind == "image":
                    if part.get("image") is None:
                        bare += 1
                        if bare > len(given):
                            raise PromptError(f"message {i}: an image part has no 'image' and `images` has only {len(given)}")
                        n = bare
                    else:
                        extra.append(part["image"])
                        n = len(given) + len(extra)
                    pieces.append(f"<|image_{n}|>")
                else:
                    raise PromptError(f"message {i}: parts must be {{'type': 'text'|'image', ...}} (got {part!r:.80})")
            content = "\n".join(pieces)
        elif not isinstance(content, str):
            raise PromptError(f"message {i}: content must be a string or a list of parts")
        out.append({"role": msg["role"], "content": content})
    return out, given + extra


def image_key(image, num_crops: int) -> str:
    """Content hash of a loaded image (mode, size, pixels) and num_crops: the embedding cache key."""
    h = hashlib.sha256(f"{image.mode}{image.size}{num_crops}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------ the object
class TextStream:
    """Iterate for text pieces; `.result` (a ChatResult) is set once the stream is exhausted."""

    def __init__(self, pieces: Iterator[str]):
        self._pieces = pieces
        self.result: ChatResult | None = None

    def __iter__(self) -> Iterator[str]:
        return self._pieces


class Phi3V:
    """A loaded model + processor with a chat interface. See the module docstring."""

    def __init__(self, model, processor, image_cache_size: int = 32):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.defaults = default_params(model)
        self.stop_token_ids = default_stop_ids(model)
        self.image_cache_size = image_cache_size
        self._features: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def clear_image_cache(self) -> None:
        self._features.clear()

    def start_chat(self, system: str | None = None, **sampling) -> "Chat":
        return Chat(self, system=system, **sampling)

    # ------------------------------------------------------------------ public calls
    def chat(self, messages, images=None, *, num_crops: int | None = None, **sampling) -> ChatResult:
        return self.chat_batch([messages], None if images is None else [images], num_crops=num_crops, **sampling)[0]

    def stream(self, messages, images=None, *, num_crops: int | None = None, **sampling) -> TextStream:
        """Text pieces as they are generated; joined, they equal `chat(...).text`."""
        run, extra = self._prepare([messages], None if images is None else [images], num_crops, sampling)
        stream = TextStream(iter(()))

        def pieces():
            for step in run:
                if step.text[0]:
                    yield step.text[0]
            stream.result = self._results(run.result, extra)[0]

        stream._pieces = pieces()
        return stream

    def chat_batch(self, conversations, images=None, *, num_crops: int | None = None, batch_size: int = 16, **sampling) -> list[ChatResult]:
        """Many conversations at once (left-padded batches of `batch_size`); results in order.
        images: None or one list per conversation."""
        conversations = list(conversations)
        if images is not None and len(images) != len(conversations):
            raise PromptError(f"images has {len(images)} entries for {len(conversations)} conversations")
        results: list[ChatResult] = []
        for start in range(0, len(conversations), max(1, batch_size)):
            chunk = conversations[start : start + batch_size]
            chunk_images = None if images is None else images[start : start + batch_size]
            run, extra = self._prepare(chunk, chunk_images, num_crops, sampling)
            for _ in run:
                pass
            results += self._results(run.result, extra)
        return results

    def generate(self, prompt: str, images=None, *, num_crops: int | None = None, **sampling) -> ChatResult:
        """A raw prompt (no chat template; write `<|user|>` markup and `<|image_N|>` tags yourself)."""
        run, extra = self._prepare_prompts([prompt], [list(images or [])], num_crops, sampling)
        for _ in run:
            pass
        return self._results(run.result, extra)[0]

    # ------------------------------------------------------------------ internals
    def _prepare(self, conversations, images, num_crops, sampling) -> tuple[Generation, dict]:
        prompts, image_lists = [], []
        for i, messages in enumerate(conversations):
            rendered, imgs = render_messages(messages, None if images is None else images[i])
            prompts.append(self.tokenizer.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True))
            image_lists.append(imgs)
        return self._prepare_prompts(prompts, image_lists, num_crops, sampling)

    def _prepare_prompts(self, prompts, image_lists, num_crops, sampling) -> tuple[Generation, dict]:
        from .processing import load_image

        params = make_params(self.defaults, **sampling)
        nc = num_crops if num_crops is not None else self.processor.num_crops
        t0 = time.perf_counter()
        loaded = [[load_image(im) for im in ims] for ims in image_lists]
        flat = [im for ims in loaded for im in ims]
        batch = self.processor(prompts, images=loaded if flat else None, padding_side="left", num_crops=nc)
        t_proc = time.perf_counter() - t0
        features, t_vision = self._image_features(flat, batch, nc)
        run = Generation(
            self.model, batch["input_ids"], batch["attention_mask"], image_features=features or None,
            params=params, tokenizer=self.tokenizer,
        )
        return run, {"processor_seconds": t_proc, "vision_seconds": t_vision}

    def _image_features(self, images, batch, num_crops) -> tuple[list[torch.Tensor], float]:
        """Each image's embedding, from the cache or from one vision-tower call for all missing ones."""
        if not images:
            return [], 0.0
        keys = [image_key(im, num_crops) for im in images]
        missing = [i for i, k in enumerate(keys) if k not in self._features]
        t0 = time.perf_counter()
        if missing:
            idx = torch.tensor(sorted({keys.index(keys[i]) for i in missing}))
            with torch.inference_mode():
                feats = self.model.model.encode_images(
                    batch["pixel_values"][idx].to(self.device), batch["image_sizes"][idx].to(self.device)
                )
            for i, f in zip(idx.tolist(), feats):
                self._features[keys[i]] = f
        out = []
        for k in keys:
            self._features.move_to_end(k)
            out.append(self._features[k])
        while len(self._features) > max(self.image_cache_size, len(set(keys))):
            self._features.popitem(last=False)
        return out, time.perf_counter() - t0

    def _results(self, res: GenerationResult, extra: dict) -> list[ChatResult]:
        timings = {**res.timings.as_dict(), **extra}
        timings["prefill_seconds"] += extra["vision_seconds"]  # time to first token includes the vision tower
        timings["total_seconds"] += extra["vision_seconds"]
        out = []
        for r, tokens in enumerate(res.tokens):
            out.append(ChatResult(
                text=res.texts[r], token_ids=list(tokens), finish_reason=res.finish_reasons[r],
                prompt_tokens=res.prompt_lengths[r], completion_tokens=len(tokens), timings=dict(timings),
                logprobs=None if res.logprobs is None else res.logprobs[r],
                top_logprobs=None if res.top_logprobs is None else res.top_logprobs[r],
            ))
        return out


class Chat:
    """A conversation kept for you: `ask` adds the user turn (with any attached images) and the answer."""

    def __init__(self, vlm: Phi3V, system: str | None = None, **sampling):
        self.vlm = vlm
        self.system = system
        self.sampling = sampling
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self.pending: list[Any] = []

    def attach(self, image) -> None:
        """Add an image to the next user message (loaded now, so a bad file fails here)."""
        from .processing import load_image

        self.pending.append(load_image(image))

    def ask(self, text: str, images: Sequence[Any] = (), stream: bool = False, **sampling):
        """The answer to `text` as a ChatResult, or a TextStream with `stream=True`."""
        parts = [{"type": "image", "image": im} for im in [*self.pending, *images]] + [{"type": "text", "text": text}]
        messages = self.messages + [{"role": "user", "content": parts}]
        opts = {**self.sampling, **sampling}
        if stream:
            s = self.vlm.stream(messages, **opts)
            inner = s._pieces

            def pieces():
                yield from inner
                self._commit(messages, s.result)

            s._pieces = pieces()
            return s
        result = self.vlm.chat(messages, **opts)
        self._commit(messages, result)
        return result

    def _commit(self, messages, result: ChatResult) -> None:
        self.messages = messages + [{"role": "assistant", "content": result.text}]
        self.pending = []
