"""Training data: deterministic synthetic arrays shaped for a layer kind, or the user's ``.npz``.

NumPy is imported where arrays are made: ``check_npz`` refuses a bad file before it is.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerprint.errors import DataError
from layerprint.runner.layer_kinds import KINDS

if TYPE_CHECKING:
    import numpy as np


def input_shape(layer: Any) -> tuple[int, ...]:
    """Per-sample input shape the synthetic data has for a layer config (no stem layer needed)."""
    return KINDS[layer.kind].sample_shape(layer)


def synthetic(layer: Any, n_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Regression data from a fixed random teacher: same seed, same arrays, on every machine.

    Args:
        layer: the layer config (kind and sizes).
        n_samples: number of samples.
        seed: the run's seed.

    Returns:
        ``(x, y)``: float32 inputs shaped ``(n_samples, *input_shape(layer))`` and targets ``(n, 1)``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_samples, *input_shape(layer))).astype(np.float32)
    flat = x.reshape(n_samples, -1)
    teacher = rng.standard_normal((flat.shape[1], 1)) / np.sqrt(flat.shape[1])
    y = np.tanh(flat @ teacher) + 0.1 * np.sin(3.0 * flat[:, :1])
    return x, y.astype(np.float32)


def check_npz(path: str | Path) -> None:
    """Check, without reading its arrays, that ``path`` is a NumPy archive holding ``x`` and ``y``
    (what a command line can be refused for before Hydra runs).

    Args:
        path: the ``.npz`` file.

    Raises:
        DataError: a missing file, an unreadable archive, or missing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; give data.path=FILE.npz with arrays 'x' and 'y'")
    try:
        with zipfile.ZipFile(path) as archive:  # what np.savez writes: one NAME.npy member per array
            names = [name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy")]
    except (OSError, zipfile.BadZipFile) as error:
        raise _unreadable(path, error) from None
    missing = [name for name in ("x", "y") if name not in names]
    if missing:
        raise DataError(f"data file {path} lacks array(s) {', '.join(missing)}; it holds {sorted(names)} and needs 'x' and 'y'")


def _unreadable(path: Path, error: Exception) -> DataError:
    return DataError(f"data file {path} is not a readable .npz archive ({type(error).__name__})")


def load_npz(path: str | Path, layer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Load ``x`` and ``y`` from a NumPy archive and check they fit the layer kind.

    Args:
        path: the ``.npz`` file.
        layer: the layer config (which input rank it needs).

    Returns:
        ``(x, y)`` as float32 (``y`` kept integer for class labels).

    Raises:
        DataError: missing file, unreadable archive, missing keys, or shapes that do not fit.
    """
    import numpy as np

    path = Path(path)
    check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in ("x", "y")}
    except Exception as error:  # noqa: BLE001 - an archive whose arrays cannot be read
        raise _unreadable(path, error) from None
    x, y = arrays["x"], arrays["y"]
    kind = KINDS[layer.kind]
    if x.ndim != kind.rank:
        raise DataError(f"x in {path} has shape {x.shape}; layer={layer.kind} needs {kind.rank}-D x "
                        f"({', '.join(('samples', *kind.sample))})")
    if len(y) != len(x) or len(x) < 2:
        raise DataError(f"x and y in {path} must hold the same number (>= 2) of samples; got {len(x)} and {len(y)}")
    if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(y.dtype, np.number):
        raise DataError(f"x and y in {path} must be numeric; got {x.dtype} and {y.dtype}")
    y = y if np.issubdtype(y.dtype, np.integer) else y.astype(np.float32)
    if y.ndim == 1 and not np.issubdtype(y.dtype, np.integer):
        y = y[:, None]
    return x.astype(np.float32), y


def load(cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """The data a run config asks for."""
    if cfg.data.source == "npz":
        return load_npz(cfg.data.path, cfg.layer)
    return synthetic(cfg.layer, cfg.data.n_samples, cfg.seed)
