"""Training-only views (object crops, zoomed scenes): crops checked against the engine's instance
masks with the test's own arithmetic, answers carried over or re-expressed exactly, and the folders
read back by the training data loader."""
import json

import numpy as np
import pytest

pytest.importorskip("pybullet")
from PIL import Image  # noqa: E402

from phi3v_spatial.errors import DataError  # noqa: E402
from phi3v_spatial.spatial import synthesize  # noqa: E402
from phi3v_spatial.spatial.dataset import read_mask  # noqa: E402
from phi3v_spatial.spatial.scene import load_scene  # noqa: E402
from phi3v_spatial.train.data import load_engine_folder  # noqa: E402
from phi3v_spatial.train.views import (ZOOM_TASKS, remap_grounding, write_object_view, write_zoom_view,  # noqa: E402
                                       zoom_box)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("views") / "ds", 3, seed=0, image_size=(320, 240),
                      tasks=["existence", "grounding_box", "grounding_point", "distance"])


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _scene(ds, row):
    return load_scene(ds / row["scene"])


def test_object_crops_hold_their_object(ds, tmp_path):
    path = write_object_view(ds, tmp_path / "objects")
    rows = _rows(path)
    assert rows and {r["task"] for r in rows} == {"object"}
    for r in rows:
        meta = json.loads(r["meta"])
        scene = _scene(ds, r)
        obj = next(o for o in scene.objects if o.mask_id == meta["mask_id"])
        assert [o.name for o in scene.objects].count(obj.name) == 1 and obj.visible_fraction >= 0.8
        answer = r["messages"][-1]["content"]
        assert {"name": obj.name, "colour": obj.colour, "shape": obj.shape}[meta["kind"]] in answer
        # every visible pixel of the object lies in the crop, and the crop is mostly about it
        mask = read_mask(ds / scene.files["mask"])
        ys, xs = np.nonzero(mask == obj.mask_id)
        x0, y0, x1, y1 = meta["crop"]
        assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
        assert Image.open(tmp_path / "objects" / r["image"]).size == (x1 - x0, y1 - y0)
        assert len(xs) / ((x1 - x0) * (y1 - y0)) > 0.05
    loaded = load_engine_folder(tmp_path / "objects")
    assert len(loaded.samples) == len(rows) and all(Image.open(s["images"][0]).size[0] > 0 for s in loaded.samples)


def test_zoom_keeps_true_questions_and_reexpresses_grounding(ds, tmp_path):
    path = write_zoom_view(ds, tmp_path / "zoom")
    rows = _rows(path)
    originals = {r["id"]: r for shard in sorted((ds / "data").glob("*.jsonl")) for r in _rows(shard)}
    kept = {i for i, r in originals.items() if r["task"] in ZOOM_TASKS}
    assert {r["id"].removesuffix("-zoom") for r in rows} == kept and "distance" not in {r["task"] for r in rows}
    for r in rows:
        orig = originals[r["id"].removesuffix("-zoom")]
        scene = _scene(ds, r)
        W, H = scene.camera.width, scene.camera.height
        x0, y0, x1, y1 = json.loads(r["meta"])["crop"]
        crop = Image.open(tmp_path / "zoom" / r["image"])
        assert crop.size == (x1 - x0, y1 - y0) and abs(crop.size[0] / crop.size[1] - 4 / 3) < 0.02
        for o in scene.objects:  # every object seen in the scene is inside the crop
            if o.role == "object" and o.visible_pixels:
                bx = o.bbox_2d
                assert x0 <= bx[0] + 1 and y0 <= bx[1] + 1 and bx[2] <= x1 + 1 and bx[3] <= y1 + 1
        assert r["messages"][0] == orig["messages"][0]
        if not r["task"].startswith("grounding"):
            assert r["messages"] == orig["messages"] and r["answer"] == orig["answer"]
            continue
        new, old = json.loads(r["messages"][-1]["content"]), json.loads(orig["messages"][-1]["content"])
        new, old = (new, old) if isinstance(new, list) else ([new], [old])
        for a, b in zip(new, old):
            assert a["label"] == b["label"]
            key = "bbox_2d" if "bbox_2d" in a else "point_2d"
            for k, (va, vb) in enumerate(zip(a[key], b[key])):  # same pixel, in the crop's frame
                if k % 2 == 0:
                    assert abs(va / 1000 * (x1 - x0) + x0 - vb / 1000 * W) <= 1.0
                else:
                    assert abs(va / 1000 * (y1 - y0) + y0 - vb / 1000 * H) <= 1.0
        assert json.loads(r["answer"])["value"] == remap_grounding(json.loads(orig["answer"])["value"], (x0, y0, x1, y1), W, H)


def test_zoom_box_rules():
    box = zoom_box([[100, 100, 120, 110], [200, 150, 230, 170]], 640, 480)
    x0, y0, x1, y1 = box
    assert x0 <= 100 - 12 and x1 >= 230 + 12 and y0 <= 100 and y1 >= 170
    assert abs((x1 - x0) / (y1 - y0) - 4 / 3) < 0.02 and x1 - x0 >= 200
    edge = zoom_box([[0, 0, 30, 30]], 640, 480)  # clipped inside the image, still 4:3
    assert edge[0] == 0 and edge[1] == 0 and abs((edge[2] - edge[0]) / (edge[3] - edge[1]) - 4 / 3) < 0.02
    with pytest.raises(DataError, match="at least one object box"):
        zoom_box([], 640, 480)


def test_views_refuse_a_folder_that_is_not_an_engine_dataset(tmp_path):
    with pytest.raises(DataError, match="not a data-engine folder"):
        write_zoom_view(tmp_path, tmp_path / "z")
    with pytest.raises(DataError, match="not a data-engine folder"):
        write_object_view(tmp_path, tmp_path / "o")
