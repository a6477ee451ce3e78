"""The logs Keras gives each step, kept as they come and filed in the flight record later, on the training
thread (the batch-end hook may run off it; turning a log value into a number waits for the device)."""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np

from layerprint import keys
from layerprint.fit.state import FitState
from layerprint.recording.record import StepRecord


def is_number(value: Any) -> bool:
    """Whether a log value is one number (a Python number, or a scalar tensor or array)."""
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return np.ndim(value) == 0


def numbers(points: dict[str, Any]) -> dict[str, float]:
    """The number values of ``points`` under MLflow-safe keys."""
    return {keys.sanitize_key(key): float(value) for key, value in points.items() if is_number(value)}


class StepLogs:
    """Each step's logs as Keras gives them, until ``file`` puts them in the record."""

    def __init__(self) -> None:
        self._unfiled: collections.deque[tuple[int, int, float, Any]] = collections.deque()

    def append(self, step: int, epoch: int, logs: Any) -> None:
        """Keep a step's logs (thread-safe: Keras may call the batch-end hook off the training thread)."""
        self._unfiled.append((step, epoch, time.time() * 1000.0, logs))

    def file(self, record: StepRecord, state: FitState) -> None:
        """File the logs kept so far as the steps' ``train/`` values; note the first non-finite loss."""
        while self._unfiled:
            step, epoch, time_ms, logs = self._unfiled.popleft()
            values = {state.step_key(name): float(value) for name, value in (logs or {}).items() if is_number(value)}
            if not np.isfinite(values.get(state.step_key("loss"), 0.0)):
                state.non_finite_step = min(step, state.non_finite_step or step)
            record.set_metrics(step, epoch, time_ms, values)
