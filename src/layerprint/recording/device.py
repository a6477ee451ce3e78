"""A model's state on its device, recorded for the flight record: what every backend provides.

Each backend has one class with this interface (``recording.tensorflow``, ``recording.jax``,
``recording.torch``); ``recording.backends.device_for`` picks it. Rows are the state the fit's steps left: the BatchNorm moving
statistics (flat, float32) and every variable's checksum (``recording.checksum``). How a row gets there:

- **in the step** (``records_in_step``): the backend's train function, swapped in for the fit
  (``train_function``), writes at the start of each step the row of the state the previous step left,
  with whatever a callback changed between the two steps, into ring buffers on the device; with
  checksums or without, as the cadence says, by choosing one of two compiled steps per call (no branch
  inside a step). ``drain`` brings the rows to the host in one transfer;
- **between steps** (elsewhere): ``read`` dispatches one compiled read of the state now, kept on the
  device until ``drain``;
- **at the fit's end**: the state the last step left comes from ``snapshot``, a copy of every variable,
  and ``host_row`` computes its row on the host (the NumPy reference), off the training thread. (At an
  epoch's end, the next step writes or reads the state the epoch's last step left.)

A row records the state as the next step sees it: a change a callback makes between two steps shows at
the earlier step, on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from layerprint import keys
from layerprint.recording.checksum import checksums_host, word_count

MISSING_CHECKSUM = -1


@dataclass
class Rows:
    """State rows brought to the host together.

    Attributes:
        steps: the global steps whose state the rows hold.
        batchnorm: ``(rows, sum of BatchNorm sizes)`` float32.
        checksums: ``(rows, variables)`` int64, ``MISSING_CHECKSUM`` where none was taken.
    """

    steps: np.ndarray
    batchnorm: np.ndarray
    checksums: np.ndarray

    @classmethod
    def empty(cls, n_bn: int, n_variables: int) -> "Rows":
        return cls(np.zeros(0, np.int64), np.zeros((0, n_bn), np.float32), np.zeros((0, n_variables), np.int64))


class Device:
    """The shared part of every backend's device: which variables, their BatchNorm columns, the summaries,
    the due steps of a checksum cadence, and the row of a snapshot on the host.

    Args:
        model: the Keras model being trained.
        variables: the variables to checksum (``inspection.paths.unique_variables``), in the record's order.
        batchnorm_layers: ``(path, layer)`` of its BatchNormalization layers.

    Attributes:
        records_in_step: whether the train step records every row itself (``train_function``).
        bn_columns: the record's columns of the BatchNorm summaries, in ``summarize``'s order.
    """

    backend = ""

    def __init__(self, model: Any, variables: list[Any], batchnorm_layers: list[tuple[str, Any]]) -> None:
        self.model = model
        self.variables = variables
        self.variable_ids = [id(v) for v in variables]
        self.bn_variables = [getattr(layer, stat) for _, layer in batchnorm_layers for stat in keys.BN_STATS]
        self.bn_columns = [keys.sanitize_key(keys.bn_key(path, stat, summary))
                           for path, _ in batchnorm_layers for stat in keys.BN_STATS for summary in keys.BN_SUMMARIES]
        self.bn_sizes = [int(np.prod(v.shape)) for v in self.bn_variables]
        self.n_bn = sum(self.bn_sizes)
        self.words = sum(word_count(v.shape, itemsize(v.dtype)) for v in variables)
        self.records_in_step = False
        self.in_step_asked = False
        self.first_step = 1
        self.checksum_every = 1

    # The fit.
    def train_function(self) -> Callable[..., Any] | None:
        """A train function that records every step itself, swapped in for the fit; None: ``read`` between
        steps instead."""
        return None

    def checksum_size(self) -> tuple[int, int, int]:
        """``(words, variables, calls)`` that what a step's checksums cost grows with
        (``calibration.estimate``): inside the train step, the words only (the checksums make no call of their
        own there, and take the variables of one shape in one operation); between steps, the variables and
        the read's own call too."""
        if self.records_in_step:
            return self.words, 0, 0
        return self.words, len(self.variables), 1

    def start(self, first_step: int, checksum_every: int) -> None:
        """Begin a fit whose first step is global step ``first_step``."""
        self.first_step, self.checksum_every = first_step, checksum_every

    def set_checksum_every(self, every: int) -> None:
        """Change the checksum cadence (a power of two) from the next step on."""
        self.checksum_every = every

    def due(self, step: int) -> bool:
        """Whether the checksums of global ``step`` are taken: the fit's first step and every multiple of the
        cadence (so that two runs on one cadence share their checksummed steps)."""
        return step == self.first_step or step % self.checksum_every == 0

    def restore(self) -> None:
        """Give the model its own train function back (after the fit, or when recording failed)."""

    # Reading.
    def read(self, step: int, with_checksums: bool) -> None:
        """Dispatch a read of the state now, the state global ``step`` left (between steps)."""
        raise NotImplementedError(f"{type(self).__name__} records in the step")

    def drain(self) -> Rows:
        """The rows recorded or read since the last drain, brought to the host in one transfer."""
        raise NotImplementedError

    def wait(self) -> None:
        """Block until the device has run what was dispatched (the fit's own time, not the recorder's)."""

    def snapshot(self, final: bool = False) -> list[Any]:
        """Every variable's current value, in ``variables`` order, as values that later steps do not change;
        ``host`` brings them to NumPy, from any thread.

        Args:
            final: no training step follows: a backend may skip a copy that protects the values from the
                next steps.
        """
        raise NotImplementedError

    def host(self, snapshot: list[Any], final: bool = False) -> list[np.ndarray]:
        """``snapshot``'s arrays as NumPy arrays of their own (``final``: see ``snapshot``)."""
        return [np.array(value) for value in snapshot]

    # Rows on the host.
    def host_row(self, values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The row of a snapshot (``values`` in ``variables`` order): flat BatchNorm values and the checksums,
        computed on the host (``checksums_host``, equal to the NumPy reference)."""
        by_id = dict(zip(self.variable_ids, values))
        bn = [np.asarray(by_id[id(v)], np.float32).ravel() if id(v) in by_id else np.asarray(v.numpy(), np.float32).ravel()
              for v in self.bn_variables]
        flat = np.concatenate(bn) if bn else np.zeros(0, np.float32)
        return flat, checksums_host(values).astype(np.int64)

    def summarize(self, values: np.ndarray) -> np.ndarray:
        """``mean, std, min, max`` of every BatchNorm variable, in ``bn_columns`` order, for each row of flat
        BatchNorm values, on the host in float64.

        Args:
            values: ``(rows, sum of bn_sizes)`` array.

        Returns:
            ``(rows, len(bn_columns))`` float32 array.
        """
        values = np.asarray(values, np.float64)
        starts = np.concatenate([[0], np.cumsum(self.bn_sizes)[:-1]]).astype(np.intp)
        sizes = np.asarray(self.bn_sizes, np.float64)
        mean = np.add.reduceat(values, starts, axis=1) / sizes
        centred = values - np.repeat(mean, self.bn_sizes, axis=1)
        std = np.sqrt(np.add.reduceat(centred * centred, starts, axis=1) / sizes)
        out = np.stack([mean, std, np.minimum.reduceat(values, starts, axis=1),
                        np.maximum.reduceat(values, starts, axis=1)], axis=2)
        return out.reshape(len(values), -1).astype(np.float32)


def itemsize(dtype: Any) -> int:
    """Bytes per value of a Keras dtype name (``"float32"``, ``"bfloat16"``, ``"bool"``...)."""
    name = str(dtype)
    if name.endswith("64"):
        return 8
    if name.endswith("16"):
        return 2
    if name.endswith("8") or name == "bool":
        return 1
    return 4
