import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from layerprint import LayerprintCallback, keys
from layerprint.recording.record import read_steps


def _data(n=32, features=4):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, features)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def _bn_model():
    bn_outer = keras.layers.BatchNormalization(name="bn_outer")
    block = keras.Sequential([keras.layers.Dense(4, name="inner"), keras.layers.BatchNormalization(name="bn_inner")], name="block")
    inputs = keras.Input((4,))
    x = block(keras.layers.Dense(4, name="d0")(inputs))
    x = bn_outer(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(bn_outer(x)))


def _artifact_json(client, run_id, name):
    return json.loads(open(client.download_artifacts(run_id, f"layerprint/{name}")).read())


def test_standalone_callback_starts_and_ends_its_own_run(sqlite_uri, client):
    mlflow.set_tracking_uri(sqlite_uri)
    model = _bn_model()
    model.compile("adam", "mse", metrics=["mae"])
    x, y = _data()
    cb = LayerprintCallback(strict=True)
    model.fit(x, y, epochs=2, batch_size=8, validation_split=0.25, verbose=0, callbacks=[cb])
    (run,) = client.search_runs(["0"])
    assert run.info.status == "FINISHED"
    assert run.data.tags[keys.TAG_INIT_FINGERPRINT] == cb.initial_fingerprint["model"]
    assert run.data.tags[keys.TAG_FINAL_FINGERPRINT] == cb.final_fingerprint["model"]
    assert cb.initial_fingerprint["model"] != cb.final_fingerprint["model"]
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, 7))  # 24 training samples / 8 = 3 steps x 2 epochs
    assert len(client.get_metric_history(run.info.run_id, "epoch/val_loss")) == 2
    assert len(client.get_metric_history(run.info.run_id, "epoch/val_mae")) == 2
    assert {m.step for m in client.get_metric_history(run.info.run_id, "drift/d0")} == {1, 2}
    initial = _artifact_json(client, run.info.run_id, "fingerprints_initial.json")
    assert initial["model"] == cb.initial_fingerprint["model"]
    assert {v["path"] for v in initial["variables"]} == {v.path for v in model.variables}


def test_drift_is_the_distance_of_the_trained_weights_from_the_initial_ones(sqlite_uri, client):
    model = _bn_model()
    model.compile("sgd", "mse")
    initial = {v.path: np.array(v.numpy(), np.float64) for v in model.trainable_variables}
    x, y = _data()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[LayerprintCallback(tracking_uri=sqlite_uri, strict=True)])
    (run,) = client.search_runs(["0"])
    squares = {path: float(np.sum((np.array(v.numpy(), np.float64) - initial[path]) ** 2))
               for path, v in ((v.path, v) for v in model.trainable_variables)}
    metrics = run.data.metrics  # the last epoch's
    d0 = sum(square for path, square in squares.items() if path.startswith("d0/"))
    assert d0 > 0 and metrics["drift/d0"] == pytest.approx(np.sqrt(d0), rel=1e-6)
    assert metrics[keys.DRIFT_MODEL] == pytest.approx(np.sqrt(sum(squares.values())), rel=1e-6)


def test_squared_distance_of_every_float_width_and_of_integers():
    from layerprint.fit.state import DRIFT_CHUNK, squared_distance

    rng = np.random.default_rng(0)
    for dtype in ("float16", "float32", "float64", "int32"):
        start = (rng.normal(size=DRIFT_CHUNK * 2 + 5) * 100).astype(dtype)
        current = start + (rng.normal(size=start.size) * 10).astype(dtype)
        exact = float(np.sum((current.astype(np.float64) - start.astype(np.float64)) ** 2))
        assert squared_distance(current, start) == pytest.approx(exact, rel=1e-6), dtype


