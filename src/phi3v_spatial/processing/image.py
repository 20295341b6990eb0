"""Image loading and the HD transform of Phi-3-Vision, bit-identical to the original and faster.

The original (per image): convert to RGB with PIL; if portrait, transpose; resize with PIL bilinear
to (336*s, int(336*s / ratio)); pad the height with white to a multiple of 336 (floor half on top);
scale to [0, 1] and CLIP-normalise in float32; the global view is that normalised image resized to
336x336 with torch bicubic; then [global, tiles row-major, zero tiles up to num_crops + 1].

What we do differently, for speed only (every output is bit-identical):
- the padding is never materialised as an image: padding rows are written as the normalised value
  of 255 directly;
- the resized image is normalised per channel plane, 48 rows at a time, straight into a reused
  padded float buffer, and each band is copied into its tiles while still in cache (the original
  makes ~6 full-size copies, all in fresh memory);
- PIL releases the GIL, so images of a batch run on worker threads; a single large image is split:
  PIL's bilinear resize is separable (horizontal pass, then vertical pass on the 8-bit
  intermediate), so the horizontal pass is run on row bands and the vertical pass on column bands,
  which gives exactly the pixels of one `resize` call;
- only the bicubic global view runs in torch, on the calling thread, as each image becomes ready;
- outputs live in recycled huge-page buffers (page faults cost more than the arithmetic here).
"""
from __future__ import annotations

import io
import json
import mmap
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .. import hugepages
from ..errors import ConfigError, ImageError
from .hd import CROP_SIZE, TOKENS_PER_CROP, hd_padded_size, hd_resized_size, num_image_tokens_for_padded

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_NUM_CROPS = 16  # the real checkpoint's preprocessor_config.json
DEFAULT_MAX_PIXELS = 1 << 26  # ~67 megapixels: above any phone camera, far below a decompression bomb
WHITE = 255
_SPLIT_MIN_PIXELS = 400_000  # below this, splitting one image across threads costs more than it saves
_BAND = 48  # rows normalised and copied at a time (divides 336; ~1 MB of float32, stays in cache)


# ----------------------------------------------------------------------------------------------
# Loading


def _describe(x: Any) -> str:
    """A short, safe name for an image input, used in error messages."""
    if isinstance(x, (str, os.PathLike)):
        return repr(os.fspath(x))
    if isinstance(x, (bytes, bytearray, memoryview)):
        return f"<{len(x)} bytes>"
    if isinstance(x, Image.Image):
        return f"<PIL image mode={x.mode} size={x.size[0]}x{x.size[1]}>"
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return f"<{type(x).__name__} shape={tuple(x.shape)} dtype={x.dtype}>"
    return f"<{type(x).__name__}>"


def _check_size(width: int, height: int, max_pixels: int, name: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"image {name} is empty ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise ImageError(
            f"image {name} is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} "
            "(a decompression bomb guard); downscale it or raise max_pixels"
        )


def _open_encoded(source: Any, max_pixels: int, name: str) -> Image.Image:
    """Decode a file path or file-like object; the size is checked from the header before decoding."""
    try:
        img = Image.open(source)
    except FileNotFoundError:
        raise ImageError(f"image file {name} not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image PIL can read (unknown or corrupt header)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"image {name} is too large: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"cannot open image {name}: {e}") from None
    _check_size(img.size[0], img.size[1], max_pixels, name)
    try:
        img.load()
    except Exception as e:  # truncated data, bad CRC, decoder errors: all mean "corrupt file"
        raise ImageError(f"image {name} is truncated or corrupt: {e}") from None
    return img


def _array_to_pil(arr: np.ndarray, name: str) -> Image.Image:
    """HxW or HxWxC (C = 1, 3, 4) uint8 array -> PIL image."""
    if arr.dtype != np.uint8:
        raise ImageError(f"image {name}: arrays must be uint8 HxWxC (got dtype {arr.dtype})")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ImageError(f"image {name}: expected an HxW or HxWxC array with C in 1, 3, 4 (got shape {arr.shape})")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"image {name} is empty (shape {arr.shape})")
    return Image.fromarray(np.ascontiguousarray(arr))


