"""Two deterministic runs of one small model, the second with one kernel nudged right after a known step: where
``compare`` must say their weights part. Used by ``test_compare.py`` on TensorFlow in its own process and in
a subprocess on JAX and PyTorch."""

import keras
import mlflow
import numpy as np

from layerprint import LayerprintCallback

NUDGE_STEP = 5  # the nudge follows this (1-based, global) step's update: the weights part at it


class Nudge(keras.callbacks.Callback):
    """Adds 1e-3 to one kernel right after the given (1-based, global) step's update."""

    def __init__(self, step: int, layer: str) -> None:
        super().__init__()
        self.step, self.layer, self.seen = step, layer, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            kernel = self.model.get_layer(self.layer).kernel
            kernel.assign(kernel + 1e-3)


def deterministic_pair(uri: str, nudge_step: int | None = None, checksum_every: int | None = None) -> list[str]:
    """Two runs (Dense 6, BatchNorm, Dense 1; SGD; 8 steps an epoch, 2 epochs) from one seed and one data
    order, the second nudged after ``nudge_step`` when given; the callback at its defaults unless
    ``checksum_every`` is given. Returns their run ids."""
    x = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    mlflow.set_tracking_uri(uri)
    run_ids = []
    for i in range(2):
        keras.utils.set_random_seed(11)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="d0"),
                                  keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(1, name="head")])
        model.compile("sgd", "mse")
        extra = [Nudge(nudge_step, "head")] if nudge_step and i == 1 else []
        with mlflow.start_run(run_name=f"det{i}") as run:
            model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0,
                      callbacks=extra + [LayerprintCallback(checksum_every=checksum_every)])
        run_ids.append(run.info.run_id)
    return run_ids
