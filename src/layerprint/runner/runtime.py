"""Device choice, determinism, the versions a run records, and a quick exit."""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import re
import sys
import tempfile
from typing import Any, Iterator

from layerprint.errors import DeviceError

NO_GPU = "device=gpu but TensorFlow sees no GPU"
# What TensorFlow's C++ side prints while it starts, before its logging honours TF_CPP_MIN_LOG_LEVEL:
# info and warning lines, absl's notice about them, and the CUDA probing errors of a machine without a GPU.
_START_UP_CHATTER = re.compile(
    r"^(?:[IW]\d{4} |WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|E\d{4} .*(?:cuInit|cuda_platform|cuda_dnn|cuda_fft|cuda_blas|Unable to register cu))")


def exit_without_collecting() -> None:
    """Spare the interpreter's exit its garbage collections: call once a command is done.

    While Python exits, after the ``atexit`` hooks (which flush MLflow, the logs and Ray), it clears
    every module and collects the cycles among the million or so objects that TensorFlow, MLflow,
    Ray and matplotlib leave: 0.9 to 1.7 s on one core of the 2-core machine, after the command's
    last line. Frozen objects are left out of those collections; objects are still freed when their
    last reference goes.
    """
    gc.freeze()


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
        raise DeviceError(f"{NO_GPU} (install layerprint[gpu] on a CUDA machine); use device=cpu or device=auto")
    if device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
    if device in ("gpu", "auto") and gpus:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        return "gpu"
    return "cpu"


def check_device_early(device: str) -> None:
    """Refuse ``device=gpu`` without importing TensorFlow when no GPU can be visible: CUDA_VISIBLE_DEVICES
    hides them all, or (on Linux) there is no NVIDIA driver library. Otherwise ``select_device`` decides.

    Raises:
        DeviceError: ``device`` is ``gpu`` and no GPU can be visible.
    """
    if device != "gpu":
        return
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        reason = f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU"
    elif sys.platform.startswith("linux") and not _nvidia_driver_present():
        reason = "no NVIDIA driver (libcuda.so.1) on this machine"
    else:
        return
    raise DeviceError(f"{NO_GPU}: {reason}; use device=cpu or device=auto")


def _nvidia_driver_present() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def quiet_native_start_up() -> Iterator[None]:
    """Keep TensorFlow's C++ start-up lines (printed on import and on the first device query, before
    ``TF_CPP_MIN_LOG_LEVEL`` is honoured) off the terminal.

    Everything written to the process's stderr inside the block is held back. When the block ends
    normally, what is not start-up chatter is written out; when it raises (a one-line error follows),
    all of it is dropped. With ``TF_CPP_MIN_LOG_LEVEL=0`` (the user wants TensorFlow's info lines),
    nothing is held back.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") == "0":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            raise
        else:
            sys.stderr.flush()
            os.dup2(saved, 2)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not _START_UP_CHATTER.match(line)))
        finally:
            os.close(saved)


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
