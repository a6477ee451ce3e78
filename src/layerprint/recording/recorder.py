"""The flight recorder: every step's logs and state into the run's ``StepRecord``, a budgeted share to MLflow.

The hooks tell it where the fit is: ``step_done`` between steps (the state the previous step left, read
there where the device does not record in the step), ``epoch_done`` at an epoch's end and ``file_state``
with the snapshot taken there (or at the fit's end, when it stopped without one). The step's logs go into the record directly (``StepRecord.set_metrics``). Every ``DRAIN_EVERY`` calls
(``drain_due``) ``drain`` brings the state recorded since the last time to the host in one transfer (``Device.drain``), files it in
the record, and publishes the rows due to the sink (``sink.log_metrics``), a share of them under the budget
(``recording.policy``). The state an epoch's last step left comes from the snapshot taken at its end,
computed on the host by ``file_state`` (off the training thread).

The checksum cadence is 1 unless the checksums' estimated cost per step says otherwise and a rise pays for
itself over the fit's remaining steps (``recording.calibration``, measured off the training thread;
``policy.checksum_every``), chosen after the
fit's fourth step (its second when an earlier fit of the model measured it), once the kernel's speed is
known, and fixed for the fit.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from layerprint import keys
from layerprint.recording import policy
from layerprint.recording.calibration import estimate
from layerprint.recording.device import Device, Rows
from layerprint.recording.record import StepRecord

DRAIN_EVERY = 32  # calls of the train function whose state is brought to the host together
PRIOR_SECONDS_PER_POINT = 400e-6  # a point's CPU in MLflow's SQL store during a fit; replaced by the sink's measurement
MEASURED_AFTER_POINTS = 32  # points sent (a first batch) before the sink's measured CPU a point replaces the prior


@dataclass(frozen=True)
class Budget:
    """What the recorder may cost, and cadences the user forced.

    Attributes:
        share: the share of the fit's time the callback may add.
        publish_every: publish every N steps instead of the budget's choice (``log_every_n_steps``).
        checksum_every: take checksums every N steps instead of the budget's choice.
    """

    share: float = 0.02
    publish_every: int | None = None
    checksum_every: int | None = None


class FlightRecorder:
    """One fit's flight recorder (module doc).

    Args:
        device: the model's state on its device (None: only the logs are recorded).
        record: the run's record, which earlier fits may have filled.
        sink: where metrics go: ``sink.log_metrics(points, step, timestamp_ms)``; its ``stats`` (if any)
            say what sending costs.
        budget: the budget and forced cadences.
        first_step: the fit's first global step.
        checksum_columns: the record's column of each of the device's variables, in its order.
        prior_checksum_seconds: what the checksums cost per step in an earlier fit of the model, or None.
        planned_steps: the steps the fit is to run (Keras's ``params``), when known.
    """

    def __init__(self, device: Device | None, record: StepRecord, sink: Any, budget: Budget, first_step: int,
                 checksum_columns: list[str], prior_checksum_seconds: float | None = None,
                 planned_steps: int | None = None) -> None:
        self.device, self.record, self.sink, self.budget = device, record, sink, budget
        self.first_step, self.checksum_columns, self.planned_steps = first_step, checksum_columns, planned_steps
        self.publish_every = budget.publish_every or 1  # the logs' (``train/``) cadence
        self.publish_bn_every = budget.publish_every or 1  # the BatchNorm summaries' (``bn/``), a multiple
        self._log_points = 2  # ``train/`` points a step: the loss and a metric until a step says
        self.last_step = first_step - 1  # the last step ``step_done`` was given (read between steps, if so)
        self._reached = first_step - 1  # the last step known done (also from an epoch's or the fit's end)
        self.checksum_seconds = prior_checksum_seconds
        self._lock = threading.RLock()
        self._filed = first_step - 1  # the last step whose state is in the record
        self._published = first_step - 1
        self._final = {first_step}  # steps whose logs are always published: the first, every epoch's last
        # steps whose BatchNorm summaries are always published: the fit's last (its planned one, or where it ended)
        self._last = {first_step + planned_steps - 1} if planned_steps else set()
        self._bn_owed: set[int] = set()  # fit's last steps published before they were known last: no ``bn/`` yet
        self._bn_sent = first_step - 1  # the latest step published with its ``bn/`` points
        self._snapshot_steps: set[int] = set()  # steps whose state came from a snapshot (``file_state``)
        self._calls_since_drain = 0
        self._started = time.perf_counter()
        self._seconds = 0.0
        self._step_times: list[float] = []  # until the checksum cadence is chosen
        self._steady: tuple[float, int] | None = None  # (time, step) of the first step's end: the trace behind
        self._latest: tuple[float, int] | None = None  # (time, step) of the latest step's end
        self._steps_to_choose = 2 if prior_checksum_seconds is not None else 4
        if budget.checksum_every is not None:
            record.checksum_every = budget.checksum_every
        self._cadence_fixed = budget.checksum_every is not None or record.checksum_every > 1
        if device is not None:
            device.start(first_step, record.checksum_every)

    @property
    def records_state(self) -> bool:
        return self.device is not None

    def spend(self, seconds: float) -> None:
        """Count time the callback spent against the budget."""
        with self._lock:
            self._seconds += seconds

    def step_done(self, step: int) -> None:
        """The fit reached the state after ``step`` (called between steps, before the next one runs)."""
        if step <= self.last_step:
            return
        started = time.perf_counter()
        if not self._cadence_fixed:
            self._step_times.append(started)
        if self._steady is None:
            self._steady = (started, step)
        self._latest = (started, step)
        self.last_step = step
        self._reached = max(self._reached, step)
        self._calls_since_drain += 1
        device = self.device
        if device is not None and not device.records_in_step:
            device.read(step, with_checksums=device.due(step))
        if not self._cadence_fixed:
            self._choose_checksum_cadence()
        self.spend(time.perf_counter() - started)

    @property
    def drain_due(self) -> bool:
        """Whether enough steps wait to be brought to the host together (the caller files the logs, then
        calls ``drain``)."""
        return self._calls_since_drain >= DRAIN_EVERY

    def drain(self) -> None:
        """Bring the recorded state to the host, file it, publish what is due."""
        if self.device is not None:
            self.device.wait()  # the steps dispatched ahead: the fit's own time, not counted
        started = time.perf_counter()
        self._calls_since_drain = 0
        with self._lock:
            if self.device is not None:
                self._file(self.device.drain())
            else:
                self._filed = self._reached
            self._publish_due(final=False)
        self.spend(time.perf_counter() - started)

    def epoch_done(self, step: int, last: bool = False) -> None:
        """An epoch ended after global ``step`` (``last``: and the fit with it): file and publish what is
        recorded; the state ``step`` left comes from a snapshot (``file_state``)."""
        with self._lock:
            self._reached = max(self._reached, step)
            self._final.add(step)
            if last:
                self._last.add(step)
                if step <= self._published and step != self._bn_sent:
                    self._bn_owed.add(step)  # stopped early: published before it was known to be the last
        self.drain()

    def file_state(self, step: int, values: list[np.ndarray] | None) -> None:
        """File the state ``step`` left, from ``values``, a snapshot of every variable taken then (in the
        device's order; None when it could not be read), computed on the host, and publish the rows up to it
        (off the training thread). The row the next step would write for it is then not filed: a callback's
        change after the epoch's end (``EarlyStopping`` restoring weights) is not the state the step left."""
        with self._lock:
            self._reached = max(self._reached, step)
            self._final.add(step)
            if self.device is not None and values is not None and step not in self._snapshot_steps:
                bn, checksums = self.device.host_row(values)
                self._file(Rows(np.asarray([step]), bn[None, :], checksums[None, :]))
                self._snapshot_steps.add(step)
            self._filed = max(self._filed, step)
            self._publish_due(final=True)

    def drop_device(self) -> None:
        """Record and publish the logs only, from now on (the device failed)."""
        with self._lock:
            self.device = None
            self._filed = self._reached

    # Filing and publishing (under the lock).
    def _file(self, rows: Rows) -> None:
        keep = np.asarray([int(step) not in self._snapshot_steps for step in rows.steps], bool)
        rows = Rows(rows.steps[keep], rows.batchnorm[keep], rows.checksums[keep]) if not keep.all() else rows
        if len(rows.steps):
            steps = [int(step) for step in rows.steps]
            if self.device is not None and self.device.bn_columns:
                self.record.set_vector(steps, self.device.bn_columns, self.device.summarize(rows.batchnorm))
            taken = (rows.checksums >= 0).any(axis=1)
            if self.checksum_columns and taken.any():
                self.record.set_vector([s for s, t in zip(steps, taken) if t], self.checksum_columns, rows.checksums[taken])
            self._filed = max(self._filed, max(steps))

    def _publish_due(self, final: bool) -> None:
        """Publish the filed rows due under the cadence, in step order, then choose the cadence again.

        Args:
            final: the rows up to an epoch's end are all filed: a step without logs there is skipped, not
                waited for (inside a ``steps_per_execution`` block Keras calls no hook).
        """
        self._choose_publish_cadence()
        step = self._published + 1
        while step <= min(self._reached, self._filed):
            if not self.record.has_metrics(step):
                if not final:
                    break  # its batch-end hook may still be running
            elif step in self._final or step % self.publish_every == 0:
                row = self.record.row(step)
                self._log_points = sum(1 for key in row if key.startswith(keys.STEP_PREFIX))
                if step not in self._last and step % self.publish_bn_every:
                    row = {key: value for key, value in row.items() if not key.startswith(keys.BN_PREFIX)}
                elif any(key.startswith(keys.BN_PREFIX) for key in row):
                    self._bn_sent = step
                self.sink.log_metrics(row, step, self.record.time_ms(step))
            step += 1
        self._published = step - 1
        for step in sorted(s for s in self._bn_owed if s <= self._filed):
            row = {key: value for key, value in self.record.row(step).items() if key.startswith(keys.BN_PREFIX)}
            if row:  # filed with its summaries (from the device's rows or the epoch's snapshot)
                self._bn_owed.discard(step)
                self._bn_sent = step
                self.sink.log_metrics(row, step, self.record.time_ms(step))

    # Cadences.
    def _choose_checksum_cadence(self) -> None:
        if len(self._step_times) < self._steps_to_choose or self.device is None:
            return
        if self.checksum_seconds is None:
            self.checksum_seconds = estimate(self.device.backend, *self.device.checksum_size())
            if self.checksum_seconds is None:
                return  # the kernel's speed is being measured off the training thread: decide later
        step_seconds = float(np.median(np.diff(self._step_times)))
        switch_seconds = 0.0
        if self.device.records_in_step:
            # The first call traced (or compiled) the train function: a rise traces the one without checksums.
            switch_seconds = max(self._step_times[0] - self._started - step_seconds, 0.0)
            step_seconds /= getattr(self.device, "block", 1)
        done = self.last_step - self.first_step + 1
        steps_left = self.planned_steps - done if self.planned_steps is not None else None
        every = policy.checksum_every(self.checksum_seconds, step_seconds, self.budget.share, steps_left, switch_seconds)
        self.record.checksum_every = max(every, self.record.checksum_every)
        self._cadence_fixed = True
        self.device.set_checksum_every(self.record.checksum_every)

    def _choose_publish_cadence(self) -> None:
        """The publishing cadences (``policy.publish_cadences``) from what the sink spends per point, the pace of
        the steps since the first one's end (the trace behind), and what a step of the fit takes on average:
        the fit's time so far and its remaining steps at that pace, over its planned steps (the pace alone
        when the fit's length is unknown)."""
        if self.budget.publish_every is not None or self._steady is None or self._latest is None:
            return
        (first_time, first_step), (last_time, last_step) = self._steady, self._latest
        if last_step <= first_step:
            return
        pace = (last_time - first_time) / (last_step - first_step)
        elapsed = time.perf_counter() - self._started
        done = self._reached - self.first_step + 1
        fit_step = pace
        if self.planned_steps is not None:
            fit_step = (elapsed + max(self.planned_steps - done, 0) * pace) / max(self.planned_steps, done)
        stats = getattr(self.sink, "stats", None)
        sent = stats.metrics_sent if stats is not None else 0
        measured = stats is not None and sent >= MEASURED_AFTER_POINTS
        per_point = stats.send_seconds / sent if measured else PRIOR_SECONDS_PER_POINT
        bn_points = len(self.device.bn_columns) if self.device is not None else 0
        self.publish_every, self.publish_bn_every = policy.publish_cadences(
            per_point, self._log_points, bn_points, fit_step, pace, self._seconds / max(elapsed, 1e-9), self.budget.share)


def checksum_columns(paths: list[str]) -> list[str]:
    """The record's checksum column of each variable path."""
    return [keys.checksum_key(path) for path in paths]
