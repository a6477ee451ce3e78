"""Structured-config schema of ``layerprint-train``: types and defaults for every group.

Registered in Hydra's ConfigStore as ``train_schema``; ``conf/train.yaml`` puts it first in its
defaults list, so a value of the wrong type or an unknown key fails before anything runs.
Value ranges (positive sizes, known devices) are checked by ``validate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING

from layerprint.errors import ConfigError



class Variant(str, Enum):
    """How the repeats of the block are made (``variant=``; one ``conf/variant/<name>.yaml`` each)."""

    DUPLICATED = "duplicated"
    SHARED = "shared"
    CLONED = "cloned"
    COPIED = "copied"
    RESEEDED = "reseeded"
    TF_RESEEDED = "tf_reseeded"
    SEEDED_ONCE = "seeded_once"
    CONSTANT_INIT = "constant_init"
    SHARED_INITIALIZER = "shared_initializer"
    SHARED_REGULARIZER = "shared_regularizer"
    SHARED_CONSTRAINT = "shared_constraint"


class LayerKindName(str, Enum):
    """The repeated layer (``layer=``; one ``conf/layer/<name>.yaml`` each, facts in ``layer_kinds``)."""

    DENSE = "dense"
    CONV2D = "conv2d"
    LSTM = "lstm"
    GRU = "gru"
    BATCHNORM = "batchnorm"


class ModelStyle(str, Enum):
    """How the model that repeats the block is written (``model_style=``; see ``runner.models``)."""

    FUNCTIONAL = "functional"
    SEQUENTIAL = "sequential"
    SUBCLASSED = "subclassed"


VARIANTS = tuple(variant.value for variant in Variant)
MODEL_STYLES = tuple(style.value for style in ModelStyle)
LAYER_KINDS = tuple(kind.value for kind in LayerKindName)
DEVICES = ("cpu", "gpu", "auto")
DATA_SOURCES = ("synthetic", "npz")
OPTIMIZERS = ("adam", "sgd", "rmsprop")


@dataclass
class VariantConf:
    name: str = MISSING
    # shared_initializer/_regularizer/_constraint: false gives each repeat its own instance (the control)
    shared_instance: bool = True


@dataclass
class LayerConf:
    kind: str = MISSING
    width: int = 8
    kernel_size: int = 3
    image_size: int = 6
    timesteps: int = 5


@dataclass
class DataConf:
    source: str = "synthetic"
    path: Optional[str] = None
    n_samples: int = 128
    validation_split: float = 0.25


@dataclass
class TrainerConf:
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 0.01
    optimizer: str = "adam"
    steps_per_execution: int = 1
    log_every_n_steps: int = 1
    probe_rows: int = 0


@dataclass
class TrackingConf:
    uri: Optional[str] = None
    experiment: str = "layerprint"
    run_name: Optional[str] = None


@dataclass
class TrainConfig:
    variant: VariantConf = field(default_factory=VariantConf)
    layer: LayerConf = field(default_factory=LayerConf)
    data: DataConf = field(default_factory=DataConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    seed: int = 0
    device: str = "auto"
    deterministic: bool = False
    repeats: int = 2
    model_style: str = "functional"


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Any) -> None:
    """Check value ranges the schema's types cannot express.

    Args:
        cfg: the composed config (DictConfig or TrainConfig).

    Raises:
        ConfigError: naming the first bad value and what is allowed.
    """
    _require(cfg.variant.name in VARIANTS, f"variant {cfg.variant.name!r} is unknown; valid variants: {', '.join(VARIANTS)}")
    _require(cfg.layer.kind in LAYER_KINDS, f"layer {cfg.layer.kind!r} is unknown; valid layers: {', '.join(LAYER_KINDS)}")
    _require(cfg.model_style in MODEL_STYLES,
             f"model_style={cfg.model_style!r} is not allowed; use one of: {', '.join(MODEL_STYLES)}")
    _require(cfg.device in DEVICES, f"device={cfg.device!r} is not allowed; use one of: {', '.join(DEVICES)}")
    _require(cfg.data.source in DATA_SOURCES, f"data.source={cfg.data.source!r} is not allowed; use one of: {', '.join(DATA_SOURCES)}")
    _require(cfg.trainer.optimizer in OPTIMIZERS, f"trainer.optimizer={cfg.trainer.optimizer!r} is not allowed; use one of: {', '.join(OPTIMIZERS)}")
    positive = {
        "repeats": cfg.repeats,
        "layer.width": cfg.layer.width,
        "layer.kernel_size": cfg.layer.kernel_size,
        "layer.image_size": cfg.layer.image_size,
        "layer.timesteps": cfg.layer.timesteps,
        "data.n_samples": cfg.data.n_samples,
        "trainer.epochs": cfg.trainer.epochs,
        "trainer.batch_size": cfg.trainer.batch_size,
        "trainer.steps_per_execution": cfg.trainer.steps_per_execution,
        "trainer.log_every_n_steps": cfg.trainer.log_every_n_steps,
    }
    for name, value in positive.items():
        _require(value >= 1, f"{name}={value} is not allowed; it must be a positive integer")
    _require(cfg.trainer.probe_rows >= 0, f"trainer.probe_rows={cfg.trainer.probe_rows} is not allowed; it must be >= 0")
    _require(cfg.seed >= 0, f"seed={cfg.seed} is not allowed; it must be a non-negative integer")
    _require(cfg.trainer.learning_rate > 0, f"trainer.learning_rate={cfg.trainer.learning_rate} is not allowed; it must be > 0")
    _require(
        0 <= cfg.data.validation_split < 1,
        f"data.validation_split={cfg.data.validation_split} is not allowed; it must be in [0, 1)",
    )
    _require(
        cfg.data.source != "npz" or bool(cfg.data.path),
        "data=npz needs data.path=FILE.npz (a NumPy archive with arrays 'x' and 'y')",
    )
    _require(bool(cfg.tracking.experiment), "tracking.experiment must not be empty")
