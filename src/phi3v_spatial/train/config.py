"""The training run's settings: one dataclass, filled from a YAML/JSON file, a recipe and/or CLI
flags (later sources override earlier ones)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError


@dataclass
class TrainConfig:
    model: str | None = None  # checkpoint folder / hub id to start from
    out: str = "runs/train"
    data: list[str] = field(default_factory=list)  # sources, see data.open_source
    probs: list[float] | None = None  # sampling probability per source (normalised)
    method: str = "lora"  # lora | qlora | full
    # LoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])
    lora_modules_to_save: list[str] = field(default_factory=list)
    freeze_vision: bool = False  # full fine-tuning: keep the CLIP tower fixed
    freeze_projector: bool = False  # full fine-tuning: keep the image projector fixed
    # optimisation
    lr: float = 2e-4
    lr_vision_scale: float = 1.0  # the image side (CLIP tower, separators, projector) trains at lr x this
    weight_decay: float = 0.0
    mask_aux_weight: float = 0.0  # > 0: + this x the image tokens' colour/kind loss from engine masks (train/mask_aux.py)
    position_aux_weight: float = 0.0  # > 0: + this x the image tokens' column/row-bin loss (train/position_aux.py)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    max_steps: int = 100
    batch_size: int = 8  # samples per optimizer step, over all processes
    micro_batch_size: int = 1  # samples per forward pass (per process): accumulation = batch/(micro*world)
    max_grad_norm: float | None = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast where the device supports it)
    gradient_checkpointing: bool = False
    sharding: str = "none"  # none (DDP when launched on many processes) | fsdp (train/sharding.py) | deepspeed (train/zero.py)
    zero_stage: int = 2  # sharding deepspeed: ZeRO stage 1 (optimizer state) or 2 (+ gradients)
    # data
    seed: int = 0
    max_length: int = 4096
    num_crops: int | None = None  # overrides preprocessor_config.json
    # run
    save_every: int = 100  # checkpoint every N steps (and at the end); 0 = only at the end
    keep_checkpoints: int = 2
    log_every: int = 1
    report_to: str = "none"  # none | tensorboard | wandb
    resume: bool = True  # continue from the newest checkpoint in `out` when there is one
    num_threads: int | None = None  # torch CPU threads
    progress: bool = True

    @classmethod
    def fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def replace(self, **changes) -> "TrainConfig":
        unknown = set(changes) - self.fields()
        if unknown:
            raise ConfigError(f"unknown training option(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config_file(path: str | Path) -> dict:
    """A YAML (.yaml/.yml) or JSON file -> dict of TrainConfig fields (unknown keys are an error)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ConfigError("YAML configs need PyYAML: pip install 'phi3v-spatial[train]'") from e
        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a training config must be a mapping of options")
    unknown = set(values) - TrainConfig.fields()
    if unknown:
        raise ConfigError(f"{path}: unknown training option(s) {sorted(unknown)}; known: {sorted(TrainConfig.fields())}")
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    return values
