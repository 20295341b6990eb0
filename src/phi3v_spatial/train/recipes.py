"""Recipes: complete training runs by name. `tiny-spatial` builds the embedded model from scratch
(Phi-3-V architecture at small dimensions, the real tokenizer, tied embeddings, 1 crop) and trains
it on the data engine's scenes (training seeds only), in the stages of TINY_SPATIAL_STAGES."""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
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
log = logging.getLogger("phi3v_spatial.train")


@dataclass(frozen=True)
class Stage:
    """One stage of a staged recipe: a full training run from the previous stage's weights."""

    name: str
    steps: int
    sources: tuple[str, ...]  # "scenes" (all engine questions + listing), "image_tasks", "objects", "zoom"
    probs: tuple[float, ...]
    lr: float = 1e-3
    lr_vision_scale: float = 1.0
    mask_aux_weight: float = 0.0
    position_aux_weight: float = 0.0
    warmup_steps: int = 30


# Why stages: trained from scratch on whole scenes alone, the model learns the answers' language and
# never starts reading the image (each object is one or two of 313 image tokens; ~3,000 CPU steps
# stayed image-blind: own vs shuffled image loss equal). "see" teaches the vision tower the objects
# through a dense loss on the image tokens (train/mask_aux.py); "objects" shows it single-object crops,
# where the answer fills the image and the decoder learns to read the image tokens (own vs shuffled
# image loss 0.26 vs 0.66 after 300 steps); "scenes" mixes object crops, zoomed scenes and whole
# scenes (train/views.py); "polish" settles the quantities on whole scenes at a low learning rate.
# These are the stages (and settings) the shipped embedded model went through, ~3,600 steps of
# batch 8 on one CPU core (~2.5 h); see the README for what it reaches.
TINY_SPATIAL_STAGES = (
    Stage("language", 700, ("scenes",), (1.0,), warmup_steps=50),
    Stage("see", 700, ("image_tasks", "scenes"), (0.6, 0.4), lr_vision_scale=3.0, mask_aux_weight=0.5),
    Stage("objects", 300, ("objects",), (1.0,), warmup_steps=20),
    Stage("scenes", 1500, ("objects", "zoom", "scenes"), (0.2, 0.35, 0.45), lr_vision_scale=3.0, mask_aux_weight=0.5),
    Stage("polish", 400, ("scenes", "zoom", "objects"), (0.7, 0.2, 0.1), lr=3e-4, warmup_steps=10),
)
IMAGE_TASKS = ("listing", "grounding_box", "grounding_point", "existence", "counting")


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


def tiny_spatial_sources(data: str | Path, views: str | Path, seed: int = 0) -> dict:
    """The named sources of TINY_SPATIAL_STAGES over one engine folder (views are written under
    `views` on first use), each packed into multi-turn conversations per image."""
    from .data import load_engine_folder
    from .views import write_object_view, write_zoom_view

    views = Path(views)
    if not (views / "objects" / "data" / "objects.jsonl").is_file():
        write_object_view(data, views / "objects", seed)
    if not (views / "zoom" / "data" / "zoom.jsonl").is_file():
        write_zoom_view(data, views / "zoom")
    return {
        "scenes": lambda: pack_by_image(load_engine_folder(data), seed=seed),
        "image_tasks": lambda: pack_by_image(load_engine_folder(data, tasks=list(IMAGE_TASKS)), seed=seed + 1),
        "objects": lambda: pack_by_image(load_engine_folder(views / "objects"), max_turns=3, seed=seed + 2),
        "zoom": lambda: pack_by_image(load_engine_folder(views / "zoom"), seed=seed + 3),
    }


def run_tiny_spatial(cfg: TrainConfig, stages=TINY_SPATIAL_STAGES, max_steps: int | None = None, on_step=None) -> dict:
    """Run the stages in order under cfg.out/<stage>, each from the previous one's final weights
    (the first from cfg.model, see prepare_tiny_spatial). A finished stage is not rerun; an
    interrupted one resumes from its checkpoints. `max_steps` caps every stage (smoke runs).
    Returns the last stage's train() result, with "model_dir" (its final model folder)."""
    from .checkpoint import latest_checkpoint
    from .loop import train

    model = cfg.model
    data = cfg.data[0]
    views = Path(cfg.out) / "views"
    named = tiny_spatial_sources(data, views, cfg.seed)
    folders = {"scenes": str(data), "image_tasks": str(data), "objects": str(views / "objects"), "zoom": str(views / "zoom")}
    result = None
    for stage in stages:
        steps = min(stage.steps, max_steps) if max_steps else stage.steps
        out = Path(cfg.out) / stage.name
        sub = cfg.replace(model=str(model), out=str(out), data=[folders[name] for name in stage.sources],
                          probs=list(stage.probs), lr=stage.lr, lr_vision_scale=stage.lr_vision_scale,
                          mask_aux_weight=stage.mask_aux_weight, position_aux_weight=stage.position_aux_weight, warmup_steps=min(stage.warmup_steps, steps),
                          max_steps=steps, method="full")
        done = latest_checkpoint(out)
        if done is not None and done.name == f"checkpoint-{steps}":
            log.info("stage %s: already done (%s)", stage.name, done)
            result = {"step": steps, "losses": [], "out": str(out), "skipped": {}}
        else:
            log.info("stage %s: %d steps from %s", stage.name, steps, model)
            result = train(sub, sources=[named[n]() for n in stage.sources], on_step=on_step)
        model = latest_checkpoint(out) / "model"
    result["model_dir"] = str(model)
    return result


def prepare_tiny_spatial(cfg: TrainConfig, tokenizer_from: str | Path, num_scenes: int = 700, workers: int = 1,
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
