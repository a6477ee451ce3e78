"""Shared layers seen however the model is written: call sites from one forward pass (the functional graph,
or a symbolic run of a subclassed ``call``), the same on TensorFlow, JAX and PyTorch, without changing
training; the runner's three model styles give one model."""

import json
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from helpers.logged import artifact_json
from helpers.processes import run_on_backend
from helpers.shapes import SHAPES, built
from layerprint import LayerprintCallback, keys
from layerprint.inspection.call_sites import count_call_sites
from layerprint.inspection.fingerprint import fingerprint_model
from layerprint.inspection.sharing import sharing_report

TESTS = Path(__file__).resolve().parent


def _sharing(name):
    model, _ = built(name)
    report = sharing_report(model, fingerprint_model(model)["variables"])
    return {"shared_layers": report["shared_layers"], "shared_variables": report["shared_variables"],
            "unknown": report.get("unknown_call_sites")}


def _final_weights(name, callback):
    """The weights after a deterministic fit of the shape, with ``callback`` or none."""
    keras.utils.set_random_seed(0)
    model, (x, y) = built(name)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, callbacks=[callback] if callback else [])
    return [np.asarray(v.numpy()) for v in model.weights]


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_way_of_sharing_a_layer_gives_its_call_sites(name):
    _, _, shared_layers, shared_variables = SHAPES[name]
    assert _sharing(name) == {"shared_layers": shared_layers, "shared_variables": shared_variables, "unknown": None}


class DependsOnValues(keras.Model):
    """A ``call`` whose Python code branches on the values: how often ``d`` runs depends on the data."""

    def __init__(self):
        super().__init__(name="depends_on_values")
        self.d = keras.layers.Dense(4, name="d")

    def call(self, x):
        if bool(keras.ops.sum(x) > 0):
            return self.d(self.d(x))
        return self.d(x)


def test_a_call_that_depends_on_the_values_is_reported_unknown_not_once():
    model = DependsOnValues()
    model(np.ones((2, 4), "float32"))
    report = sharing_report(model, fingerprint_model(model)["variables"])
    assert report["shared_layers"] == {} and report["shared_variables"] == {}
    (reason,) = report["unknown_call_sites"].values()
    assert "could not be followed" in reason


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_the_callback_logs_the_call_sites_and_leaves_training_unchanged(name, sqlite_uri, client):
    mlflow.set_tracking_uri(sqlite_uri)
    alone = _final_weights(name, None)
    callback = LayerprintCallback()
    recorded = _final_weights(name, callback)
    assert len(alone) == len(recorded)
    for a, b in zip(alone, recorded):
        np.testing.assert_array_equal(a, b)  # bitwise
    _, _, shared_layers, shared_variables = SHAPES[name]
    logged = artifact_json(client, callback.active_run_id, keys.SHARING)
    assert (logged["shared_layers"], logged["shared_variables"]) == (shared_layers, shared_variables)


_ON_BACKEND = """
import json, sys
sys.path.insert(0, sys.argv[2])
import keras, mlflow, numpy as np
from helpers.shapes import SHAPES
from layerprint import LayerprintCallback
from test_call_sites import _final_weights, _sharing, DependsOnValues
from layerprint.inspection.fingerprint import fingerprint_model
from layerprint.inspection.sharing import sharing_report
mlflow.set_tracking_uri(sys.argv[1])
out = {"sharing": {name: _sharing(name) for name in SHAPES}, "unchanged": {}}
for name in SHAPES:
    alone, recorded = _final_weights(name, None), _final_weights(name, LayerprintCallback())
    out["unchanged"][name] = all(np.array_equal(a, b) for a, b in zip(alone, recorded)) and len(alone) == len(recorded)
model = DependsOnValues()
model(np.ones((2, 4), "float32"))
out["depends_on_values"] = sharing_report(model, fingerprint_model(model)["variables"]).get("unknown_call_sites")
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_every_shape_counts_the_same_and_trains_unchanged_on_jax_and_pytorch(backend, sqlite_uri):
    done = run_on_backend(backend, _ON_BACKEND, sqlite_uri, str(TESTS), timeout=600)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (_, _, shared_layers, shared_variables) in SHAPES.items():
        assert out["sharing"][name] == {"shared_layers": shared_layers, "shared_variables": shared_variables,
                                        "unknown": None}, name
        assert out["unchanged"][name], f"{name}: training changed with the callback on {backend}"
    (reason,) = out["depends_on_values"].values()
    assert "could not be followed" in reason


def _cnn(style):
    """The overhead benchmark's CNN, written as ``style``."""
    layers = [keras.layers.Conv2D(16, 3, padding="same"), keras.layers.BatchNormalization(), keras.layers.ReLU(),
              keras.layers.MaxPooling2D(), keras.layers.Conv2D(32, 3, padding="same"),
              keras.layers.BatchNormalization(), keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(),
              keras.layers.Dense(10)]
    if style == "sequential":
        return keras.Sequential([keras.Input((32, 32, 3)), *layers])

    class CNN(keras.Model):
        def __init__(self):
            super().__init__()
            self.stack = layers

        def call(self, x):
            for layer in self.stack:
                x = layer(x)
            return x

    model = CNN()
    model(np.zeros((1, 32, 32, 3), "float32"))
    return model


@pytest.mark.serial  # a wall-clock bound: `make test` runs it alone
@pytest.mark.parametrize("style", ["sequential", "subclassed"])
def test_counting_costs_under_5_percent_of_a_first_fit_of_the_cnn(style):
    x = np.random.default_rng(0).normal(size=(64 * 32, 32, 32, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 10, size=(64 * 32,))
    model = _cnn(style)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    started = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    fit_seconds = time.perf_counter() - started
    counts = []
    for _ in range(3):
        started = time.perf_counter()
        sites = count_call_sites(model)
        counts.append(time.perf_counter() - started)
    assert not sites.unknown and set(sites.per_path.values()) == {1}
    assert min(counts) < 0.05 * fit_seconds, (min(counts), fit_seconds)


@pytest.mark.parametrize("variant, layer", [("shared", "dense"), ("shared", "batchnorm"), ("cloned", "lstm"),
                                            ("copied", "conv2d")])
def test_the_runner_writes_one_model_in_three_styles(variant, layer, cfg_train):
    from layerprint.runner.layer_kinds import KINDS
    from layerprint.runner.models import build_model

    made = {}
    for style in ("functional", "sequential", "subclassed"):
        cfg = cfg_train(f"variant={variant}", f"layer={layer}", f"model_style={style}", "seed=3")
        keras.utils.set_random_seed(3)
        model = build_model(cfg, KINDS[layer].sample_shape(cfg.layer))
        fingerprint = fingerprint_model(model)
        report = sharing_report(model, fingerprint["variables"])
        made[style] = (type(model).__name__, fingerprint["model"], report["shared_layers"], report["shared_variables"])
    assert [kind for kind, *_ in made.values()] == ["Functional", "Sequential", "RepeatedBlocks"]
    assert len({tuple(json.dumps(part, sort_keys=True) for part in rest) for _, *rest in made.values()}) == 1, made
    if variant == "shared":
        assert made["subclassed"][2]["rep"] == 2
