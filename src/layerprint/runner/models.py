"""Building the model: input, the repeats made as the variant says, a head, written in the style asked for.

Repeats are named ``rep_0 .. rep_{N-1}`` (``rep`` when one instance is shared); for ``batchnorm``,
a separately built ``Dense`` named ``spacer_i`` comes before each repeat. The head is a ``Dense(1)``
(after global average pooling for images and sequences).

Every layer is made and built in the same order with the same seeding whatever the style (by calling it
on the functional graph's symbolic tensors), so that the styles give the same variable paths and, with a
seed, the same initial weights. The style (``model_style``) then writes the model that holds them:

- ``functional``: ``keras.Model(inputs, outputs)``;
- ``sequential``: ``keras.Sequential`` of the layers in call order (a shared repeat appears N times);
- ``subclassed``: ``RepeatedBlocks``, a ``keras.Model`` subclass whose ``call`` applies the layers in a
  Python loop (a shared repeat is one attribute called N times), as most research code writes it.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from layerprint.errors import ConfigError
from layerprint.runner.layer_kinds import KINDS, constant_overrides
from layerprint.runner.schema import ModelStyle, Variant


def _seed_keras(seed: int) -> None:
    keras.utils.set_random_seed(seed)


def _seed_tf(seed: int) -> None:
    import tensorflow as tf

    tf.random.set_seed(seed)


def _argument_overrides(variant: Variant, kind: Any) -> dict[str, Any]:
    """Constructor arguments the variant sets: new initializer, regularizer or constraint instances."""
    if variant == Variant.CONSTANT_INIT:
        return constant_overrides(kind)
    if variant == Variant.SHARED_INITIALIZER:
        return {arg: make() for arg, make in kind.initializer_args.items()}
    if variant == Variant.SHARED_REGULARIZER:
        return {kind.regularizer_arg: keras.regularizers.L2(1e-3)}
    if variant == Variant.SHARED_CONSTRAINT:
        return {kind.constraint_arg: keras.constraints.MaxNorm(1.0, axis=kind.constraint_axis)}
    return {}


def _repeats(variant: Variant, kind_name: str, cfg: Any, n: int, seed: int, inputs: Any,
             shared_instance: bool = True) -> tuple[list[Any], Any]:
    """Call the repeats on ``inputs``; returns (every layer called, spacers included, in call order; the
    output tensor).

    With ``shared_instance=False`` every repeat gets its own initializer, regularizer or constraint
    instance (same class and arguments): the control for the ``shared_*`` variants.
    """
    kind = KINDS[kind_name]
    overrides = _argument_overrides(variant, kind)
    if variant == Variant.SEEDED_ONCE:
        _seed_keras(seed)

    shared = kind.build(cfg, "rep", **overrides) if variant == Variant.SHARED else None
    layers, called, x = [], [], inputs
    for i in range(n):
        if kind.spacer:
            spacer = keras.layers.Dense(cfg.width, activation="relu", name=f"spacer_{i}")
            x = spacer(x)
            called.append(spacer)
        if variant == Variant.RESEEDED:
            _seed_keras(seed)
        elif variant == Variant.TF_RESEEDED:
            _seed_tf(seed)
        if shared is not None:
            layer = shared
        elif variant == Variant.CLONED and i > 0:
            layer = _clone(layers[0], f"rep_{i}")
        else:
            own = overrides if shared_instance or i == 0 else _argument_overrides(variant, kind)
            layer = kind.build(cfg, f"rep_{i}", **own)
        x = layer(x)
        layers.append(layer)
        called.append(layer)
    if variant == Variant.COPIED:
        for layer in layers[1:]:
            layer.set_weights(layers[0].get_weights())
    return called, x


def _clone(layer: Any, name: str) -> Any:
    """``keras.models.clone_model`` of a one-layer model holding ``layer``; the clone's layer."""
    block = keras.Sequential([layer], name=f"block_of_{layer.name}")
    clone = keras.models.clone_model(block)
    cloned_layer = clone.layers[0]
    cloned_layer.name = name
    return cloned_layer


def build_model(cfg: Any, input_shape: tuple[int, ...], output_units: int = 1) -> keras.Model:
    """The model of one run.

    Args:
        cfg: the run config (``variant.name``, ``variant.shared_instance``, ``layer``, ``repeats``,
            ``seed``, ``model_style``).
        input_shape: per-sample input shape.
        output_units: units of the head (classes for integer labels, else target width).

    Returns:
        An uncompiled, built ``keras.Model`` named ``layerprint_<variant>_<layer>``, written as
        ``model_style`` says (module doc).
    """
    variant, kind_name = Variant(cfg.variant.name), cfg.layer.kind
    kind = KINDS[kind_name]
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = inputs
    if len(input_shape) + 1 != kind.rank:
        raise ConfigError(f"layer={kind_name} needs {kind.rank - 1}-D samples, the data has shape {input_shape}")
    called = []
    if input_shape[-1] != cfg.layer.width:
        # The repeats map width -> width; project other feature counts once, before them.
        stem = kind.stem(cfg.layer.width, "stem")
        x = stem(x)
        called.append(stem)
    repeated, x = _repeats(variant, kind_name, cfg.layer, cfg.repeats, cfg.seed, x, cfg.variant.shared_instance)
    called += repeated
    if kind.pooling is not None:
        pool = kind.pooling(name="pool")
        x = pool(x)
        called.append(pool)
    head = keras.layers.Dense(output_units, name="head")
    outputs = head(x)
    called.append(head)
    name = f"layerprint_{variant.value}_{kind_name}"
    style = ModelStyle(cfg.model_style)
    if style == ModelStyle.SEQUENTIAL:
        return keras.Sequential([keras.Input(shape=input_shape, name="inputs"), *called], name=name)
    if style == ModelStyle.SUBCLASSED:
        model = RepeatedBlocks(called, name=name)
        model.build((None, *input_shape))  # its layers are built: this records the input it takes
        return model
    return keras.Model(inputs, outputs, name=name)


class RepeatedBlocks(keras.Model):
    """The run's model written as a subclassed model: its layers held as attributes, applied in order in a
    Python loop in ``call``; a shared repeat is one instance that ``call`` applies N times.

    Args:
        layers: the layers in call order (one instance may appear several times).
        name: the model's name.
    """

    def __init__(self, layers: list[Any], name: str) -> None:
        super().__init__(name=name)
        self.blocks = layers

    def call(self, x: Any, training: bool | None = None) -> Any:
        # ``training`` must be an argument here for Keras to pass it on to the layers through its call
        # context: without it, BatchNormalization never updates its moving statistics in fit.
        for layer in self.blocks:
            x = layer(x)
        return x


def output_units(y: np.ndarray) -> tuple[int, str]:
    """Head units and loss for targets: class count and sparse cross-entropy for integer labels."""
    if np.issubdtype(y.dtype, np.integer):
        return int(y.max()) + 1, "sparse_categorical_crossentropy"
    return (int(np.prod(y.shape[1:])) if y.ndim > 1 else 1), "mse"