class _BeforeTheFirstStep(keras.callbacks.Callback):
    """At the first batch's begin (the trace not yet run): what layerprint's start has done after a pause,
    and, with ``ask``, the initial fingerprint asked for there."""

    def __init__(self, layerprint, ask=False):
        super().__init__()
        self.layerprint, self.ask, self.seen = layerprint, ask, None

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0 and self.seen is None:
            time.sleep(1.0)  # ample for a tiny model's fingerprint and the run's creation, were they not waiting
            session = self.layerprint.session
            self.seen = {"run": session.binding.sink.run_id, "fingerprint": session.state.initial_fingerprint}
            if self.ask:
                started = time.monotonic()
                self.seen["asked"] = self.layerprint.initial_fingerprint
                self.seen["asked_seconds"] = time.monotonic() - started


def test_the_start_s_work_waits_for_the_first_step_unless_asked_for(sqlite_uri, client):
    model = _bn_model()
    model.compile("adam", "mse")
    x, y = _data()
    cb = LayerprintCallback(tracking_uri=sqlite_uri, experiment_name="start")
    probe = _BeforeTheFirstStep(cb)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[cb, probe])
    assert probe.seen == {"run": None, "fingerprint": None}  # not beside Keras's trace of the first step
    run = client.get_run(cb.active_run_id)
    assert run.info.status == "FINISHED" and run.data.tags[keys.TAG_INIT_FINGERPRINT] == cb.initial_fingerprint["model"]
    asking = _BeforeTheFirstStep(cb, ask=True)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[cb, asking])
    assert asking.seen["asked"] is not None and asking.seen["asked_seconds"] < 10  # asked for: done at once


def test_batchnorm_metrics_and_npz_match_the_layer_variables(sqlite_uri, client):
    model = _bn_model()
    model.compile("sgd", "mse")
    x, y = _data()
    mlflow.set_tracking_uri(sqlite_uri)
    with mlflow.start_run(experiment_id=client.create_experiment("bn")) as run:
        pass
    cb = LayerprintCallback(run_id=run.info.run_id, tracking_uri=sqlite_uri, strict=True)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[cb])
    run_id = run.info.run_id
    metrics = client.get_run(run_id).data.metrics
    for path, layer in (("bn_outer", model.get_layer("bn_outer")), ("block/bn_inner", model.get_layer("block").get_layer("bn_inner"))):
        mean = layer.moving_mean.numpy()
        assert metrics[f"bn/{path}/moving_mean/mean"] == pytest.approx(float(mean.mean(dtype=np.float64)), rel=1e-6)  # as summarized
        assert metrics[f"bn/{path}/moving_mean/max"] == pytest.approx(float(mean.max()), rel=1e-6)
        assert metrics[f"bn/{path}/moving_variance/std"] == pytest.approx(float(layer.moving_variance.numpy().std()), rel=1e-5)
        published = {m.step for m in client.get_metric_history(run_id, f"bn/{path}/moving_mean/min")}
        assert 8 in published and published <= set(range(1, 9))  # the fit's last step, and what the budget allows
        record = read_steps(client.download_artifacts(run_id, "layerprint/steps.parquet"))
        assert list(record.columns["step"]) == list(range(1, 9))  # every step in the record
        assert record.columns[f"bn/{path}/moving_mean/max"][-1] == pytest.approx(float(mean.max()), rel=1e-6)
    with np.load(client.download_artifacts(run_id, "layerprint/batchnorm.npz")) as npz:
        assert list(npz["epochs"]) == [0, 1, 2]
        np.testing.assert_array_equal(npz["bn_outer/moving_mean"][-1], model.get_layer("bn_outer").moving_mean.numpy())
        np.testing.assert_array_equal(npz["bn_outer/moving_mean"][0], np.zeros(4))
    sharing = _artifact_json(client, run_id, "sharing.json")
    assert sharing["shared_layers"] == {"bn_outer": 2}


def test_identical_group_from_one_initializer_instance(sqlite_uri, client, caplog):
    init = keras.initializers.GlorotUniform()
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, kernel_initializer=init, name="a")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(keras.layers.Dense(4, kernel_initializer=init, name="b")(x)))
    model.compile("adam", "mse")
    mlflow.set_tracking_uri(sqlite_uri)
    with caplog.at_level("WARNING", logger="layerprint"):
        model.fit(*_data(), epochs=1, verbose=0, callbacks=[LayerprintCallback(strict=True)])
    (run,) = client.search_runs(["0"])
    assert _artifact_json(client, run.info.run_id, "sharing.json")["identical_initial_values"] == [["a/kernel", "b/kernel"]]
    assert sum("symmetry is not broken" in r.message for r in caplog.records) == 1


