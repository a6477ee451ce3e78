"""What ``LayerprintCallback()`` at its defaults costs a user, as ratios measured in one run: a fresh model per
fit, the run complete when the clock stops.

A user builds a model and fits it once, in a run the callback starts: ``fit`` returns with the run complete
(every point, artifact and the status in the store). So each timed fit here is of a model built just before
it (built outside the clock, as the user's own code; Keras traces its train step inside ``fit``, with or
without the callback), and the clock stops when ``fit`` returns. Each model is fitted for two lengths, a
short one and a long one, without and with the callback, in interleaved rounds (every configuration once
per round, in an order rotated from round to round, so that the machine's slow spells fall on all alike).
From the fastest fit of each configuration (and again from the median of each round's paired
differences, layerprint's fit less the baseline's of the same length in the same round, which a slow spell
on one fit moves less):

- **fixed cost per fit** (ms): what the callback adds whatever the length: tracing and compiling its
  functions (the recording train function, the checksum and snapshot kernels), starting the run, the first
  fingerprint, and the run's end (final fingerprint, artifacts, last points, status);
- **marginal cost per step** (% of a step): the slope of the added time over the steps, from the two
  lengths;
- **whole fit** of the long length, with and without the callback: the ratio a user sees;
- a reference: ``mlflow.keras.MlflowCallback(log_every_n_steps=1)`` on the long length.

After each timed layerprint fit the run is checked: FINISHED, ``steps.parquet`` with every step and a loss
at every step, checksums at every step unless the run's ``layerprint.checksum_every`` says otherwise.

Models: the small CNN (28x28x1, 3 BatchNorm layers, batch 32, 64 and 192 steps) and ``keras.applications``
MobileNetV2, ResNet50 and EfficientNetB0 (``weights=None``, 96x96, batch 16, 10 and 30 steps). On
TensorFlow the fits read a ``tf.data`` pipeline with a fixed prefetch (Keras's own pipeline from NumPy
arrays autotunes its prefetch, which makes the same fit of the CNN take 3 s or 5 s from one fit to the
next); ``--input numpy`` gives Keras the arrays.

Run: ``.venv/bin/python benchmarks/callback_overhead.py [--models cnn mobilenetv2 resnet50 efficientnetb0]
[--rounds N] [--device cpu|gpu] [--input dataset|numpy] [--no-reference]``. With ``--device gpu`` the fits run
on the first GPU of the backend ``KERAS_BACKEND`` selects.
"""

import argparse
import importlib.util
import os
import statistics
import tempfile
import time

from one_model import MODELS
PARSER = argparse.ArgumentParser(description=__doc__.splitlines()[0])
PARSER.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
PARSER.add_argument("--rounds", type=int, default=3)
PARSER.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
PARSER.add_argument("--input", choices=["dataset", "numpy"], default="dataset",
                    help="dataset (default, with TensorFlow): a fixed tf.data pipeline; numpy: Keras's own")
PARSER.add_argument("--no-reference", action="store_true", help="leave out MlflowCallback")
ARGS = PARSER.parse_args()  # before Keras is imported: --device cpu hides the GPUs

if ARGS.device == "cpu":
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402

from layerprint import LayerprintCallback  # noqa: E402
from layerprint.recording.record import read_steps  # noqa: E402


