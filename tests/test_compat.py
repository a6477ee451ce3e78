"""The compatibility matrix: ``LayerprintCallback()`` at its defaults in models and fits it was not designed
around, each row checked against the trained model itself (``helpers.logged.check_run_matches_model``).
The README's "Works with" table names these tests."""

from collections import Counter
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf

from helpers.logged import artifact_json, check_run_matches_model, weight_variables
from helpers.processes import run_on_backend
from layerprint import LayerprintCallback, keys, wait_for_runs
from layerprint.inspection.fingerprint import fingerprint_model
from layerprint.recording.checksum import checksum_numpy
from layerprint.recording.record import read_steps

TESTS = Path(__file__).resolve().parent


def _xy(n=32, features=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def _images(n=4, size=32, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, size, size, 3)).astype("float32"), rng.integers(0, classes, size=(n,))


def _value_hashes(fingerprint):
    return sorted(record["sha256"] for record in fingerprint["variables"])


def _only_run(client):
    (run,) = client.search_runs(["0"])
    return run.info.run_id


@pytest.fixture
def store(sqlite_uri, client):
    mlflow.set_tracking_uri(sqlite_uri)
    return client


class LazyBN(keras.Model):
    """The "Customizing what happens in fit()" shape: layers made in __init__, built at their first call."""

    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8)
        self.bn = keras.layers.BatchNormalization()
        self.head = keras.layers.Dense(1)

    def call(self, x, training=False):
        return self.head(self.bn(self.hidden(x), training=training))


class CustomStep(LazyBN):
    """A TensorFlow ``train_step`` written as in the Keras guide."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(y=y, y_pred=y_pred)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}


def _dense_bn_sequential():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                             keras.layers.Dense(1)])


def _dense_bn_functional():
    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization(name="bn0")(keras.layers.Dense(8, name="d0")(inputs))
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(x))


@pytest.mark.parametrize("make", [_dense_bn_sequential, _dense_bn_functional], ids=["sequential", "functional"])
def test_sequential_and_functional(make, store):
    model = make()
    model.compile("adam", "mse", metrics=["mae"])
    model.fit(*_xy(), epochs=2, batch_size=8, verbose=0, callbacks=[LayerprintCallback()])
    assert check_run_matches_model(store, _only_run(store), model, list(range(1, 9)))["bn_layers"] == 1


@pytest.mark.parametrize("cls", [LazyBN, CustomStep], ids=["subclassed_lazy", "custom_train_step"])
def test_subclassed_model_built_at_first_call(cls, store):
    keras.utils.set_random_seed(7)
    model = cls()
    model.compile("adam", "mse", metrics=["mae"])
    assert not model.built
    model.fit(*_xy(), epochs=2, batch_size=8, verbose=0, callbacks=[LayerprintCallback()])
    run_id = _only_run(store)
    check_run_matches_model(store, run_id, model, list(range(1, 9)))
    # The initial fingerprint is the untrained model: the same class built eagerly with the same seed
    # (compared by values; Keras numbers auto-named layers per process, so paths differ).
    keras.utils.set_random_seed(7)
    twin = cls()
    twin(_xy()[0][:2])
    assert _value_hashes(artifact_json(store, run_id, "fingerprints_initial.json")) == _value_hashes(fingerprint_model(twin))
    assert store.get_run(run_id).data.tags[keys.TAG_INIT_STEP] == "0"
    with np.load(store.download_artifacts(run_id, "layerprint/batchnorm.npz")) as npz:
        assert list(npz["epochs"]) == [0, 1, 2]
        (name,) = [n for n in npz.files if n.endswith("moving_mean")]
        np.testing.assert_array_equal(npz[name][0], np.zeros(8))  # before the first update


class OwnOptimizerStep(LazyBN):
    """A ``train_step`` with an optimizer of its own, as keras-io's GAN examples have (``model.optimizer``
    is never used): its first ``build`` marks the moment before the first update."""

    def __init__(self):
        super().__init__()
        self.own_optimizer = keras.optimizers.SGD(0.01)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = keras.ops.mean((self(x, training=True) - y) ** 2)
        self.own_optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        return {"loss": loss}


def test_train_step_with_its_own_optimizer_is_captured_before_its_first_update(store, caplog):
    keras.utils.set_random_seed(11)
    model = OwnOptimizerStep()
    model.compile()
    with caplog.at_level("WARNING", logger="layerprint"):
        model.fit(*_xy(), epochs=1, batch_size=8, verbose=0, callbacks=[LayerprintCallback()])
    run_id = _only_run(store)
    check_run_matches_model(store, run_id, model, [1, 2, 3, 4])
    assert store.get_run(run_id).data.tags[keys.TAG_INIT_STEP] == "0"
    assert not [r for r in caplog.records if "initial fingerprint is taken after step" in r.getMessage()]
    keras.utils.set_random_seed(11)
    twin = OwnOptimizerStep()
    twin(_xy()[0][:2])
    assert _value_hashes(artifact_json(store, run_id, "fingerprints_initial.json")) == _value_hashes(fingerprint_model(twin))


class Wrapper(keras.Model):
    """A subclassed model holding a functional model and calling it as a layer."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.head = keras.layers.Dense(1, name="outer_head")

    def call(self, x, training=False):
        return self.head(self.inner(x, training=training))