def test_nested_run_and_active_run(sqlite_uri, client):
    mlflow.set_tracking_uri(sqlite_uri)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    with mlflow.start_run() as parent:
        model.fit(*_data(), epochs=1, verbose=0, callbacks=[LayerprintCallback(strict=True)])
        model.fit(*_data(), epochs=1, verbose=0, callbacks=[LayerprintCallback(nested=True, strict=True)])
        assert mlflow.active_run().info.run_id == parent.info.run_id
    runs = client.search_runs(["0"])
    child = [r for r in runs if r.info.run_id != parent.info.run_id]
    assert len(child) == 1 and child[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child[0].info.status == "FINISHED"
    assert keys.TAG_INIT_FINGERPRINT in client.get_run(parent.info.run_id).data.tags


class TwiceShared(keras.Model):
    def __init__(self):
        super().__init__()
        self.shared = keras.layers.Dense(4)
        self.head = keras.layers.Dense(1)

    def call(self, x):
        return self.head(self.shared(self.shared(x)))


@pytest.mark.parametrize("kind", ["sequential", "subclassed"])
def test_model_kinds_with_steps_per_execution(kind, sqlite_uri, client):
    mlflow.set_tracking_uri(sqlite_uri)
    model = TwiceShared() if kind == "subclassed" else keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile("adam", "mse", steps_per_execution=2)
    model.fit(*_data(), epochs=2, batch_size=8, verbose=0, callbacks=[LayerprintCallback(strict=True)])
    (run,) = client.search_runs(["0"])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == [2, 4, 6, 8]  # 4 steps an epoch, hooks every 2 steps, global step numbering
    assert run.data.tags[keys.TAG_FINAL_FINGERPRINT] != run.data.tags[keys.TAG_INIT_FINGERPRINT]


def test_log_every_n_steps_and_probe_batch(sqlite_uri, client):
    mlflow.set_tracking_uri(sqlite_uri)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    x, y = _data()
    untrained = np.linalg.norm(np.asarray(model(x[:2])).ravel())
    cb = LayerprintCallback(log_every_n_steps=3, probe_batch=x[:2], strict=True)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[cb])
    (run,) = client.search_runs(["0"])
    # every 3rd step, plus the first step and every epoch end (4 steps an epoch)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 3, 4, 6, 8]
    probe = _artifact_json(client, run.info.run_id, "probe.json")
    assert probe["epochs"] == [0, 1, 2]  # epoch 0: before training
    assert probe["l2_norm"][0] == pytest.approx(float(untrained), rel=1e-5)
    assert [m.step for m in client.get_metric_history(run.info.run_id, keys.PROBE_NORM)] == [0, 1, 2]
    expected = np.linalg.norm(np.asarray(model(x[:2])).ravel())
    assert probe["l2_norm"][-1] == pytest.approx(float(expected), rel=1e-5)
    assert run.data.tags[keys.TAG_PROBE_FINGERPRINT] == probe["sha256"][-1]


