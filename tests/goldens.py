"""Helpers to read the golden model cases of ../shared/fixtures/reference (via the conftest fixtures)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def model_case(manifest: dict, name: str) -> dict:
    for case in manifest["model_cases"]:
        if case["name"] == name:
            return case
    raise KeyError(name)


def load_model_case(reference_dir: Path, manifest: dict, name: str):
    """(case, arrays, inputs) where inputs holds torch tensors ready for the model."""
    case = model_case(manifest, name)
    z = dict(np.load(reference_dir / case["outputs"]["file"]))
    inputs = {"input_ids": torch.from_numpy(z["input_ids"]), "attention_mask": torch.from_numpy(z["attention_mask"])}
    parts = case["inputs"].get("pixel_values_parts") or []
    if parts:
        pv = [torch.from_numpy(np.load(reference_dir / p)["pixel_values"]) for p in parts]
        inputs["pixel_values"] = torch.cat(pv)
        inputs["image_sizes"] = torch.from_numpy(z["image_sizes"])
    return case, z, inputs


def valid_positions(mask: np.ndarray) -> np.ndarray:
    return mask.astype(bool)
