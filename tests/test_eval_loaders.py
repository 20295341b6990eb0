"""Public benchmark loaders on tiny files written in the published formats, and suite specs."""
import json

import pytest
from PIL import Image

from phi3v_spatial.errors import DataError
from phi3v_spatial.evaluate import loaders, suites
from phi3v_spatial.evaluate.answerers import OracleAnswerer, conversation


def _img(path, color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), color).save(path)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_vsr(tmp_path):
    _img(tmp_path / "images" / "000000050403.jpg")
    _img(tmp_path / "000000119360.jpg")
    rows = [  # VSR's published jsonl fields
        {"image": "000000050403.jpg", "image_link": "http://images.cocodataset.org/train2017/000000050403.jpg",
         "caption": "The teddy bear is in front of the person.", "label": 1, "relation": "in front of",
         "annotator_id": 31, "vote_true_validator_id": [2, 6], "vote_false_validator_id": []},
        {"image": "000000119360.jpg", "caption": "The cat is under the bed.", "label": 0, "relation": "under"},
    ]
    samples = loaders.load_vsr(_jsonl(tmp_path / "test.jsonl", rows))
    assert [s.answer for s in samples] == [{"type": "yesno", "value": True}, {"type": "yesno", "value": False}]
    assert [s.relation for s in samples] == ["in front of", "under"]
    assert samples[0].images == [tmp_path / "images" / "000000050403.jpg"]  # found under images/
    assert "teddy bear is in front of the person" in samples[0].messages[0]["content"]
    assert samples[0].messages[0]["content"].startswith("<|image_1|>")
    assert [s.task for s in samples] == ["vsr", "vsr"] and len({s.id for s in samples}) == 2


def test_vsr_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        loaders.load_vsr(tmp_path / "missing.jsonl")
    _jsonl(tmp_path / "a.jsonl", [{"image": "nope.jpg", "caption": "x", "label": 1}])
    with pytest.raises(DataError, match="--image-dir"):
        loaders.load_vsr(tmp_path / "a.jsonl")
    _img(tmp_path / "x.jpg")
    _jsonl(tmp_path / "b.jsonl", [{"image": "x.jpg", "caption": "x", "label": 7}])
    with pytest.raises(DataError, match="label"):
        loaders.load_vsr(tmp_path / "b.jsonl")
    (tmp_path / "c.jsonl").write_text('{"image": "x.jpg"\n')
    with pytest.raises(DataError, match="c.jsonl:1"):
        loaders.load_vsr(tmp_path / "c.jsonl")
    _jsonl(tmp_path / "d.jsonl", [{"image": "x.jpg", "label": 1}])
    with pytest.raises(DataError, match="'caption'"):
        loaders.load_vsr(tmp_path / "d.jsonl")