def _tensor_to_pil(t: torch.Tensor, name: str) -> Image.Image:
    """CHW tensor (uint8, or float in [0, 1] scaled like torchvision's to_pil_image) -> PIL image."""
    if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
        raise ImageError(f"image {name}: tensors must be CxHxW with C in 1, 3, 4 (got shape {tuple(t.shape)})")
    t = t.detach().cpu()
    if t.is_floating_point():
        t = t.mul(255).to(torch.uint8)  # truncation, as torchvision's ToPILImage does
    elif t.dtype != torch.uint8:
        raise ImageError(f"image {name}: integer tensors must be uint8 (got {t.dtype})")
    return _array_to_pil(t.permute(1, 2, 0).numpy(), name)


def load_image(x: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Any supported image input -> a loaded PIL image, or ImageError naming the input.

    Accepts a PIL image in any mode, a file path, encoded bytes, a binary file object, a numpy HxWxC
    uint8 array or a CHW torch tensor. Encoded images are checked against `max_pixels` from their
    header, before any pixel is decoded, so a decompression bomb fails in microseconds. EXIF
    orientation is not applied (the original does not either: the model saw pixels as stored).
    """
    name = _describe(x)
    if isinstance(x, Image.Image):
        _check_size(x.size[0], x.size[1], max_pixels, name)
        try:
            x.load()
        except Exception as e:
            raise ImageError(f"image {name} is truncated or corrupt: {e}") from None
        return x
    if isinstance(x, (str, os.PathLike)):
        if not Path(x).is_file():
            raise ImageError(f"image file {name} not found")
        return _open_encoded(os.fspath(x), max_pixels, name)
    if isinstance(x, (bytes, bytearray, memoryview)):
        if len(x) == 0:
            raise ImageError("image bytes are empty")
        return _open_encoded(io.BytesIO(bytes(x)), max_pixels, name)
    if hasattr(x, "read"):
        return _open_encoded(x, max_pixels, name)
    if isinstance(x, np.ndarray):
        img = _array_to_pil(x, name)
    elif isinstance(x, torch.Tensor):
        img = _tensor_to_pil(x, name)
    else:
        raise ImageError(
            f"unsupported image input {name}: pass a PIL image, a path, bytes, a file object, "
            "an HxWxC uint8 numpy array or a CxHxW tensor"
        )
    _check_size(img.size[0], img.size[1], max_pixels, name)
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """PIL's own RGB conversion, as the original (RGBA drops alpha, L is replicated, CMYK by PIL).

    One deliberate difference: 16-bit grayscale ('I;16*') is scaled to 8 bits (v >> 8). PIL's direct
    conversion clips it at 255, which turns almost any 16-bit image into a white page.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.uint16) >> 8
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError:  # modes PIL converts only to their straight form first (e.g. 'La' -> 'LA')
        pass
    for via in ("LA", "RGBA"):
        try:
            return img.convert(via).convert("RGB")
        except ValueError:
            continue
    raise ImageError(f"image {_describe(img)}: PIL cannot convert mode {img.mode!r} to RGB")


# ----------------------------------------------------------------------------------------------
# Memory: first touching fresh pages costs more than the arithmetic on them (tens of MB per image;
# ~0.5 ms per MB here). Outputs live in huge-page buffers that are recycled once the caller drops
# the tensor (like torch's CUDA caching allocator); the padded scratch images are reused directly.

OUTPUT_CACHE_BYTES = 256 << 20  # most memory kept for recycling after the caller freed its tensors
_POOLED_MIN_BYTES = 1 << 20  # smaller outputs come from torch.empty


