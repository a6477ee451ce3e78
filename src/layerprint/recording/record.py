"""The flight record of a run: every optimizer step in columnar buffers, published as ``steps.parquet``.

Columns: ``step`` (1-based global optimizer step, one row per step of the run), ``epoch`` (1-based),
``time_ms`` (wall-clock milliseconds since the Unix epoch when the step was recorded), then one column
per series: ``train/<metric>`` (float64; NaN when the value was NaN, null when not recorded), ``bn/<layer>/<stat>/<summary>`` (float32) and
``checksum/<variable path>`` (uint32, see ``recording.checksum``). A value that was not recorded at a step
is null: checksums on steps between the checksum cadence; ``train/`` values on steps inside a
``steps_per_execution`` block (Keras calls no hook there; on TensorFlow the train step records the
``bn/`` and ``checksum/`` columns of those steps too). The file's metadata says
``layerprint.checksum_every`` (the cadence, a power of two, or ``1``) and ``layerprint.format``.
The format is written and read here only.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from layerprint import keys

FORMAT_VERSION = "1"
_MISSING_CHECKSUM = -1


class StepRecord:
    """Columnar, preallocated buffers of one run's steps (grown by doubling; rows indexed by step).

    Safe to write from several threads (Keras may run batch-end hooks off the training thread).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._capacity = 0
        self.last_step = 0
        self.checksum_every = 1
        self._epoch = np.zeros(0, np.int32)
        self._time_ms = np.zeros(0, np.float64)
        self._present = np.zeros(0, bool)
        self._float: dict[str, np.ndarray] = {}  # train/... float64 and bn/... float32, NaN = missing
        self._checksum: dict[str, np.ndarray] = {}  # int64, -1 = missing

    def _ensure(self, step: int) -> None:
        if step <= self._capacity:
            return
        capacity = max(256, self._capacity)
        while capacity < step:
            capacity *= 2
        grow = capacity - self._capacity
        self._epoch = np.concatenate([self._epoch, np.zeros(grow, np.int32)])
        self._time_ms = np.concatenate([self._time_ms, np.zeros(grow, np.float64)])
        self._present = np.concatenate([self._present, np.zeros(grow, bool)])
        for name, column in self._float.items():
            self._float[name] = np.concatenate([column, np.full(grow, np.nan, column.dtype)])
        for name, column in self._checksum.items():
            self._checksum[name] = np.concatenate([column, np.full(grow, _MISSING_CHECKSUM, np.int64)])
        self._capacity = capacity

    def _float_column(self, name: str, dtype: Any) -> np.ndarray:
        column = self._float.get(name)
        if column is None:
            column = self._float[name] = np.full(self._capacity, np.nan, dtype)
        return column

    def set_metrics(self, step: int, epoch: int, time_ms: float, values: dict[str, float]) -> None:
        """Record a step's ``train/<metric>`` values (keys as given) and its epoch and time."""
        with self._lock:
            self._ensure(step)
            row = step - 1
            self._epoch[row], self._time_ms[row], self._present[row] = epoch, time_ms, True
            for name, value in values.items():
                self._float_column(name, np.float64)[row] = value
            self.last_step = max(self.last_step, step)

    def set_vector(self, steps: list[int], names: list[str], values: np.ndarray) -> None:
        """Record rows of a vector series: ``bn/`` summaries (float) or ``checksum/`` values (int)."""
        with self._lock:
            self._ensure(max(steps))
            rows = np.asarray(steps) - 1
            checksums = names and names[0].startswith(keys.CHECKSUM_PREFIX)
            for index, name in enumerate(names):
                if checksums:
                    column = self._checksum.get(name)
                    if column is None:
                        column = self._checksum[name] = np.full(self._capacity, _MISSING_CHECKSUM, np.int64)
                else:
                    column = self._float_column(name, np.float32)
                column[rows] = values[:, index]

    def has_metrics(self, step: int) -> bool:
        """Whether the step's ``train/`` values were filed."""
        return 0 < step <= self._capacity and bool(self._present[step - 1])

    def row(self, step: int) -> dict[str, float]:
        """The ``train/`` and ``bn/`` values recorded at ``step`` (what MLflow metrics carry); a ``train/``
        value of a step whose logs were filed is kept even when it is NaN (a diverged loss is a value)."""
        with self._lock:
            if step > self._capacity:
                return {}
            filed = bool(self._present[step - 1])
            return {name: float(column[step - 1]) for name, column in self._float.items()
                    if (filed and name.startswith(keys.STEP_PREFIX)) or not np.isnan(column[step - 1])}

    def time_ms(self, step: int) -> int:
        return int(self._time_ms[step - 1]) if 0 < step <= self._capacity else 0

    def to_table(self) -> Any:
        """A ``pyarrow.Table`` of steps 1..last_step."""
        import pyarrow as pa

        with self._lock:
            n = self.last_step
            columns = {"step": pa.array(np.arange(1, n + 1, dtype=np.int64)),
                       "epoch": pa.array(self._epoch[:n], mask=~self._present[:n]),
                       "time_ms": pa.array(self._time_ms[:n], mask=~self._present[:n])}
            for name in sorted(self._float):
                values = self._float[name][:n]
                missing = ~self._present[:n] if name.startswith(keys.STEP_PREFIX) else np.isnan(values)
                columns[name] = pa.array(values, mask=missing)
            for name in sorted(self._checksum):
                values = self._checksum[name][:n]
                columns[name] = pa.array(values.astype(np.uint32), mask=values == _MISSING_CHECKSUM)
            metadata = {"layerprint.format": FORMAT_VERSION, "layerprint.checksum_every": str(self.checksum_every)}
        return pa.table(columns).replace_schema_metadata(metadata)

    def write(self, path: Path) -> Path:
        """Write ``steps.parquet`` (replacing the file)."""
        import pyarrow.parquet as pq

        pq.write_table(self.to_table(), path)
        return path

    @classmethod
    def from_file(cls, path: Path) -> "StepRecord":
        """A record holding a written ``steps.parquet`` (to continue a run's record in a later fit)."""
        record = cls()
        steps = read_steps(path)
        n = len(steps.columns["step"])
        if n == 0:
            return record
        record._ensure(n)
        epoch = steps.columns["epoch"]
        present = ~np.isnan(epoch)
        record._epoch[:n] = np.where(present, epoch, 0).astype(np.int32)
        record._time_ms[:n] = np.nan_to_num(steps.columns["time_ms"])
        record._present[:n] = present
        for name, values in steps.columns.items():
            if name.startswith(keys.CHECKSUM_PREFIX):
                column = record._checksum[name] = np.full(record._capacity, _MISSING_CHECKSUM, np.int64)
                column[:n] = values
            elif name.startswith((keys.STEP_PREFIX, keys.BN_PREFIX)):
                column = record._float_column(name, np.float64 if name.startswith(keys.STEP_PREFIX) else np.float32)
                column[:n] = values
        record.last_step = n
        record.checksum_every = steps.checksum_every
        return record