def test_mixed_precision(sqlite_uri, client):
    mlflow.set_tracking_uri(sqlite_uri)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization(), keras.layers.Dense(1, dtype="float32")])
        model.compile("adam", "mse")
        model.fit(*_data(), epochs=1, batch_size=8, verbose=0, callbacks=[LayerprintCallback(strict=True)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    (run,) = client.search_runs(["0"])
    assert run.info.status == "FINISHED"
    assert "bn/batch_normalization/moving_mean/mean" in run.data.metrics


_MIRRORED = """
import os, sys
os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, mlflow, numpy as np
from layerprint import LayerprintCallback
mlflow.set_tracking_uri(sys.argv[1])
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization(), keras.layers.Dense(1)])
    model.compile("adam", "mse")
x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
model.fit(x, x.sum(1), epochs=2, batch_size=8, verbose=0, callbacks=[LayerprintCallback(strict=True)])
print("replicas", strategy.num_replicas_in_sync)
"""


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(sqlite_uri, client):
    done = subprocess.run([sys.executable, "-c", _MIRRORED, sqlite_uri], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "replicas 2" in done.stdout
    (run,) = client.search_runs(["0"])
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 8
    assert "bn/batch_normalization/moving_variance/max" in run.data.metrics


_JAX = """
import json, logging, os, sys
os.environ["KERAS_BACKEND"] = "jax"
os.environ["JAX_PLATFORMS"] = "cpu"
import keras, mlflow, numpy as np
from mlflow.tracking import MlflowClient
from layerprint import LayerprintCallback, keys
from layerprint.recording import jax as recording_jax
from layerprint.inspection.paths import unique_variables, variable_paths
from layerprint.recording.checksum import checksum_numpy
from layerprint.recording.record import read_steps
mlflow.set_tracking_uri(sys.argv[1])
client = MlflowClient(sys.argv[1])
x = np.random.default_rng(0).normal(size=(48, 4)).astype("float32")

def model(steps_per_execution=1):
    keras.utils.set_random_seed(5)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization(name="bn"),
                          keras.layers.Dense(1)])
    m.compile("adam", "mse", steps_per_execution=steps_per_execution)
    return m

class Truth(keras.callbacks.Callback):
    # The reference: reading `self.model` syncs the trained state into the variables, then reads them.
    def __init__(self):
        super().__init__()
        self.means, self.checksums = [], []
    def on_train_batch_end(self, batch, logs=None):
        self.means.append(float(np.mean(self.model.get_layer("bn").moving_mean.numpy())))
        self.checksums.append([checksum_numpy(np.asarray(v.numpy())) for v in unique_variables(self.model)])

def record(run_id):
    return read_steps(client.download_artifacts(run_id, "layerprint/steps.parquet"))

def recorded_fit(steps_per_execution, experiment):
    recorded_model = model(steps_per_execution)
    syncs = []
    original_sync = recorded_model.jax_state_sync
    def counted_sync():
        if getattr(recorded_model, "_jax_state", None) and not recorded_model._jax_state_synced:
            syncs.append(1)  # a real copy of the trainer's state into the variables
        return original_sync()
    recorded_model.jax_state_sync = counted_sync
    callback = LayerprintCallback(checksum_every=1, experiment_name=experiment)
    recorded_model.fit(x, x.sum(1), epochs=2, batch_size=8, shuffle=False, verbose=0, callbacks=[callback])
    callback.wait()
    steps = record(callback.active_run_id)
    paths = variable_paths(recorded_model)
    names = [keys.checksum_key(paths[id(v)])[len(keys.CHECKSUM_PREFIX):] for v in unique_variables(recorded_model)]
    _, checksums = steps.checksums()
    device = callback.session.device
    return {"recorder": type(device).__name__ if device.records_in_step else "reads between steps",
            "own_function_back": recorded_model.train_function is device.base_function,
            "means": list(steps.series("bn/bn/moving_mean/mean").values()),
            "checksums": [[int(checksums[name][i]) for name in names] for i in range(len(steps.columns["step"]))],
            "syncs": len(syncs), "status": client.get_run(callback.active_run_id).info.status}

truth = Truth()
model().fit(x, x.sum(1), epochs=2, batch_size=8, shuffle=False, verbose=0, callbacks=[truth])
fits = {str(n): recorded_fit(n, f"spe{n}") for n in (1, 3)}

# A recording step that cannot be compiled: the model's own step trains on, one warning, the tag.
def _broken(*args):
    raise RuntimeError("injected: cannot record")
recording_jax.checksums_jax = _broken
warnings = []
logging.getLogger("layerprint").addHandler(type("H", (logging.Handler,), {"emit": lambda self, r: warnings.append(r.getMessage())})())
broken = LayerprintCallback(experiment_name="broken")
history = model().fit(x, x.sum(1), epochs=2, batch_size=8, shuffle=False, verbose=0, callbacks=[broken])
broken.wait()
run = client.get_run(broken.active_run_id)
print(json.dumps({"backend": keras.backend.backend(), "truth_means": truth.means, "truth_checksums": truth.checksums,
                  "fits": fits, "broken": {"epochs": history.epoch, "status": run.info.status,
                  "tag": run.data.tags.get(keys.TAG_CALLBACK_ERROR), "losses": len(record(run.info.run_id).series("train/loss")),
                  "warnings": [w for w in warnings if "failed, training goes on" in w]}}))
"""


@pytest.mark.slow
def test_jax_backend_records_the_trained_state_without_a_sync_at_every_step(sqlite_uri, client):
    # On JAX, Keras keeps the trained state in the trainer during an epoch (the variables are even
    # purged); reading `Callback.model` would copy it all back at every step. The train step records the
    # state it returns instead: its per-step values (BatchNorm and every checksum, inside
    # steps_per_execution blocks too) must equal what a syncing reader sees, with no sync per step.
    # `make test` installs JAX into <venv>/jax-site, away from TensorFlow (see the Makefile).
    jax_site = Path(sys.prefix) / "jax-site"
    assert importlib.util.find_spec("jax") or jax_site.is_dir(), f"JAX is needed: `make test` installs it into {jax_site}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(jax_site), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _JAX, sqlite_uri], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax"
    truth_means, truth_checksums = result["truth_means"], result["truth_checksums"]
    assert len(truth_means) == 12 and len(set(truth_means)) == 12  # every step, each its own value
    for steps_per_execution, fit in result["fits"].items():
        assert fit["recorder"] == "JaxDevice" and fit["own_function_back"], steps_per_execution
        assert fit["status"] == "FINISHED"
        assert fit["means"] == pytest.approx(truth_means, rel=1e-6, abs=1e-9), steps_per_execution
        assert fit["checksums"] == truth_checksums, steps_per_execution  # bit for bit, every step
        assert fit["syncs"] <= 2 * 2  # at most a couple per epoch (epoch-end work), never one per step
    broken = result["broken"]
    assert broken["epochs"] == [0, 1] and broken["status"] == "FINISHED" and broken["losses"] == 12
    assert broken["tag"] == "recorder: RuntimeError: injected: cannot record"
    assert len(broken["warnings"]) == 1, broken["warnings"]


def _fine_tuning_model():
    base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="base_dense"),
                             keras.layers.BatchNormalization(name="base_bn")], name="base")
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(base(inputs))), base


