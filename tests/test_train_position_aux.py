"""The image-token position loss: (column bin, row bin) labels laid out like the processor's tokens
for any image, labellers stacked side by side, the heads' loss, and a short training run that lowers
it and saves and resumes its heads."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from phi3v_spatial.processing.hd import num_image_tokens
from phi3v_spatial.train.collator import StackedLabels
from phi3v_spatial.train.mask_aux import IGNORE
from phi3v_spatial.train.position_aux import PositionAuxHeads, PositionLabels, position_labels


def _grid(lab, rows, cols):
    g = lab.view(rows, cols + 1, 2)
    assert (g[:, -1] == IGNORE).all()  # a separator ends every row
    return g[:, :-1]


@pytest.mark.parametrize("size,crops", [((640, 480), 1), ((640, 480), 4), ((300, 900), 4), ((1920, 1080), 16)])
def test_labels_follow_the_hd_layout(size, crops):
    from phi3v_spatial.processing.hd import hd_padded_size

    lab = position_labels(*size, crops)
    assert lab.shape == (num_image_tokens(*size, crops), 2)
    pw, ph = hd_padded_size(*size, crops)
    R, C = ph // 336 * 12, pw // 336 * 12
    sub, sep, glb = lab[: R * (C + 1)], lab[R * (C + 1)], lab[R * (C + 1) + 1 :]
    assert (sep == IGNORE).all()
    s, g = _grid(sub, R, C), _grid(glb, 12, 12)
    assert torch.equal(g[..., 0], torch.arange(12).expand(12, 12)) and torch.equal(g[..., 1], torch.arange(12)[:, None].expand(12, 12))
    # the sub grid's bins: equal bins of the canvas, the same place as the global token over it
    assert torch.equal(s[..., 0], (torch.arange(C) * 12 // C).expand(R, C))
    assert torch.equal(s[..., 1], (torch.arange(R) * 12 // R)[:, None].expand(R, C))
    assert torch.equal(s[0, 0], g[0, 0]) and torch.equal(s[-1, -1], g[-1, -1])
    swapped = position_labels(*size, crops, order="glb_sub")
    assert torch.equal(swapped[: 12 * 13], glb) and torch.equal(swapped[12 * 13 + 1 :], sub)


def test_labeller_reads_sizes_and_stacks(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (640, 480)).save(path)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    lab = PositionLabels(num_crops=4)
    want = position_labels(640, 480, 4)
    assert torch.equal(lab(path), want) and torch.equal(lab(str(path)), want)
    assert torch.equal(lab(Image.new("RGB", (640, 480))), want) and torch.equal(lab(np.zeros((480, 640, 3), np.uint8)), want)
    assert lab(tmp_path / "bad.png") is None and lab(tmp_path / "missing.png") is None
    stacked = StackedLabels([lambda image: None, lab])
    got = stacked(path)
    assert stacked.columns == 4 and got.shape == (want.shape[0], 4)
    assert (got[:, :2] == IGNORE).all() and torch.equal(got[:, 2:], want)
    assert StackedLabels([lambda image: None]).__call__(path) is None


def test_heads_loss_ignores_separators():
    heads = PositionAuxHeads(8).requires_grad_(False)
    feats = [torch.randn(4, 8), torch.randn(2, 8)]
    lab = torch.tensor([[0, 0], [IGNORE, IGNORE], [11, 3], [5, 5], [IGNORE, IGNORE], [2, 9]])
    keep = lab[:, 0] != IGNORE
    x = torch.cat(feats)[keep]
    want = (torch.nn.functional.cross_entropy(heads.column(x), lab[keep, 0])
            + torch.nn.functional.cross_entropy(heads.row(x), lab[keep, 1]))
    assert float(heads(feats, lab)) == pytest.approx(float(want), rel=1e-6)
    assert float(heads(feats, torch.full((6, 2), IGNORE))) == 0.0
    with pytest.raises(ValueError, match="6 image tokens but 5 labels"):
        heads(feats, lab[:5])


def test_training_with_the_position_loss_lowers_it_and_resumes_its_heads(tiny_checkpoint, tmp_path):
    import shutil

    from phi3v_spatial.errors import ConfigError
    from phi3v_spatial.train.config import TrainConfig
    from phi3v_spatial.train.loop import train

    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "question": "What is this?", "answer": "Noise."})
    table = tmp_path / "t.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(model=str(tiny_checkpoint), out=str(tmp_path / "run"), data=[str(table)], method="full",
                      position_aux_weight=1.0, lr=3e-3, max_steps=8, batch_size=2, micro_batch_size=2, num_crops=1,
                      save_every=4, progress=False, num_threads=1, seed=0)
    seen = []
    train(cfg, on_step=lambda step, m: seen.append(m["position_aux"]))
    assert len(seen) == 8 and np.mean(seen[-3:]) < np.mean(seen[:3])
    assert (tmp_path / "run" / "checkpoint-8" / "position_aux_heads.safetensors").is_file()
    shutil.rmtree(tmp_path / "run" / "checkpoint-8")
    again = []
    train(cfg, on_step=lambda step, m: again.append(m["position_aux"]))
    assert again == pytest.approx(seen[4:], rel=1e-5)
    with pytest.raises(ConfigError, match="position_aux_weight needs method 'full'"):
        train(cfg.replace(method="lora", out=str(tmp_path / "lora")))
