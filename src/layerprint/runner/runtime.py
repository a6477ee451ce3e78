"""Device choice, determinism and the versions a run records."""

from __future__ import annotations

import os
import platform
from typing import Any

from layerprint.errors import DeviceError


def select_device(device: str) -> str:
    """Make TensorFlow use the requested device; call before any tensor is created.

    Args:
        device: ``cpu``, ``gpu`` or ``auto`` (GPU when one is visible).

    Returns:
        ``"cpu"`` or ``"gpu"``: what the run uses.

    Raises:
        DeviceError: ``gpu`` was asked for and TensorFlow sees none.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise DeviceError(
            "device=gpu but TensorFlow sees no GPU (install layerprint[gpu] on a CUDA machine); "
            "use device=cpu or device=auto"
        )
    if device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
    if device in ("gpu", "auto") and gpus:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        return "gpu"
    return "cpu"


def share_cpu_threads(parallel_jobs: int) -> int | None:
    """Give each of ``parallel_jobs`` jobs running at once its share of the CPU cores as TensorFlow
    threads (intra- and inter-op), so that N parallel jobs do not each start one thread per core.

    Must run before TensorFlow executes its first op in this process; later calls change nothing.

    Args:
        parallel_jobs: jobs running at the same time on this machine (a launcher's ``n_jobs``).

    Returns:
        The threads per job, or None when nothing was changed (one job, or TensorFlow already running).
    """
    if parallel_jobs <= 1:
        return None
    import tensorflow as tf

    threads = max(1, (os.cpu_count() or 1) // parallel_jobs)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow is already running in this worker (its second job)
        return None
    return threads


def set_determinism(seed: int, deterministic: bool) -> None:
    """With ``deterministic``, seed Python, NumPy and the backend with ``keras.utils.set_random_seed``
    and turn on TensorFlow op determinism; otherwise leave both as they are."""
    if not deterministic:
        return
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def versions() -> dict[str, str]:
    """Versions of what decides the numbers: Python, TensorFlow, Keras, MLflow, NumPy, layerprint."""
    import keras
    import mlflow
    import numpy
    import tensorflow as tf

    from layerprint import __version__

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "mlflow": mlflow.__version__,
        "numpy": numpy.__version__,
        "layerprint": __version__,
    }


def quiet_tensorflow() -> None:
    """Hide TensorFlow's C++ start-up chatter (set before TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def describe_device(used: str) -> dict[str, Any]:
    """Tags describing the device a run used."""
    import tensorflow as tf

    names = [d.name for d in tf.config.list_logical_devices("GPU" if used == "gpu" else "CPU")]
    return {"layerprint.device": used, "layerprint.device_names": ",".join(names)}
