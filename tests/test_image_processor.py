"""Image loading and the HD transform: golden pixels of the original, threads == one thread, every
input kind and mode, and bad inputs that must fail fast with ImageError."""
from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from phi3v_spatial.errors import ConfigError, ImageError
from phi3v_spatial.processing import Phi3VImageProcessor, load_image
from phi3v_spatial.processing import image as image_mod


def synthetic(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Gradients plus noise: every resize tap matters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
    arr = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode) if mode != "RGB" else Image.fromarray(arr, "RGB")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def proc() -> Phi3VImageProcessor:
    return Phi3VImageProcessor(num_crops=4)


# -- parity with the original ---------------------------------------------------------------------


def golden_pixel_files(manifest):
    for name, img in manifest["images"].items():
        for key, facts in img["pixels"].items():
            yield name, int(key[2:]), facts


def test_pixels_match_the_goldens(manifest, reference_dir, proc):
    tol = manifest["tolerances"]["pixel_values"]["atol"]
    rtol = manifest["tolerances"]["pixel_values_summary"]["rtol"]
    checked = 0
    for name, nc, facts in golden_pixel_files(manifest):
        gold = np.load(reference_dir / facts["file"])
        out = proc(Image.open(reference_dir / "images" / name), num_crops=nc)
        pv = out["pixel_values"].numpy()
        assert out["image_sizes"].tolist() == gold["image_sizes"].tolist(), name
        assert out["num_img_tokens"] == gold["num_img_tokens"].tolist(), name
        if facts["stored"] == "full":
            assert pv.shape == gold["pixel_values"].shape
            assert np.abs(pv - gold["pixel_values"]).max() <= tol, (name, nc)
        else:  # summary: statistics of the full tensor plus a strided sample
            s, pv64 = facts["summary"], pv.astype(np.float64)
            assert list(pv.shape) == s["shape"]
            for key, value in (("sum", pv64.sum()), ("abs_sum", np.abs(pv64).sum()), ("sq_sum", (pv64**2).sum())):
                assert value == pytest.approx(s[key], rel=rtol), (name, key)
            means = pv64.reshape(pv.shape[1], -1).mean(1)
            np.testing.assert_allclose(means, s["per_crop_mean"], rtol=rtol, atol=1e-12)
            assert np.abs(pv[..., ::16, ::16] - gold["pixel_values_sub16"]).max() <= tol
        checked += 1
    assert checked == 12


# -- threads: splitting one image over workers is bit-identical -------------------------------------


def _sizes_by_pass(num_crops: int) -> dict[str, tuple[int, int]]:
    """One (width, height) for each pattern of PIL resize passes: both, vertical only, none."""
    found = {"both": (1920, 1080)}
    for w in range(336 * 2, 336 * 2 + 1):
        for h in range(300, w):
            lay = image_mod._layout(w, h, num_crops, "search")
            nw, nh = lay.resized_wh
            if nw == w and nh != h:
                found.setdefault("vertical_only", (w, h))
            if nw == w and nh == h:
                found.setdefault("none", (w, h))
    return found


@pytest.mark.parametrize(
    "size,num_crops",
    [((1920, 1080), 16), ((480, 640), 4), ((50, 50), 16), ((1000, 200), 16), ((337, 2000), 9), ((640, 480), 1)],
)
def test_split_over_threads_equals_one_thread(size, num_crops, monkeypatch):
    monkeypatch.setattr(image_mod, "_SPLIT_MIN_PIXELS", 0)
    img = synthetic(*size, seed=sum(size))
    one = Phi3VImageProcessor(num_crops, num_workers=1)([img])["pixel_values"]
    for workers in (2, 3):
        split = Phi3VImageProcessor(num_crops, num_workers=workers)([img])["pixel_values"]
        assert torch.equal(one, split), (size, num_crops, workers)


def test_split_covers_single_pass_resizes(monkeypatch):
    monkeypatch.setattr(image_mod, "_SPLIT_MIN_PIXELS", 0)
    sizes = _sizes_by_pass(4)
    assert {"vertical_only", "none"} <= sizes.keys()
    for w, h in sizes.values():
        img = synthetic(w, h)
        one = Phi3VImageProcessor(4, num_workers=1)([img])["pixel_values"]
        assert torch.equal(one, Phi3VImageProcessor(4, num_workers=2)([img])["pixel_values"]), (w, h)


