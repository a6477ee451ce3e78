"""``LayerprintCallback()`` in more of other people's code: a GAN wrapper with optimizers of its own on three
backends, transformer blocks, and a run read with plain MLflow calls the moment ``fit`` returns."""

import logging
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from helpers import gan as gan_shapes
from helpers.logged import artifact_json
from helpers.processes import run_on_backend
from layerprint import LayerprintCallback, fingerprint_model, keys
from layerprint.tracking import spool
from layerprint.recording.record import read_steps

TESTS = Path(__file__).resolve().parent
ARTIFACTS = {f"{keys.ARTIFACT_DIR}/{name}" for name in (
    keys.FINGERPRINTS_INITIAL, keys.FINGERPRINTS_FINAL, keys.SHARING, keys.BATCHNORM, keys.WEIGHTS_FINAL, keys.STEPS)}
LATE_CAPTURE = "created its variables inside the first training step"


@pytest.fixture
def store(sqlite_uri, client):
    mlflow.set_tracking_uri(sqlite_uri)
    return client


def _bn_layers(gan):
    return {"discriminator/d_bn": gan.discriminator.get_layer("d_bn"), "generator/g_bn": gan.generator.get_layer("g_bn")}


def check_gan_run(client, run_id, gan, before, steps):
    """The GAN's run, read as it is when ``fit`` returns: FINISHED, captured before the first update (its
    initial fingerprint is the one taken before ``fit``), both BatchNorm layers recorded at every step and
    in ``batchnorm.npz`` (row 0 the untrained statistics, the last row the trained ones)."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED", run.data.tags
    tags = run.data.tags
    assert keys.TAG_CALLBACK_ERROR not in tags and keys.TAG_SYMMETRY_WARNING not in tags, tags
    assert tags[keys.TAG_INIT_STEP] == "0"
    assert tags[keys.TAG_INIT_FINGERPRINT] == artifact_json(client, run_id, keys.FINGERPRINTS_INITIAL)["model"] == before
    assert {a.path for a in client.list_artifacts(run_id, keys.ARTIFACT_DIR)} >= ARTIFACTS
    record = read_steps(client.download_artifacts(run_id, f"{keys.ARTIFACT_DIR}/{keys.STEPS}"))
    assert sorted(record.series("train/d_loss")) == sorted(record.series("train/g_loss")) == steps
    with np.load(client.download_artifacts(run_id, f"{keys.ARTIFACT_DIR}/{keys.BATCHNORM}")) as npz:
        assert list(npz["epochs"]) == [0, 1, 2]
        for path, layer in _bn_layers(gan).items():
            assert len(record.series(f"bn/{path}/moving_mean/mean")) == len(steps), path
            np.testing.assert_array_equal(npz[f"{path}/moving_mean"][0], np.zeros(16))
            np.testing.assert_array_equal(npz[f"{path}/moving_mean"][-1], np.asarray(layer.moving_mean.numpy()))


def test_a_gan_wrapper_with_two_optimizers_is_captured_before_the_first_update(store, caplog):
    # keras-io's DCGAN: a Model without `call` (never marked built) over a built generator and
    # discriminator, its own compile(d_optimizer, g_optimizer) and train_step.
    keras.utils.set_random_seed(1)
    gan = gan_shapes.compiled_gan()
    assert not gan.built
    before = fingerprint_model(gan)["model"]
    callback = LayerprintCallback()
    with caplog.at_level(logging.WARNING, logger="layerprint"):
        gan.fit(*gan_shapes.gan_data(), epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    (run,) = store.search_runs(["0"])
    check_gan_run(store, run.info.run_id, gan, before, list(range(1, 9)))
    assert callback.initial_fingerprint["model"] == before
    assert not [r for r in caplog.records if LATE_CAPTURE in r.getMessage()]


def _lazy_gan():
    """The same GAN with submodels built at their first call, inside the first traced step."""
    gan = gan_shapes.GAN.__new__(gan_shapes.GAN)
    keras.Model.__init__(gan)
    gan.discriminator = keras.Sequential([keras.layers.Dense(16), keras.layers.BatchNormalization(name="d_bn"),
                                          keras.layers.Dense(1)], name="discriminator")
    gan.generator = keras.Sequential([keras.layers.Dense(16), keras.layers.BatchNormalization(name="g_bn"),
                                      keras.layers.Dense(gan_shapes.FEATURES)], name="generator")
    gan.d_loss_tracker, gan.g_loss_tracker = keras.metrics.Mean(name="d_loss"), keras.metrics.Mean(name="g_loss")
    gan.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3))
    return gan


def test_a_gan_built_inside_its_first_step_is_captured_after_it_and_says_so(store, caplog):
    # Its variables are created inside tf.GradientTape in the traced step, with initial values TensorFlow
    # cannot lift out of the graph: they hold nothing until the step runs. The start is taken after step 1,
    # tagged and warned, never read empty.
    gan = _lazy_gan()
    callback = LayerprintCallback()
    with caplog.at_level(logging.WARNING, logger="layerprint"):
        gan.fit(*gan_shapes.gan_data(), epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    run = store.search_runs(["0"])[0]
    assert run.info.status == "FINISHED" and keys.TAG_CALLBACK_ERROR not in run.data.tags, run.data.tags
    assert run.data.tags[keys.TAG_INIT_STEP] == "1"
    assert sum(LATE_CAPTURE in r.getMessage() for r in caplog.records) == 1
    initial = {v["path"]: v["shape"] for v in callback.initial_fingerprint["variables"]}
    assert initial == {path: list(v.shape) for path, v in zip([v.path for v in gan.variables], gan.variables)
                       if not path.endswith("seed_generator_state")}


_GAN_ON_BACKEND = """
import json, sys
sys.path.insert(0, sys.argv[2])
import keras, mlflow, numpy as np
from mlflow.tracking import MlflowClient
from helpers import gan as gan_shapes
from layerprint import LayerprintCallback, fingerprint_model
from test_compat_shapes import check_gan_run
mlflow.set_tracking_uri(sys.argv[1])
keras.utils.set_random_seed(1)
gan = gan_shapes.compiled_gan()
before = fingerprint_model(gan)["model"]
callback = LayerprintCallback()
gan.fit(*gan_shapes.gan_data(), epochs=2, batch_size=8, verbose=0, callbacks=[callback])
(run,) = mlflow.search_runs(output_format="list")  # right after fit, no wait
check_gan_run(MlflowClient(sys.argv[1]), run.info.run_id, gan, before, list(range(1, 9)))
device = callback.session.device
print("checked", keras.backend.backend(), type(device).__name__ if device.records_in_step else "reads between steps")
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_gan_wrapper_on_jax_and_pytorch(backend, sqlite_uri):
    # JAX: a stateless train_step with stateless_call (keras-io's JAX guide); PyTorch: two optimizers and
    # backward() (keras-io's PyTorch guide). Installed by `make test` into <venv>/<backend>-site.
    done = run_on_backend(backend, _GAN_ON_BACKEND, sqlite_uri, str(TESTS))
    recorder = {"jax": "JaxDevice", "torch": "reads between steps"}[backend]  # JAX's step records itself
    assert done.stdout.strip().splitlines()[-1] == f"checked {backend} {recorder}"
    assert LATE_CAPTURE not in done.stderr and "symmetry is not broken" not in done.stderr


