"""Every variable's value at one moment of a fit, taken on the training thread, brought to the host later."""

from __future__ import annotations

import threading
from typing import Any, Callable

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


def read_values(device: Any, variables: list[Any], final: bool = False) -> VariableValues:
    """Every variable's current value: the device's snapshot when it covers ``variables``, brought to the host
    by the first ``get`` (off the training thread); else one read per variable now.

    Args:
        device: the fit's recording device (``recording.device.Device``), or None.
        variables: the model's variables, each once.
        final: no training step follows (the fit's last epoch or its end): the host arrays may be the
            snapshot's own memory instead of copies (``Device.snapshot``).

    Returns:
        The values, by ``id`` of the variable.
    """
    if device is not None and device.variable_ids == [id(v) for v in variables]:
        snapshot = device.snapshot(final)
        return VariableValues(lambda: dict(zip(device.variable_ids, device.host(snapshot, final))))
    values = {id(v): np.array(v.numpy()) for v in variables}
    return VariableValues(lambda: values)
