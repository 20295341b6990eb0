"""Runs: oracle/baselines on a hand-written dataset of every task, resumption, the report, the CLI,
and the local model path on the tiny checkpoint."""
import json

import numpy as np
import pytest
from PIL import Image

from phi3v_spatial import cli
from phi3v_spatial.errors import DataError
from phi3v_spatial.evaluate import (
    ConstantAnswerer,
    LocalModelAnswerer,
    OracleAnswerer,
    RandomAnswerer,
    evaluate,
    load_dataset,
    read_results,
    run,
)
from phi3v_spatial.evaluate.runner import RESULTS_FILE

TASK_ANSWERS = {
    "relation_yesno": ({"type": "yesno", "value": True}, "Yes, the mug is left of the bowl.", "left of"),
    "relation_choice": ({"type": "choice", "options": ["behind", "left of", "right of"], "value": 1}, "B. left of", "left of"),
    "distance": ({"type": "quantity", "value_m": 0.42, "unit": "cm", "quantity": "center_distance"}, "About 42 cm.", None),
    "size": ({"type": "quantity", "value_m": 0.3048, "unit": "ft", "quantity": "height"}, "It is 1 foot tall.", None),
    "direction_clock": ({"type": "clock", "value": 2}, "At 2 o'clock.", None),
    "counting": ({"type": "count", "value": 3}, "There are three mugs.", None),
    "existence": ({"type": "yesno", "value": False, "negative": "adversarial"}, "No, there is no banana.", None),
    "grounding_box": ({"type": "boxes", "value": [{"label": "mug", "bbox_2d": [0, 0, 500, 500]}]},
                      '[{"label": "mug", "bbox_2d": [0, 0, 500, 500]}]', None),
    "grounding_point": ({"type": "points", "value": [{"label": "mug", "point_2d": [250, 250]}], "mask": "masks/s{k}.png",
                         "mask_ids": [5]}, '[{"label": "mug", "point_2d": [250, 250]}]', None),
    "robot_action": ({"type": "poses", "value": [{"x": 0.5, "y": 0.1, "z": 0.02, "roll": 0.0, "pitch": 3.1416, "yaw": 0.0,
                                                  "grasp": True}]},
                     '```json\n[{"x": 0.5, "y": 0.1, "z": 0.02, "roll": 0.0, "pitch": 3.1416, "yaw": 0.0, "grasp": true}]\n```', None),
}


