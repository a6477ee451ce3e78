"""Fit-time overhead of ``LayerprintCallback()`` at its defaults, as ratios measured in one run.

For each model, in interleaved rounds (one fit of every configuration per round, in an order rotated
from round to round, so that machine noise hits all of them alike), the fit of:

- no callback (the baseline);

- ``LayerprintCallback()`` at its defaults: every step in ``steps.parquet`` (checked after each fit:
  one row per step, a loss at every step), MLflow metrics under the 2 % budget, into a fresh SQLite
  store per fit. ``fit`` returns before the run it started is finished (final fingerprint, artifacts,
  last points, end of run: see ``LayerprintCallback.wait``); that work is waited for after each fit,
  outside its time, so that it never overlaps the next fit, and its median is printed;
- references: ``mlflow.keras.MlflowCallback(log_every_n_steps=1)`` (every step into MLflow) and
  ``keras.callbacks.TensorBoard(update_freq="batch")`` (every step to event files);

as the median over rounds of each round's ratio to the baseline, in wall-clock time (what the user
waits) and in the process's CPU time over all threads (what the callback's threads add), and as the
ratio of each configuration's fastest fit to the baseline's fastest. This machine has slow spells of
several seconds in which the same fit's steps take 16.5 ms instead of 9.5 ms and use more CPU time
(measured with per-step timestamps and ``/proc/stat``: the virtual CPUs are shared); a spell that
falls on one fit of a round moves that round's ratio by up to 50 %, and only the fastest fits are
free of it.

The fits read one ``tf.data`` pipeline with a fixed prefetch (``--input numpy``: Keras's own pipeline
from the arrays, whose autotuned prefetch makes the same fit take 3 s or 5 s; see ``fit_inputs``).

Models: the small CNN (3 BatchNorm layers, 32x32, batch 32, 300 steps) and ``keras.applications``
MobileNetV2, ResNet50 and EfficientNetB0 (``weights=None``, 96x96, batch 16, 30 steps). Each model is
built and fitted once before the rounds, with every configuration, so that Keras's tracing of the
train step (layerprint's recording copy of it included) and layerprint's one-time compile of its state
reader (printed separately) stay out of the timed fits.

Run: ``.venv/bin/python benchmarks/callback_overhead.py [--models cnn mobilenetv2 ...] [--rounds N]
[--device cpu|gpu] [--input dataset|numpy] [--hooks]``. ``--hooks`` adds, per fit, the time spent inside
each of layerprint's Keras hooks (on whichever thread Keras calls it), to see where its cost goes. With ``--device gpu`` the fits run on the first GPU of the Keras backend that
``KERAS_BACKEND`` selects (TensorBoard needs TensorFlow and is skipped on other backends).
"""

import argparse
import collections
import importlib.util
import os
import statistics
import tempfile
import time

MODELS = {"cnn": (300, 32, 32), "mobilenetv2": (30, 16, 96), "resnet50": (30, 16, 96), "efficientnetb0": (30, 16, 96)}
PARSER = argparse.ArgumentParser(description=__doc__.splitlines()[0])
PARSER.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
PARSER.add_argument("--rounds", type=int, default=7)
PARSER.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
PARSER.add_argument("--hooks", action="store_true",
                    help="also print the time layerprint spent in each Keras hook, per fit (median over rounds)")
PARSER.add_argument("--input", choices=["dataset", "numpy"], default="dataset",
                    help="dataset (default, with TensorFlow): a fixed tf.data pipeline; numpy: Keras's own")
ARGS = PARSER.parse_args()  # before Keras is imported: --device cpu hides the GPUs

if ARGS.device == "cpu":
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # check_record downloads each fit's record

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402

from layerprint import LayerprintCallback, wait_for_runs  # noqa: E402
from layerprint.inspection.batchnorm import find_batchnorm_layers  # noqa: E402
from layerprint.inspection.paths import unique_variables  # noqa: E402
from layerprint.inspection.state import StateReader  # noqa: E402
from layerprint.tracking.steps import read_steps  # noqa: E402