def _transformer():
    """A keras-io text-classification transformer block, an EinsumDense with a bias and a GRU (whose bias
    is 2-D): every one starts some variables from constants by design."""
    inputs = keras.Input((8,), dtype="int32")
    x = keras.layers.Embedding(50, 16, name="embedding")(inputs)
    for i in range(2):  # two blocks: their constant biases are bitwise equal to each other
        attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8, name=f"attention_{i}")(x, x)
        x = keras.layers.LayerNormalization(name=f"norm_{i}")(x + attention)
        x = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 16), bias_axes="d", name=f"einsum_{i}")(x)
    x = keras.layers.GRU(4, return_sequences=True, name="gru_0")(x)
    x = keras.layers.GRU(4, name="gru_1")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(x))


def test_transformer_blocks_get_no_symmetry_warning(store, caplog):
    model = _transformer()
    model.compile("adam", "mse")
    biases = [v.path for v in model.variables if v.path.endswith("bias") and len(v.shape) >= 2]
    assert len(biases) >= 8  # the (heads, key_dim) query/key/value biases and the GRUs' (2, 3 * units)
    callback = LayerprintCallback()
    x = np.random.default_rng(0).integers(0, 50, size=(16, 8))
    with caplog.at_level(logging.WARNING, logger="layerprint"):
        model.fit(x, np.zeros((16, 1), "float32"), epochs=1, batch_size=8, verbose=0, callbacks=[callback])
    (run,) = store.search_runs(["0"])
    assert keys.TAG_SYMMETRY_WARNING not in run.data.tags
    assert artifact_json(store, run.info.run_id, keys.SHARING)["identical_initial_values"] == []
    assert not [r for r in caplog.records if "symmetry is not broken" in r.getMessage()]


