"""The one process-wide object of layerprint, ``CACHE``: what is kept from one fit to the next, and why.

- ``progress``: per run id, what the fits of this process logged into a run that is still being logged
  into (steps, epochs, rows of ``batchnorm.npz``, the flight record), so that a later fit continues it.
  Dropped when the run ends (``end_run``), and, for runs of the caller's, when a fit begins in another run
  (``keep_only``): the progress of a run logged into again later is read back from its tags and artifacts.
- ``open``: the fits (``fit.session.FitSession``) open or still being finished, so that the interpreter's exit
  ends them (never left RUNNING).
- ``checksum_seconds``: per model, keyed weakly (it goes with the model), what one step's checksums
  cost in its last fit, so that a later fit chooses its cadence sooner.
- ``kernel_speeds``: per backend, the measured speed of its checksum kernel, once per process.
- ``row_kernels``: the traced functions that compute a step's row with its checksums (and BatchNorm values)
  from the variables' values, per backend and variable signature (shapes and dtypes), the last
  ``ROW_KERNELS_KEPT`` used. A loop that fits a fresh model of one architecture again and again traces it
  once: TensorFlow keeps every graph a fit traces for the life of the process, so a kernel traced anew
  each fit would grow the process by its graph every fit.

The recording device of a model (its compiled recording steps) is kept on the model itself, as Keras keeps
``model.train_function`` there (``compat.keras.kept``): a later fit of the same model reuses it, and it
goes when the model goes. Kept here instead, it would keep the model alive (it holds the model's train
function), and a loop that fits a fresh model each time would never give them back.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable

ROW_KERNELS_KEPT = 16


class Cache:
    """What layerprint keeps between fits (module doc); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.progress: dict[str, Any] = {}
        self.open: set[Any] = set()
        self.checksum_seconds: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self.kernel_speeds: dict[str, tuple[float, float]] = {}
        self.row_kernels: OrderedDict[Any, Any] = OrderedDict()

    def progress_of(self, run_id: str) -> Any:
        """The progress kept for ``run_id``, or None."""
        with self._lock:
            return self.progress.get(run_id)

    def keep_progress(self, run_id: str, progress: Any) -> None:
        with self._lock:
            self.progress[run_id] = progress

    def end_run(self, run_id: str | None) -> None:
        """Forget what was kept for ``run_id``."""
        with self._lock:
            self.progress.pop(run_id or "", None)

    def keep_only(self, run_id: str) -> None:
        """Forget the progress of every run but ``run_id`` and the runs of open fits."""
        with self._lock:
            keep = {run_id} | {fit.run_key for fit in self.open}
            for other in [r for r in self.progress if r not in keep]:
                del self.progress[other]

    def row_kernel(self, key: Any, make: Callable[[], Any]) -> Any:
        """The row kernel kept under ``key``, made by ``make()`` when none is (the module doc)."""
        with self._lock:
            kernel = self.row_kernels.pop(key, None)
            if kernel is None:
                kernel = make()
            self.row_kernels[key] = kernel
            while len(self.row_kernels) > ROW_KERNELS_KEPT:
                self.row_kernels.popitem(last=False)
            return kernel

    def opened(self, fit: Any) -> None:
        with self._lock:
            self.open.add(fit)

    def closed(self, fit: Any) -> None:
        with self._lock:
            self.open.discard(fit)

    def open_fits(self) -> list[Any]:
        with self._lock:
            return list(self.open)


CACHE = Cache()
