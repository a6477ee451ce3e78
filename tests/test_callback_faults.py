"""Telemetry never breaks training: each part of LayerprintCallback is made to raise during a real fit;
``fit`` finishes, the run ends FINISHED with ``layerprint.callback_error``, one warning names the part,
and the other parts go on."""

import logging
import subprocess
import sys

import keras
import mlflow
import numpy as np
import pytest

from helpers.logged import artifact_json
from layerprint import LayerprintCallback, keys
from layerprint.fit import session as session_module
from layerprint.fit.artifacts import Artifacts
from layerprint.fit.session import FitSession
from layerprint.fit.state import FitState
from layerprint.recording.record import StepRecord
from layerprint.recording.tensorflow import TensorFlowDevice
from layerprint.tracking.sink import RunSink


class Injected(RuntimeError):
    """The fault a test injects."""


def _raise(*args, **kwargs):
    raise Injected("injected fault\nsecond line that must not reach the tag")


# part -> (object, attribute) made to raise (or several); each is what that part calls during a fit.
FAULTS = {
    "fingerprints": (session_module, "fingerprint_arrays"),
    "sharing": (session_module, "sharing_report"),
    "batchnorm": (session_module, "moving_statistics"),
    "recorder": ((TensorFlowDevice, "read"), (TensorFlowDevice, "drain")),  # between steps; in the step
    "steps": (StepRecord, "set_metrics"),
    "drift": (FitState, "drift"),
    "probe": (FitSession, "probe"),
    "artifacts": (Artifacts, "save"),
    "sink": (RunSink, "log_metrics"),
    "tags": (RunSink, "set_tags"),
}


def _fit(callback, epochs=2):
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.BatchNormalization(name="bn"),
                              keras.layers.Dense(1)])
    model.compile("adam", "mse")
    return model.fit(x, x.sum(axis=1), epochs=epochs, batch_size=8, verbose=0, callbacks=[callback])


@pytest.mark.parametrize("part", sorted(FAULTS))
def test_each_part_failing_leaves_fit_and_the_other_parts_running(part, sqlite_uri, client, monkeypatch, caplog):
    for target in FAULTS[part] if isinstance(FAULTS[part][0], tuple) else [FAULTS[part]]:
        monkeypatch.setattr(*target, _raise)
    mlflow.set_tracking_uri(sqlite_uri)
    callback = LayerprintCallback(probe_batch=np.ones((2, 4), "float32"), log_every_n_steps=1)
    with caplog.at_level(logging.WARNING, logger="layerprint"):
        history = _fit(callback)
        callback.wait()  # the run the callback started ends in the background
    assert history.epoch == [0, 1]
    (run,) = client.search_runs(["0"])
    assert run.info.status == "FINISHED"
    assert run.data.tags[keys.TAG_CALLBACK_ERROR] == f"{part}: Injected: injected fault"
    warnings = [r.getMessage() for r in caplog.records if "failed, training goes on" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"layerprint: {part} failed"), warnings
    run_id, metrics = run.info.run_id, run.data.metrics
    if part not in ("sink", "steps"):  # without the sink or the record no step point arrives
        assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, 9))
        assert ("bn/bn/moving_mean/mean" in metrics) == (part != "recorder")  # the per-step summaries
        assert ("drift/_model" in metrics) == (part != "drift")
        assert (keys.PROBE_NORM in metrics) == (part != "probe")
    artifacts = {a.path for a in client.list_artifacts(run_id, "layerprint")}
    if part == "fingerprints":
        assert not {keys.TAG_INIT_FINGERPRINT, keys.TAG_FINAL_FINGERPRINT} & set(run.data.tags)
    elif part == "artifacts":
        assert artifacts == set()
        assert {keys.TAG_INIT_FINGERPRINT, keys.TAG_FINAL_FINGERPRINT} <= set(run.data.tags)
    elif part == "tags":  # only the error tag arrives, sent straight through MLflow at the end
        assert "layerprint/fingerprints_final.json" in artifacts
        assert keys.TAG_INIT_FINGERPRINT not in run.data.tags
    else:
        assert "layerprint/fingerprints_final.json" in artifacts
        assert run.data.tags[keys.TAG_INIT_FINGERPRINT] == artifact_json(client, run_id, "fingerprints_initial.json")["model"]
    assert ("layerprint/sharing.json" in artifacts) == (part not in ("sharing", "artifacts"))
    assert ("layerprint/batchnorm.npz" in artifacts) == (part not in ("artifacts", "batchnorm"))
    assert ("layerprint/steps.parquet" in artifacts) == (part != "artifacts")


