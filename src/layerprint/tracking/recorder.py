"""The flight recorder: every step's state into the run's ``StepRecord``, a budgeted share to MLflow.

Two sources of the state after each step:

- A train step that records itself (``inspection.train_step``): on TensorFlow (no distribution strategy,
  no XLA, variables built before training) the compiled step writes the BatchNorm statistics, and the
  checksums too inside ``steps_per_execution`` blocks, while the training thread dispatches the checksums
  due on the cadence; on JAX (compiled, no distribution) the step returns the BatchNorm statistics and its
  train function dispatches the checksums when due. The training thread brings the rows to the host
  every ``DRAIN_EVERY`` calls of the train function.
- Elsewhere (PyTorch, a strategy, XLA on TensorFlow, a model built inside its first step): ``read``
  dispatches one compiled read (``inspection.state.StateReader``) before the next step changes the
  state, without waiting; the reads are brought to the host together every ``DRAIN_EVERY`` steps.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from layerprint.tracking.steps import StepRecord

DRAIN_EVERY = 32  # calls of the train function whose state is brought to the host together
PRIOR_SECONDS_PER_POINT = 60e-6  # MLflow's SQL store, measured; replaced by the sink's own measurement


class FlightRecorder:
    """Every step's state into the run's ``StepRecord``, and a budgeted share of it to MLflow metrics.

    The checksum cadence is 1 unless one checksum read costs more than a quarter of the budget per
    step; then it is the smallest power of two that fits (so two runs always share checksum steps),
    fixed for the run. It is chosen after the fit's fourth step, or after its second when the cost of a
    read is known from an earlier fit of the model (``prior_checksum_seconds``), so that fewer steps
    are read at cadence 1. The publishing cadence is the smallest power of two under what is left of the
    budget, from the measured cost of recording and of the sink's sends.

    The recorder is given its sources (the tracking layer never imports the inspection layer).

    Args:
        reader: the device-side reader of the model's state, an ``inspection.state.StateReader``
            (None: only the logs are recorded).
        step_recorder: the recording train step (``inspection.train_step``), when the model's train
            step records itself.
        checksum_columns: the record's column of each variable the reader checksums, in its order.
        record: the run's record.
        publish: ``publish(points, step, timestamp_ms)`` sends MLflow metrics.
        budget: the share of the fit's time the callback may add.
        forced_every: ``log_every_n_steps``, or None for the budget.
        first_step: the fit's first global step.
        sink_stats: returns the sink's ``SinkStats`` (its send time and points sent), or None.
        checksum_every: a fixed checksum cadence instead of the measured one.
        prior_checksum_seconds: the cost of one checksum read measured in an earlier fit of the model
            (``checksum_seconds``), or None.
    """

    def __init__(self, reader: Any, step_recorder: Any,
                 checksum_columns: list[str], record: StepRecord,
                 publish: Callable[[dict[str, float], int, int], None], budget: float, forced_every: int | None,
                 first_step: int, sink_stats: Callable[[], Any], checksum_every: int | None = None,
                 prior_checksum_seconds: float | None = None) -> None:
        self.reader, self.step_recorder = reader, step_recorder
        self.checksum_columns, self.record = checksum_columns, record
        self.publish, self.budget, self.forced_every = publish, budget, forced_every
        self.first_step, self.sink_stats = first_step, sink_stats
        self.publish_every = forced_every or 1
        self.last_snapshot = first_step - 1
        self._filed = first_step - 1  # the last step whose state is in the record
        self._published = first_step - 1
        self._mandatory = {first_step}
        self._pending: list[tuple[int, Any, Any]] = []
        self._marks_since_drain = 0
        self._started = time.perf_counter()
        self._seconds = 0.0
        self._seconds_lock = threading.Lock()
        self._snapshot_times: list[float] = []
        self._checksum_costs: list[float] = []  # measured on the training thread in this fit
        self._prior_costs: list[float] = []
        self._snapshots_to_choose = 4
        if prior_checksum_seconds is not None:
            self._prior_costs, self._snapshots_to_choose = [prior_checksum_seconds] * 3, 2
        if checksum_every is not None:
            record.checksum_every = checksum_every
        self._cadence_fixed = checksum_every is not None or record.checksum_every > 1
        if step_recorder is not None:
            if step_recorder.checksums_in_step:
                self._prior_costs, self._snapshots_to_choose = [step_recorder.checksum_seconds] * 3, 4
            step_recorder.start(first_step, record.checksum_every)

    @property
    def checksum_seconds(self) -> float | None:
        """The median cost of the checksum reads this fit measured on the training thread (None when it
        measured none: a fixed cadence, or checksums written by the train step)."""
        return float(np.median(self._checksum_costs)) if self._checksum_costs else None

    def add_seconds(self, seconds: float) -> None:
        """Count time the callback spent (any thread) against the budget."""
        with self._seconds_lock:
            self._seconds += seconds

    def mark(self, step: int, final: bool) -> bool:
        """Note that the state after ``step`` is reached; ``final`` (an epoch's or the fit's last step) is
        always published and checksummed. Returns whether the step is new (then ``read`` it)."""
        if step <= self.last_snapshot:
            return False
        self._snapshot_times.append(time.perf_counter())
        self.last_snapshot = step
        self._marks_since_drain += 1
        if final:
            self._mandatory.add(step)
        return True

    def read(self, step: int, final: bool) -> None:
        """Dispatch the device reads of the state after ``step`` that the train step does not record."""
        if self.step_recorder is None:
            self._read(step, final)
        elif not self.step_recorder.checksums_in_step:
            if not final:  # the final state is read with the last rows (``file_reads``)
                self._read(step, final=False)
        elif not self._cadence_fixed:
            self._choose_checksum_cadence()

    def drop_state(self) -> None:
        """Record and publish the logs only, from now on (the state's reader failed)."""
        self.reader = self.step_recorder = None
        self._pending = []

    @property
    def reads_each_step(self) -> bool:
        """Whether ``read`` has work at every step (not once the train step records itself on a fixed
        checksum cadence)."""
        return self.step_recorder is None or not self.step_recorder.checksums_in_step or not self._cadence_fixed

    @property
    def due(self) -> bool:
        """Whether enough steps are waiting to bring them to the host together."""
        return self._marks_since_drain >= DRAIN_EVERY

    def file_reads(self, final: bool = False) -> None:
        """Bring the recorded state to the host in one transfer and file it in the record.

        Args:
            final: at an epoch's or the fit's end: the last step gets its checksums even off the cadence.
        """
        # The backend dispatches steps ahead of the device (JAX, a GPU): waiting for them to run is the
        # fit's own time, which it spends at its end anyway, not counted against the budget; the transfer
        # and the filing are.
        if self.step_recorder is not None:
            self.step_recorder.wait()
        elif self.reader is not None:
            self.reader.wait([entry[1:] for entry in self._pending])
        started = time.perf_counter()
        self._marks_since_drain = 0
        if self.step_recorder is not None:
            self._file_rows(final)
            self._filed = self.first_step + self.step_recorder.drained - 1
        else:
            self._filed = self.last_snapshot
        pending, self._pending = self._pending, []
        columns_at = ((1, self.reader.bn_columns), (2, self.checksum_columns)) if self.reader is not None else ()
        for index, columns in columns_at:
            rows = [(entry[0], entry[index]) for entry in pending if entry[index] is not None]
            if rows and columns:
                values = self.reader.to_host([values for _, values in rows])
                self.record.set_vector([step for step, _ in rows], columns,
                                       self.reader.summarize(values) if index == 1 else values)
        self.add_seconds(time.perf_counter() - started)

    def publish_due(self, final: bool = False) -> None:
        """Publish the recorded rows due under the cadence, then choose the cadence again.

        Args:
            final: at an epoch's or the fit's end, when every batch-end hook has run (Keras waits for
                the ones it ran off the training thread): steps without logs are skipped, not waited for
                (inside a ``steps_per_execution`` block Keras calls no hook).
        """
        started = time.perf_counter()
        self._choose_publish_cadence()  # from what the fit has measured so far, before this block goes out
        step = self._published + 1
        stateless = self.reader is None and self.step_recorder is None
        while step <= (self.last_snapshot if stateless else min(self.last_snapshot, self._filed)):
            if not self.record.has_metrics(step):
                if not final:
                    break  # its batch-end hook may still be running
            elif step in self._mandatory or step % self.publish_every == 0:
                self.publish(self.record.row(step), step, self.record.time_ms(step))
            step += 1
        self._published = step - 1
        self.add_seconds(time.perf_counter() - started)

    def _read(self, step: int, final: bool) -> None:
        """Dispatch the device reads of the state after ``step`` (checksums always when ``final``); with a
        recording train step, only the checksums, and only when due."""
        if self.reader is None:
            return
        every = self.record.checksum_every
        with_checksums = final or step == self.first_step or step % every == 0
        batchnorm_in_step = self.step_recorder is not None and not final
        if not with_checksums and (batchnorm_in_step or not self.reader.bn_variables):
            return  # nothing to read at this step
        started = time.perf_counter()
        if batchnorm_in_step:
            batchnorm, checksums = None, self.reader.read_checksums()
        else:
            batchnorm, checksums = self.reader.read(with_checksums)
        if with_checksums and not final:
            self._checksum_costs.append(time.perf_counter() - started)
            self._choose_checksum_cadence()
        self._pending.append((step, batchnorm, checksums))
        self.add_seconds(time.perf_counter() - started)

    def _file_rows(self, final: bool) -> None:
        """File the rows the train step wrote; at the end of a block, the state the last step left."""
        indexes, batchnorm, checksummed, checksums = self.step_recorder.drain()
        steps = [self.first_step + int(i) for i in indexes]
        if steps and self.reader.bn_columns:
            self.record.set_vector(steps, self.reader.bn_columns, self.reader.summarize(batchnorm))
        if steps and self.checksum_columns and checksummed.any():
            self.record.set_vector([s for s, c in zip(steps, checksummed) if c], self.checksum_columns, checksums)
        if final and self.step_recorder.steps_run:
            last = self.first_step + self.step_recorder.steps_run - 1
            self._read(last, final=True)
            self.step_recorder.skip_last()

    def _choose_checksum_cadence(self) -> None:
        costs = self._prior_costs + self._checksum_costs
        if self._cadence_fixed or len(costs) < 3 or len(self._snapshot_times) < self._snapshots_to_choose:
            return
        step_seconds = float(np.median(np.diff(self._snapshot_times)))
        if self.step_recorder is not None:
            step_seconds /= self.step_recorder.steps_per_execution
        cost = float(np.median(costs))
        every = 1
        while cost / (every * step_seconds) > self.budget / 4 and every < 2**16:
            every *= 2
        self.record.checksum_every = max(every, self.record.checksum_every)
        self._cadence_fixed = True
        if self.step_recorder is not None:
            self.step_recorder.set_checksum_every(self.record.checksum_every)

    def _choose_publish_cadence(self) -> None:
        if self.forced_every is not None:
            return
        elapsed = time.perf_counter() - self._started
        steps = self.last_snapshot - self.first_step + 1
        if steps < 2 or elapsed <= 0:
            return
        stats = self.sink_stats()
        sent = stats.metrics_sent if stats is not None else 0
        per_point = stats.send_seconds / sent if stats is not None and sent >= 200 else PRIOR_SECONDS_PER_POINT
        points_per_step = (len(self.reader.bn_columns) if self.reader is not None else 0) + 2
        available = self.budget - self._seconds / elapsed
        publishing = points_per_step * per_point * steps / elapsed  # the fraction at cadence 1
        every = 1
        while available > 0 and publishing / every > available and every < 2**20:
            every *= 2
        self.publish_every = every if available > 0 else 2**20
