"""Anything that answers evaluation prompts, behind one interface.

An answerer has a `name` (recorded with the run) and `answer(samples) -> list[str]`: one raw
text per sample, in order. The runner hands it batches; what it does with a batch is its own
business (the local model decodes it as one batch, the endpoint answerer sends parallel requests).

- `LocalModelAnswerer`: this package's model via `phi3v_spatial.load(...).chat_batch`, greedy.
- `EndpointAnswerer`: an OpenAI-compatible `/v1/chat/completions` server (vLLM, this package's
  server), images sent inline as base64 `image_url` parts.
- `OracleAnswerer`: formats the ground truth as a model would write it (or returns the dataset's
  own answer text); a correct harness scores it 100%.
- `RandomAnswerer` / `ConstantAnswerer`: chance and "always yes" baselines.
"""
from __future__ import annotations

import base64
import io
import json
import math
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, Sequence

from ..errors import DataError
from .loaders import IMAGE_TAG_RE, EvalSample
from .parsing import format_quantity, option_letter


class Answerer(Protocol):
    name: str

    def answer(self, samples: Sequence[EvalSample]) -> list[str]: ...


# ---------------------------------------------------------------------------------------------
# prompt conversion


def conversation(sample: EvalSample) -> list[dict]:
    """The sample's prompt turns with content as parts: `<|image_N|>` tags become
    `{"type": "image", "image": <path or PIL>}` parts, the rest `{"type": "text"}` parts."""
    out = []
    for msg in sample.messages:
        content = msg["content"]
        parts = []
        if isinstance(content, str):
            pos = 0
            for m in IMAGE_TAG_RE.finditer(content):
                if content[pos:m.start()].strip():
                    parts.append({"type": "text", "text": content[pos:m.start()].strip()})
                k = int(m.group(1))
                if not 1 <= k <= len(sample.images):
                    raise DataError(f"sample {sample.id}: prompt names <|image_{k}|> but has {len(sample.images)} image(s)")
                parts.append({"type": "image", "image": _image_ref(sample.images[k - 1])})
                pos = m.end()
            if content[pos:].strip():
                parts.append({"type": "text", "text": content[pos:].strip()})
        else:  # already parts; fill bare image parts with the sample's images in order
            images = iter(sample.images)
            for part in content:
                if part.get("type") == "image" and part.get("image") is None:
                    part = {"type": "image", "image": _image_ref(next(images))}
                parts.append(part)
        out.append({"role": msg["role"], "content": parts})
    return out


def _image_ref(image):
    return str(image) if isinstance(image, Path) else image


# ---------------------------------------------------------------------------------------------
# this package's model


class LocalModelAnswerer:
    """Greedy answers from this package's model, one `chat_batch` call per batch."""

    def __init__(self, model, max_new_tokens: int = 256, name: str = "local"):
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.name = name

    @classmethod
    def from_path(cls, model_path: str | Path, device: str = "cpu", dtype: str = "float32",
                  max_new_tokens: int = 256, num_crops: int | None = None) -> "LocalModelAnswerer":
        import phi3v_spatial

        model = phi3v_spatial.load(str(model_path), device=device, dtype=dtype, num_crops=num_crops)
        return cls(model, max_new_tokens=max_new_tokens, name=f"local:{Path(model_path).name}")

    def answer(self, samples: Sequence[EvalSample]) -> list[str]:
        results = self.model.chat_batch([conversation(s) for s in samples], batch_size=len(samples),
                                        max_new_tokens=self.max_new_tokens, temperature=0.0)
        return [r.text for r in results]


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible endpoint

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif"}


def image_data_url(image) -> str:
    """A base64 data URL for an image path or a PIL image."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read image {path}: {exc}") from exc
        mime = _MIME.get(path.suffix.lower(), "image/png")
    else:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def openai_messages(sample: EvalSample) -> list[dict]:
    msgs = []
    for msg in conversation(sample):
        parts = []
        for part in msg["content"]:
            if part["type"] == "image":
                parts.append({"type": "image_url", "image_url": {"url": image_data_url(part["image"])}})
            else:
                parts.append({"type": "text", "text": part["text"]})
        msgs.append({"role": msg["role"], "content": parts})
    return msgs


class EndpointAnswerer:
    """Answers from an OpenAI-compatible chat/completions endpoint.

    `url` is the server's base ("http://host:8000" or ".../v1") or the full
    ".../chat/completions" URL. Requests are sent `concurrency` at a time, each with `timeout`
    seconds; connection errors, 429 and 5xx are retried `retries` times with backoff, other
    HTTP errors raise DataError with the server's message."""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, max_tokens: int = 256,
                 temperature: float = 0.0, timeout: float = 120.0, concurrency: int = 4, retries: int = 2):
        url = url.rstrip("/")
        if url.endswith("/chat/completions"):
            self.chat_url = url
            self.base_url = url[: -len("/chat/completions")]
        else:
            self.base_url = url if url.endswith("/v1") else url + "/v1"
            self.chat_url = self.base_url + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout = timeout
        self.concurrency = max(1, concurrency)
        self.retries = retries
        self._model_resolved = model is not None
        self.name = f"endpoint:{self.chat_url}" + (f" model={model}" if model else "")

    def _request(self, url: str, payload: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(payload).encode() if payload is not None else None
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                body = exc.read().decode("utf-8", "replace")[:500]
                if (exc.code == 429 or exc.code >= 500) and attempt < self.retries:
                    time.sleep(0.5 * 2 ** attempt)
                    continue
                raise DataError(f"endpoint {url} answered HTTP {exc.code}: {body}") from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt < self.retries:
                    time.sleep(0.5 * 2 ** attempt)
                    continue
                raise DataError(f"endpoint {url} unreachable: {exc}") from exc
            except json.JSONDecodeError as exc:
                raise DataError(f"endpoint {url} did not answer JSON: {exc}") from exc
        raise AssertionError("unreachable")

    def _resolve_model(self):
        """The first model the server lists, when none was given (None if it lists none)."""
        if not self._model_resolved:
            try:
                listing = self._request(self.base_url + "/models")
                self.model = listing["data"][0]["id"]
            except (DataError, KeyError, IndexError, TypeError):
                self.model = None
            self._model_resolved = True
            self.name = f"endpoint:{self.chat_url}" + (f" model={self.model}" if self.model else "")

    def _one(self, sample: EvalSample) -> str:
        payload = {"messages": openai_messages(sample), "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.model:
            payload["model"] = self.model
        reply = self._request(self.chat_url, payload)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise DataError(f"endpoint {self.chat_url} reply has no choices[0].message.content: {str(reply)[:300]}") from exc
        if isinstance(content, list):  # parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content or ""

    def answer(self, samples: Sequence[EvalSample]) -> list[str]:
        self._resolve_model()
        if self.concurrency == 1 or len(samples) == 1:
            return [self._one(s) for s in samples]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(samples))) as pool:
            return list(pool.map(self._one, samples))