def test_batch_equals_each_image_alone_with_mixed_num_crops():
    imgs = [synthetic(1280, 720, seed=1), synthetic(300, 500, seed=2), synthetic(64, 48, seed=3)]
    ncs = [16, 4, 1]
    proc = Phi3VImageProcessor(num_workers=2)
    out = proc(imgs, num_crops=ncs)
    assert out["pixel_values"].shape == (3, 17, 3, 336, 336)
    for i, (img, nc) in enumerate(zip(imgs, ncs)):
        solo = proc([img], num_crops=nc)
        assert torch.equal(out["pixel_values"][i, : nc + 1], solo["pixel_values"][0])
        assert not out["pixel_values"][i, nc + 1 :].any()  # crop axis zero-padded to the widest
        assert out["image_sizes"][i].tolist() == solo["image_sizes"][0].tolist()
        assert out["num_img_tokens"][i] == solo["num_img_tokens"][0]
    assert out["image_sizes"].dtype == torch.long and out["pixel_values"].dtype == torch.float32


def test_global_view_and_tile_layout(proc):
    """Entry 0 is the bicubic view of the padded image, then tiles row-major, then zeros."""
    img = synthetic(700, 300)  # resized to 672x288, padded to 672x336: a 1x2 grid, 2 zero tiles
    pv = proc(img)["pixel_values"][0]
    h, w = proc(img)["image_sizes"][0].tolist()
    rows, cols = h // 336, w // 336
    full = torch.cat([torch.cat(list(pv[1 + r * cols : 1 + (r + 1) * cols]), dim=2) for r in range(rows)], dim=1)
    glb = torch.nn.functional.interpolate(full[None], size=(336, 336), mode="bicubic", align_corners=False)[0]
    assert torch.equal(glb, pv[0])
    assert not pv[1 + rows * cols :].any()
    white = (1.0 - torch.tensor(image_mod.CLIP_MEAN)) / torch.tensor(image_mod.CLIP_STD)
    assert torch.equal(full[:, 0, 0], white)  # the top padding row is normalised white


# -- every input kind and mode ------------------------------------------------------------------


def test_input_kinds_agree(tmp_path, proc):
    img = synthetic(400, 300)
    path = tmp_path / "x.png"
    img.save(path)
    arr = np.asarray(img)
    ref = proc(img)["pixel_values"]
    for x in (str(path), path, path.read_bytes(), io.BytesIO(path.read_bytes()), arr, torch.tensor(arr).permute(2, 0, 1)):
        assert torch.equal(proc(x)["pixel_values"], ref), type(x)
    as_float = torch.tensor(arr).permute(2, 0, 1).float() / 255  # to_pil_image-style truncation
    assert load_image(as_float).size == (400, 300)
    gray = np.asarray(img.convert("L"))
    assert torch.equal(proc(gray)["pixel_values"], proc(img.convert("L"))["pixel_values"])
    assert torch.equal(proc(gray[:, :, None])["pixel_values"], proc(img.convert("L"))["pixel_values"])


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "P", "CMYK", "1", "YCbCr", "I", "F", "RGBX"])
def test_modes_convert_like_pil(mode, proc):
    img = synthetic(120, 90).convert(mode)
    assert torch.equal(proc(img)["pixel_values"], proc(img.convert("RGB"))["pixel_values"])


def test_rgba_drops_alpha_without_compositing(proc):
    rgba = synthetic(100, 80).convert("RGBA")
    rgba.putalpha(0)
    assert torch.equal(proc(rgba)["pixel_values"], proc(rgba.convert("RGB"))["pixel_values"])


def test_sixteen_bit_is_scaled_not_clipped(proc):
    arr16 = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
    img16 = Image.fromarray(arr16)
    assert img16.mode.startswith("I;16")
    expected = Image.fromarray((arr16 >> 8).astype(np.uint8), "L")
    assert torch.equal(proc(img16)["pixel_values"], proc(expected)["pixel_values"])
    assert proc(Image.new("La", (10, 10)))["pixel_values"].shape == (1, 5, 3, 336, 336)