class _OutputBuffers:
    """Hands out float32 tensors backed by anonymous huge-page mappings; a mapping returns to the
    free list when the last tensor (or array) using it is freed, and is reused without page faults."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        count = int(np.prod(shape))
        nbytes = count * 4
        if nbytes < _POOLED_MIN_BYTES or not hugepages.enabled():
            return torch.empty(shape, dtype=torch.float32)
        buf = None
        with self._lock:
            fits = [b for b in self._free if nbytes <= len(b) <= 2 * nbytes]
            if fits:
                buf = min(fits, key=len)
                self._free.remove(buf)
        if buf is None:
            buf = hugepages.mapping(nbytes)
        arr = np.frombuffer(buf, dtype=np.float32, count=count).reshape(shape)
        weakref.finalize(arr, self._give_back, buf).atexit = False
        return torch.from_numpy(arr)

    def _give_back(self, buf: mmap.mmap) -> None:
        with self._lock:
            self._free.append(buf)
            while self._free and sum(len(b) for b in self._free) > self.max_bytes:
                self._free.pop(0)  # oldest first; unmapped when garbage collected

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


_OUTPUTS = _OutputBuffers(OUTPUT_CACHE_BYTES)


def empty_float32(shape: tuple[int, ...]) -> torch.Tensor:
    """torch.empty(shape, float32) from the recycled huge-page buffers (see above)."""
    return _OUTPUTS.empty(shape)


def release_cached_buffers() -> None:
    """Give the memory kept for recycling (outputs and scratch images) back to the system."""
    _OUTPUTS.clear()
    _SCRATCH.clear()


class _ScratchPool:
    """Reusable float32 buffers for the padded normalised images (one per image in flight)."""

    def __init__(self, keep: int):
        self._free: list[np.ndarray] = []
        self._keep = keep
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        with self._lock:
            for i, buf in enumerate(self._free):
                if buf.size >= n:
                    return self._free.pop(i)[:n].reshape(shape)
        if not hugepages.enabled():
            return np.empty(shape, dtype=np.float32)
        return np.frombuffer(hugepages.mapping(max(n, 1) * 4), dtype=np.float32, count=n).reshape(shape)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()

    def give(self, arr: np.ndarray) -> None:
        base = arr
        while base.base is not None and isinstance(base.base, np.ndarray):
            base = base.base
        with self._lock:
            self._free.append(base.reshape(-1))
            self._free.sort(key=lambda b: b.size)
            del self._free[: max(0, len(self._free) - self._keep)]  # keep the largest


# ----------------------------------------------------------------------------------------------
# HD transform


@dataclass(frozen=True)
class _Layout:
    """Geometry of one image's HD transform. 'Landscape frame' = after the optional transposition."""

    transposed: bool
    resized_wh: tuple[int, int]  # landscape frame, before padding
    padded_hw: tuple[int, int]  # final frame: the image_sizes entry
    top: int  # white rows above the image, landscape frame

    @property
    def grid(self) -> tuple[int, int]:
        return self.padded_hw[0] // CROP_SIZE, self.padded_hw[1] // CROP_SIZE


