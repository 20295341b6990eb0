"""The image-token auxiliary loss from engine masks: labels laid out like the processor's tokens
(checked with the test's own arithmetic on hand-made masks and on an engine scene), the collator
carrying them in image order, and a short training run that lowers it, saves and resumes its heads."""
import json

import numpy as np
import pytest
import torch

from phi3v_spatial.processing.hd import num_image_tokens
from phi3v_spatial.train.mask_aux import IGNORE, EngineMaskLabels, MaskAuxHeads, token_labels


def _grid_rows(lab, rows, cols):
    """(rows*(cols+1), 2) with separators -> (rows, cols, 2), checking the separators."""
    g = lab.view(rows, cols + 1, 2)
    assert (g[:, -1] == IGNORE).all()
    return g[:, :-1]


def test_one_crop_layout_follows_the_hd_transform():
    mask = np.zeros((480, 640), np.int32)  # 640x480 -> 336x252, 42 white rows on top
    mask[0:40, 0:53] = 3  # top-left 53x40 pixels -> 28x21 resized -> cell (r=1, c=0) of the 336 canvas
    mask[240:480, 320:640] = 5  # bottom-right quarter
    lab = token_labels(mask, {3: (1, 2), 5: (4, 7)}, num_crops=1)
    assert lab.shape == (num_image_tokens(640, 480, 1), 2) == (313, 2)
    sub, sep, glb = lab[:156], lab[156], lab[157:]
    assert (sep == IGNORE).all()
    for part in (sub, glb):  # with one crop the global view is the same 336x336 canvas
        g = _grid_rows(part, 12, 12)
        assert g[0].eq(0).all()  # the padding row
        assert g[1, 0].tolist() == [1, 2] and g[1, 1].tolist() == [0, 0]
        # rows 252/2+42=168.. -> cells 6..10 (the last image row ends at 294, cell 10), columns 168.. -> 6..11
        assert g[6:10, 6:12].eq(torch.tensor([4, 7])).all() and g[11].eq(0).all() and g[6:10, :6].eq(0).all()