class Steps:
    """A read ``steps.parquet``: ``columns`` as NumPy arrays (NaN for null floats, -1 for null checksums)."""

    def __init__(self, columns: dict[str, np.ndarray], checksum_every: int) -> None:
        self.columns = columns
        self.checksum_every = checksum_every

    def series(self, name: str) -> dict[int, float]:
        """``{step: value}`` of one float series, recorded steps only."""
        values = self.columns.get(name)
        if values is None:
            return {}
        return {int(s): float(v) for s, v in zip(self.columns["step"], values) if not np.isnan(v)}

    def checksums(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(steps, {variable path: checksums})`` (-1 where none was taken)."""
        prefix = len(keys.CHECKSUM_PREFIX)
        return self.columns["step"], {name[prefix:]: values for name, values in self.columns.items()
                                      if name.startswith(keys.CHECKSUM_PREFIX)}


def read_steps(path: str | Path) -> Steps:
    """Read a ``steps.parquet``."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if name.startswith(keys.CHECKSUM_PREFIX):
            columns[name] = column.to_numpy(zero_copy_only=False).astype(np.float64)
            columns[name] = np.where(np.isnan(columns[name]), -1, columns[name]).astype(np.int64)
        else:
            columns[name] = column.to_numpy(zero_copy_only=False).astype(np.float64)
    metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    columns["step"] = columns["step"].astype(np.int64)
    return Steps(columns, int(metadata.get("layerprint.checksum_every", "1")))
