"""The repeated layer of each kind, and which of its arguments the sharing variants set.

Every kind maps its input shape to itself, so one instance can be called several times in a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import keras

CONSTANT_VALUE = 0.05


@dataclass(frozen=True)
class LayerKind:
    """How to build one repeat of a layer kind.

    Attributes:
        build: ``build(layer_cfg, name, **overrides) -> keras.layers.Layer``.
        initializer_args: constructor arguments that take an initializer for the weights whose
            random draw breaks symmetry, with the instance the ``shared_initializer`` variant shares.
        regularizer_arg: the argument a shared regularizer is given to.
        constraint_arg: the argument a shared constraint is given to, and the constraint's axis.
        spacer: for ``batchnorm``, a separately built trainable layer placed before each repeat.
    """

    build: Callable[..., Any]
    initializer_args: dict[str, Callable[[], Any]]
    regularizer_arg: str
    constraint_arg: str
    constraint_axis: Any
    spacer: bool = False


def _dense(cfg: Any, name: str, **kw: Any) -> Any:
    return keras.layers.Dense(cfg.width, activation="relu", name=name, **kw)


def _conv2d(cfg: Any, name: str, **kw: Any) -> Any:
    return keras.layers.Conv2D(cfg.width, cfg.kernel_size, padding="same", activation="relu", name=name, **kw)


def _lstm(cfg: Any, name: str, **kw: Any) -> Any:
    return keras.layers.LSTM(cfg.width, return_sequences=True, name=name, **kw)


def _gru(cfg: Any, name: str, **kw: Any) -> Any:
    return keras.layers.GRU(cfg.width, return_sequences=True, name=name, **kw)


def _batchnorm(cfg: Any, name: str, **kw: Any) -> Any:
    return keras.layers.BatchNormalization(name=name, **kw)


KINDS: dict[str, LayerKind] = {
    "dense": LayerKind(_dense, {"kernel_initializer": keras.initializers.GlorotUniform},
                       "kernel_regularizer", "kernel_constraint", 0),
    "conv2d": LayerKind(_conv2d, {"kernel_initializer": keras.initializers.GlorotUniform},
                        "kernel_regularizer", "kernel_constraint", [0, 1, 2]),
    "lstm": LayerKind(_lstm, {"kernel_initializer": keras.initializers.GlorotUniform,
                              "recurrent_initializer": keras.initializers.Orthogonal},
                      "kernel_regularizer", "kernel_constraint", 0),
    "gru": LayerKind(_gru, {"kernel_initializer": keras.initializers.GlorotUniform,
                            "recurrent_initializer": keras.initializers.Orthogonal},
                     "kernel_regularizer", "kernel_constraint", 0),
    # BatchNormalization's gamma starts at ones; a shared random initializer makes the variant visible.
    "batchnorm": LayerKind(_batchnorm, {"gamma_initializer": lambda: keras.initializers.RandomNormal(1.0, 0.1)},
                           "gamma_regularizer", "gamma_constraint", 0, spacer=True),
}


def constant_overrides(kind: LayerKind) -> dict[str, Any]:
    """Constant initializers for every symmetry-breaking argument (a new instance each call)."""
    return {arg: keras.initializers.Constant(CONSTANT_VALUE if arg != "gamma_initializer" else 1.0)
            for arg in kind.initializer_args}
