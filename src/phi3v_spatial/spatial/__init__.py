"""Spatial data engine: physically settled 3D scenes with exact ground truth, rendered to RGB,
metric depth and instance masks, and the spatial questions and robot actions they answer.

    from phi3v_spatial.spatial import synthesize, iter_samples
    synthesize("data/spatial", num_scenes=100, seed=0, workers=2)
    for sample in iter_samples("data/spatial"): ...

Scene seeds >= EVAL_SEED_BASE are held out for evaluation. The folder format is documented in
docs/dataset_schema.md. pybullet (the `spatial` extra) is imported only when scenes are made.
"""
from .dataset import iter_samples, load_info, synthesize
from .questions import TASKS, make_samples

EVAL_SEED_BASE = 1_000_000_000

__all__ = ["EVAL_SEED_BASE", "TASKS", "iter_samples", "load_info", "make_samples", "synthesize"]