def test_nested_models_and_a_model_used_as_a_layer(store):
    block = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, name="inner_dense"),
                              keras.layers.BatchNormalization(name="inner_bn")], name="block")
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8, name="d0")(inputs)
    x = block(block(x))  # one model used as a layer at two sites
    functional = keras.Model(inputs, keras.layers.BatchNormalization(name="outer_bn")(x), name="functional")
    model = Wrapper(functional)
    model.compile("adam", "mse")
    model.fit(*_xy(), epochs=1, batch_size=8, verbose=0, callbacks=[LayerprintCallback()])
    run_id = _only_run(store)
    assert check_run_matches_model(store, run_id, model, [1, 2, 3, 4])["bn_layers"] == 2
    assert artifact_json(store, run_id, "sharing.json")["shared_layers"] == {
        "functional/block": 2, "functional/block/inner_bn": 2, "functional/block/inner_dense": 2}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MobileNetV2", "ResNet50", "EfficientNetB0"])
def test_keras_applications(name, store):
    kwargs = {"alpha": 0.35} if name == "MobileNetV2" else {}
    model = getattr(keras.applications, name)(input_shape=(32, 32, 3), weights=None, classes=4, **kwargs)
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(*_images(), epochs=1, batch_size=2, verbose=0, callbacks=[LayerprintCallback()])
    checked = check_run_matches_model(store, _only_run(store), model, [1, 2])
    assert checked["bn_layers"] >= 49


def test_tf_data_with_augmentation_layers(store):
    images, labels = _images(n=8, size=16)
    dataset = (tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(8, seed=0)
               .map(lambda x, y: (tf.image.random_brightness(x, 0.1, seed=1), y)).batch(4))
    model = keras.Sequential([
        keras.Input((16, 16, 3)), keras.layers.RandomFlip(seed=1), keras.layers.RandomRotation(0.1, seed=2),
        keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(dataset, epochs=2, verbose=0, callbacks=[LayerprintCallback()])
    check_run_matches_model(store, _only_run(store), model, [1, 2, 3, 4])


@pytest.mark.parametrize("validation", ["split", "dataset", "freq2"])
def test_validation(validation, store):
    x, y = _xy()
    model = _dense_bn_sequential()
    model.compile("adam", "mse")
    kwargs = {"split": {"validation_split": 0.25},
              "dataset": {"validation_data": tf.data.Dataset.from_tensor_slices(_xy(8, seed=1)).batch(4)},
              "freq2": {"validation_data": _xy(8, seed=1), "validation_freq": 2}}[validation]
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[LayerprintCallback()], **kwargs)
    run_id = _only_run(store)
    steps = list(range(1, 7)) if validation == "split" else list(range(1, 9))
    check_run_matches_model(store, run_id, model, steps)
    val_epochs = [m.step for m in store.get_metric_history(run_id, "epoch/val_loss")]
    assert val_epochs == ([2] if validation == "freq2" else [1, 2])


def test_steps_per_execution(store):
    model = _dense_bn_sequential()
    model.compile("adam", "mse", steps_per_execution=2)
    model.fit(*_xy(), epochs=2, batch_size=8, verbose=0, callbacks=[LayerprintCallback()])
    check_run_matches_model(store, _only_run(store), model, [2, 4, 6, 8])  # Keras calls the hooks every 2 steps


def test_class_weight(store):
    x, _ = _xy()
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=8, class_weight={0: 1.0, 1: 3.0}, verbose=0, callbacks=[LayerprintCallback()])
    check_run_matches_model(store, _only_run(store), model, [1, 2, 3, 4])


