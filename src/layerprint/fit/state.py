"""What one fit knows: its global steps and epochs in the run, and the model's variable paths and layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from layerprint import keys
from layerprint.fit.values import VariableValues
from layerprint.inspection.paths import owning_layer_path, variable_paths


@dataclass
class FitState:
    """The state of one fit (``LayerprintCallback`` makes a new one at every ``on_train_begin``).

    Attributes:
        fit_index: the fit's number in its run (1 for the run's first).
        step_base: the run's last global step before this fit.
        global_step: the global step of the last finished batch.
        epoch_start_step: the global step before the current epoch's first batch.
        epoch_offset: added to Keras's epoch index, so that later fits continue the run's epochs.
        current_epoch: the current epoch, 1-based, in the run.
        non_finite_step: the first step whose loss was NaN or infinite.
        pending_capture: the start is captured once the variables exist.
        paths: ``{id(variable): path relative to the model}``.
        trainable_ids: ids of the trainable variables.
        bn_layers: ``(path, layer)`` of the BatchNormalization layers.
        initial_values: every variable's value at the start (the drift's reference).
        initial_fingerprint, final_fingerprint, sharing: what the fit found.
    """

    fit_index: int = 1
    step_base: int = 0
    global_step: int = 0
    epoch_start_step: int = 0
    epoch_offset: int | None = None
    current_epoch: int = 0
    non_finite_step: int | None = None
    pending_capture: bool = False
    paths: dict[int, str] = field(default_factory=dict)
    trainable_ids: set[int] = field(default_factory=set)
    bn_layers: list[tuple[str, Any]] = field(default_factory=list)
    initial_values: VariableValues | None = None
    initial_fingerprint: dict[str, Any] | None = None
    final_fingerprint: dict[str, Any] | None = None
    sharing: dict[str, Any] | None = None
    step_keys: dict[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """Where a later fit's start artifacts go in its run (``fit_<k>/``); empty for the run's first fit."""
        return "" if self.fit_index == 1 else keys.LATER_FIT_DIR.format(index=self.fit_index) + "/"

    def begin_epoch(self, epoch: int, last_epoch: int) -> None:
        """Keras's epoch ``epoch`` (0-based) begins; the run's last logged epoch is ``last_epoch``."""
        if self.epoch_offset is None:  # later fits continue the run's epochs; initial_epoch is respected
            self.epoch_offset = max(last_epoch - epoch, 0)
        self.current_epoch = self.epoch_offset + epoch + 1

    def logged_epoch(self, epoch: int) -> int:
        return (self.epoch_offset or 0) + epoch + 1

    def finish_batch(self, batch: int) -> int:
        """The global step of Keras's ``batch`` of the current epoch, which just finished."""
        step = self.epoch_start_step + batch + 1
        self.global_step = max(self.global_step, step)
        return step

    def step_key(self, name: str) -> str:
        """``train/<name>``, sanitized, computed once per name."""
        key = self.step_keys.get(name)
        if key is None:
            key = self.step_keys[name] = keys.sanitize_key(keys.step_key(name))
        return key

    def named(self, model: Any, values: dict[int, np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
        """``(path, layer, values)`` triples for ``fingerprint_arrays``."""
        named = []
        for key, array in values.items():
            path = self.paths.get(key)
            if path is None:  # a variable created during the fit
                self.paths = variable_paths(model)
                path = self.paths.get(key, str(key))
            named.append((path, owning_layer_path(path), array))
        return named

    def drift(self, values: dict[int, np.ndarray]) -> dict[str, float]:
        """L2 distance of each layer's trainable variables from their values at the start of the fit, and of
        the whole model (``drift/<layer>``, ``drift/_model``); variables created later are left out."""
        initial = self.initial_values.get() if self.initial_values is not None else {}
        squares: dict[str, float] = {}
        total = 0.0
        for key, current in values.items():
            start = initial.get(key)
            if start is None or key not in self.trainable_ids:
                continue
            square = squared_distance(current, start)
            path = self.paths.get(key, str(key))
            layer = owning_layer_path(path) or path
            squares[layer] = squares.get(layer, 0.0) + square
            total += square
        out = {keys.sanitize_key(keys.drift_key(layer)): float(np.sqrt(s)) for layer, s in squares.items()}
        out[keys.DRIFT_MODEL] = float(np.sqrt(total))
        return out


DRIFT_CHUNK = 1 << 18  # values a step of ``squared_distance`` takes: its 1-2 MB buffer stays in the cache, and each
# step takes the GIL back once (a busy Python thread beside it makes each take wait)


def squared_distance(current: np.ndarray, start: np.ndarray) -> float:
    """``sum((current - start) ** 2)``, a chunk at a time, each chunk in the arrays' own precision when they are
    float32 or float64 (else in float64) and summed pairwise, the chunks' sums added in float64. Whole-array
    temporaries cost three times the arrays' memory, fresh pages each (for ResNet50, 250 ms); float64 chunks
    of float32 arrays cost the casts (ResNet50: 50 ms against 20 ms, the sums 3e-9 apart)."""
    current, start = np.ravel(current), np.ravel(start)
    dtype = np.result_type(current.dtype, start.dtype, np.float32)
    buffer = np.empty(min(DRIFT_CHUNK, current.size), dtype if dtype in (np.float32, np.float64) else np.float64)
    total = 0.0
    for begin in range(0, current.size, DRIFT_CHUNK):
        end = min(begin + DRIFT_CHUNK, current.size)
        delta = buffer[: end - begin]
        np.subtract(current[begin:end], start[begin:end], out=delta, dtype=buffer.dtype, casting="unsafe")
        np.multiply(delta, delta, out=delta)
        total += float(delta.sum())  # not ``np.dot``: BLAS's threads, waiting beside training, cost seconds
    return total