def test_identical_kernels_in_a_transformer_still_warn(store, caplog):
    # The warning is for weights meant to differ: two attention layers given one seeded initializer (each
    # attention layer gives its projections a copy of it: equal seeds, equal kernels).
    init = keras.initializers.GlorotUniform(seed=3)
    inputs = keras.Input((4, 8))
    x = keras.layers.MultiHeadAttention(2, 4, kernel_initializer=init, name="a")(inputs, inputs)
    x = keras.layers.MultiHeadAttention(2, 4, kernel_initializer=init, name="b")(x, x)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(x))
    model.compile("adam", "mse")
    with caplog.at_level(logging.WARNING, logger="layerprint"):
        model.fit(np.ones((8, 4, 8), "float32"), np.zeros((8, 4, 1), "float32"), epochs=1, verbose=0,
                  callbacks=[LayerprintCallback()])
    (run,) = store.search_runs(["0"])
    assert run.data.tags[keys.TAG_SYMMETRY_WARNING] == "true"
    groups = artifact_json(store, run.info.run_id, keys.SHARING)["identical_initial_values"]
    assert any({"a/query/kernel", "b/query/kernel"} <= set(group) for group in groups), groups
    assert not [group for group in groups if any("bias" in path for path in group)]
    assert sum("symmetry is not broken" in r.getMessage() for r in caplog.records) == 1


def _bn_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d0"),
                              keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(1, name="head")])
    model.compile("adam", "mse", metrics=["mae"])
    return model


def _xy(n=48):
    x = np.random.default_rng(0).normal(size=(n, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def test_the_run_is_complete_in_the_store_when_fit_returns(store):
    # What every MLflow user writes right after fit, with no wait of layerprint's own.
    _bn_model().fit(*_xy(), epochs=3, batch_size=8, validation_split=0.25, verbose=0,
                    callbacks=[LayerprintCallback()])
    (run,) = mlflow.search_runs(output_format="list")
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.info.end_time is not None
    client = MlflowClient()
    for key in ("epoch/loss", "epoch/val_loss", "epoch/val_mae", "drift/_model"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3], key
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")][-1] == 15
    assert {a.path for a in client.list_artifacts(run_id, keys.ARTIFACT_DIR)} >= ARTIFACTS
    assert keys.TAG_FINAL_FINGERPRINT in run.data.tags
    assert mlflow.last_active_run().info.run_id == run_id


def test_finishing_in_the_background_is_asked_for_and_waited_for(store):
    callback = LayerprintCallback(finish_in_background=True)
    _bn_model().fit(*_xy(), epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    assert callback.wait(timeout=60)
    (run,) = store.search_runs(["0"])
    assert run.info.status == "FINISHED" and keys.TAG_FINAL_FINGERPRINT in run.data.tags


class KillServerAtTrainEnd(keras.callbacks.Callback):
    """Kills the tracking server after the last step, once the run exists, before LayerprintCallback's
    own train end."""

    def __init__(self, server, callback):
        super().__init__()
        self.server, self.callback = server, callback

    def on_train_end(self, logs=None):
        assert not self.callback.active_run_id.startswith("offline-")
        self.server.kill()


@pytest.mark.slow
def test_fit_returns_in_bounded_time_when_the_server_dies_before_the_end(tmp_path, mlflow_server):
    # MLflow's own client retries a refused request for minutes; the callback spools what the store
    # did not take within flush_timeout, the run's end included, and sync completes the run later.
    flush_timeout = 5.0
    callback = LayerprintCallback(tracking_uri=mlflow_server.uri, experiment_name="dies", flush_timeout=flush_timeout)
    model = _bn_model()
    started = time.monotonic()
    model.fit(*_xy(), epochs=2, batch_size=8, verbose=0, callbacks=[KillServerAtTrainEnd(mlflow_server, callback), callback])
    assert time.monotonic() - started < flush_timeout + 15
    run_id = callback.active_run_id
    records = spool.read_records(spool.spool_root() / f"{run_id}.jsonl")
    assert [r["status"] for r in records if r["kind"] == "terminate"] == ["FINISHED"]
    assert {r["artifact_path"] + "/" + Path(r["file"]).name for r in records if r["kind"] == "artifact"} >= {
        f"{keys.ARTIFACT_DIR}/{keys.FINGERPRINTS_FINAL}", f"{keys.ARTIFACT_DIR}/{keys.STEPS}"}
    mlflow_server.start()
    assert spool.sync(mlflow_server.uri).remaining == 0
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and keys.TAG_FINAL_FINGERPRINT in run.data.tags
    assert [m.step for m in client.get_metric_history(run_id, "epoch/loss")] == [1, 2]
    assert {a.path for a in client.list_artifacts(run_id, keys.ARTIFACT_DIR)} >= ARTIFACTS