def _layout(width: int, height: int, num_crops: int, name: str) -> _Layout:
    transposed = width < height
    rw, rh = hd_resized_size(width, height, num_crops)
    if rw <= 0 or rh <= 0:
        raise ImageError(
            f"image {name} ({width}x{height}) is too elongated for num_crops={num_crops}: its short side "
            "would be resized to 0 pixels; crop or pad it to a less extreme aspect ratio"
        )
    pw, ph = hd_padded_size(width, height, num_crops)
    if transposed:
        rw, rh = rh, rw  # landscape frame
    landscape_padded_h = pw if transposed else ph
    return _Layout(transposed, (rw, rh), (ph, pw), (landscape_padded_h - rh) // 2)


def _norm_constants(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std, value of white) as float32 (3, 1, 1) arrays; white = (255/255 - mean) / std."""
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    white = (np.float32(WHITE) / np.float32(255) - m) / s
    return m, s, white


class _ImageJob:
    """One image's HD transform. `full` is the padded normalised image (3, H, W) in the final frame;
    the tiles are written into `out` ((num_crops + 1, 3, 336, 336) numpy view of the result).
    Work is done in bands of rows so a band is normalised, padded and copied into its tiles while
    it is still in cache."""

    def __init__(self, img: Image.Image, layout: _Layout, out: np.ndarray, norm: tuple):
        self.img, self.layout, self.out = img, layout, out
        self.mean, self.std, self.white = norm
        self.full: np.ndarray | None = None  # (3, *padded_hw) float32 scratch, taken when work starts

    def release(self) -> None:
        if self.full is not None:
            _SCRATCH.give(self.full)
            self.full = None

    # -- whole image on one thread ------------------------------------------------------------
    def run(self) -> None:
        resized = self.prepare().resize(self.layout.resized_wh, Image.BILINEAR)
        self.fill([np.asarray(band) for band in resized.split()], 0)

    def prepare(self) -> Image.Image:
        self.full = _SCRATCH.take((3, *self.layout.padded_hw))
        rgb = to_rgb(self.img)
        return rgb.transpose(Image.TRANSPOSE) if self.layout.transposed else rgb

    # -- one image split over threads (bit-identical to one resize call; see the module doc) ---
    def horizontal_band(self, rgb: Image.Image, y0: int, y1: int) -> Image.Image:
        return rgb.crop((0, y0, rgb.size[0], y1)).resize((self.layout.resized_wh[0], y1 - y0), Image.BILINEAR)

    def vertical_band(self, mid: Image.Image, x0: int, x1: int) -> None:
        band = mid.crop((x0, 0, x1, mid.size[1])).resize((x1 - x0, self.layout.resized_wh[1]), Image.BILINEAR)
        self.fill([np.asarray(b) for b in band.split()], x0)

    # -- shared steps ----------------------------------------------------------------------------
    def fill(self, planes: list[np.ndarray], x0: int) -> None:
        """Normalise resized landscape columns [x0, x0 + w) (three uint8 planes, landscape frame)
        into `full`, write the white padding, and copy that part of `full` into the tiles."""
        lay, (_, height, width) = self.layout, self.full.shape
        nh, w = planes[0].shape
        if lay.transposed:  # landscape columns are final rows; the padding is left and right
            planes = [p.T for p in planes]
            rows, cols, img_rows, img_cols = (x0, x0 + w), (0, width), (x0, x0 + w), (lay.top, lay.top + nh)
        else:
            rows, cols, img_rows, img_cols = (0, height), (x0, x0 + w), (lay.top, lay.top + nh), (x0, x0 + w)
        for start in range(rows[0] - rows[0] % _BAND, rows[1], _BAND):
            a, b = max(start, rows[0]), min(start + _BAND, rows[1])
            ia, ib = max(a, img_rows[0]), min(b, img_rows[1])
            if ia < ib:
                for c, plane in enumerate(planes):
                    dst = self.full[c, ia:ib, img_cols[0] : img_cols[1]]
                    np.divide(plane[ia - img_rows[0] : ib - img_rows[0]], np.float32(255), out=dst, dtype=np.float32)
                    np.subtract(dst, self.mean[c], out=dst)  # (u8 / 255 - mean) / std, op by op, float32
                    np.divide(dst, self.std[c], out=dst)
                self.full[:, ia:ib, cols[0] : img_cols[0]] = self.white
                self.full[:, ia:ib, img_cols[1] : cols[1]] = self.white
            else:
                ia = ib = b
            self.full[:, a:ia, cols[0] : cols[1]] = self.white
            self.full[:, ib:b, cols[0] : cols[1]] = self.white
            self.copy_tiles((a, b), cols)

    def copy_tiles(self, rows: tuple[int, int], cols: tuple[int, int]) -> None:
        """Copy the rectangle rows x cols of `full` into the tiles it overlaps (row-major order)."""
        grid_cols = self.layout.grid[1]
        for r in range(rows[0] // CROP_SIZE, -(-rows[1] // CROP_SIZE)):
            ya, yb = max(rows[0], r * CROP_SIZE), min(rows[1], (r + 1) * CROP_SIZE)
            for c in range(cols[0] // CROP_SIZE, -(-cols[1] // CROP_SIZE)):
                xa, xb = max(cols[0], c * CROP_SIZE), min(cols[1], (c + 1) * CROP_SIZE)
                tile = self.out[1 + r * grid_cols + c]
                tile[:, ya - r * CROP_SIZE : yb - r * CROP_SIZE, xa - c * CROP_SIZE : xb - c * CROP_SIZE] = self.full[:, ya:yb, xa:xb]

    def global_view(self) -> None:
        """Bicubic 336x336 view of the whole padded image (torch, as the original)."""
        full = torch.from_numpy(self.full).unsqueeze(0)  # (1, 3, H, W)
        g = torch.nn.functional.interpolate(full, size=(CROP_SIZE, CROP_SIZE), mode="bicubic", align_corners=False)
        self.out[0] = g[0].numpy()


def _bands(n: int, parts: int) -> list[tuple[int, int]]:
    edges = [n * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _map_all(pool: ThreadPoolExecutor, fn, items) -> list:
    """pool.map that lets every task finish before raising (none may still write into buffers)."""
    futures = [pool.submit(fn, *item) for item in items]
    wait(futures)
    return [f.result() for f in futures]


def _run_split(job: _ImageJob, pool: ThreadPoolExecutor, parts: int) -> None:
    """One image on `parts` threads: horizontal pass by row bands, vertical pass by column bands."""
    rgb = job.prepare()
    (w, h), (nw, nh) = rgb.size, job.layout.resized_wh
    if nw != w:  # horizontal pass (PIL's first), by row bands, assembled into the 8-bit intermediate
        pieces = _map_all(pool, lambda y0, y1: job.horizontal_band(rgb, y0, y1), _bands(h, parts))
        mid = Image.new(rgb.mode, (nw, h))
        y = 0
        for p in pieces:
            mid.paste(p, (0, y))
            y += p.size[1]
    else:  # PIL skips the horizontal pass
        mid = rgb
    # vertical pass by column bands (a plain crop when nh == h, as PIL then skips it)
    _map_all(pool, lambda x0, x1: job.vertical_band(mid, x0, x1), _bands(nw, parts))


# ----------------------------------------------------------------------------------------------
# Threads

_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_SCRATCH = _ScratchPool(keep=max(2, available_cores()))


def _reset_after_fork() -> None:
    """A forked child (e.g. a DataLoader worker) inherits the pools but not their threads or locks."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()
    _SCRATCH._lock = threading.Lock()
    _OUTPUTS._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of `workers` threads (created once per size, threads start lazily)."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="phi3v-image")
        return _POOLS[workers]


# ----------------------------------------------------------------------------------------------
# The image processor


class Phi3VImageProcessor:
    """HD transform of Phi-3-Vision: images -> pixel_values, image_sizes, num_img_tokens.

    `num_crops` (16 for the real checkpoint; 4 or 1 trade detail for speed) is set here and can be
    overridden per call, per image. `num_workers` threads are used (default: the usable cores; 1
    runs everything on the calling thread).
    """

    def __init__(
        self,
        num_crops: int = DEFAULT_NUM_CROPS,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        num_workers: int | None = None,
    ):
        self.num_crops = _check_num_crops(num_crops)
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ConfigError(f"image_mean and image_std need 3 values (got {image_mean}, {image_std})")
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.max_pixels = max_pixels
        self.num_workers = num_workers
        self._norm = _norm_constants(image_mean, image_std)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, num_crops: int | None = None, **kwargs) -> "Phi3VImageProcessor":
        """From a checkpoint folder's preprocessor_config.json (num_crops, image_mean, image_std)."""
        file = Path(path) / "preprocessor_config.json"
        if not file.is_file():
            raise ConfigError(f"{file} not found: a Phi-3-V checkpoint folder has a preprocessor_config.json")
        cfg = json.loads(file.read_text())
        if cfg.get("num_img_tokens", TOKENS_PER_CROP) != TOKENS_PER_CROP:
            raise ConfigError(f"{file}: num_img_tokens {cfg['num_img_tokens']} is not supported (only {TOKENS_PER_CROP})")
        return cls(
            num_crops=cfg.get("num_crops", DEFAULT_NUM_CROPS) if num_crops is None else num_crops,
            image_mean=cfg.get("image_mean", CLIP_MEAN),
            image_std=cfg.get("image_std", CLIP_STD),
            **kwargs,
        )

    def __call__(self, images: Any, num_crops: int | Sequence[int] | None = None, return_tensors: str | None = "pt"):
        """images (one or a list) -> BatchFeature(pixel_values (N, C, 3, 336, 336) float32,
        image_sizes (N, 2) long padded [H, W], num_img_tokens list[int]); C = max num_crops + 1."""
        from .processor import BatchFeature  # processor.py imports this module

        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None (got {return_tensors!r})")
        pixel_values, image_sizes, num_tokens = self.process(images, num_crops)
        return BatchFeature(pixel_values=pixel_values, image_sizes=image_sizes, num_img_tokens=num_tokens)

    preprocess = __call__

    def process(self, images: Any, num_crops: int | Sequence[int] | None = None):
        """(pixel_values, image_sizes, num_img_tokens) for a list of images; see __call__."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ImageError("no images given")
        ncs = _per_image_num_crops(num_crops if num_crops is not None else self.num_crops, len(images))
        loaded, layouts = [], []
        for i, (im, nc) in enumerate(zip(images, ncs)):
            try:
                loaded.append(load_image(im, max_pixels=self.max_pixels))
                layouts.append(_layout(*loaded[-1].size, nc, _describe(im)))
            except ImageError as e:
                e.index = i  # lets the processor say which prompt and image
                raise
        n_entries = max(ncs) + 1
        pixel_values = empty_float32((len(loaded), n_entries, 3, CROP_SIZE, CROP_SIZE))
        out = pixel_values.numpy()
        jobs = []
        for i, (img, lay) in enumerate(zip(loaded, layouts)):
            rows, cols = lay.grid
            out[i, 1 + rows * cols :] = 0.0  # zero tiles up to num_crops + 1 (and to the batch's widest)
            jobs.append(_ImageJob(img, lay, out[i], self._norm))
        try:
            self._run(jobs)
        finally:
            for job in jobs:
                job.release()
        image_sizes = torch.tensor([lay.padded_hw for lay in layouts], dtype=torch.long).reshape(-1, 2)
        num_tokens = [num_image_tokens_for_padded(*lay.padded_hw) for lay in layouts]
        return pixel_values, image_sizes, num_tokens

    def _run(self, jobs: list[_ImageJob]) -> None:
        workers = self.num_workers or available_cores()
        if workers <= 1:
            for job in jobs:
                job.run()
                job.global_view()
            return
        pool = _pool(workers)
        if len(jobs) == 1:
            job = jobs[0]
            w, h = job.layout.resized_wh
            if w * h >= _SPLIT_MIN_PIXELS:
                _run_split(job, pool, workers)
            else:
                job.run()
            job.global_view()
            return
        # one image per task, largest first (balances the threads); the calling thread computes each
        # global view (torch) as images finish
        order = sorted(jobs, key=lambda j: -j.layout.resized_wh[0] * j.layout.resized_wh[1])
        futures = {pool.submit(job.run): job for job in order}
        try:
            for fut in as_completed(futures):
                fut.result()
                futures[fut].global_view()
                futures[fut].release()  # the scratch image is reusable by the images still queued
        finally:
            for fut in futures:
                fut.cancel()
            wait(futures)  # nothing may still write into `out` or a scratch buffer after we return


def _check_num_crops(nc: Any) -> int:
    if isinstance(nc, bool) or not isinstance(nc, (int, np.integer)) or nc < 1:
        raise ConfigError(f"num_crops must be a positive integer (got {nc!r})")
    return int(nc)


def _per_image_num_crops(num_crops: int | Sequence[int], n: int) -> list[int]:
    if isinstance(num_crops, (list, tuple)):
        if len(num_crops) != n:
            raise ConfigError(f"num_crops has {len(num_crops)} entries for {n} images")
        return [_check_num_crops(nc) for nc in num_crops]
    return [_check_num_crops(num_crops)] * n