def test_mixed_precision(store):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = LazyBN()
        model.compile("adam", "mse")
        model.fit(*_xy(), epochs=1, batch_size=8, verbose=0, callbacks=[LayerprintCallback()])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    check_run_matches_model(store, _only_run(store), model, [1, 2, 3, 4])


def test_keras_callbacks_alongside(store, tmp_path):
    model = _dense_bn_sequential()
    model.compile("adam", "mse")
    callbacks = [keras.callbacks.EarlyStopping(monitor="loss", patience=5),
                 keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="loss"),
                 keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=1),
                 keras.callbacks.TerminateOnNaN(), LayerprintCallback()]
    model.fit(*_xy(), epochs=2, batch_size=8, verbose=0, callbacks=callbacks)
    check_run_matches_model(store, _only_run(store), model, list(range(1, 9)))
    assert (tmp_path / "best.keras").is_file()


def test_early_stopping_stops_the_record_where_training_stopped(store):
    model = _dense_bn_sequential()
    model.compile(keras.optimizers.SGD(0.0), "mse")  # no improvement: EarlyStopping ends after 2 epochs
    history = model.fit(*_xy(), epochs=10, batch_size=8, verbose=0, shuffle=False,  # shuffled, a loss can fall
                        callbacks=[keras.callbacks.EarlyStopping(monitor="loss", patience=1), LayerprintCallback()])
    assert len(history.epoch) == 2
    check_run_matches_model(store, _only_run(store), model, list(range(1, 9)))


def test_weights_another_callback_restores_at_train_end_are_the_final_fingerprint(store):
    """EarlyStopping(restore_best_weights=True), listed first, sets the best epoch's weights in its own
    on_train_end: the final fingerprint is of those, not of the values read at the last epoch end."""
    model = _dense_bn_sequential()
    model.compile(keras.optimizers.SGD(0.05), "mse")
    best_is_first = keras.callbacks.EarlyStopping(monitor="loss", mode="max", patience=10, restore_best_weights=True)
    model.fit(*_xy(), epochs=3, batch_size=8, verbose=0, shuffle=False, callbacks=[best_is_first, LayerprintCallback()])
    wait_for_runs()
    run_id = _only_run(store)
    final = artifact_json(store, run_id, keys.FINGERPRINTS_FINAL)
    assert final["model"] == fingerprint_model(model)["model"]
    assert store.get_run(run_id).data.tags[keys.TAG_FINAL_FINGERPRINT] == final["model"]
    _, checksums = read_steps(store.download_artifacts(run_id, f"{keys.ARTIFACT_DIR}/{keys.STEPS}")).checksums()
    at_last_epoch_end = Counter(int(values[-1]) for values in checksums.values())
    assert at_last_epoch_end != Counter(checksum_numpy(np.asarray(v.numpy())) for v in weight_variables(model))


def test_mlflow_keras_callback_in_the_same_run(store):
    model = _dense_bn_sequential()
    model.compile("adam", "mse")
    with mlflow.start_run() as run:
        model.fit(*_xy(), epochs=2, batch_size=8, verbose=0,
                  callbacks=[mlflow.keras.MlflowCallback(), LayerprintCallback()])
    check_run_matches_model(store, run.info.run_id, model, list(range(1, 9)))
    assert "loss" in store.get_run(run.info.run_id).data.metrics  # MlflowCallback's own key, beside ours


