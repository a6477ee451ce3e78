"""Fit-time overhead of LayerprintCallback on a small CNN with three BatchNormalization layers.

Batch 32, CPU, every-step logging of loss and BN summaries into a temporary SQLite store. In the
same run, and interleaved (one fit of each configuration per round, so machine noise hits all of
them alike): no callback (baseline), LayerprintCallback(log_every_n_steps=1) and (for reference)
log_every_n_steps=10, mlflow.keras.MlflowCallback(log_every_n_steps=1) and keras.callbacks.TensorBoard(histogram_freq=1).
Prints the median fit time of each and its ratio to the baseline (target, issue 3: <= 1.05x), and
LayerprintCallback's fixed cost per fit (train begin + train end: fingerprints, artifacts, final
flush), timed separately in the same run.

It also measures the floor that the store sets: MLflow's own ``MlflowClient.log_batch`` writing the
same points (replayed from one LayerprintCallback run) into the same SQLite store, alone, in CPU
seconds. Where TensorFlow already keeps every core busy, no callback that sends every point can
do better than ``1 + floor / baseline fit``.

Run: ``.venv/bin/python benchmarks/callback_overhead.py [--device cpu|gpu] [--rounds N]``. With
``--device gpu`` the fit runs on the first GPU of whatever Keras backend ``KERAS_BACKEND`` selects;
configurations the backend cannot run (``TensorBoard`` needs TensorFlow) are skipped with a note.
``--breakdown`` adds callbacks that do only part of the per-step work: Keras's state sync (reading
``Callback.model``), then also reading the logs and the BatchNorm variables, then the whole
LayerprintCallback with its points dropped instead of sent.
"""

import argparse
import os
import statistics
import tempfile
import time

PARSER = argparse.ArgumentParser(description=__doc__.splitlines()[0])
PARSER.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
PARSER.add_argument("--rounds", type=int, default=7)
PARSER.add_argument("--breakdown", action="store_true")
ARGS = PARSER.parse_args()  # before Keras is imported: --device cpu hides the GPUs

if ARGS.device == "cpu":
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402

from layerprint import LayerprintCallback  # noqa: E402
from layerprint.batchnorm import StatisticsReader, find_batchnorm_layers  # noqa: E402

STEPS, BATCH = 300, 32


def cnn() -> keras.Model:
    layers = [keras.Input((32, 32, 3))]
    for filters in (16, 32, 32):
        layers += [keras.layers.Conv2D(filters, 3, padding="same"), keras.layers.BatchNormalization(),
                   keras.layers.ReLU(), keras.layers.MaxPooling2D()]
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    model = keras.Sequential(layers)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


class _HookTimer(keras.callbacks.Callback):
    """Wraps a callback's train begin and end hooks to time them."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.fixed = inner, 0.0
        for name in ("on_train_begin", "on_train_end"):
            original = getattr(inner, name)

            def timed(*args, _original=original, **kwargs):
                start = time.perf_counter()
                _original(*args, **kwargs)
                self.fixed += time.perf_counter() - start

            setattr(inner, name, timed)


FIXED_COSTS = []


class _StateSyncOnly(keras.callbacks.Callback):
    """Reads ``self.model`` at every step: on JAX, that syncs the trained state into the variables."""

    def on_train_batch_end(self, batch, logs=None):
        _ = self.model


class _ReadOnly(_StateSyncOnly):
    """Also reads the logs and the BatchNorm variables to the host, as LayerprintCallback does."""

    def on_train_begin(self, logs=None):
        self.reader = StatisticsReader(find_batchnorm_layers(self.model))

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        {name: float(value) for name, value in (logs or {}).items()}
        self.reader.summaries()


class _PointsDropped(LayerprintCallback):
    """LayerprintCallback whose metric points are dropped instead of sent."""

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.sink.log_metrics = lambda metrics, step: None


def timed_fit(make_callbacks, x, y, tmp) -> float:
    keras.utils.set_random_seed(0)
    model = cnn()
    model.fit(x[:BATCH * 2], y[:BATCH * 2], batch_size=BATCH, epochs=1, verbose=0)  # trace outside the timing
    callbacks = make_callbacks(tmp)
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=callbacks)
    elapsed = time.perf_counter() - start
    if mlflow.active_run():
        mlflow.end_run()
    return elapsed


def main() -> None:
    args, rounds = ARGS, ARGS.rounds
    print(f"backend {keras.backend.backend()}, device {_device_name()}")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * BATCH, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=STEPS * BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        mlflow.search_experiments()
        configs = {
            "none": lambda t: [],
            "layerprint": lambda t: [_timed_layerprint()],
            "layerprint, log_every_n_steps=10": lambda t: [LayerprintCallback(log_every_n_steps=10)],
            "mlflow.keras.MlflowCallback": lambda t: [_mlflow_callback()],
            "TensorBoard(histogram_freq=1)": lambda t: [keras.callbacks.TensorBoard(os.path.join(t, "tb"), histogram_freq=1)],
        }
        if args.breakdown:
            configs.update({
                "part: Keras state sync": lambda t: [_StateSyncOnly()],
                "part: + read logs, BN vars": lambda t: [_ReadOnly()],
                "part: layerprint, points dropped": lambda t: [_PointsDropped()],
            })
        if keras.backend.backend() != "tensorflow":
            print("TensorBoard(histogram_freq=1) skipped: it writes through TensorFlow's summary API")
            del configs["TensorBoard(histogram_freq=1)"]
        times = {name: [] for name in configs}
        for _ in range(rounds):
            for name, make in configs.items():
                times[name].append(timed_fit(make, x, y, tmp))
        floor_cpu, points = store_floor()
    base = statistics.median(times["none"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:32s} fit={median:.3f}s ratio={median / base:.3f} ({STEPS} steps, batch {BATCH}, {rounds} rounds)")
    fixed = statistics.median(t.fixed for t in FIXED_COSTS)
    print(f"layerprint fixed cost per fit (train begin + end) = {fixed:.3f}s; "
          f"per-step ratio without it = {(statistics.median(times['layerprint']) - fixed) / base:.3f}")
    print(f"store floor: MlflowClient.log_batch of the same {points} points alone = {floor_cpu:.3f} s CPU "
          f"= {floor_cpu / base:.3f} of the baseline fit: CPU work that every-step logging through MLflow adds to "
          f"the training process ({os.cpu_count()} CPUs here)")


def store_floor() -> tuple[float, int]:
    """CPU seconds MLflow's store takes to write one LayerprintCallback run's points, alone.

    Returns:
        (CPU seconds of ``log_batch`` calls in chunks of 1,000, number of points).
    """
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    source = client.search_runs(["0"], filter_string="tags.benchmark = 'every-step'", max_results=1)[0]
    points = [Metric(m.key, m.value, m.timestamp, m.step)
              for key in source.data.metrics for m in client.get_metric_history(source.info.run_id, key)]
    target = client.create_run("0").info.run_id
    start = time.process_time()
    for i in range(0, len(points), 1000):
        client.log_batch(target, metrics=points[i:i + 1000], synchronous=True)
    return time.process_time() - start, len(points)


def _device_name() -> str:
    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0])
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return str((tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))[0].name)
    return keras.backend.backend()


def _timed_layerprint():
    callback = LayerprintCallback(log_every_n_steps=1, tags={"benchmark": "every-step"})
    timer = _HookTimer(callback)
    FIXED_COSTS.append(timer)
    return callback


def _mlflow_callback():
    mlflow.start_run()
    return mlflow.keras.MlflowCallback(log_every_epoch=False, log_every_n_steps=1)


if __name__ == "__main__":
    main()