def test_more_crops_give_a_sub_grid_and_glb_sub_order_swaps():
    mask = np.zeros((480, 640), np.int32)
    mask[:, :320] = 2  # left half
    table = {2: (3, 3)}
    lab = token_labels(mask, table, num_crops=4)
    n = num_image_tokens(640, 480, 4)
    assert lab.shape == (n, 2)
    rows = (n - 1 - 156) // 25  # 2 crops wide: 24 cells + separator per row
    sub = _grid_rows(lab[:rows * 25], rows, 24)
    assert sub[rows // 2, :11].eq(3).all() and sub[rows // 2, 13:].eq(0).all()
    swapped = token_labels(mask, table, num_crops=4, order="glb_sub")
    assert torch.equal(swapped[:156], lab[-156:]) and torch.equal(swapped[157:], lab[:rows * 25])


pytest.importorskip("pybullet")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    from phi3v_spatial.spatial import synthesize

    return synthesize(tmp_path_factory.mktemp("aux") / "ds", 2, seed=0, image_size=(320, 240), tasks=["existence"])


def test_engine_labels_name_the_objects_of_the_scene(ds, tmp_path):
    from phi3v_spatial.spatial.catalog import COLOUR_NAMES, KIND_BY_SHAPE

    labels = EngineMaskLabels(num_crops=1)
    scene = json.loads(sorted((ds / "scenes").glob("*.json"))[0].read_text())
    lab = labels(ds / scene["files"]["image"])
    assert lab is not None and lab.shape == (313, 2)
    seen = {(int(c), int(k)) for c, k in lab.tolist() if c > 0}
    objects = {(list(COLOUR_NAMES).index(o["colour"]) + 1, sorted(KIND_BY_SHAPE).index(o["shape"]) + 1)
               for o in scene["objects"] if o["role"] == "object"}
    assert seen and seen <= objects
    (tmp_path / "images").mkdir()
    assert labels(tmp_path / "images" / "x.png") is None and labels("not/an/engine/image.png") is None


def test_collator_carries_labels_in_image_order(ds, tiny_checkpoint):
    from phi3v_spatial.processing import Phi3VProcessor
    from phi3v_spatial.train.collator import Collator

    labels = EngineMaskLabels(num_crops=1)
    imgs = [ds / json.loads(p.read_text())["files"]["image"] for p in sorted((ds / "scenes").glob("*.json"))]
    other = ds / "elsewhere.png"
    other.write_bytes(imgs[0].read_bytes())  # same pixels, not in images/: no labels
    collate = Collator(Phi3VProcessor.from_pretrained(tiny_checkpoint, num_crops=1), image_labels=labels)
    two = {"messages": [{"role": "user", "content": "<|image_1|> <|image_2|> Same?"}, {"role": "assistant", "content": "No."}],
           "images": [str(imgs[1]), str(other)]}
    one = {"messages": [{"role": "user", "content": "<|image_1|> What?"}, {"role": "assistant", "content": "Objects."}],
           "images": [str(imgs[0])]}
    b = collate([two, one])
    got = b["image_token_labels"]
    assert got.shape == (3 * 313, 2)
    assert torch.equal(got[:313], labels(imgs[1])) and (got[313:626] == IGNORE).all() and torch.equal(got[626:], labels(imgs[0]))


def test_heads_loss_ignores_unlabelled_tokens():
    heads = MaskAuxHeads(8).requires_grad_(False)
    feats = [torch.randn(5, 8), torch.randn(3, 8)]
    lab = torch.tensor([[1, 1], [IGNORE, IGNORE], [0, 0], [2, 3], [IGNORE, IGNORE], [IGNORE, IGNORE], [IGNORE, IGNORE], [1, 2]])
    keep = lab[:, 0] != IGNORE
    x = torch.cat(feats)[keep]
    want = (torch.nn.functional.cross_entropy(heads.colour(x), lab[keep, 0])
            + torch.nn.functional.cross_entropy(heads.kind(x), lab[keep, 1]))
    assert float(heads(feats, lab)) == pytest.approx(float(want), rel=1e-6)
    assert float(heads(feats, torch.full((8, 2), IGNORE))) == 0.0
    with pytest.raises(ValueError, match="8 image tokens but 7 labels"):
        heads(feats, lab[:7])


def test_training_with_the_aux_loss_lowers_it_and_resumes_its_heads(ds, tiny_checkpoint, tmp_path):
    from phi3v_spatial.errors import ConfigError
    from phi3v_spatial.train.config import TrainConfig
    from phi3v_spatial.train.loop import train

    cfg = TrainConfig(model=str(tiny_checkpoint), out=str(tmp_path / "run"), data=[str(ds)], method="full",
                      mask_aux_weight=1.0, lr=3e-3, max_steps=8, batch_size=2, micro_batch_size=2, num_crops=1,
                      save_every=4, progress=False, num_threads=1, seed=0)
    seen = []
    train(cfg, on_step=lambda step, m: seen.append(m["mask_aux"]))
    assert len(seen) == 8 and all(v is not None for v in seen)
    assert np.mean(seen[-3:]) < np.mean(seen[:3])
    assert (tmp_path / "run" / "checkpoint-8" / "mask_aux_heads.safetensors").is_file()
    # resume: the continuation from checkpoint-4 repeats steps 5..8 exactly (heads restored too)
    import shutil

    shutil.rmtree(tmp_path / "run" / "checkpoint-8")
    again = []
    train(cfg, on_step=lambda step, m: again.append(m["mask_aux"]))
    assert again == pytest.approx(seen[4:], rel=1e-5)
    with pytest.raises(ConfigError, match="mask_aux_weight needs method 'full'"):
        train(cfg.replace(method="lora", out=str(tmp_path / "lora")))


def test_mask_and_position_losses_together(ds, tiny_checkpoint, tmp_path):
    """Both heads at once: the labels side by side (mask columns, then position columns), each
    loss reported and weighed on its own, each head saved to its own file."""
    from phi3v_spatial.train.config import TrainConfig
    from phi3v_spatial.train.loop import train

    cfg = TrainConfig(model=str(tiny_checkpoint), out=str(tmp_path / "run"), data=[str(ds)], method="full",
                      mask_aux_weight=0.5, position_aux_weight=0.2, lr=3e-3, max_steps=2, batch_size=2,
                      micro_batch_size=2, num_crops=1, save_every=2, progress=False, num_threads=1, seed=0)
    seen = []
    train(cfg, on_step=lambda step, m: seen.append(m))
    assert all(m["mask_aux"] > 0 and m["position_aux"] > 0 for m in seen)
    assert seen[0]["position_aux"] == pytest.approx(2 * np.log(12), rel=0.1)  # untrained heads: ~chance over 12 bins
    for name in ("mask", "position"):
        assert (tmp_path / "run" / "checkpoint-2" / f"{name}_aux_heads.safetensors").is_file()