# -- bad inputs: ImageError naming the input, quickly ------------------------------------------


def _png_with_header_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR claims width x height (a decompression bomb's header)."""
    data = bytearray(png_bytes(Image.new("L", (8, 8))))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def test_decompression_bomb_fails_fast_from_the_header(tmp_path):
    bomb = _png_with_header_size(9000, 9000)  # 81 MP: above our default limit, below PIL's own
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match="pixels"):
        load_image(bomb)
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_with_header_size(200_000, 200_000))  # far above PIL's limit too
    with pytest.raises(ImageError, match="bomb.png"):
        load_image(path)
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(ImageError, match="limit of 1000"):
        load_image(png_bytes(synthetic(40, 30)), max_pixels=1000)
    with pytest.raises(ImageError, match="pixels"):
        Phi3VImageProcessor(max_pixels=1000)(synthetic(40, 30))


def test_truncated_and_corrupt_files(tmp_path):
    data = png_bytes(synthetic(300, 200))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.png"):
        load_image(path)
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_zero_size_and_unsupported_inputs():
    with pytest.raises(ImageError, match="empty"):
        load_image(Image.new("RGB", (0, 10)))
    with pytest.raises(ImageError, match="empty"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageError, match="uint8"):
        load_image(np.zeros((5, 5, 3), np.float64))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((5, 5, 2), np.uint8))
    with pytest.raises(ImageError, match="CxHxW"):
        load_image(torch.zeros(5, 5))
    with pytest.raises(ImageError, match="unsupported image input"):
        load_image(12345)


def test_bad_num_crops():
    with pytest.raises(ConfigError):
        Phi3VImageProcessor(num_crops=0)
    with pytest.raises(ConfigError):
        Phi3VImageProcessor()(synthetic(10, 10), num_crops=[4, 4])


def test_from_pretrained(tiny_checkpoint, meta_dir):
    assert Phi3VImageProcessor.from_pretrained(tiny_checkpoint).num_crops == 4
    assert Phi3VImageProcessor.from_pretrained(meta_dir).num_crops == 16
    assert Phi3VImageProcessor.from_pretrained(meta_dir, num_crops=1).num_crops == 1
    with pytest.raises(ConfigError):
        Phi3VImageProcessor.from_pretrained(meta_dir / "nowhere")


def test_recycled_output_buffers_hold_no_stale_data():
    proc = Phi3VImageProcessor(num_crops=16)
    full_grid = proc([synthetic(1344, 1344, seed=5)] * 4)["pixel_values"]  # every entry non-zero
    assert bool((full_grid.flatten(2).abs().sum(-1) > 0).all())
    ptr = full_grid.data_ptr()
    del full_grid  # its buffer goes back for reuse
    small = proc([synthetic(2000, 200, seed=6)] * 4)["pixel_values"]  # a 1x10 grid: entries 11.. are zero
    assert small.data_ptr() == ptr
    image_mod.release_cached_buffers()
    fresh = Phi3VImageProcessor(num_crops=16, num_workers=1)([synthetic(2000, 200, seed=6)] * 4)["pixel_values"]
    assert torch.equal(small, fresh) and not small[:, 11:].any()


def _process_in_child(queue):
    torch.set_num_threads(1)  # what DataLoader workers do: torch's OpenMP pool does not survive fork
    out = Phi3VImageProcessor(num_crops=16)([synthetic(1920, 1080), synthetic(640, 480)])
    queue.put(float(out["pixel_values"].double().sum()))


def test_works_in_a_forked_child_after_use_in_the_parent():
    import multiprocessing as mp

    expected = float(Phi3VImageProcessor(num_crops=16)([synthetic(1920, 1080), synthetic(640, 480)])["pixel_values"].double().sum())
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_process_in_child, args=(queue,))
    child.start()
    child.join(timeout=30)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "the child hung: thread pools inherited through fork"
    assert queue.get(timeout=5) == expected
