"""Fast unit tests of LayerprintCallback's hooks, driven directly as Keras's own callback tests do, with
a recording sink given through ``sink=`` (no store, no fit): step and epoch numbering, continuation,
the non-finite step, what goes where."""

import io
import json
import uuid

import keras
import numpy as np
import pytest

from layerprint import LayerprintCallback, keys
from layerprint.recording.record import read_steps


class RecordingSink:
    """The ``RunSink`` interface, keeping what it is given (artifact contents are read at once)."""

    def __init__(self, run_id=None):
        self.run_id, self.tracking_uri = run_id or f"recorded-{uuid.uuid4().hex}", "memory:"
        self.points, self.tags, self.params, self.artifacts, self.flushes = [], {}, {}, {}, 0

    def log_metrics(self, metrics, step, timestamp_ms=None):
        self.points += [(key, value, step) for key, value in metrics.items()]

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_params(self, params):
        self.params.update(params)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts[f"{artifact_path}/{path.name}"] = path.read_bytes()

    def flush(self, timeout=30.0):
        self.flushes += 1
        return True

    def steps(self, key):
        return [step for k, _, step in self.points if k == key]

    def record(self):
        """The last ``steps.parquet`` given, read back."""
        return read_steps(io.BytesIO(self.artifacts["layerprint/steps.parquet"]))


def _model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d"), keras.layers.BatchNormalization(name="bn")])
    model.compile("sgd", "mse")
    return model


def _drive(callback, model, epochs, steps, initial_epoch=0, losses=None):
    """Call the hooks as ``fit`` does, without training."""
    callback.set_model(model)
    callback.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        callback.on_epoch_begin(epoch)
        for batch in range(steps):
            callback.on_train_batch_begin(batch)
            loss = (losses or {}).get((epoch, batch), 0.5)
            callback.on_train_batch_end(batch, {"loss": loss, "mae": 0.25})
        callback.on_epoch_end(epoch, {"loss": 0.5})
    callback.on_train_end()


def test_steps_and_epochs_are_global_and_start_at_one():
    sink = RecordingSink()
    _drive(LayerprintCallback(sink=sink, log_every_n_steps=1), _model(), epochs=2, steps=3)
    assert sink.steps("train/loss") == [1, 2, 3, 4, 5, 6]
    assert sink.steps("epoch/loss") == [1, 2]
    assert sink.steps("bn/bn/moving_mean/mean") == [1, 2, 3, 4, 5, 6]
    record = sink.record()
    assert list(record.columns["step"]) == [1, 2, 3, 4, 5, 6] and list(record.columns["epoch"]) == [1, 1, 1, 2, 2, 2]
    assert (sink.tags[keys.TAG_LAST_STEP], sink.tags[keys.TAG_LAST_EPOCH], sink.tags[keys.TAG_FITS]) == ("6", "2", "1")
    assert sink.flushes == 1  # a given sink is flushed, never closed


def test_a_second_fit_with_the_same_sink_continues_and_respects_initial_epoch():
    sink, model = RecordingSink(), _model()
    _drive(LayerprintCallback(sink=sink, log_every_n_steps=1), model, epochs=2, steps=2)
    _drive(LayerprintCallback(sink=sink, log_every_n_steps=1), model, epochs=5, steps=2, initial_epoch=3)
    assert sink.steps("train/loss") == [1, 2, 3, 4, 5, 6, 7, 8]
    assert list(sink.record().columns["step"]) == list(range(1, 9))  # one record for the run
    assert sink.steps("epoch/loss") == [1, 2, 4, 5]
    assert "layerprint/fit_2/fingerprints_initial.json" in sink.artifacts
    with np.load(__import__("io").BytesIO(sink.artifacts["layerprint/batchnorm.npz"])) as npz:
        assert list(npz["epochs"]) == [0, 1, 2, 4, 5]


def test_log_every_n_steps_counts_global_steps_and_keeps_first_last_and_epoch_ends():
    sink = RecordingSink()
    _drive(LayerprintCallback(sink=sink, log_every_n_steps=4), _model(), epochs=3, steps=3)
    assert sink.steps("train/loss") == [1, 3, 4, 6, 8, 9]  # first, epoch ends 3 6 9, every 4th
    assert len(sink.record().series("train/loss")) == 9


def test_the_first_non_finite_step_fails_the_run():
    sink = RecordingSink()
    callback = LayerprintCallback(sink=sink)
    _drive(callback, _model(), epochs=2, steps=2, losses={(1, 0): float("nan"), (1, 1): float("inf")})
    assert callback.non_finite_step == 3
    assert sink.tags[keys.TAG_FAILURE] == "loss became non-finite at step 3"


def test_artifacts_and_tags_of_one_fit():
    sink, model = RecordingSink(), _model()
    callback = LayerprintCallback(sink=sink, tags={"team": "a"}, params={"lr": 0.1})
    _drive(callback, model, epochs=1, steps=1)
    assert {name.split("/", 1)[1] for name in sink.artifacts} == {
        keys.FINGERPRINTS_INITIAL, keys.SHARING, keys.FINGERPRINTS_FINAL, keys.WEIGHTS_FINAL, keys.BATCHNORM, keys.STEPS}
    initial = json.loads(sink.artifacts["layerprint/fingerprints_initial.json"])
    assert sink.tags[keys.TAG_INIT_FINGERPRINT] == initial["model"] == callback.initial_fingerprint["model"]
    assert {v["path"] for v in initial["variables"]} == {v.path.split("/", 1)[1] for v in model.variables}  # root name left out
    assert sink.tags["team"] == "a" and sink.params == {"lr": 0.1}
    assert keys.TAG_CALLBACK_ERROR not in sink.tags


def test_hooks_outside_a_fit_do_nothing():
    sink = RecordingSink()
    callback = LayerprintCallback(sink=sink)
    callback.set_model(_model())
    callback.on_train_batch_end(0, {"loss": 1.0})
    callback.on_epoch_end(0, {"loss": 1.0})
    callback.on_train_end()
    assert sink.points == [] and sink.tags == {}


@pytest.mark.parametrize("kwargs, fragment", [
    ({"log_every_n_steps": 0}, "log_every_n_steps must be a positive integer or None, got 0"),
    ({"log_every_n_steps": 2.5}, "log_every_n_steps must be a positive integer or None, got 2.5"),
    ({"overhead_budget": 0}, "overhead_budget must be a fraction between 0 and 1, got 0"),
    ({"overhead_budget": 1.5}, "overhead_budget must be a fraction between 0 and 1, got 1.5"),
    ({"checksum_every": -1}, "checksum_every must be a positive integer or None, got -1"),
])
def test_bad_options_are_refused_in_one_line(kwargs, fragment):
    with pytest.raises(ValueError) as raised:
        LayerprintCallback(**kwargs)
    assert str(raised.value) == fragment