def test_pope(tmp_path):
    imgs = tmp_path / "val2014"
    _img(imgs / "COCO_val2014_000000310196.jpg")
    rows = [  # POPE's published format (output/coco/coco_pope_adversarial.json is jsonl)
        {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?", "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a dining table in the image?", "label": "no"},
    ]
    samples = loaders.load_pope(_jsonl(tmp_path / "coco_pope_adversarial.json", rows), image_dir=imgs)
    assert [s.answer for s in samples] == [
        {"type": "yesno", "value": True, "negative": "adversarial"},
        {"type": "yesno", "value": False, "negative": "adversarial"},
    ]
    assert [s.id for s in samples] == ["pope-adversarial-1", "pope-adversarial-2"]
    assert "Is there a snowboard in the image? Answer yes or no." in samples[0].messages[0]["content"]
    _jsonl(tmp_path / "bad.jsonl", [dict(rows[0], label="maybe")])
    with pytest.raises(DataError, match="yes/no"):
        loaders.load_pope(tmp_path / "bad.jsonl", image_dir=imgs)


def test_multiple_choice_cvbench_and_blink(tmp_path):
    _img(tmp_path / "img" / "2D" / "count" / "ade20k_10.png")
    cv = [{  # CV-Bench fields
        "idx": 0, "type": "2D", "task": "Count", "image": "img/2D/count/ade20k_10.png",
        "question": "How many organs are in the image?", "choices": ["3", "2", "1", "0"], "answer": "(C)",
        "prompt": "How many organs are in the image? Select from the following choices.\n(A) 3\n(B) 2\n(C) 1\n(D) 0",
        "filename": "img/2D/count/ade20k_10.png", "source": "ADE20K",
    }]
    s = loaders.load_multiple_choice(_jsonl(tmp_path / "cvbench.jsonl", cv), name="cvbench")[0]
    assert s.answer == {"type": "choice", "options": ["3", "2", "1", "0"], "value": 2}
    assert s.task == "Count" and s.id == "cvbench-0"
    assert "A. 3\nB. 2\nC. 1\nD. 0" in s.messages[0]["content"]

    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png", (0, 0, 255))
    blink = [{  # BLINK fields, multi-image, as a json list
        "idx": "val_Multi-view_Reasoning_1", "question": "Is the camera moving left or right?", "sub_task": "Multi-view_Reasoning",
        "image_1": "a.png", "image_2": "b.png", "image_3": None, "image_4": None,
        "choices": ["left", "right"], "answer": "(B)", "explanation": "",
    }]
    (tmp_path / "blink.json").write_text(json.dumps(blink))
    s = loaders.load_multiple_choice(tmp_path / "blink.json", name="blink")[0]
    assert s.task == "Multi-view_Reasoning" and s.answer["value"] == 1
    assert s.messages[0]["content"].startswith("<|image_1|>\n<|image_2|>\n")
    parts = conversation(s)[0]["content"]
    assert [p["type"] for p in parts] == ["image", "image", "text"] and parts[1]["image"] == str(tmp_path / "b.png")

    for answer, value in [("B", 1), (0, 0), ("right", 1), ("b.", 1)]:
        _jsonl(tmp_path / "x.jsonl", [dict(blink[0], answer=answer)])
        assert loaders.load_multiple_choice(tmp_path / "x.jsonl")[0].answer["value"] == value
    _jsonl(tmp_path / "x.jsonl", [dict(blink[0], answer="(E)")])
    with pytest.raises(DataError, match="answer"):
        loaders.load_multiple_choice(tmp_path / "x.jsonl")
    _jsonl(tmp_path / "x.jsonl", [blink[0], blink[0]])
    with pytest.raises(DataError, match="unique"):
        loaders.load_multiple_choice(tmp_path / "x.jsonl")


def test_dataset_folder_and_suite_specs(tmp_path):
    _img(tmp_path / "ds" / "images" / "s0.png")
    row = {"id": "s0-relation_yesno-0", "image": "images/s0.png", "images": ["images/s0.png"],
           "messages": [{"role": "user", "content": "<|image_1|>\nIs the mug left of the bowl?"},
                        {"role": "assistant", "content": "Yes, it is."}],
           "task": "relation_yesno", "answer": {"type": "yesno", "value": True}, "scene": "scenes/s0.json",
           "meta": {"relation": "left of"}}
    (tmp_path / "ds" / "data").mkdir()
    _jsonl(tmp_path / "ds" / "data" / "shard-0-of-1.jsonl", [row])
    [s] = suites.load_suite(f"dir:{tmp_path / 'ds'}")
    assert s.reference == "Yes, it is." and len(s.messages) == 1 and s.images == [tmp_path / "ds" / "images" / "s0.png"]
    assert s.root == tmp_path / "ds" and s.relation == "left of"
    assert OracleAnswerer("reference").answer([s]) == ["Yes, it is."]
    with pytest.raises(DataError, match="unknown suite"):
        suites.load_suite("imagenet")
    with pytest.raises(DataError, match="suite kind"):
        suites.load_suite("coco:/x")
    with pytest.raises(DataError, match="no shards"):
        suites.load_suite(f"dir:{tmp_path}")
    _jsonl(tmp_path / "ds" / "data" / "shard-0-of-1.jsonl", [{k: v for k, v in row.items() if k != "answer"}])
    with pytest.raises(DataError, match="'answer'"):
        suites.load_suite(f"dir:{tmp_path / 'ds'}")


def test_suite_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3V_SPATIAL_CACHE", str(tmp_path))
    assert suites.suite_dir("spatial-mini").parent == tmp_path / "suites"
    monkeypatch.delenv("PHI3V_SPATIAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert suites.cache_dir() == tmp_path / "xdg" / "phi3v_spatial"