def write_dataset(root, scenes=3):
    """A dataset folder in the schema: `scenes` scenes x every task."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "data").mkdir()
    rows = []
    for k in range(scenes):
        Image.new("RGB", (40, 30), (30 * k, 100, 50)).save(root / "images" / f"s{k}.png")
        mask = np.zeros((30, 40), np.uint8)
        mask[:15, :20] = 5  # the mug: top-left quarter
        Image.fromarray(mask).save(root / "masks" / f"s{k}.png")
        for task, (answer, reply, relation) in TASK_ANSWERS.items():
            answer = json.loads(json.dumps(answer).replace("{k}", str(k)))
            if task == "relation_yesno":
                answer = dict(answer, value=bool(k % 2 == 0))
                reply = "Yes, it is." if answer["value"] else "No, it is not."
            rows.append({"id": f"s{k}-{task}-0", "image": f"images/s{k}.png", "images": [f"images/s{k}.png"],
                         "messages": [{"role": "user", "content": f"<|image_1|>\nQuestion about {task}?"},
                                      {"role": "assistant", "content": reply}],
                         "task": task, "answer": answer, "scene": f"scenes/s{k}.json",
                         "meta": {"relation": relation} if relation else {}})
    half = len(rows) // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        (root / "data" / f"shard-{i}-of-2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return root


@pytest.fixture
def dataset(tmp_path):
    return load_dataset(write_dataset(tmp_path / "ds"))


@pytest.mark.parametrize("mode", ["structured", "reference"])
def test_oracle_scores_100_on_every_task(dataset, tmp_path, mode):
    summary = evaluate(dataset, OracleAnswerer(mode), tmp_path / "out", suite="hand", batch_size=4, charts=False)
    assert summary["num_samples"] == 3 * len(TASK_ANSWERS)
    assert set(summary["tasks"]) == set(TASK_ANSWERS)
    for task, agg in summary["tasks"].items():
        assert agg["score"] == 1.0 and agg["answer_rate"] == 1.0, task
    assert summary["tasks"]["distance"]["mra"] == 1.0 and summary["tasks"]["robot_action"]["json_valid"] == 1.0
    assert summary["relations"]["left of"]["score"] == 1.0


def test_always_yes_scores_the_yes_ratio(dataset, tmp_path):
    summary = evaluate(dataset, ConstantAnswerer("yes"), tmp_path / "out", suite="hand", charts=False)
    t = summary["tasks"]["relation_yesno"]
    assert t["accuracy"] == t["truth_yes_ratio"] == pytest.approx(2 / 3)  # scenes 0 and 2 are "yes"
    assert t["pope_yes_ratio"] == 1.0 and t["pope_recall"] == 1.0 and t["pope_precision"] == pytest.approx(2 / 3)
    assert summary["tasks"]["existence"]["accuracy"] == 0.0


class Flaky:
    """Answers like the oracle, counts calls, raises after `fail_after` samples."""

    def __init__(self, fail_after=None):
        self.name = "flaky"
        self.fail_after = fail_after
        self.seen = []

    def answer(self, samples):
        if self.fail_after is not None and len(self.seen) + len(samples) > self.fail_after:
            raise RuntimeError("crash")
        self.seen.extend(s.id for s in samples)
        return OracleAnswerer().answer(samples)


def test_interrupted_run_resumes_without_rescoring(dataset, tmp_path):
    out = tmp_path / "out"
    first = Flaky(fail_after=7)
    with pytest.raises(RuntimeError):
        run(dataset, first, out, suite="hand", batch_size=2)
    assert len(first.seen) == 6  # three batches of two landed before the crash
    assert list(read_results(out / RESULTS_FILE)) == first.seen
    # a torn last line (crash mid-write) is dropped and that sample answered again
    with open(out / RESULTS_FILE, "a") as f:
        f.write('{"id": "' + dataset[6].id + '", "te')
    second = Flaky()
    records = run(dataset, second, out, suite="hand", batch_size=2)
    assert second.seen == [s.id for s in dataset[6:]]  # nothing finished was asked again
    assert [r["id"] for r in records] == [s.id for s in dataset] and all(r["correct"] for r in records)
    lines = (out / RESULTS_FILE).read_text().splitlines()
    assert len(lines) == len(dataset) and len({json.loads(x)["id"] for x in lines}) == len(dataset)
    third = Flaky()
    run(dataset, third, out, suite="hand")
    assert third.seen == []
    with pytest.raises(DataError, match="another output folder"):
        run(dataset, ConstantAnswerer("yes"), out, suite="hand")


def test_limit_and_errors(dataset, tmp_path):
    records = run(dataset, RandomAnswerer(), tmp_path / "a", suite="hand", limit=5)
    assert len(records) == 5
    with pytest.raises(DataError, match="twice"):
        run(dataset + dataset[:1], RandomAnswerer(), tmp_path / "b")
    with pytest.raises(DataError, match="batch size"):
        run(dataset, RandomAnswerer(), tmp_path / "c", batch_size=0)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / RESULTS_FILE).write_text('{"id": "x"\n{"id": "y"}\n')
    with pytest.raises(DataError, match="corrupt"):
        run(dataset, RandomAnswerer(), tmp_path / "d")


def test_report_files(dataset, tmp_path):
    out = tmp_path / "out"
    summary = evaluate(dataset, RandomAnswerer(seed=3), out, suite="hand", batch_size=8)
    for name in ("summary.json", "report.md", "accuracy_by_task.png", "accuracy_by_relation.png", "relative_error_hist.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "accuracy_by_task.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    md = (out / "report.md").read_text()
    for heading in ("| task | n |", "## Quantities", "## Yes / no", "## Grounding: boxes", "## Grounding: points",
                    "## Robot actions", "## POPE subsets", "## Relations"):
        assert heading in md, heading
    assert summary["task_types"]["robot_action"] == "poses"


def test_cli_oracle_and_baseline(tmp_path, capsys):
    root = write_dataset(tmp_path / "ds")
    rc = cli.main(["eval", "--oracle", "--suite", f"dir:{root}", "--out", str(tmp_path / "o"), "--no-progress", "--no-charts"])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["score"] == 1.0 and last["num_samples"] == 30 and last["answerer"] == "oracle:structured"
    rc = cli.main(["eval", "--baseline", "yes", "--suite", f"dir:{root}", "--out", str(tmp_path / "y"),
                   "--limit", "10", "--no-progress", "--no-charts"])
    assert rc == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_samples"] == 10
    rc = cli.main(["eval", "--baseline", "random", "--suite", "vsr:/does/not/exist.jsonl", "--out", str(tmp_path / "z")])
    assert rc == 2 and "not found" in capsys.readouterr().err


class FakeModel:
    """Stands in for phi3v_spatial.load(): records the conversations it is given."""

    def __init__(self):
        self.calls = []

    def chat_batch(self, conversations, batch_size=16, max_new_tokens=256, temperature=0.0):
        assert batch_size == len(conversations)  # the runner's batch is decoded as one batch
        self.calls.append((conversations, max_new_tokens, temperature))

        class R:
            text = "Yes."
        return [R() for _ in conversations]


def test_local_answerer_batches_parts(dataset, tmp_path):
    model = FakeModel()
    records = run(dataset[:5], LocalModelAnswerer(model, max_new_tokens=12), tmp_path / "o", batch_size=2)
    assert [len(c[0]) for c in model.calls] == [2, 2, 1] and model.calls[0][1:] == (12, 0.0)
    conv = model.calls[0][0][0]
    assert conv == [{"role": "user", "content": [{"type": "image", "image": str(dataset[0].images[0])},
                                                 {"type": "text", "text": "Question about relation_yesno?"}]}]
    assert records[0]["text"] == "Yes." and records[0]["correct"]


def test_cli_model_path_wiring(tmp_path, monkeypatch, capsys):
    import phi3v_spatial

    seen = {}

    def fake_load(path, device="cpu", dtype="float32", num_crops=None):
        seen.update(path=path, device=device, dtype=dtype, num_crops=num_crops)
        return FakeModel()

    monkeypatch.setattr(phi3v_spatial, "load", fake_load, raising=False)
    root = write_dataset(tmp_path / "ds", scenes=1)
    rc = cli.main(["eval", "--model", str(tmp_path / "ckpt"), "--suite", f"dir:{root}", "--out", str(tmp_path / "o"),
                   "--dtype", "bfloat16", "--num-crops", "4", "--batch-size", "3", "--no-progress", "--no-charts"])
    assert rc == 0
    assert seen == {"path": str(tmp_path / "ckpt"), "device": "cpu", "dtype": "bfloat16", "num_crops": 4}
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["answerer"] == "local:ckpt" and last["num_samples"] == 10


def test_cli_defaults_to_the_embedded_model(tmp_path, monkeypatch, capsys):
    import phi3v_spatial
    from phi3v_spatial.assets import default_model_path

    seen = {}

    def fake_load(path, device="cpu", dtype="float32", num_crops=None):
        seen["path"] = path
        return FakeModel()

    monkeypatch.setattr(phi3v_spatial, "load", fake_load, raising=False)
    root = write_dataset(tmp_path / "ds", scenes=1)
    rc = cli.main(["eval", "--suite", f"dir:{root}", "--out", str(tmp_path / "o"), "--no-progress", "--no-charts"])
    assert rc == 0 and seen["path"] == str(default_model_path())


def test_tiny_checkpoint_end_to_end(dataset, tmp_path, tiny_checkpoint):
    phi3v_spatial = pytest.importorskip("phi3v_spatial")
    if not hasattr(phi3v_spatial, "load"):
        pytest.skip("phi3v_spatial.load() is not built yet")
    answerer = LocalModelAnswerer.from_path(tiny_checkpoint, max_new_tokens=6)
    samples = dataset[:4]
    summary = evaluate(samples, answerer, tmp_path / "out", suite="hand", batch_size=2, charts=False)
    assert summary["num_samples"] == 4
    records = list(read_results(tmp_path / "out" / RESULTS_FILE).values())
    assert [r["id"] for r in records] == [s.id for s in samples]
    assert all(isinstance(r["text"], str) for r in records)
    # same greedy answers one at a time as in a batch of two
    single = LocalModelAnswerer(answerer.model, max_new_tokens=6).answer(samples[:1])
    assert single[0] == records[0]["text"]
