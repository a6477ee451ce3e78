"""Time fingerprinting every variable of ResNet50 (weights=None, 25.6M parameters) on CPU.

Prints the cold first call and the median of warm calls, and the ratio of the warm median to the
time of copying all variables to NumPy (the floor any fingerprint pays), measured in the same run.
Target (issue 3): warm <= 0.15 s.
"""

import os
import statistics
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from layerprint.inspection.fingerprint import fingerprint_model  # noqa: E402
from layerprint.inspection.paths import unique_variables  # noqa: E402


def main(repeats: int = 7) -> None:
    model = keras.applications.ResNet50(weights=None)
    n_params = sum(int(np.prod(v.shape)) for v in model.variables)
    start = time.perf_counter()
    fingerprint_model(model)
    cold = time.perf_counter() - start
    warm, copy = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        [np.asarray(v.numpy()) for v in unique_variables(model)]
        copy.append(time.perf_counter() - start)
        start = time.perf_counter()
        fingerprint_model(model)
        warm.append(time.perf_counter() - start)
    w, c = statistics.median(warm), statistics.median(copy)
    print(f"resnet50 params={n_params} cold={cold:.3f}s warm_median={w:.3f}s warm_min={min(warm):.3f}s "
          f"copy_only_median={c:.3f}s ratio_to_copy={w / c:.2f} target=0.15s {'OK' if w <= 0.15 else 'OVER'}")


if __name__ == "__main__":
    main()
