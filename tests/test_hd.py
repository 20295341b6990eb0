"""HD-transform geometry against the original's size functions (hd_size_table.json, 5,120 rows)
and the per-image facts of the manifest."""
from __future__ import annotations

import json

import pytest

from phi3v_spatial.errors import ImageError
from phi3v_spatial.processing.hd import (
    CROP_SIZE,
    hd_padded_size,
    hd_resized_size,
    num_image_tokens,
    num_image_tokens_for_grid,
    num_image_tokens_for_padded,
)
from phi3v_spatial.processing.image import _layout


@pytest.fixture(scope="module")
def table(reference_dir) -> dict:
    return json.loads((reference_dir / "hd_size_table.json").read_text())


def test_every_row_of_the_size_table(table):
    assert len(table["rows"]) == 5120
    bad = []
    for w, h, nc, pw, ph, rows, cols, ntok in table["rows"]:
        lay = _layout(w, h, nc, "table")
        got = (hd_padded_size(w, h, nc), lay.padded_hw, lay.grid, num_image_tokens(w, h, nc))
        if got != ((pw, ph), (ph, pw), (rows, cols), ntok) or num_image_tokens_for_padded(ph, pw) != ntok:
            bad.append(((w, h, nc), got))
    assert not bad, f"{len(bad)} rows differ, e.g. {bad[:3]}"


def test_float_truncation_examples(table):
    for ex in table["float_truncation_examples"]:
        w, h, nc = ex["width"], ex["height"], ex["num_crops"]
        lay = _layout(w, h, nc, "example")
        assert lay.transposed == ex["transposed"]
        assert list(lay.resized_wh) == ex["resized_wh_before_pad_in_transposed_frame"]
        assert list(lay.padded_hw) == ex["padded_hw"] and list(lay.grid) == ex["crop_grid_hw"]
        assert lay.resized_wh[1] <= ex["exact_integer_height_in_transposed_frame"]


def test_manifest_image_facts(manifest):
    for name, img in manifest["images"].items():
        for key, facts in img["pixels"].items():
            lay = _layout(img["width"], img["height"], int(key[2:]), name)
            assert lay.transposed == facts["transposed"], (name, key)
            assert list(lay.resized_wh) == facts["resized_wh_before_pad_in_transposed_frame"], (name, key)
            assert list(lay.padded_hw) == facts["padded_hw"] and list(lay.grid) == facts["crop_grid_hw"]
            assert num_image_tokens(img["width"], img["height"], int(key[2:])) == facts["num_img_tokens"]


def test_token_count_formula():
    assert [num_image_tokens_for_grid(2, 2), num_image_tokens_for_grid(1, 4), num_image_tokens_for_grid(1, 1)] == [757, 745, 313]
    assert num_image_tokens_for_padded(2 * CROP_SIZE, 2 * CROP_SIZE) == 757


def test_padding_is_split_floor_half_on_top():
    lay = _layout(112, 100, 4, "x")  # resized to 672x599: 73 white rows, 36 on top
    assert lay.resized_wh == (672, 599) and lay.top == 36
    assert hd_resized_size(100, 112, 4) == (599, 672)  # portrait: the same in the original frame


def test_too_elongated_image_is_an_image_error():
    with pytest.raises(ImageError, match="elongated"):
        _layout(4000, 3, 1, "banner.png")
