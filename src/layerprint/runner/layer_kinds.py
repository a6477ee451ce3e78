"""Everything the runner knows about each layer kind, in one record per kind: how to build a repeat,
which arguments the sharing variants set, what a sample looks like, how the model pools it.

Every kind maps its input shape to itself, so one instance can be called several times in a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from layerprint.runner.schema import LayerKindName

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
        sample: the axes of one sample, e.g. ``("features",)`` or ``("timesteps", "features")``.
        pooling: the layer that reduces the repeats' output to a vector before the head, if any.
        stem: ``stem(width, name)``: the layer that projects data of another feature count to ``width``.
        spacer: for ``batchnorm``, a separately built trainable layer placed before each repeat.
    """

    build: Callable[..., Any]
    initializer_args: dict[str, Callable[[], Any]]
    regularizer_arg: str
    constraint_arg: str
    constraint_axis: Any
    sample: tuple[str, ...] = ("features",)
    pooling: Callable[..., Any] | None = None
    stem: Callable[..., Any] = lambda width, name: _keras().layers.Dense(width, name=name)
    spacer: bool = False

    @property
    def rank(self) -> int:
        """Dimensions of a data batch: samples, then the sample's axes."""
        return 1 + len(self.sample)

    def sample_shape(self, layer_cfg: Any) -> tuple[int, ...]:
        """The per-sample shape of synthetic data for a layer config (no stem layer needed)."""
        sizes = {"features": layer_cfg.width, "channels": layer_cfg.width, "height": layer_cfg.image_size,
                 "width": layer_cfg.image_size, "timesteps": layer_cfg.timesteps}
        return tuple(sizes[axis] for axis in self.sample)


def _keras() -> Any:
    """Keras, imported on first use: the sample shapes above are read (to check and load data) before
    TensorFlow is imported."""
    import keras

    return keras


def _dense(cfg: Any, name: str, **kw: Any) -> Any:
    return _keras().layers.Dense(cfg.width, activation="relu", name=name, **kw)


def _conv2d(cfg: Any, name: str, **kw: Any) -> Any:
    return _keras().layers.Conv2D(cfg.width, cfg.kernel_size, padding="same", activation="relu", name=name, **kw)


def _lstm(cfg: Any, name: str, **kw: Any) -> Any:
    return _keras().layers.LSTM(cfg.width, return_sequences=True, name=name, **kw)


def _gru(cfg: Any, name: str, **kw: Any) -> Any:
    return _keras().layers.GRU(cfg.width, return_sequences=True, name=name, **kw)


def _batchnorm(cfg: Any, name: str, **kw: Any) -> Any:
    return _keras().layers.BatchNormalization(name=name, **kw)


_IMAGE = ("height", "width", "channels")
_SEQUENCE = ("timesteps", "features")
KINDS: dict[str, LayerKind] = {
    LayerKindName.DENSE: LayerKind(_dense, {"kernel_initializer": lambda: _keras().initializers.GlorotUniform()},
                                   "kernel_regularizer", "kernel_constraint", 0),
    LayerKindName.CONV2D: LayerKind(_conv2d, {"kernel_initializer": lambda: _keras().initializers.GlorotUniform()},
                                    "kernel_regularizer", "kernel_constraint", [0, 1, 2], sample=_IMAGE,
                                    pooling=lambda name: _keras().layers.GlobalAveragePooling2D(name=name),
                                    stem=lambda width, name: _keras().layers.Conv2D(width, 1, name=name)),
    LayerKindName.LSTM: LayerKind(_lstm, {"kernel_initializer": lambda: _keras().initializers.GlorotUniform(),
                                          "recurrent_initializer": lambda: _keras().initializers.Orthogonal()},
                                  "kernel_regularizer", "kernel_constraint", 0, sample=_SEQUENCE,
                                  pooling=lambda name: _keras().layers.GlobalAveragePooling1D(name=name)),
    LayerKindName.GRU: LayerKind(_gru, {"kernel_initializer": lambda: _keras().initializers.GlorotUniform(),
                                        "recurrent_initializer": lambda: _keras().initializers.Orthogonal()},
                                 "kernel_regularizer", "kernel_constraint", 0, sample=_SEQUENCE,
                                 pooling=lambda name: _keras().layers.GlobalAveragePooling1D(name=name)),
    # BatchNormalization's gamma starts at ones; a shared random initializer makes the variant visible.
    LayerKindName.BATCHNORM: LayerKind(_batchnorm,
                                       {"gamma_initializer": lambda: _keras().initializers.RandomNormal(1.0, 0.1)},
                                       "gamma_regularizer", "gamma_constraint", 0, spacer=True),
}


def constant_overrides(kind: LayerKind) -> dict[str, Any]:
    """Constant initializers for every symmetry-breaking argument (a new instance each call)."""
    return {arg: _keras().initializers.Constant(CONSTANT_VALUE if arg != "gamma_initializer" else 1.0)
            for arg in kind.initializer_args}