def _steps(client, run_id, key="train/loss"):
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def test_two_fits_in_one_run_continue_steps_and_epochs(sqlite_uri, client):
    # The fine-tuning habit: fit the head with the base frozen, unfreeze, compile, fit again, one run.
    mlflow.set_tracking_uri(sqlite_uri)
    model, base = _fine_tuning_model()
    x, y = _data()
    callback = LayerprintCallback(log_every_n_steps=1)
    with mlflow.start_run() as run:
        base.trainable = False
        model.compile("adam", "mse")
        model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback])
        first_init = callback.initial_fingerprint["model"]
        base.trainable = True
        model.compile(keras.optimizers.Adam(1e-4), "mse")
        model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[callback])
        second_start = callback.initial_fingerprint["model"]
    run_id = run.info.run_id
    assert _steps(client, run_id) == list(range(1, 21))  # 4 steps an epoch, 2 + 3 epochs, no repeats
    record = read_steps(client.download_artifacts(run_id, "layerprint/steps.parquet"))
    assert list(record.columns["step"]) == list(range(1, 21)) and sorted(set(record.columns["epoch"])) == [1, 2, 3, 4, 5]
    assert _steps(client, run_id, "epoch/loss") == [1, 2, 3, 4, 5]
    assert _steps(client, run_id, "bn/base/base_bn/moving_mean/mean") == list(range(1, 21))
    tags = client.get_run(run_id).data.tags
    assert tags[keys.TAG_INIT_FINGERPRINT] == first_init != second_start
    assert (tags[keys.TAG_FITS], tags[keys.TAG_LAST_STEP], tags[keys.TAG_LAST_EPOCH]) == ("2", "20", "5")
    assert _artifact_json(client, run_id, "fingerprints_initial.json")["model"] == first_init
    assert _artifact_json(client, run_id, "fit_2/fingerprints_initial.json")["model"] == second_start
    assert tags[keys.TAG_FINAL_FINGERPRINT] == callback.final_fingerprint["model"]
    with np.load(client.download_artifacts(run_id, "layerprint/batchnorm.npz")) as npz:
        assert list(npz["epochs"]) == [0, 1, 2, 3, 4, 5]
        np.testing.assert_array_equal(npz["base/base_bn/moving_mean"][-1], base.get_layer("base_bn").moving_mean.numpy())


