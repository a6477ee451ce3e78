"""A user's training script with LayerprintCallback, run as a separate process by the fault tests.

Usage: python fit_script.py URI EXPERIMENT RUN_ID_FILE [--steps N] [--sleep S] [--nan-at STEP]
Writes the run id to RUN_ID_FILE at train begin; prints "done" and the callback's counts at the end.
"""

import argparse
import json
import os
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from layerprint import LayerprintCallback  # noqa: E402

BATCH = 8


class Pace(keras.callbacks.Callback):
    """Writes the run id once training starts; sleeps each step; optionally poisons a weight."""

    def __init__(self, lp, run_id_file, sleep, nan_at):
        super().__init__()
        self.lp, self.run_id_file, self.sleep, self.nan_at, self.step = lp, run_id_file, sleep, nan_at, 0

    def on_train_begin(self, logs=None):
        with open(self.run_id_file + ".tmp", "w") as handle:
            handle.write(self.lp.active_run_id)
        os.replace(self.run_id_file + ".tmp", self.run_id_file)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step == self.nan_at:
            kernel = self.model.get_layer("d0").kernel
            kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))
        time.sleep(self.sleep)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("experiment")
    parser.add_argument("run_id_file")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--nan-at", type=int, default=0)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(args.steps * BATCH, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d0"), keras.layers.BatchNormalization(name="bn"),
                              keras.layers.Dense(1, name="head")])
    model.compile("sgd", "mse")
    # every step published: these tests prove that every point sent arrives once
    lp = LayerprintCallback(tracking_uri=args.uri, experiment_name=args.experiment, flush_timeout=60,
                            log_every_n_steps=1)
    pace = Pace(lp, args.run_id_file, args.sleep, args.nan_at)
    history = model.fit(x, y, epochs=2, batch_size=BATCH, shuffle=False, verbose=0,
                        callbacks=[lp, pace, keras.callbacks.TerminateOnNaN()])
    print("done", json.dumps({"epochs": len(history.history["loss"]), "last_step": lp.last_step}))


if __name__ == "__main__":
    main()
