"""The tiny-spatial recipe's training-only "list the objects" samples, checked against the scene
files with the test's own arithmetic, and read back by the training data loader."""
import json

import numpy as np
import pytest

pytest.importorskip("pybullet")

from phi3v_spatial.spatial import synthesize  # noqa: E402
from phi3v_spatial.train.data import load_engine_folder  # noqa: E402
from phi3v_spatial.train.recipes import add_listing_shard, pack_by_image  # noqa: E402


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = synthesize(tmp_path_factory.mktemp("recipe") / "ds", 3, seed=0, image_size=(320, 240), tasks=["existence"])
    add_listing_shard(out)
    return out


def _rows(ds):
    return [json.loads(line) for line in (ds / "data" / "listing.jsonl").read_text().splitlines()]


def test_listing_orders_follow_the_scene(ds):
    rows = _rows(ds)
    assert len(rows) == 2 * 3  # two orders per scene
    orders = set()
    for r in rows:
        meta = json.loads(r["meta"])
        scene = json.loads((ds / r["scene"]).read_text())
        by_name = {o["name"]: o for o in scene["objects"]}
        names = json.loads(r["answer"])["value"]
        assert r["messages"][0]["content"].startswith("<|image_1|>\n")
        assert r["messages"][1]["content"] == ", ".join(names) + "."
        assert len(names) >= 2 and len(set(names)) == len(names) and all(n in by_name for n in names)
        if meta["order"] == "left_to_right":  # image x of the boxes, where they are clearly apart
            x = [sum(by_name[n]["bbox_2d"][0::2]) / 2 for n in names]
            assert all(x[i] <= x[j] + 8 for i in range(len(x)) for j in range(i + 1, len(x))), (names, x)
        else:  # horizontal distance from the camera centre
            T = np.asarray(scene["camera"]["world_to_camera"])
            cam = -T[:3, :3].T @ T[:3, 3]
            d = [np.linalg.norm(np.asarray(by_name[n]["box_3d"]["center"])[:2] - cam[:2]) for n in names]
            assert d == sorted(d), (names, d)
        orders.add(meta["order"])
    assert orders == {"left_to_right", "near_to_far"}


def test_listing_samples_train_like_the_engine_s(ds):
    source = load_engine_folder(ds)
    tasks = {s["task"] for s in source.samples}
    assert tasks == {"existence", "listing"}
    packed = pack_by_image(source, seed=0)
    assert sum(len(s["messages"]) // 2 for s in packed.samples) == len(source.samples)  # every question kept once


def test_vision_lr_scale_puts_the_image_side_in_its_own_group():
    from phi3v_spatial.errors import ConfigError
    from phi3v_spatial.random_init import random_config, random_model
    from phi3v_spatial.train.loop import param_groups

    model = random_model(random_config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       vision=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2)))
    assert [g["lr"] for g in param_groups(model, 1e-3)] == [1e-3]
    rest, vision = param_groups(model, 1e-3, 10.0)
    assert (rest["lr"], vision["lr"]) == (1e-3, 1e-2)
    image_side = {id(p) for p in model.model.vision_embed_tokens.parameters()}
    assert {id(p) for p in vision["params"]} == image_side
    assert len(rest["params"]) + len(vision["params"]) == len(list(model.parameters()))
    with pytest.raises(ConfigError, match="lr_vision_scale"):
        param_groups(model, 1e-3, 0.0)


def test_training_reads_the_image(tiny_checkpoint):
    """The same question, answered Yes or No by where the square is: after a few full fine-tuning
    steps the loss with each sample's own image is far below the loss with the images swapped, so
    the pixels reach the loss through the collator and the model (a check that the embedded model's
    image-blindness is a training-budget problem, not a pipeline that drops images)."""
    import torch

    from phi3v_spatial.model import Phi3VForCausalLM
    from phi3v_spatial.processing import Phi3VProcessor
    from phi3v_spatial.train.collator import Collator
    from phi3v_spatial.train.loop import LossModule
    from train_helpers import toy_samples

    torch.manual_seed(0)
    model = Phi3VForCausalLM.from_pretrained(tiny_checkpoint, torch_dtype=torch.float32).train()
    collate = Collator(Phi3VProcessor.from_pretrained(tiny_checkpoint, num_crops=1))
    samples = toy_samples(4)
    swapped = [dict(s, images=samples[i ^ 1]["images"]) for i, s in enumerate(samples)]  # left <-> right
    own, other = collate(samples), collate(swapped)
    loss_of = LossModule(model)
    n = int((own["labels"][:, 1:] != -100).sum())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for step in range(300):  # the answer template is learnt in ~20 steps, the image in ~60-150 more
        opt.zero_grad()
        (loss_of(**own) / n).backward()
        opt.step()
        if step % 10 == 9:
            with torch.no_grad():
                mine, theirs = float(loss_of(**own)) / n, float(loss_of(**other)) / n
            history.append((step + 1, round(mine, 4), round(theirs, 4)))
            if mine < 0.05 and theirs > 5 * mine:
                break
    assert mine < 0.05 and theirs > 5 * mine, history


def test_recipe_runs_its_stages_in_order_and_skips_finished_ones(ds, tmp_path):
    """Every stage of the tiny-spatial recipe (capped at 1 step) trains from the previous stage's
    final weights on its own sources; a second call finds them done and trains nothing."""
    from phi3v_spatial.assets import tokenizer_source
    from phi3v_spatial.model import Phi3VForCausalLM
    from phi3v_spatial.train.recipes import TINY_SPATIAL_STAGES, prepare_tiny_spatial, run_tiny_spatial, tiny_spatial_config

    cfg = tiny_spatial_config(str(tmp_path / "run"), batch_size=2, micro_batch_size=2, progress=False, num_threads=1)
    cfg = prepare_tiny_spatial(cfg, tokenizer_source(), data=str(ds))
    steps = []
    result = run_tiny_spatial(cfg, max_steps=1, on_step=lambda step, m: steps.append(m))
    assert len(steps) == len(TINY_SPATIAL_STAGES)
    previous = cfg.model
    for stage in TINY_SPATIAL_STAGES:
        run = tmp_path / "run" / stage.name
        used = json.loads((run / "train_config.json").read_text())
        assert used["model"] == str(previous) and used["probs"] == list(stage.probs)
        assert used["mask_aux_weight"] == stage.mask_aux_weight and used["max_steps"] == 1
        previous = run / "checkpoint-1" / "model"
    assert ("mask_aux" in steps[1]) and ("mask_aux" not in steps[0])
    assert result["model_dir"] == str(previous)
    assert (tmp_path / "run" / "views" / "objects" / "data" / "objects.jsonl").is_file()
    assert (tmp_path / "run" / "views" / "zoom" / "data" / "zoom.jsonl").is_file()
    Phi3VForCausalLM.from_pretrained(result["model_dir"])
    again = []
    run_tiny_spatial(cfg, max_steps=1, on_step=lambda step, m: again.append(m))
    assert again == []
