"""Phi3VProcessor: every processor case of the goldens, the hand-built image batch of the model
goldens, batch == each prompt alone, image-tag rules and the model card's drop-in surface."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from phi3v_spatial.errors import ImageError, PromptError
from phi3v_spatial.processing import BatchFeature, Phi3VProcessor
from phi3v_spatial.processing.hd import num_image_tokens

PROMPT = "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"


@pytest.fixture(scope="module")
def proc(tiny_checkpoint) -> Phi3VProcessor:
    return Phi3VProcessor.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def images(reference_dir) -> dict[str, Image.Image]:
    out = {}
    for path in sorted((reference_dir / "images").glob("*.png")):
        out[path.name] = Image.open(path)
        out[path.name].load()
    return out


def _expected_pixels(case, reference_dir):
    parts = [np.load(reference_dir / p) for p in case["pixel_values"]["parts"]]
    if all("pixel_values" in p for p in parts):
        return np.concatenate([p["pixel_values"] for p in parts])
    return None  # stored as a summary


def test_every_processor_case(proc, manifest, reference_dir, images):
    tol = manifest["tolerances"]["pixel_values"]["atol"]
    for case in manifest["processor_cases"]:
        inputs = case["inputs"]
        gold = np.load(reference_dir / case["outputs"]["file"])
        imgs = [images[name] for name in inputs["images"]] or None
        out = proc(inputs["prompt"], imgs, return_tensors="pt", num_crops=inputs["num_crops"])
        name = case["name"]
        assert out["input_ids"].dtype == torch.long and out["attention_mask"].dtype == torch.long
        assert out["input_ids"].tolist() == gold["input_ids"].tolist(), name
        assert out["attention_mask"].tolist() == gold["attention_mask"].tolist(), name
        if not imgs:
            assert set(out) == {"input_ids", "attention_mask"}
            continue
        assert out["image_sizes"].tolist() == gold["image_sizes"].tolist(), name
        ids = out["input_ids"][0]
        counts = [int((ids == -(k + 1)).sum()) for k in range(len(imgs))]
        assert counts == gold["num_img_tokens"].tolist(), name
        expected = _expected_pixels(case, reference_dir)
        pv = out["pixel_values"].numpy()
        assert list(pv.shape) == case["pixel_values"]["shape"], name
        if expected is not None:
            assert np.abs(pv - expected).max() <= tol, name
        else:
            summary = case["pixel_values"]["summary"]
            assert pv.astype(np.float64).sum() == pytest.approx(summary["sum"], rel=1e-6), name
        assert int((ids < 0).sum()) == case["facts"]["num_negative_ids"]
        assert [i for i, t in enumerate(ids.tolist()) if t == 1] == case["facts"]["bos_positions"]


def test_hand_built_image_batch_of_the_model_goldens(proc, manifest, reference_dir, images):
    """m_batch2_image: rows processed alone by the original, then padded by hand (right for the
    forward, left for generation) and pixel_values concatenated: our batch call gives exactly that."""
    case = next(c for c in manifest["model_cases"] if c["name"] == "m_batch2_image")
    gold = np.load(reference_dir / case["outputs"]["file"])
    rows = [[images[n] for n in names] for names in case["inputs"]["images"]]
    right = proc(case["inputs"]["prompts"], rows, padding=True, padding_side="right")
    left = proc(case["inputs"]["prompts"], rows, padding=True, padding_side="left")
    assert right["input_ids"].tolist() == gold["input_ids"].tolist()
    assert right["attention_mask"].tolist() == gold["attention_mask"].tolist()
    assert left["input_ids"].tolist() == gold["gen_input_ids"].tolist()
    assert left["attention_mask"].tolist() == gold["gen_attention_mask"].tolist()
    assert right["image_sizes"].tolist() == gold["image_sizes"].tolist()
    expected = np.concatenate([np.load(reference_dir / p)["pixel_values"] for p in case["inputs"]["pixel_values_parts"]])
    assert np.array_equal(right["pixel_values"].numpy(), expected)


@pytest.mark.parametrize("name", ["m_batch2_text", "m_batch2_text_straddle"])
def test_text_batches_of_the_model_goldens(proc, manifest, reference_dir, name):
    case = next(c for c in manifest["model_cases"] if c["name"] == name)
    gold = np.load(reference_dir / case["outputs"]["file"])
    right = proc(case["inputs"]["prompts"], padding=True)
    left = proc(case["inputs"]["prompts"], padding=True, padding_side="left")
    assert right["input_ids"].tolist() == gold["input_ids"].tolist()
    assert left["input_ids"].tolist() == gold["gen_input_ids"].tolist()
    assert left["attention_mask"].tolist() == gold["gen_attention_mask"].tolist()


def test_batch_equals_each_prompt_alone(proc, images):
    prompts = [
        PROMPT,
        "Describe <|image_1|> and then <|image_2|> briefly.",
        "<|user|>\nNo image here, just a longer question about kitchens.<|end|>\n<|assistant|>\n",
        "<|image_1|>",
    ]
    rows = [
        [images["img_1920x1080.png"]],
        [images["img_480x640.png"], images["img_50x50_rgba.png"]],
        [],
        [images["img_1000x200.png"]],
    ]
    ncs = [16, 4, 4, 1]
    for side in ("left", "right"):
        batch = proc(prompts, rows, num_crops=ncs, padding_side=side)
        length = batch["input_ids"].shape[1]
        assert batch["pixel_values"].shape == (4, 17, 3, 336, 336)
        k = 0
        for i, (p, ims, nc) in enumerate(zip(prompts, rows, ncs)):
            solo = proc(p, ims or None, num_crops=nc)
            n = solo["input_ids"].shape[1]
            span = slice(length - n, length) if side == "left" else slice(0, n)
            assert torch.equal(batch["input_ids"][i, span], solo["input_ids"][0])
            assert batch["attention_mask"][i].sum() == n and bool(batch["attention_mask"][i, span].all())
            pad = batch["input_ids"][i][batch["attention_mask"][i] == 0]
            assert bool((pad == proc.tokenizer.pad_token_id).all())
            for j in range(len(ims)):
                assert torch.equal(batch["pixel_values"][k, : nc + 1], solo["pixel_values"][j])
                assert not batch["pixel_values"][k, nc + 1 :].any()
                assert torch.equal(batch["image_sizes"][k], solo["image_sizes"][j])
                k += 1
        assert k == 4


def test_flat_image_list_is_handed_out_by_tags(proc, images):
    a, b, c = images["img_336x336.png"], images["img_640x480.png"], images["img_1000x200.png"]
    flat = proc(["<|image_1|> x", "<|image_1|><|image_2|> y"], [a, b, c])
    nested = proc(["<|image_1|> x", "<|image_1|><|image_2|> y"], [[a], [b, c]])
    assert all(torch.equal(flat[k], nested[k]) for k in nested)
    with pytest.raises(PromptError, match="ask for 3 images but 2"):
        proc(["<|image_1|> x", "<|image_1|><|image_2|> y"], [a, b])


def test_out_of_order_and_repeated_tags_are_placed_by_number(proc, images):
    wide, square = images["img_1000x200.png"], images["img_336x336.png"]  # 745 and 757 tokens at nc 4
    ids = proc("<|image_2|> then <|image_1|>", [wide, square])["input_ids"][0].tolist()
    first, second = ids.index(-2), ids.index(-1)
    assert first < second
    assert ids.count(-2) == num_image_tokens(336, 336, 4) == 757 and ids.count(-1) == 745
    assert ids[first : first + 757] == [-2] * 757 and ids[second : second + 745] == [-1] * 745
    twice = proc("<|image_1|> and again <|image_1|>", [wide])["input_ids"][0].tolist()
    assert twice.count(-1) == 2 * 745


def test_tag_errors_name_the_tag_or_image(proc, images):
    img = images["img_336x336.png"]
    with pytest.raises(PromptError, match=r"<\|image_2\|>"):
        proc("<|image_1|> <|image_2|>", [img])
    with pytest.raises(PromptError, match=r"image 2 is given.*<\|image_2\|>"):
        proc("<|image_1|>", [img, img])
    with pytest.raises(PromptError, match=r"<\|image_0\|>"):
        proc("<|image_0|>", [img])
    with pytest.raises(PromptError, match=r"<\|image_1\|> but only 0"):
        proc("<|image_1|> with no image")
    with pytest.raises(PromptError, match="image 1 is given"):
        proc("no tag", [img])
    with pytest.raises(PromptError, match="2 image lists for 1 prompts"):
        proc(["<|image_1|>"], [[img], [img]])


def test_bad_image_error_names_prompt_and_image(proc, images):
    with pytest.raises(ImageError, match=r"prompt 1, image 2: .*not an image"):
        proc(["<|image_1|>", "<|image_1|><|image_2|>"], [[images["img_336x336.png"]], [images["img_336x336.png"], b"garbage"]])


def test_model_card_surface(tiny_checkpoint, images):
    processor = Phi3VProcessor.from_pretrained(tiny_checkpoint, num_crops=16)
    assert processor.num_crops == 16
    messages = [{"role": "user", "content": "<|image_1|>\nWhat is shown in this image?"}]
    prompt = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(prompt, [images["img_640x480.png"]], return_tensors="pt").to("cpu")
    assert isinstance(inputs, BatchFeature) and inputs.pixel_values.shape == (1, 17, 3, 336, 336)
    half = inputs.to(torch.bfloat16)
    assert half.pixel_values.dtype == torch.bfloat16 and half.input_ids.dtype == torch.long
    assert processor(prompt, images["img_640x480.png"], num_crops=4)["pixel_values"].shape[1] == 5
    generated = torch.cat([inputs["input_ids"], torch.tensor([[15043, 3186, processor.tokenizer.eos_token_id]])], 1)
    answer = processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert answer == ["Hello world"]
    assert processor.decode(generated[0, -3:], skip_special_tokens=True) == "Hello world"
    with pytest.raises(AttributeError):
        inputs.no_such_key
