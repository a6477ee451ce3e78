"""A hyperparameter loop as users write one: a fresh model fitted once, again and again, in one process, with
``keras.backend.clear_session()`` before each (as Keras advises for loops that make models: without it,
TensorFlow keeps every model's traced functions and the process grows by tens of MB a fit by itself).

Usage: python memory_loop.py FITS WARMUP (with|without) URI [LAYERS]
Prints the resident set growth (bytes) from the end of the warm-up fits to the end of the loop."""

import gc
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402

from layerprint import LayerprintCallback  # noqa: E402


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    fits, warmup, mode, uri = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    depth = int(sys.argv[5]) if len(sys.argv) > 5 else 32
    mlflow.set_tracking_uri(uri)
    x = np.random.default_rng(0).normal(size=(32, 16)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    start = None
    for fit in range(warmup + fits):
        keras.backend.clear_session()
        layers = [keras.layers.Dense(16, activation="relu") for _ in range(depth)]
        model = keras.Sequential([keras.Input((16,)), *layers, keras.layers.Dense(1)])
        model.compile("adam", "mse")
        callbacks = [LayerprintCallback(experiment_name="loop")] if mode == "with" else []
        model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=callbacks)
        del model, layers, callbacks
        if fit == warmup - 1:
            gc.collect()
            start = resident_bytes()
    gc.collect()
    print("grew", resident_bytes() - start)


if __name__ == "__main__":
    main()