def test_a_sink_that_cannot_be_created_still_ends_the_run(sqlite_uri, client, monkeypatch, caplog):
    monkeypatch.setattr(RunSink, "__init__", _raise)
    mlflow.set_tracking_uri(sqlite_uri)
    callback = LayerprintCallback()
    with caplog.at_level(logging.WARNING, logger="layerprint"):
        history = _fit(callback)
        callback.wait()  # the run the callback started ends in the background
    assert history.epoch == [0, 1]
    (run,) = client.search_runs(["0"])
    assert run.info.status == "FINISHED"
    assert run.data.tags[keys.TAG_CALLBACK_ERROR] == "run: Injected: injected fault"
    assert callback.initial_fingerprint is not None and callback.final_fingerprint is not None  # inspection went on


def test_strict_lets_the_error_through(sqlite_uri, monkeypatch):
    monkeypatch.setattr(*FAULTS["drift"], _raise)
    mlflow.set_tracking_uri(sqlite_uri)
    callback = LayerprintCallback(strict=True)
    with pytest.raises(Injected):
        _fit(callback)
    callback.close(status="FAILED")


def test_keyboard_interrupt_gets_through(sqlite_uri, client, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(*FAULTS["probe"], interrupt)  # on the training thread, where Ctrl-C arrives
    mlflow.set_tracking_uri(sqlite_uri)
    callback = LayerprintCallback(probe_batch=np.ones((2, 4), "float32"))
    with pytest.raises(KeyboardInterrupt):
        _fit(callback)
    callback.close(status="KILLED")
    (run,) = client.search_runs(["0"])
    assert run.info.status == "KILLED"


class Boom(keras.callbacks.Callback):
    """Another callback of the user's that raises in epoch 1: ``fit`` dies without ``on_train_end``."""

    def on_epoch_end(self, epoch, logs=None):
        raise ValueError("user callback failed")


def test_a_fit_that_raises_is_ended_failed_when_the_next_fit_begins(sqlite_uri, client):
    mlflow.set_tracking_uri(sqlite_uri)
    callback = LayerprintCallback()
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    with pytest.raises(ValueError, match="user callback failed"):
        model.fit(x, x.sum(1), epochs=2, verbose=0, callbacks=[callback, Boom()])
    model.fit(x, x.sum(1), epochs=1, verbose=0, callbacks=[callback])
    callback.wait()
    runs = sorted(client.search_runs(["0"]), key=lambda r: r.info.start_time)
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED"]
    assert "on_train_end never came" in runs[0].data.tags[keys.TAG_FAILURE]


_RAISES_THEN_EXITS = """
import sys, keras, mlflow, numpy as np
from layerprint import LayerprintCallback
mlflow.set_tracking_uri(sys.argv[1])
class Boom(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise ValueError("user callback failed")
x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
model.compile("adam", "mse")
model.fit(x, x.sum(1), epochs=2, verbose=0, callbacks=[LayerprintCallback(), Boom()])
"""


def test_a_fit_that_raises_is_ended_failed_at_interpreter_exit(sqlite_uri, client):
    done = subprocess.run([sys.executable, "-c", _RAISES_THEN_EXITS, sqlite_uri], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and "user callback failed" in done.stderr
    (run,) = client.search_runs(["0"])
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1]


def test_a_failing_recorder_gives_the_model_its_own_train_function_back(sqlite_uri, monkeypatch):
    monkeypatch.setattr(TensorFlowDevice, "drain", _raise)
    mlflow.set_tracking_uri(sqlite_uri)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(1)])
    model.compile("adam", "mse")  # BatchNormalization: the train step records its statistics itself
    model.fit(x, x.sum(axis=1), epochs=1, batch_size=4, verbose=0)
    own = model.train_function
    callback = LayerprintCallback()
    model.fit(x, x.sum(axis=1), epochs=1, batch_size=4, verbose=0, callbacks=[callback])
    assert callback.callback_error.startswith("recorder: Injected")
    assert model.train_function is own