def test_a_new_callback_in_the_same_run_respects_initial_epoch(sqlite_uri, client):
    mlflow.set_tracking_uri(sqlite_uri)
    model, _ = _fine_tuning_model()
    model.compile("adam", "mse")
    x, y = _data()
    with mlflow.start_run() as run:
        history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[LayerprintCallback(log_every_n_steps=1)])
        # Keras's resume idiom: continue the epoch count; and a later fit that skips ahead.
        model.fit(x, y, epochs=4, initial_epoch=history.epoch[-1] + 1, batch_size=8, verbose=0,
                  callbacks=[LayerprintCallback(log_every_n_steps=1)])
        model.fit(x, y, epochs=7, initial_epoch=6, batch_size=8, verbose=0,
                  callbacks=[LayerprintCallback(log_every_n_steps=1)])
    assert _steps(client, run.info.run_id) == list(range(1, 21))
    assert _steps(client, run.info.run_id, "epoch/loss") == [1, 2, 3, 4, 7]


def test_a_run_continued_from_another_process_reads_its_progress_from_the_store(sqlite_uri, client):
    from layerprint.cache import CACHE

    mlflow.set_tracking_uri(sqlite_uri)
    model, _ = _fine_tuning_model()
    model.compile("adam", "mse")
    x, y = _data()
    with mlflow.start_run() as run:
        model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[LayerprintCallback(probe_batch=x[:2])])
    CACHE.end_run(run.info.run_id)  # what a new process knows: nothing but the store
    model.fit(x, y, epochs=1, batch_size=8, verbose=0,
              callbacks=[LayerprintCallback(run_id=run.info.run_id, probe_batch=x[:2])])
    run_id = run.info.run_id
    assert set(_steps(client, run_id)) >= {1, 4, 8, 9, 12} and len(_steps(client, run_id)) == len(set(_steps(client, run_id)))
    record = read_steps(client.download_artifacts(run_id, "layerprint/steps.parquet"))
    assert list(record.columns["step"]) == list(range(1, 13))  # the record continued from the store
    assert _steps(client, run_id, "epoch/loss") == [1, 2, 3]
    assert _artifact_json(client, run_id, "probe.json")["epochs"] == [0, 1, 2, 3]
    with np.load(client.download_artifacts(run_id, "layerprint/batchnorm.npz")) as npz:
        assert list(npz["epochs"]) == [0, 1, 2, 3]


def test_a_run_the_callback_starts_belongs_to_one_fit(sqlite_uri, client):
    mlflow.set_tracking_uri(sqlite_uri)
    model, _ = _fine_tuning_model()
    model.compile("adam", "mse")
    callback = LayerprintCallback(log_every_n_steps=1)  # every step published, whatever the budget chooses
    model.fit(*_data(), epochs=1, batch_size=8, verbose=0, callbacks=[callback])
    model.fit(*_data(), epochs=1, batch_size=8, verbose=0, callbacks=[callback])
    callback.wait()
    runs = client.search_runs(["0"])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert [_steps(client, r.info.run_id) for r in runs] == [[1, 2, 3, 4], [1, 2, 3, 4]]