def test_mlflow_tensorflow_autolog(store):
    mlflow.tensorflow.autolog(log_models=False, log_datasets=False, silent=True)
    try:
        model = _dense_bn_sequential()
        model.compile("adam", "mse")
        model.fit(*_xy(), epochs=2, batch_size=8, verbose=0, callbacks=[LayerprintCallback()])
    finally:
        mlflow.tensorflow.autolog(disable=True)
    run_id = _only_run(store)  # autolog's run, which the callback logged into
    check_run_matches_model(store, run_id, model, list(range(1, 9)))
    assert "epoch_loss" in store.get_run(run_id).data.metrics or "loss" in store.get_run(run_id).data.metrics


def test_evaluate_and_predict_log_nothing(store):
    model = _dense_bn_sequential()
    model.compile("adam", "mse")
    callback = LayerprintCallback()
    x, y = _xy()
    model.evaluate(x, y, verbose=0, callbacks=[callback])
    model.predict(x, verbose=0, callbacks=[callback])
    assert store.search_runs(["0"]) == []


_OTHER_BACKEND = """
import json, os, sys
sys.path.insert(0, sys.argv[2])
import keras, mlflow, numpy as np
from mlflow.tracking import MlflowClient
from helpers.logged import check_run_matches_model
from layerprint import LayerprintCallback, keys
from layerprint.inspection.fingerprint import fingerprint_model
mlflow.set_tracking_uri(sys.argv[1])
x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")

class LazyBN(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden, self.bn, self.head = keras.layers.Dense(8), keras.layers.BatchNormalization(), keras.layers.Dense(1)
    def call(self, x, training=False):
        return self.head(self.bn(self.hidden(x), training=training))

client = MlflowClient(sys.argv[1])
for make in (lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                                       keras.layers.Dense(1)]), LazyBN):
    keras.utils.set_random_seed(3)
    model = make()
    model.compile("adam", "mse")
    with mlflow.start_run() as run:
        model.fit(x, x.sum(1, keepdims=True), epochs=2, batch_size=8, verbose=0, callbacks=[LayerprintCallback()])
    check_run_matches_model(client, run.info.run_id, model, list(range(1, 9)))
    keras.utils.set_random_seed(3)
    twin = make()
    twin(x[:2])
    initial = json.load(open(client.download_artifacts(run.info.run_id, "layerprint/fingerprints_initial.json")))
    assert sorted(r["sha256"] for r in initial["variables"]) == sorted(r["sha256"] for r in fingerprint_model(twin)["variables"])
print("checked", keras.backend.backend())
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_keras_backends(backend, sqlite_uri, client):
    # `make test` installs JAX and PyTorch into <venv>/jax-site and <venv>/torch-site, away from
    # TensorFlow, which imports jax whenever it can (see the Makefile).
    done = run_on_backend(backend, _OTHER_BACKEND, sqlite_uri, str(TESTS))
    assert done.stdout.strip().splitlines()[-1] == f"checked {backend}"
    assert {r.info.status for r in client.search_runs(["0"])} == {"FINISHED"}


_TF_KERAS = """
import sys, mlflow, numpy as np, tf_keras
from layerprint import LayerprintCallback
mlflow.set_tracking_uri(sys.argv[1])
x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
model = tf_keras.Sequential([tf_keras.layers.Dense(4, input_shape=(4,)), tf_keras.layers.BatchNormalization(),
                             tf_keras.layers.Dense(1)])
model.compile("adam", "mse")
print("epochs", model.fit(x, x.sum(1), epochs=2, verbose=0, callbacks=[LayerprintCallback()]).epoch)
"""


@pytest.mark.slow
def test_keras_2_models_get_a_warning_never_a_crash(sqlite_uri, client):
    done = run_on_backend("tf_keras", _TF_KERAS, sqlite_uri)
    assert done.stdout.strip().splitlines()[-1] == "epochs [0, 1]"
    assert "is not a Keras 3 model (Keras 2 / tf_keras?)" in done.stderr
    assert client.search_runs(["0"]) == []
