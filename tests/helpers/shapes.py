"""The ways research code shares a layer, each a small model (built, so that its variables exist), with
what ``sharing.json`` must say of it. Used by ``test_call_sites.py`` on TensorFlow in its own process and
on JAX and PyTorch in a subprocess (``python -c`` with this folder's parent on ``sys.path``)."""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
from keras import layers


class ReusedInCall(keras.Model):
    """``return self.head(self.d(self.d(x)))``: the most common way research code shares a layer."""

    def __init__(self):
        super().__init__(name="reused_in_call")
        self.d = layers.Dense(4, name="d")
        self.head = layers.Dense(1, name="head")

    def call(self, x):
        return self.head(self.d(self.d(x)))


class Block(keras.Model):
    def __init__(self, common, name):
        super().__init__(name=name)
        self.common = common
        self.own = layers.Dense(4, name="own")

    def call(self, x):
        return self.own(self.common(x))


class AcrossTwoSubmodels(keras.Model):
    """One ``Dense`` held by two nested subclassed submodels."""

    def __init__(self):
        super().__init__(name="across_two_submodels")
        common = layers.Dense(4, name="common")
        self.first, self.second = Block(common, "first"), Block(common, "second")
        self.head = layers.Dense(1, name="head")

    def call(self, x):
        return self.head(self.second(self.first(x)))


class InALoop(keras.Model):
    """A layer applied in a Python loop, with Dropout (its RNG must not move) and BatchNormalization."""

    def __init__(self):
        super().__init__(name="in_a_loop")
        self.d = layers.Dense(4, activation="tanh", name="d")
        self.bn = layers.BatchNormalization(name="bn")
        self.drop = layers.Dropout(0.25, seed=3, name="drop")
        self.head = layers.Dense(1, name="head")

    def call(self, x, training=False):
        for _ in range(3):
            x = self.d(x)
        return self.head(self.drop(self.bn(x, training=training), training=training))


class Siamese(keras.Model):
    """A submodel (a tower) called on two inputs."""

    def __init__(self):
        super().__init__(name="siamese")
        self.tower = keras.Sequential([keras.Input((4,)), layers.Dense(4, name="t1"), layers.Dense(2, name="t2")],
                                      name="tower")
        self.head = layers.Dense(1, name="head")

    def call(self, x):
        return self.head(self.tower(x) - self.tower(x * 2.0))


def in_time_distributed() -> keras.Model:
    """A ``Dense`` applied by ``TimeDistributed`` to a sequence and on its own to a vector."""
    shared = layers.Dense(4, name="shared")
    sequence, vector = keras.Input((3, 4), name="sequence"), keras.Input((4,), name="vector")
    pooled = layers.GlobalAveragePooling1D(name="pool")(layers.TimeDistributed(shared, name="td")(sequence))
    return keras.Model([sequence, vector], layers.Dense(1, name="head")(pooled + shared(vector)))


def bidirectional_twice() -> keras.Model:
    """One ``Bidirectional(LSTM)`` applied to two sequences."""
    bidirectional = layers.Bidirectional(layers.LSTM(3, name="lstm"), name="bi")
    a, b = keras.Input((5, 4), name="a"), keras.Input((5, 4), name="b")
    return keras.Model([a, b], layers.Dense(1, name="head")(bidirectional(a) - bidirectional(b)))


def _vectors(n: int = 32) -> Any:
    return np.random.default_rng(0).normal(size=(n, 4)).astype("float32")


def _data(shape: str, n: int = 32) -> tuple[Any, Any]:
    rng = np.random.default_rng(1)
    x = {"vector": _vectors(n), "td": [rng.normal(size=(n, 3, 4)).astype("float32"), _vectors(n)],
         "bi": [rng.normal(size=(n, 5, 4)).astype("float32"), rng.normal(size=(n, 5, 4)).astype("float32")]}[shape]
    return x, rng.normal(size=(n, 1)).astype("float32")


# name -> (builder, data kind, shared_layers, the variables in shared_variables and their users)
SHAPES: dict[str, tuple[Callable[[], keras.Model], str, dict[str, int], dict[str, list[str]]]] = {
    "reused_in_call": (ReusedInCall, "vector", {"d": 2}, {"d/kernel": ["d#0", "d#1"], "d/bias": ["d#0", "d#1"]}),
    "across_two_submodels": (AcrossTwoSubmodels, "vector", {"first/common": 2},
                             {"first/common/kernel": ["first/common", "second/common"],
                              "first/common/bias": ["first/common", "second/common"]}),
    "in_a_loop": (InALoop, "vector", {"d": 3}, {"d/kernel": ["d#0", "d#1", "d#2"], "d/bias": ["d#0", "d#1", "d#2"]}),
    "siamese": (Siamese, "vector", {"tower": 2, "tower/t1": 2, "tower/t2": 2},
                {f"tower/{t}/{v}": [f"tower/{t}#0", f"tower/{t}#1"] for t in ("t1", "t2") for v in ("kernel", "bias")}),
    "in_time_distributed": (in_time_distributed, "td", {"td/shared": 2},
                            {"td/shared/kernel": ["shared", "td/shared"], "td/shared/bias": ["shared", "td/shared"]}),
    "bidirectional_twice": (bidirectional_twice, "bi", {"bi": 2, "bi/forward_lstm": 2, "bi/backward_lstm": 2,
                                                        "bi/forward_lstm/lstm_cell": 2, "bi/backward_lstm/lstm_cell": 2},
                            {f"bi/{d}_lstm/lstm_cell/{v}": [f"bi/{d}_lstm/lstm_cell#0", f"bi/{d}_lstm/lstm_cell#1"]
                             for d in ("forward", "backward") for v in ("kernel", "recurrent_kernel", "bias")}),
}


def built(name: str) -> tuple[keras.Model, tuple[Any, Any]]:
    """The shape's model, built by a call on its data, and its ``(x, y)``."""
    make, kind, _, _ = SHAPES[name]
    model = make()
    x, y = _data(kind)
    model(x)
    return model, (x, y)