def build(name: str, size: int) -> keras.Model:
    if name == "cnn":
        layers = [keras.Input((size, size, 3))]
        for filters in (16, 32, 32):
            layers += [keras.layers.Conv2D(filters, 3, padding="same"), keras.layers.BatchNormalization(),
                       keras.layers.ReLU(), keras.layers.MaxPooling2D()]
        model = keras.Sequential(layers + [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    else:
        constructor = {"mobilenetv2": keras.applications.MobileNetV2, "resnet50": keras.applications.ResNet50,
                           "efficientnetb0": keras.applications.EfficientNetB0}[name]
        model = constructor(weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


HOOKS = ("on_train_begin", "on_epoch_begin", "on_train_batch_begin", "on_train_batch_end", "on_epoch_end",
         "on_train_end")


class TimedLayerprintCallback(LayerprintCallback):
    """``LayerprintCallback`` that adds the seconds spent in each of its hooks to ``seconds`` (``--hooks``)."""

    seconds: collections.Counter = collections.Counter()


def _timed(hook: str):
    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return getattr(LayerprintCallback, hook)(self, *args, **kwargs)
        finally:
            self.seconds[hook] += time.perf_counter() - started
    return timed


for _hook in HOOKS:
    setattr(TimedLayerprintCallback, _hook, _timed(_hook))


def configurations() -> dict:
    layerprint = TimedLayerprintCallback if ARGS.hooks else LayerprintCallback
    configs = {
        "baseline": lambda tmp: [],
        "layerprint": lambda tmp: [layerprint(tracking_uri=f"sqlite:///{tmp}/mlflow.db", experiment_name="bench")],
        "MlflowCallback every step": lambda tmp: [mlflow.keras.MlflowCallback(log_every_epoch=False, log_every_n_steps=1)],
    }
    if keras.backend.backend() == "tensorflow":
        configs["TensorBoard update_freq=batch"] = lambda tmp: [keras.callbacks.TensorBoard(tmp, update_freq="batch")]
    return configs


def fit_inputs(x: np.ndarray, y: np.ndarray, batch: int) -> dict:
    """The inputs of ``fit``: NumPy arrays batched by Keras, or (``--input dataset``, TensorFlow installed) one
    ``tf.data`` pipeline with a fixed prefetch and tf.data's autotuning off.

    Keras turns NumPy arrays into a ``tf.data`` pipeline that prefetches ``AUTOTUNE`` batches. Its autotuning
    makes the same fit of the CNN take 2.9-3.6 s or 5.1-5.4 s, with the same CPU time, from one fit to the next
    (the slow ones leave a core idle: measured with ``/proc/stat``). That spread is a hundred times the
    bound; a fixed pipeline takes 2.7-3.5 s.
    """
    if ARGS.input == "numpy" or importlib.util.find_spec("tensorflow") is None:
        return {"x": x, "y": y, "batch_size": batch}
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return {"x": tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).prefetch(2).with_options(options),
            "shuffle": False}  # a dataset is not shuffled by fit (Keras warns at each fit otherwise)


def timed_fit(model, callbacks, inputs: dict, tmp, mlflow_run: bool) -> tuple[float, float, float]:
    """The fit's wall-clock time, the process's CPU time during it (all threads), and the time the
    callbacks' background work went on after ``fit`` returned (waited for outside the fit's time, so
    that it never runs into the next fit)."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    mlflow.set_experiment("bench")
    start, cpu_start = time.perf_counter(), time.process_time()
    if mlflow_run:
        with mlflow.start_run():
            model.fit(**inputs, epochs=1, verbose=0, callbacks=callbacks)
    else:
        model.fit(**inputs, epochs=1, verbose=0, callbacks=callbacks)
    fitted, cpu = time.perf_counter(), time.process_time() - cpu_start
    wait_for_runs()
    return fitted - start, cpu, time.perf_counter() - fitted


def check_record(tmp: str, steps: int) -> tuple[str, str]:
    """Assert that the last run's steps.parquet holds every step with its loss; its cadences."""
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("bench").experiment_id],
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    record = read_steps(client.download_artifacts(run.info.run_id, "layerprint/steps.parquet", tmp))
    assert list(record.columns["step"]) == list(range(1, steps + 1)), "steps.parquet lacks steps"
    assert len(record.series("train/loss")) == steps, "steps.parquet lacks a loss"
    run_tags = run.data.tags
    return run_tags.get("layerprint.checksum_every"), run_tags.get("layerprint.publish_every")


def main() -> None:
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, device {ARGS.device}, "
          f"{ARGS.rounds} interleaved rounds, input {ARGS.input}")
    for name in ARGS.models:
        steps, batch, size = MODELS[name]
        rng = np.random.default_rng(0)
        x = rng.normal(size=(steps * batch, size, size, 3)).astype("float32")
        y = rng.integers(0, 10, size=(steps * batch,))
        keras.utils.set_random_seed(0)
        model = build(name, size)
        started = time.perf_counter()
        reader = StateReader(model, unique_variables(model), find_batchnorm_layers(model))
        reader.warm_up()
        compile_seconds = time.perf_counter() - started
        configs = configurations()
        times = {label: [] for label in configs}
        cpu = {label: [] for label in configs}
        after = []  # seconds the layerprint run took to finish after fit returned
        hook_seconds = collections.defaultdict(list)  # hook -> seconds in it, per timed fit (--hooks)
        cadence = None
        stores = {label: tempfile.TemporaryDirectory() for label in configs}  # one store per configuration,
        for label, make in configs.items():  # created here: warm-up, Keras traces the train step
            timed_fit(model, make(stores[label].name), fit_inputs(x[: batch * 4], y[: batch * 4], batch), stores[label].name,
                      label.startswith("Mlflow"))
        labels = list(configs)
        inputs = fit_inputs(x, y, batch)
        for round_index in range(ARGS.rounds):
            shift = round_index % len(labels)
            for label in labels[shift:] + labels[:shift]:
                make = configs[label]
                tmp = stores[label].name
                TimedLayerprintCallback.seconds.clear()
                fit_seconds, cpu_seconds, after_seconds = timed_fit(model, make(tmp), inputs, tmp,
                                                                    label.startswith("Mlflow"))
                if label == "layerprint" and ARGS.hooks:
                    for hook in HOOKS:
                        hook_seconds[hook].append(TimedLayerprintCallback.seconds[hook])
                times[label].append(fit_seconds)
                cpu[label].append(cpu_seconds)
                if label == "layerprint":
                    after.append(after_seconds)
                    cadence = check_record(tmp, steps)
        base = statistics.median(times["baseline"])
        # The ratio of each round (the configuration against the baseline of the same round), then the
        # median over rounds: on a machine whose speed drifts, fits of one round are the best pair.
        print(f"\n{name}: {model.count_params():,} parameters, {len(find_batchnorm_layers(model))} BatchNorm layers, "
              f"{steps} steps of batch {batch} at {size}x{size}; baseline {base:.3f} s "
              f"({base / steps * 1e3:.1f} ms a step); state reader compiled once in {compile_seconds:.2f} s")
        for label, values in times.items():
            ratios = [value / baseline for value, baseline in zip(values, times["baseline"])]
            cpu_ratios = [value / baseline for value, baseline in zip(cpu[label], cpu["baseline"])]
            print(f"  {label:32s} fastest {min(values):6.3f} s = {min(values) / min(times['baseline']):.3f}x; "
                  f"median {statistics.median(values):6.3f} s, ratio {statistics.median(ratios):.3f}x "
                  f"(rounds {min(ratios):.3f}-{max(ratios):.3f}); CPU time {statistics.median(cpu_ratios):.3f}x "
                  f"(rounds {min(cpu_ratios):.3f}-{max(cpu_ratios):.3f})")
        print(f"  layerprint: every step in steps.parquet; checksum_every={cadence[0]}, "
              f"MLflow publish_every={cadence[1]} (last round); the run finished "
              f"{statistics.median(after):.3f} s after fit returned (median, in the background)")
        if ARGS.hooks:
            print("  layerprint's hooks, per fit (median over rounds): " + ", ".join(
                f"{hook[3:]} {statistics.median(values) * 1e3:.1f} ms" for hook, values in hook_seconds.items()))


if __name__ == "__main__":
    main()
