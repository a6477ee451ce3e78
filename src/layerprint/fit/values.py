"""Every variable's value at one moment of a fit, taken on the training thread, brought to the host later."""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np


class VariableValues:
    """Every variable's value at one point of a fit, by ``id`` of the variable: taken on the training thread
    (a snapshot on the device, ``Device.snapshot``), brought to the host by the first ``get``, on any thread.

    Args:
        fetch: returns the values as NumPy arrays; called once.
    """

    def __init__(self, fetch: Callable[[], dict[int, np.ndarray]]) -> None:
        self._fetch: Callable[[], dict[int, np.ndarray]] | None = fetch
        self._values: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def get(self) -> dict[int, np.ndarray]:
        """The values (fetched at the first call)."""
        with self._lock:
            if self._fetch is not None:
                self._values, self._fetch = self._fetch(), None
            return self._values
