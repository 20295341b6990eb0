"""Recipes: complete training runs by name. `tiny-spatial` builds the embedded model from scratch
(Phi-3-V architecture at small dimensions, the real tokenizer, tied embeddings, 1 crop) and trains
it on the data engine's scenes (training seeds only)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..errors import ConfigError
from .config import TrainConfig

# grounding (boxes, points) and the listing shard are in the mix because their answers can only be read
# off the image: without such tasks the decoder learns the answers' language prior and ignores the
# image tokens (with them too, within the ~1,000 CPU steps tried so far; see the README)
TINY_SPATIAL_TASKS = ("relation_yesno", "relation_choice", "distance", "size", "direction_clock", "counting", "existence",
                      "grounding_box", "grounding_point")
# sized for CPU training: ~2.5 samples/s on one core; the 577-patch CLIP crops and the 313 image
# tokens per prompt dominate the cost, so the vision tower is narrow and shallow
TINY_SPATIAL_ARCH = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                         vision=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2),
                         max_position_embeddings=4096, original_max_position_embeddings=4096, rope=None,
                         tie_word_embeddings=True)
TINY_SPATIAL_NUM_CROPS = 1
RECIPES = ("tiny-spatial",)


def tiny_spatial_config(out: str = "runs/tiny-spatial", **overrides) -> TrainConfig:
    cfg = TrainConfig(
        model=str(Path(out) / "init"), out=out, data=[str(Path(out) / "data")], method="full",
        lr=1e-3, weight_decay=0.05, warmup_steps=50, min_lr_ratio=0.05, max_steps=2000, batch_size=8,
        micro_batch_size=4, max_grad_norm=1.0, num_crops=TINY_SPATIAL_NUM_CROPS, save_every=50,
        max_length=2048, seed=0,
    )
    return cfg.replace(**overrides)


@torch.no_grad()
def init_for_training(model, seed: int = 0, std: float = 0.02):
    """GPT-style init for training from scratch: N(0, std) matrices and embeddings, zero biases,
    unit norms, output projections scaled by 1/sqrt(2 x layers)."""
    g = torch.Generator().manual_seed(seed)
    n_layers = model.config.num_hidden_layers
    for name, p in sorted(model.named_parameters()):
        if p.dim() == 1 and ("norm" in name or "layernorm" in name or "layrnorm" in name) and name.endswith("weight"):
            p.fill_(1.0)
        elif name.endswith("bias"):
            p.zero_()
        else:
            s = std / (2 * n_layers) ** 0.5 if name.endswith(("o_proj.weight", "down_proj.weight")) else std
            p.copy_(torch.randn(p.shape, generator=g) * s)
    return model


def build_tiny_spatial_init(out_dir: str | Path, tokenizer_from: str | Path, seed: int = 0) -> Path:
    """The untrained embedded model as a checkpoint folder (real tokenizer, num_crops=1)."""
    from ..model import Phi3VForCausalLM
    from ..random_init import random_config
    from ..weights import save_pretrained

    out = Path(out_dir)
    config = random_config(**TINY_SPATIAL_ARCH)
    model = init_for_training(Phi3VForCausalLM(config), seed)
    save_pretrained(model, out, copy_aux_from=str(tokenizer_from))
    pp = json.loads((out / "preprocessor_config.json").read_text())
    pp["num_crops"] = TINY_SPATIAL_NUM_CROPS
    (out / "preprocessor_config.json").write_text(json.dumps(pp, indent=2))
    return out


def prepare_tiny_spatial(cfg: TrainConfig, tokenizer_from: str | Path, num_scenes: int = 600, workers: int = 1,
                         data: str | None = None) -> TrainConfig:
    """Make the init checkpoint and the training scenes (seeds 0..num_scenes-1, far below the
    held-out range) unless they exist; returns cfg pointing at them."""
    from ..spatial import EVAL_SEED_BASE, synthesize

    out = Path(cfg.out)
    init = out / "init"
    if not (init / "config.json").is_file():
        build_tiny_spatial_init(init, tokenizer_from, cfg.seed)
    if data is None:
        if num_scenes >= EVAL_SEED_BASE:
            raise ConfigError("training scenes would reach the held-out evaluation seeds")
        data = str(out / "data")
        synthesize(data, num_scenes=num_scenes, seed=0, tasks=list(TINY_SPATIAL_TASKS), workers=workers, progress=True)
    if not (Path(data) / "data" / "listing.jsonl").is_file():
        add_listing_shard(data, cfg.seed)
    return cfg.replace(model=str(init), data=[data])


LISTING_QUESTIONS = {
    "left_to_right": ("List the objects in the image from left to right.",
                      "Name every object you see, ordered from left to right.",
                      "What objects are in this picture? Go from left to right."),
    "near_to_far": ("List the objects in the image from nearest to farthest from the camera.",
                    "Name the objects, starting with the one closest to the camera.",
                    "Order the objects in this picture from front to back."),
}


def listing_samples(scene, seed: int = 0) -> list[dict]:
    """Training-only "list the objects" samples of one engine scene: its well-seen objects named
    left to right (image x of their centres) and near to far (horizontal distance from the camera).

    What they teach: every name in the answer has to be read off the image (the text says nothing
    about which colours and shapes are there), so they are the captioning stage of a VLM recipe for
    a model trained from scratch, and their orders are the left/right and front/behind relations."""
    import numpy as np

    from ..spatial.camera import project
    from ..spatial.generate import well_seen

    names = [o.name for o in scene.objects]
    objs = [o for o in scene.objects if o.role == "object" and well_seen(o, scene.camera) and names.count(o.name) == 1]
    if len(objs) < 2:
        return []
    uv, _ = project(scene.camera, np.stack([o.center for o in objs]))
    cam_xy = np.asarray(scene.camera.position)[:2]
    orders = {
        "left_to_right": [objs[i] for i in np.argsort(uv[:, 0], kind="stable")],
        "near_to_far": sorted(objs, key=lambda o: float(np.linalg.norm(np.asarray(o.center)[:2] - cam_xy))),
    }
    rng = np.random.default_rng([seed, int(scene.seed), 11])
    image = scene.files.get("image", "")
    out = []
    for kind, ordered in orders.items():
        q = LISTING_QUESTIONS[kind][int(rng.integers(len(LISTING_QUESTIONS[kind])))]
        out.append({"id": f"{scene.scene_id}-listing-{kind}", "image": image, "images": [image], "task": "listing",
                    "messages": [{"role": "user", "content": f"<|image_1|>\n{q}"},
                                 {"role": "assistant", "content": ", ".join(o.name for o in ordered) + "."}],
                    "answer": {"type": "list", "value": [o.name for o in ordered]},
                    "scene": f"scenes/{scene.scene_id}.json", "meta": {"order": kind, "seed": scene.seed}})
    return out


def add_listing_shard(engine_dir: str | Path, seed: int = 0) -> Path:
    """Write `data/listing.jsonl` (listing_samples of every scene) into a data-engine folder."""
    from ..spatial.dataset import encode_sample
    from ..spatial.scene import load_scene

    root = Path(engine_dir)
    out = root / "data" / "listing.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for path in sorted((root / "scenes").glob("*.json")):
            for sample in listing_samples(load_scene(path), seed):
                f.write(encode_sample(sample))
    return out


def pack_by_image(source, max_turns: int = 8, seed: int = 0):
    """Samples of the same image -> multi-turn conversations of 1..max_turns questions (image in
    the first turn only). The 313 image tokens are then paid once for several answers."""
    import numpy as np

    from .data import Source

    by_image: dict = {}
    for s in source.samples:
        if len(s["images"]) == 1:
            by_image.setdefault(str(s["images"][0]), []).append(s)
    rng = np.random.default_rng([seed, 7])
    out = []
    for image, group in sorted(by_image.items()):
        order = rng.permutation(len(group))
        i = 0
        while i < len(order):
            k = int(rng.integers(1, max_turns + 1))
            turns = [group[j] for j in order[i:i + k]]
            i += k
            messages = []
            for n, t in enumerate(turns):
                user, answer = t["messages"][-2], t["messages"][-1]
                content = user["content"] if n == 0 else user["content"].replace("<|image_1|>", "").lstrip("\n")
                messages += [{"role": "user", "content": content}, answer]
            out.append({"messages": messages, "images": [image], "id": turns[0].get("id")})
    return Source(name=f"{source.name}-packed", samples=out)


def ship(checkpoint_model_dir: str | Path, dest: str | Path, dtype=torch.bfloat16) -> Path:
    """Copy a trained model folder into the package assets, weights cast to `dtype`."""
    from ..model import Phi3VForCausalLM
    from ..weights import save_pretrained

    model = Phi3VForCausalLM.from_pretrained(checkpoint_model_dir, torch_dtype=dtype)
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    save_pretrained(model, dest, max_shard_size="19MB", copy_aux_from=str(checkpoint_model_dir))
    return dest
