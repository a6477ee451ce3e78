"""Fit-time overhead of LayerprintCallback on a small CNN with three BatchNormalization layers.

Batch 32, CPU, every-step logging of loss and BN summaries into a temporary SQLite store. In the
same run, and interleaved (one fit of each configuration per round, so machine noise hits all of
them alike): no callback (baseline), LayerprintCallback(log_every_n_steps=1),
mlflow.keras.MlflowCallback(log_every_n_steps=1) and keras.callbacks.TensorBoard(histogram_freq=1).
Prints the median fit time of each and its ratio to the baseline (target, issue 3: <= 1.05x), and
LayerprintCallback's fixed cost per fit (train begin + train end: fingerprints, artifacts, final
flush), timed separately in the same run.
"""

import os
import statistics
import tempfile
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402

from layerprint import LayerprintCallback  # noqa: E402

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


def main(rounds: int = 7) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * BATCH, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=STEPS * BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        mlflow.search_experiments()
        configs = {
            "none": lambda t: [],
            "layerprint": lambda t: [_timed_layerprint()],
            "mlflow.keras.MlflowCallback": lambda t: [_mlflow_callback()],
            "TensorBoard(histogram_freq=1)": lambda t: [keras.callbacks.TensorBoard(os.path.join(t, "tb"), histogram_freq=1)],
        }
        times = {name: [] for name in configs}
        for _ in range(rounds):
            for name, make in configs.items():
                times[name].append(timed_fit(make, x, y, tmp))
    base = statistics.median(times["none"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:32s} fit={median:.3f}s ratio={median / base:.3f} ({STEPS} steps, batch {BATCH}, {rounds} rounds)")
    fixed = statistics.median(t.fixed for t in FIXED_COSTS)
    print(f"layerprint fixed cost per fit (train begin + end) = {fixed:.3f}s; "
          f"per-step ratio without it = {(statistics.median(times['layerprint']) - fixed) / base:.3f}")


def _timed_layerprint():
    callback = LayerprintCallback(log_every_n_steps=1)
    timer = _HookTimer(callback)
    FIXED_COSTS.append(timer)
    return callback


def _mlflow_callback():
    mlflow.start_run()
    return mlflow.keras.MlflowCallback(log_every_epoch=False, log_every_n_steps=1)


if __name__ == "__main__":
    main()