# ---------------------------------------------------------------------------------------------
# reference answerers


def format_answer(answer: dict) -> str:
    """The ground truth written the way a model would answer (and the parser reads back)."""
    kind = answer["type"]
    if kind == "yesno":
        return "Yes." if answer["value"] else "No."
    if kind == "choice":
        k = int(answer["value"])
        return f"{option_letter(k)}. {answer['options'][k]}"
    if kind == "quantity":
        return format_quantity(float(answer["value_m"]), answer.get("unit") or "m")
    if kind == "clock":
        return f"{int(answer['value'])} o'clock"
    if kind == "count":
        return str(int(answer["value"]))
    if kind in ("boxes", "points", "poses"):
        return json.dumps(answer["value"])
    raise DataError(f"unknown answer type {kind!r}")


class OracleAnswerer:
    """The ground truth as text. mode="structured" formats the answer object (`format_answer`);
    mode="reference" returns the dataset's own assistant answer (the training target), which
    checks that the parser reads what the data engine writes."""

    def __init__(self, mode: str = "structured"):
        if mode not in ("structured", "reference"):
            raise ValueError(f"oracle mode must be 'structured' or 'reference', not {mode!r}")
        self.mode = mode
        self.name = f"oracle:{mode}"

    def answer(self, samples: Sequence[EvalSample]) -> list[str]:
        if self.mode == "structured":
            return [format_answer(s.answer) for s in samples]
        missing = [s.id for s in samples if s.reference is None]
        if missing:
            raise DataError(f"sample {missing[0]} has no reference answer text (use the structured oracle)")
        return [s.reference for s in samples]


class RandomAnswerer:
    """A uniformly random answer of the right shape, seeded per sample id (so reruns, batching
    and resumption give the same answers). Chance accuracy: 1/2 for yes/no, 1/k for k options,
    1/12 for clock directions."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.name = f"random:{seed}"

    def answer(self, samples: Sequence[EvalSample]) -> list[str]:
        return [self._one(s) for s in samples]

    def _one(self, sample: EvalSample) -> str:
        rng = random.Random(f"{self.seed}:{sample.id}")
        a = sample.answer
        kind = a["type"]
        if kind == "yesno":
            return rng.choice(["Yes.", "No."])
        if kind == "choice":
            return option_letter(rng.randrange(len(a["options"])))
        if kind == "quantity":
            return format_quantity(math.exp(rng.uniform(math.log(0.05), math.log(5.0))), a.get("unit") or "m")
        if kind == "clock":
            return f"{rng.randint(1, 12)} o'clock"
        if kind == "count":
            return str(rng.randint(0, 10))
        n = max(1, len(a.get("value") or []))
        if kind == "boxes":
            boxes = []
            for _ in range(n):
                x1, x2 = sorted(rng.sample(range(1001), 2))
                y1, y2 = sorted(rng.sample(range(1001), 2))
                boxes.append({"bbox_2d": [x1, y1, x2, y2]})
            return json.dumps(boxes)
        if kind == "points":
            return json.dumps([{"point_2d": [rng.randint(0, 1000), rng.randint(0, 1000)]} for _ in range(n)])
        if kind == "poses":
            return json.dumps([{"x": round(rng.uniform(0.2, 0.8), 3), "y": round(rng.uniform(-0.4, 0.4), 3),
                                "z": round(rng.uniform(0.0, 0.4), 3), "roll": 0.0, "pitch": 0.0,
                                "yaw": round(rng.uniform(-math.pi, math.pi), 3), "grasp": rng.random() < 0.5}
                               for _ in range(n)])
        raise DataError(f"unknown answer type {kind!r}")


class ConstantAnswerer:
    """The same text for every prompt (e.g. "yes": its yes/no accuracy is the share of "yes" truths)."""

    def __init__(self, text: str):
        self.text = text
        self.name = f"constant:{text}"

    def answer(self, samples: Sequence[EvalSample]) -> list[str]:
        return [self.text] * len(samples)