def build(name: str, side: int, channels: int) -> keras.Model:
    """A fresh, compiled model."""
    if name == "cnn":
        layers = [keras.Input((side, side, channels))]
        for filters in (16, 32, 32):
            layers += [keras.layers.Conv2D(filters, 3, padding="same"), keras.layers.BatchNormalization(),
                       keras.layers.ReLU(), keras.layers.MaxPooling2D()]
        model = keras.Sequential(layers + [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    else:
        constructor = {"mobilenetv2": keras.applications.MobileNetV2, "resnet50": keras.applications.ResNet50,
                       "efficientnetb0": keras.applications.EfficientNetB0}[name]
        model = constructor(weights=None, input_shape=(side, side, channels), classes=10, classifier_activation=None)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def fit_inputs(x: np.ndarray, y: np.ndarray, batch: int) -> dict:
    """NumPy arrays batched by Keras, or (``--input dataset``, TensorFlow) one ``tf.data`` pipeline with a fixed
    prefetch and tf.data's autotuning off."""
    if ARGS.input == "numpy" or keras.backend.backend() != "tensorflow" or importlib.util.find_spec("tensorflow") is None:
        return {"x": x, "y": y, "batch_size": batch}
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return {"x": tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).prefetch(2).with_options(options)}


def timed_fit(name: str, config: str, inputs: dict, shape: tuple[int, int], uri: str) -> float:
    """One fit of a fresh model, in seconds, until ``fit`` returns (with the callback: the run complete)."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = build(name, *shape)
    callbacks = []
    if config == "layerprint":
        callbacks = [LayerprintCallback(tracking_uri=uri, experiment_name="bench")]
    elif config == "MlflowCallback every step":
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("bench-mlflow")
        callbacks = [mlflow.keras.MlflowCallback(log_every_epoch=False, log_every_n_steps=1)]
    started = time.perf_counter()
    if config.startswith("Mlflow"):
        with mlflow.start_run():
            model.fit(**inputs, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    else:
        model.fit(**inputs, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return time.perf_counter() - started


def check_run(uri: str, steps: int) -> str:
    """Assert that the latest layerprint run is complete with every step; its checksum cadence."""
    client = mlflow.tracking.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("bench").experiment_id],
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.info.status == "FINISHED", f"the run is {run.info.status} when fit returned"
    with tempfile.TemporaryDirectory() as tmp:
        record = read_steps(client.download_artifacts(run.info.run_id, "layerprint/steps.parquet", tmp))
    assert list(record.columns["step"]) == list(range(1, steps + 1)), "steps.parquet lacks steps"
    assert len(record.series("train/loss")) == steps, "steps.parquet lacks a loss"
    every = run.data.tags.get("layerprint.checksum_every", "?")
    if every == "1":
        taken_steps, checksums = record.checksums()
        assert len(taken_steps) == steps and all((c >= 0).all() for c in checksums.values()), "a step lacks checksums"
    return every


def main() -> None:
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, device {ARGS.device}, "
          f"{ARGS.rounds} interleaved rounds, input {ARGS.input}, a fresh model per fit, the run complete")
    configs = ["baseline", "layerprint"] + ([] if ARGS.no_reference else ["MlflowCallback every step"])
    for name in ARGS.models:
        short, long, batch, side, channels = MODELS[name]
        rng = np.random.default_rng(0)
        x = rng.normal(size=(long * batch, side, side, channels)).astype("float32")
        y = rng.integers(0, 10, size=(long * batch,))
        inputs = {n: fit_inputs(x[: n * batch], y[: n * batch], batch) for n in (short, long)}
        with tempfile.TemporaryDirectory() as store:
            uri = f"sqlite:///{store}/mlflow.db"
            jobs = [(c, n) for c in configs for n in (short, long) if not (c.startswith("Mlflow") and n == short)]
            timed_fit(name, "layerprint", inputs[short], (side, channels), uri)  # the process's first fit: imports
            times: dict = {job: [] for job in jobs}
            cadences = set()
            for round_index in range(ARGS.rounds):
                shift = round_index % len(jobs)
                for config, steps in jobs[shift:] + jobs[:shift]:
                    times[(config, steps)].append(timed_fit(name, config, inputs[steps], (side, channels), uri))
                    if config == "layerprint":
                        cadences.add(check_run(uri, steps))
        best = {job: min(values) for job, values in times.items()}
        added = {n: best[("layerprint", n)] - best[("baseline", n)] for n in (short, long)}
        base_step = (best[("baseline", long)] - best[("baseline", short)]) / (long - short)
        marginal = (added[long] - added[short]) / (long - short)
        fixed = added[short] - marginal * short
        print(f"\n{name}: {build(name, side, channels).count_params():,} parameters, batch {batch} at "
              f"{side}x{side}x{channels}; a fresh fit of {short} steps {best[('baseline', short)]:.2f} s, of {long} "
              f"steps {best[('baseline', long)]:.2f} s; {base_step * 1e3:.1f} ms a step")
        print("  fastest fits: " + "; ".join(f"{config} {steps} steps {best[(config, steps)]:.2f} s"
                                         for config, steps in jobs if not config.startswith("Mlflow")))
        print(f"  layerprint fixed cost per fit: {fixed * 1e3:.0f} ms; marginal cost per step: "
              f"{marginal * 1e3:.2f} ms = {marginal / base_step:.1%} of a step (checksum_every {sorted(cadences)})")
        # The same from each round's pair of fits (layerprint's and the baseline's of one length, run in the
        # same round): the median of the differences, less sensitive to a slow spell on one fit than the fastest.
        paired = {n: statistics.median(a - b for a, b in zip(times[("layerprint", n)], times[("baseline", n)]))
                  for n in (short, long)}
        paired_marginal = (paired[long] - paired[short]) / (long - short)
        paired_ratio = statistics.median(a / b for a, b in zip(times[("layerprint", long)], times[("baseline", long)]))
        print(f"  paired rounds (medians): fixed cost per fit {(paired[short] - paired_marginal * short) * 1e3:.0f} ms; "
              f"marginal cost per step {paired_marginal * 1e3:.2f} ms = {paired_marginal / base_step:.1%} of a step; "
              f"whole fit of {long} steps {paired_ratio:.3f}x")
        for config in configs[1:]:
            ratio = best[(config, long)] / best[("baseline", long)]
            print(f"  whole fit of {long} steps, {config}: {best[(config, long)]:.2f} s = {ratio:.3f}x "
                  f"(rounds: {', '.join(f'{t:.2f}' for t in times[(config, long)])} s)")


if __name__ == "__main__":
    main()
