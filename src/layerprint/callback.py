"""``LayerprintCallback``: fingerprints, sharing, BatchNorm statistics, loss curves and drift to MLflow."""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import json
import logging
import os
import tempfile
import threading
import time
import uuid
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from layerprint import keys
from layerprint.inspection.batchnorm import find_batchnorm_layers, moving_statistics
from layerprint.inspection.fingerprint import exact_hash, fingerprint_arrays, l2_norm
from layerprint.inspection.paths import owning_layer_path, unique_variables, variable_paths
from layerprint.inspection.call_sites import count_call_sites
from layerprint.inspection.sharing import sharing_report, symmetry_warning
from layerprint.inspection.state import StateReader
from layerprint.inspection.train_step import recorder_type
from layerprint.errors import first_line
from layerprint.tracking.recorder import FlightRecorder
from layerprint.tracking.redact import redact
from layerprint.tracking.sink import OFFLINE_PREFIX, RunSink
from layerprint.tracking.steps import StepRecord
from layerprint.tracking.store import create_client, experiment_id_for, resolve_tracking_uri

logger = logging.getLogger("layerprint")
# What the callback finds in the model (symmetry that training never breaks), as opposed to its own trouble:
# the runner keeps these out of its jobs' logs and prints them after a sweep as findings.
findings = logging.getLogger("layerprint.findings")

# The parts of the callback's work; a part that raises is reported once and skipped from then on.
PART_RUN = "run"
PART_FINGERPRINTS = "fingerprints"
PART_SHARING = "sharing"
PART_BATCHNORM = "batchnorm"
PART_DRIFT = "drift"
PART_PROBE = "probe"
PART_ARTIFACTS = "artifacts"
PART_SINK = "sink"  # sending points
PART_TAGS = "tags"
PART_STEPS = "steps"  # filing each step's logs in the flight record
PART_RECORDER = "recorder"  # reading each step's state on the device
PART_FINISH = "finish"  # the end of a fit, off the training thread
PART_VALUES = "values"  # reading every variable's value (for fingerprints, drift, BatchNorm, weights)


@dataclass
class RunProgress:
    """What earlier fits logged into one run, so that a later fit continues instead of overwriting.

    Attributes:
        fits: fits that began in the run.
        last_step: the global step of the last logged training batch.
        last_epoch: the last logged epoch (1-based).
        bn_epochs: epochs of the rows of ``batchnorm.npz``.
        bn_history: ``{"<layer>/<stat>": [vector per row]}``.
        probe_epochs, probe_hashes, probe_norms: the content of ``probe.json``.
        record: the flight record (``steps.parquet``).
        finishing: the background work of the last fit that ended in this run (a later fit into the
            run waits for it, so that nothing it uploads lands after the later fit's).
    """

    fits: int = 0
    last_step: int = 0
    last_epoch: int = 0
    bn_epochs: list[int] = field(default_factory=list)
    bn_history: dict[str, list[np.ndarray]] = field(default_factory=dict)
    probe_epochs: list[int] = field(default_factory=list)
    probe_hashes: list[str] = field(default_factory=list)
    probe_norms: list[float] = field(default_factory=list)
    record: StepRecord = field(default_factory=StepRecord)
    finishing: Future | None = None


# Model -> its compiled state reader, so that later fits of the same model do not trace it again.
_READERS: "weakref.WeakKeyDictionary[Any, StateReader]" = weakref.WeakKeyDictionary()
# The cost of one checksum read each model's last fit measured: the next fit chooses its cadence sooner.
_CHECKSUM_SECONDS: "weakref.WeakKeyDictionary[Any, float]" = weakref.WeakKeyDictionary()
# Model -> its recording train function (traced at its first call, then reused by later fits).
_STEP_RECORDERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
# Run id -> progress of the fits this process logged into it (the store is asked when it is not here).
_PROGRESS: dict[str, RunProgress] = {}
# Callbacks whose run is still open, or still being finished in the background: a fit that raised never
# calls on_train_end; their runs are ended FAILED when the next fit begins or when the interpreter exits,
# never left RUNNING. Held strongly until finished: a callback collected with its run open could not end it.
_OPEN_CALLBACKS: "set[LayerprintCallback]" = set()


class LayerprintCallback(keras.callbacks.Callback):
    """Logs what decides whether two runs can diverge to MLflow.

    At train begin: a fingerprint of every variable (``fingerprints_initial.json``, tag
    ``layerprint.init_fingerprint``) and ``sharing.json`` (layers called at several sites, variables
    several layers use, distinct variables that start bitwise identical; the last also prints one
    warning, because that symmetry is not broken by training). A model whose variables do not exist
    yet at train begin (a subclassed model built at its first call) is captured once they exist and
    before the first optimizer update.

    Every optimizer step goes into the flight record, ``steps.parquet``: loss and compiled metrics
    (``train/<name>``), BatchNorm moving-stat summaries (``bn/...``) and an exact checksum of every
    variable (``checksum/<path>``), written on the device by the train step itself on TensorFlow (else
    read by one compiled function per step) and brought to the host every 32 steps. The same ``train/`` and ``bn/`` series go to MLflow metrics at a cadence that keeps
    the callback within ``overhead_budget`` of the fit's time, measured as it runs (first and last steps
    and every epoch end always included); ``log_every_n_steps`` forces a cadence instead. Every epoch: epoch and
    validation metrics (``epoch/<name>``), per-layer weight drift from the weights at the start of
    the fit (``drift/<layer>``), the full BatchNorm vectors (kept for ``batchnorm.npz``) and, given a
    probe batch, a fingerprint and the norm of the model output on it. At train end: the final
    fingerprint and the artifacts; ``fit`` returns with the run complete (see ``wait`` and
    ``finish_in_background``). A run the callback started
    ends FINISHED, or FAILED (with the ``layerprint.failure`` tag) when a logged loss was NaN or
    infinite.

    Telemetry never breaks training: an error inside the callback is printed as one warning, tagged
    on the run (``layerprint.callback_error``), and only the part that raised stops; ``fit`` goes on.

    Several fits into one run (the fine-tuning habit, inside one ``mlflow.start_run()``) continue its
    steps and epochs; the run's initial fingerprint stays the first fit's. A run the callback starts
    itself belongs to one fit: the next fit starts a new run.

    Points are queued and sent by a background thread in batches, so a step never waits for the
    store. If the store cannot be reached, training goes on and the points are kept in a local spool
    (``layerprint sync`` sends them later).

    The run: ``run_id`` if given, else the active MLflow run, else a new run that the callback also
    ends. Use ``nested=True`` to start a child of the active run instead.

    Args:
        log_every_n_steps: publish step metrics and BatchNorm summaries to MLflow every N optimizer
            steps (plus the first, last and epoch-end steps); None chooses N under the budget.
        overhead_budget: the share of the fit's time the callback may add (default 2 %).
        checksum_every: take the variables' checksums every N steps (1: every step, to locate a
            divergence exactly at any cost); None: every step unless one read costs more than a
            quarter of the budget, then the smallest power of two that fits.
        run_id: log into this existing run.
        experiment_name: experiment for a run the callback starts (default: MLflow's current one).
        run_name: name of a run the callback starts.
        nested: start a child run of the active run.
        tracking_uri: store for a run the callback starts (default: ``MLFLOW_TRACKING_URI`` or
            MLflow's current URI).
        probe_batch: an input batch to evaluate before training and after every epoch (fingerprint
            and norm of the output; epoch 0 is the untrained model).
        tags: extra tags for the run.
        params: params to log on the run (for example the flattened config).
        max_weights_artifact_params: save the final weights as ``weights_final.npz`` (for
            ``layerprint compare``'s weight distances) when the model has at most this many
            parameters; 0 turns it off.
        flush_timeout: seconds to wait at train end for queued points before spooling them.
        strict: raise errors instead of warning and spooling (for tests).
        sink: log through this ``RunSink`` (or an object with its methods) instead of opening a run,
            as dvclive's ``live=``: the caller owns it, so the callback flushes it at train end and
            never closes it or ends its run; later fits continue its run within this process.
        finish_in_background: in a run the callback starts itself, let ``fit`` return as soon as
            training is done and end the run on a background thread (for loops of many short fits;
            see ``wait``). Off by default: ``fit`` returns with the run complete.

    Example:

    ```python
    from layerprint import LayerprintCallback
    model.fit(x, y, epochs=3, callbacks=[LayerprintCallback()])
    ```
    """

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        overhead_budget: float = 0.02,
        checksum_every: int | None = None,
        run_id: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        nested: bool = False,
        tracking_uri: str | None = None,
        probe_batch: Any = None,
        tags: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        max_weights_artifact_params: int = 1_000_000,
        flush_timeout: float = 30.0,
        strict: bool = False,
        sink: RunSink | None = None,
        finish_in_background: bool = False,
    ) -> None:
        super().__init__()
        if log_every_n_steps is not None and (not isinstance(log_every_n_steps, int) or log_every_n_steps < 1):
            raise ValueError(f"log_every_n_steps must be a positive integer or None, got {log_every_n_steps!r}")
        if not 0 < overhead_budget < 1:
            raise ValueError(f"overhead_budget must be a fraction between 0 and 1, got {overhead_budget!r}")
        if checksum_every is not None and (not isinstance(checksum_every, int) or checksum_every < 1):
            raise ValueError(f"checksum_every must be a positive integer or None, got {checksum_every!r}")
        self.log_every_n_steps = log_every_n_steps
        self.overhead_budget = overhead_budget
        self.checksum_every = checksum_every
        # Keras may run the batch-end hook off the training thread: it only files the step's logs (under a
        # lock); every read of the model's state happens on the training thread.
        self.async_safe = True
        self.run_id = run_id
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.nested = nested
        self.tracking_uri = tracking_uri
        self.probe_batch = probe_batch
        self.tags = dict(tags or {})
        self.run_params = dict(params or {})  # not `params`: Keras sets that to fit's arguments
        self.max_weights_artifact_params = max_weights_artifact_params
        self.flush_timeout = flush_timeout
        self.strict = strict
        self._given_sink = sink
        self.finish_in_background = finish_in_background
        self._worker: ThreadPoolExecutor | None = None
        self._futures: list[Future] = []
        self._reset()

    def _reset(self) -> None:
        """The state of one fit (``on_train_begin`` starts from here)."""
        self.sink: RunSink | None = None
        self._initial_fingerprint: dict[str, Any] | None = None
        self._final_fingerprint: dict[str, Any] | None = None
        self._sharing: dict[str, Any] | None = None
        self.callback_error: str | None = None
        self._open = False
        self._owns_run = False
        self._uri: str | None = None
        self._active_run_id: str | None = None
        self._broken: set[str] = set()
        self._progress = RunProgress()
        self._fit_index = 1
        self._pending_capture = False
        self._step_base = 0
        self._global_step = 0
        self._epoch_start_step = 0
        self._epoch_offset: int | None = None
        self._non_finite_step: int | None = None
        self._bn_layers: list[tuple[str, Any]] = []
        self._recorder: FlightRecorder | None = None
        self._swapped: Any = None  # the step recorder whose train function the model runs in this fit
        self._current_epoch = 0
        self._unfiled_logs: collections.deque[tuple[int, int, float, Any]] = collections.deque()
        self._step_keys: dict[str, str] = {}
        self._initial_values: VariableValues | None = None
        self._trainable_ids: set[int] = set()
        self._paths: dict[int, str] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._hooked_optimizers: list[Any] = []  # optimizers whose ``build`` captures the start

    @property
    def initial_fingerprint(self) -> dict[str, Any] | None:
        """The fingerprint at the start of the last fit (``fingerprint_arrays``); waits for it."""
        self.wait()
        return self._initial_fingerprint

    @property
    def final_fingerprint(self) -> dict[str, Any] | None:
        """The fingerprint at the end of the last fit; waits for it."""
        self.wait()
        return self._final_fingerprint

    @property
    def sharing(self) -> dict[str, Any] | None:
        """The content of ``sharing.json`` of the last fit; waits for it."""
        self.wait()
        return self._sharing

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the work the callback does off the training thread.

        Hashing the weights, writing and uploading the artifacts, sending the last points and ending
        the run happen on a background thread while training goes on; ``fit`` waits for what is left
        of it before it returns, so that the run is complete in the store (or in the spool, when the
        store is down) when ``fit`` returns. With ``finish_in_background=True``, in a run the callback
        started itself, ``fit`` returns as soon as training is done: then the next fit with this
        callback, ``close``, reading ``initial_fingerprint``, ``final_fingerprint`` or ``sharing``, and
        the interpreter's exit wait for it; call this before reading that run from MLflow.

        Args:
            timeout: seconds to wait at most (None: until done).

        Returns:
            Whether all of it is done.
        """
        pending = [future for future in self._futures if not future.done()]
        if pending:
            wait_for_futures(pending, timeout)
        self._futures = [future for future in self._futures if not future.done()]
        return not self._futures

    @property
    def active_run_id(self) -> str | None:
        """The id of the MLflow run the current (or last) fit logs into, None before the first fit. A run
        the callback starts itself is created by its sink's thread, so that training never waits for
        the store: this waits for it (up to ``flush_timeout`` seconds). A run that could not be created
        has a local id, ``offline-...``, under which the spool keeps it for ``layerprint sync``."""
        if self._active_run_id is None and self.sink is not None:
            return self.sink.opened_run_id(self.flush_timeout)
        return self._active_run_id

    @property
    def non_finite_step(self) -> int | None:
        """The first logged global step whose loss was NaN or infinite, else None."""
        return self._non_finite_step

    @property
    def last_step(self) -> int:
        """The global step of the last finished training batch (0 before training)."""
        return self._global_step

    # Keras hooks.
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._open:  # the previous fit raised before on_train_end
            self._end_abandoned_fit()
        self.wait()
        self._reset()
        if not isinstance(self.model, keras.Model):
            logger.warning("layerprint: %s is not a Keras 3 model (Keras 2 / tf_keras?); LayerprintCallback "
                           "supports Keras 3 only and logs nothing for this fit.", type(self.model).__name__)
            return
        self._open = True
        _OPEN_CALLBACKS.add(self)
        self._tmp = tempfile.TemporaryDirectory(prefix="layerprint-")
        self._guard(PART_RUN, self._start_run)
        if self._progress.finishing is not None:  # an earlier fit into this run is still uploading
            wait_for_futures([self._progress.finishing])
        self._progress.fits += 1
        self._fit_index = self._progress.fits
        self._step_base = self._epoch_start_step = self._global_step = self._progress.last_step
        self._publish_progress()
        if _variables_exist(self.model):
            self._capture_start(init_step=0, in_step=True)
        else:
            self._pending_capture = True
            self._guard(PART_FINGERPRINTS, self._capture_at_optimizer_build)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if not self._open:
            return
        if self._pending_capture and _variables_exist(self.model):
            self._capture_start(init_step=0)
        recorder = self._recorder
        if recorder is not None and batch > 0:  # the state the previous step left
            self._snapshot(self._epoch_start_step + batch, final=False)
            if recorder.due:
                self._end_record_block(final=False)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._epoch_offset is None:  # later fits continue the run's epochs; initial_epoch is respected
            self._epoch_offset = max(self._progress.last_epoch - epoch, 0)
        self._current_epoch = self._epoch_offset + epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if not self._open:
            return
        step = self._epoch_start_step + batch + 1
        if step > self._global_step:
            self._global_step = step
        if self._pending_capture:
            self._capture_start(init_step=step)
        # Filed in the record with the state, every DRAIN_EVERY steps: here, only a thread-safe append.
        self._unfiled_logs.append((step, self._current_epoch, time.time() * 1000.0, logs))

    def _file_logs(self) -> None:
        """File the logs of the steps since the last call in the record (their ``train/`` values)."""
        started = time.perf_counter()
        while self._unfiled_logs:
            step, epoch, time_ms, logs = self._unfiled_logs.popleft()
            values = {self._step_key(name): float(value) for name, value in (logs or {}).items() if _is_number(value)}
            if not np.isfinite(values.get(self._step_key("loss"), 0.0)):
                self._non_finite_step = min(step, self._non_finite_step or step)
            self._guard(PART_STEPS, self._progress.record.set_metrics, step, epoch, time_ms, values)
        if self._recorder is not None:
            self._recorder.add_seconds(time.perf_counter() - started)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self._open:
            return
        logs = logs or {}
        logged_epoch = (self._epoch_offset or 0) + epoch + 1
        self._epoch_start_step = self._global_step
        if self._pending_capture:
            self._capture_start(init_step=self._global_step)
        self._file_logs()
        if self._recorder is not None:
            self._snapshot(self._global_step, final=True)
            self._end_record_block(final=True)
            self._background(PART_ARTIFACTS, self._save_artifact, keys.STEPS, self._progress.record.write)
        if self._non_finite_step is None and _is_number(logs.get("loss")) and not np.isfinite(float(logs["loss"])):
            self._non_finite_step = self._global_step
        points = {keys.epoch_key(name): value for name, value in logs.items() if _is_number(value)}
        if self.probe_batch is not None:
            points.update(self._guard(PART_PROBE, self._probe, logged_epoch) or {})
        self._log(_sanitized(points), logged_epoch)
        values = self._guard(PART_VALUES, self._read_values)
        if values is not None:
            self._background(PART_DRIFT, self._log_drift, values, logged_epoch)
        if self._bn_layers:
            self._record_batchnorm_of(logged_epoch, values)
        self._progress.last_step, self._progress.last_epoch = self._global_step, logged_epoch
        self._publish_progress()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if not self._open:
            return
        if self._pending_capture:
            self._capture_start(init_step=self._global_step)
        self._file_logs()
        recorder = self._recorder
        if recorder is not None and recorder.last_snapshot < self._global_step:  # stopped inside an epoch
            self._snapshot(self._global_step, final=True)
            self._end_record_block(final=True)
            self._background(PART_ARTIFACTS, self._save_artifact, keys.STEPS, self._progress.record.write)
        if recorder is not None:
            self._set_tags({keys.TAG_CHECKSUM_EVERY: str(self._progress.record.checksum_every),
                            keys.TAG_PUBLISH_EVERY: str(recorder.publish_every)})
            if recorder.checksum_seconds is not None:
                _CHECKSUM_SECONDS[self._model] = recorder.checksum_seconds
        self._progress.last_step = self._global_step
        self._publish_progress()
        values = self._guard(PART_VALUES, self._read_values)
        self._end_fit("FINISHED" if self._non_finite_step is None else "FAILED", values)

    # tf_keras (Keras 2) asks its callbacks these before training; without them its fit would crash.
    def _implements_train_batch_hooks(self) -> bool:
        return True

    def _implements_test_batch_hooks(self) -> bool:
        return False

    def _implements_predict_batch_hooks(self) -> bool:
        return False

    def close(self, status: str = "FINISHED") -> None:
        """Flush the queued points, end the run if this callback started it, release resources; waits
        for all of it (see ``wait``).

        ``on_train_end`` does this in the background; call it yourself with ``status="FAILED"`` or
        ``"KILLED"`` when ``fit`` raised, so that a run the callback started does not stay RUNNING at
        once (otherwise that happens when the next fit begins, or when the interpreter exits).

        Args:
            status: the status a run the callback started ends with.
        """
        self._end_fit(status, None)
        self.wait()

    def _end_fit(self, status: str, values: VariableValues | None) -> None:
        """Give the model its train function back and hand the rest of the fit's end to the background.

        Args:
            status: the status a run the callback started ends with.
            values: every variable's final value (``_read_values``), or None when not read.
        """
        if not self._open:
            return
        self._open = False
        self._restore_train_function()  # even when the recorder part failed
        for optimizer in self._hooked_optimizers:  # never built in this fit: their own build back
            optimizer.__dict__.pop("build", None)
        self._background(PART_FINISH, self._finish, status, values)
        self._progress.finishing = self._futures[-1] if self._futures else None
        if self._worker is not None:
            self._worker.shutdown(wait=False)  # its thread ends once the queued work is done
            self._worker = None
        if not (self._owns_run and self.finish_in_background):  # the run complete when fit returns
            self.wait()
            if self._owns_run and self._active_run_id and not self._active_run_id.startswith(OFFLINE_PREFIX):
                _note_last_active_run(self._active_run_id)

    def _finish(self, status: str, final_values: VariableValues | None) -> None:
        """The end of a fit, off the training thread: final fingerprint and artifacts, then the run."""
        values = self._guard(PART_VALUES, final_values.get) if final_values is not None else None
        if values is not None:
            self._final_fingerprint = self._guard(PART_FINGERPRINTS, fingerprint_arrays, self._named(values))
            if self._final_fingerprint is not None:
                self._set_tags({keys.TAG_FINAL_FINGERPRINT: self._final_fingerprint["model"]})
                self._guard(PART_ARTIFACTS, self._write_json, keys.FINGERPRINTS_FINAL, self._final_fingerprint)
        progress = self._progress
        if progress.probe_hashes:
            self._set_tags({keys.TAG_PROBE_FINGERPRINT: progress.probe_hashes[-1]})
            self._guard(PART_ARTIFACTS, self._write_json, keys.PROBE, {
                "epochs": progress.probe_epochs, "sha256": progress.probe_hashes, "l2_norm": progress.probe_norms})
        if values is not None:
            self._guard(PART_ARTIFACTS, self._write_final_weights, values)
        if progress.bn_epochs:
            self._guard(PART_ARTIFACTS, self._save_artifact, keys.BATCHNORM, lambda path: np.savez(
                path, epochs=np.asarray(progress.bn_epochs),
                **{keys.sanitize_key(name): np.stack(rows) for name, rows in progress.bn_history.items()}))
        if self._non_finite_step is not None:
            self._set_tags({keys.TAG_FAILURE: f"loss became non-finite at step {self._non_finite_step}"})
        self._end_run(status)
        _OPEN_CALLBACKS.discard(self)

    def _end_run(self, status: str) -> None:
        """Flush or close the sink, end an owned run, remove the temporary files."""
        stats, ended = None, False
        if self.sink is not None and self.sink is self._given_sink:
            self._guard(PART_SINK, self.sink.flush, self.flush_timeout)
        elif self.sink is not None:
            try:
                stats = self.sink.close(self.flush_timeout)
                if self._owns_run:
                    self.sink.finish(status, self.flush_timeout)
                ended = True
            except Exception as error:  # noqa: BLE001 - the fallback below still ends the run
                if self.strict:
                    raise
                self._report(PART_SINK, error)
        if self.sink is not None and self._active_run_id is None:  # a run of its own, created by the sink
            self._active_run_id = self.sink.run_id
        if self._active_run_id and (not ended or PART_TAGS in self._broken):
            self._end_without_sink(status)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self.sink = None
        if self.strict and stats is not None and stats.errors:
            raise RuntimeError(f"layerprint: tracking errors: {stats.errors[:3]}")

    def _background(self, part: str, function: Callable[..., Any], *args: Any) -> None:
        """``function(*args)`` guarded as ``part``, on the callback's background thread after the work
        queued before it (at once under ``strict``, so that errors reach the caller)."""
        if self.strict:
            function(*args)
            return
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="layerprint-finish")
        try:
            self._futures.append(self._worker.submit(self._guard, part, function, *args))
        except RuntimeError:  # the interpreter is exiting: no new threads
            self._guard(part, function, *args)

    # Run lifecycle.
    def _start_run(self) -> None:
        """The fit's sink: into the given sink, the caller's run (``run_id``, the active run), or a run of
        its own, which the sink's thread creates (the training thread never waits for the store)."""
        import mlflow

        active = mlflow.active_run()
        if self._given_sink is not None:
            self.sink = self._given_sink
            self._progress = _PROGRESS.setdefault(self.sink.run_id, RunProgress())
        elif self.run_id or (active is not None and not self.nested):
            uri = resolve_tracking_uri(self.tracking_uri or mlflow.get_tracking_uri()) if self.run_id else \
                mlflow.get_tracking_uri()
            run_id = self.run_id or active.info.run_id
            self._uri, self._active_run_id = uri, run_id
            self.sink = RunSink(uri, run_id, strict=self.strict)
            self._progress = (_PROGRESS.get(run_id) or self._guard(PART_RUN, self._progress_in_store, uri, run_id)
                              or RunProgress())
            _PROGRESS[run_id] = self._progress
        else:
            self._uri, self._owns_run = resolve_tracking_uri(self.tracking_uri or _env_or_current_uri()), True
            parent_run_id = active.info.run_id if active is not None else None
            experiment_id = _fluent_experiment_id(active, self.experiment_name)
            offline = {"experiment_name": self.experiment_name, "run_name": self.run_name,
                       "parent_run_id": parent_run_id}
            create = functools.partial(self._create_run, self._uri, experiment_id, parent_run_id)
            if self.strict:  # errors reach the caller
                self.sink = RunSink(self._uri, create(), strict=True)
            else:
                try:
                    self.sink = RunSink(self._uri, None, offline_run=offline, open_run=create)
                except Exception:
                    with contextlib.suppress(Exception):  # a run to tag with the failure and end
                        self._active_run_id = create()
                    raise
        if self.tags:
            self.sink.set_tags(self.tags)
        if self.run_params:
            self.sink.log_params(self.run_params)

    def _create_run(self, uri: str, experiment_id: str | None, parent_run_id: str | None) -> str:
        """Create the callback's own run (on the sink's thread) and return its id.

        Args:
            uri: the store.
            experiment_id: the experiment, or None for ``experiment_name``'s (created when missing).
            parent_run_id: the run that was active at train begin (``nested``), or None.
        """
        client = create_client(uri)
        if experiment_id is None:
            experiment_id = experiment_id_for(client, uri, self.experiment_name)
        run_tags = {keys.TAG_PARENT_RUN_ID: parent_run_id} if parent_run_id else {}
        return client.create_run(experiment_id, run_name=self.run_name, tags=run_tags).info.run_id

    def _progress_in_store(self, uri: str, run_id: str) -> RunProgress:
        """What earlier fits (in another process) logged into ``run_id``, from its tags and artifacts."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        tags = client.get_run(run_id).data.tags
        progress = RunProgress(fits=int(tags.get(keys.TAG_FITS, 0)), last_step=int(tags.get(keys.TAG_LAST_STEP, 0)),
                               last_epoch=int(tags.get(keys.TAG_LAST_EPOCH, 0)))
        if progress.fits == 0:
            return progress
        names = {info.path.rsplit("/", 1)[-1] for info in client.list_artifacts(run_id, keys.ARTIFACT_DIR)}
        if keys.BATCHNORM in names:
            with np.load(client.download_artifacts(run_id, f"{keys.ARTIFACT_DIR}/{keys.BATCHNORM}",
                                                   self._tmp.name)) as npz:
                progress.bn_epochs = [int(e) for e in npz["epochs"]]
                progress.bn_history = {name: list(npz[name]) for name in npz.files if name != "epochs"}
        if keys.PROBE in names:
            probe = json.loads(Path(client.download_artifacts(run_id, f"{keys.ARTIFACT_DIR}/{keys.PROBE}",
                                                              self._tmp.name)).read_text())
            progress.probe_epochs, progress.probe_hashes = probe["epochs"], probe["sha256"]
            progress.probe_norms = probe["l2_norm"]
        if keys.STEPS in names:
            progress.record = StepRecord.from_file(Path(client.download_artifacts(
                run_id, f"{keys.ARTIFACT_DIR}/{keys.STEPS}", self._tmp.name)))
        return progress

    def _publish_progress(self) -> None:
        """Tag how far the run got, so that a later fit (even in another process) continues after it."""
        self._set_tags({keys.TAG_FITS: str(self._progress.fits), keys.TAG_LAST_STEP: str(self._global_step),
                        keys.TAG_LAST_EPOCH: str(self._progress.last_epoch)})

    def _end_abandoned_fit(self) -> None:
        self._set_tags({keys.TAG_FAILURE: "fit raised before it ended (on_train_end never came)"})
        self.close(status="FAILED")

    def _end_without_sink(self, status: str) -> None:
        """Tag the first error and end an owned run straight through MLflow when the sink could not."""
        if self._active_run_id.startswith(OFFLINE_PREFIX):
            return
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self._uri)
            if self.callback_error:
                client.set_tag(self._active_run_id, keys.TAG_CALLBACK_ERROR, self.callback_error)
            if self._owns_run:
                client.set_terminated(self._active_run_id, status=status)
        except Exception as error:  # noqa: BLE001 - the store is gone too: nothing more can be done
            if self.strict:
                raise
            logger.warning("layerprint: could not end run %s (%s)", self._active_run_id, first_line(error))

    # Capturing the start of a fit.
    def _capture_at_optimizer_build(self) -> None:
        """Capture the start from inside the first ``build`` of any of the model's optimizers.

        On TensorFlow without a distribution strategy, Keras builds an unbuilt model inside the first
        traced train step: the variables exist, with their initial values, once the forward pass has
        run, and an optimizer builds its own state right before it applies the first update. That is
        ``model.optimizer``, or one the model holds itself (a GAN's ``d_optimizer`` and
        ``g_optimizer``, used by its own ``train_step``). The values are read eagerly there
        (``tf.init_scope``). Other backends build before train begin.
        """
        for optimizer in _optimizers_of(self.model):
            if getattr(optimizer, "built", True) or "build" in optimizer.__dict__:
                continue
            optimizer.build = functools.partial(self._build_then_continue, optimizer, optimizer.build)
            self._hooked_optimizers.append(optimizer)

    def _build_then_continue(self, optimizer: Any, build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """An optimizer's ``build``, after capturing the start of the fit if it is still pending."""
        optimizer.__dict__.pop("build", None)
        if self._pending_capture and self._open:
            with _eager_scope():
                if _values_initialized(self.model.variables):  # else: after the step (``init_step``)
                    self._capture_start(init_step=0)
        return build(*args, **kwargs)

    def _capture_start(self, init_step: int, in_step: bool = False) -> None:
        """Fingerprints, sharing, BatchNorm and probe rows, and drift reference at the start of the fit.

        Args:
            init_step: 0 when taken before the first update; else the step after which it was taken
                (a model that created its variables inside a step that did not use ``model.optimizer``).
            in_step: at train begin, before Keras calls the train function: it may be swapped for one
                that records the state itself.
        """
        self._pending_capture = False
        if init_step:
            logger.warning("layerprint: the model created its variables inside the first training step; "
                           "its initial fingerprint is taken after step %d (tag %s).", init_step, keys.TAG_INIT_STEP)
        first_fit = self._fit_index == 1
        prefix = "" if first_fit else keys.LATER_FIT_DIR.format(index=self._fit_index) + "/"
        model = self.model
        everything = model.variables  # Keras walks every layer for it: once here
        self._paths = variable_paths(model, everything)
        self._trainable_ids = {id(v) for v in model.trainable_variables}
        self._bn_layers = self._guard(PART_BATCHNORM, find_batchnorm_layers, model) or []
        variables = unique_variables(model, everything)
        self._recorder = self._start_recorder(in_step, variables)
        values = self._guard(PART_VALUES, self._read_values, variables)
        self._initial_values = values
        start_epoch = self._progress.last_epoch
        if self._bn_layers and start_epoch not in self._progress.bn_epochs:
            self._record_batchnorm_of(start_epoch, values)
        sites = self._guard(PART_SHARING, count_call_sites, model)  # runs the model's call symbolically: here
        if values is not None:
            self._background(PART_FINGERPRINTS, self._fingerprint_start, values, init_step, prefix, sites)
        if self.probe_batch is not None and start_epoch not in self._progress.probe_epochs:
            self._log(self._guard(PART_PROBE, self._probe, start_epoch) or {}, start_epoch)

    def _fingerprint_start(self, initial: VariableValues, init_step: int, prefix: str, sites: Any) -> None:
        """The initial fingerprint and ``sharing.json``, off the training thread (``prefix``: the later
        fit's folder, empty for the run's first fit, which also sets the run's init tags)."""
        values = self._guard(PART_VALUES, initial.get)
        if values is None:
            return
        fingerprint = self._guard(PART_FINGERPRINTS, fingerprint_arrays, self._named(values))
        self._initial_fingerprint = fingerprint
        records = fingerprint["variables"] if fingerprint else []
        sharing = self._guard(PART_SHARING, sharing_report, self._model, records, sites) if sites is not None else None
        self._sharing = sharing
        warning = symmetry_warning(sharing["identical_initial_values"]) if sharing else None
        if warning:
            findings.warning(warning)
        if fingerprint is not None:
            if not prefix:
                self._set_tags({keys.TAG_INIT_FINGERPRINT: fingerprint["model"],
                                keys.TAG_INIT_TOLERANT: fingerprint["tolerant"], keys.TAG_INIT_STEP: str(init_step),
                                **({keys.TAG_SYMMETRY_WARNING: "true"} if warning else {})})
            self._guard(PART_ARTIFACTS, self._write_json, prefix + keys.FINGERPRINTS_INITIAL, fingerprint)
        if sharing is not None:
            self._guard(PART_ARTIFACTS, self._write_json, prefix + keys.SHARING, sharing)

    # The parts.
    def _guard(self, part: str, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)``, or None when it raises (reported once; the part is then skipped)."""
        if part in self._broken:
            return None
        try:
            return function(*args)
        except Exception as error:  # noqa: BLE001 - telemetry never breaks training
            if self.strict:
                raise
            self._report(part, error)
            return None

    def _report(self, part: str, error: BaseException) -> None:
        self._broken.add(part)
        message = redact(f"{part}: {type(error).__name__}: {first_line(error)}")[:500]
        logger.warning("layerprint: %s failed, training goes on without it (%s)", part, message)
        if self.callback_error is None:
            self.callback_error = message
            self._set_tags({keys.TAG_CALLBACK_ERROR: message})

    def _log(self, points: dict[str, float], step: int) -> None:
        if self.sink is not None and points:
            self._guard(PART_SINK, self.sink.log_metrics, points, step)

    def _set_tags(self, tags: dict[str, Any]) -> None:
        if self.sink is not None:
            self._guard(PART_TAGS, self.sink.set_tags, tags)

    def _step_key(self, name: str) -> str:
        key = self._step_keys.get(name)
        if key is None:
            key = self._step_keys[name] = keys.sanitize_key(keys.step_key(name))
        return key

    def _read_values(self, variables: list[Any] | None = None) -> VariableValues:
        """Every variable's current value (in the model's order): copies on the device from one compiled
        call when the fit's state reader covers the model, brought to the host by the first ``get``
        (off the training thread); else one read per variable now (0.2 ms each on TensorFlow).

        Args:
            variables: ``unique_variables`` of the model, when the caller has them (with the trained state
                synced into the variables, which ``self.model`` does on JAX).
        """
        if variables is None:
            variables = unique_variables(self.model)  # `self.model`: on JAX, the trained state synced first
        reader = self._recorder.reader if self._recorder is not None else None
        if reader is not None and reader.variable_ids == [id(v) for v in variables]:
            snapshot = reader.snapshot()
            return VariableValues(lambda: dict(zip(reader.variable_ids, reader.host(snapshot))))
        values = {id(v): np.array(v.numpy()) for v in variables}
        return VariableValues(lambda: values)

    def _named(self, values: dict[int, np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
        """``(path, layer, values)`` triples for ``fingerprint_arrays``."""
        named = []
        for key, array in values.items():
            path = self._paths.get(key)
            if path is None:  # a variable created during the fit
                self._paths = variable_paths(self._model)
                path = self._paths.get(key, str(key))
            named.append((path, owning_layer_path(path), array))
        return named

    def _log_drift(self, values: VariableValues, epoch: int) -> None:
        self._log(_sanitized(self._drift(values.get())), epoch)

    def _drift(self, values: dict[int, np.ndarray]) -> dict[str, float]:
        """L2 distance of each layer's trainable variables from their values at the start of the fit,
        and of the whole model (variables created later are left out)."""
        initial = self._initial_values.get() if self._initial_values is not None else {}
        squares: dict[str, float] = {}
        total = 0.0
        for key, current in values.items():
            start = initial.get(key)
            if start is None or key not in self._trainable_ids:
                continue
            delta = np.asarray(current, dtype=np.float64) - start
            square = float(np.sum(delta * delta))
            path = self._paths.get(key, str(key))
            layer = owning_layer_path(path) or path
            squares[layer] = squares.get(layer, 0.0) + square
            total += square
        out = {keys.drift_key(layer): float(np.sqrt(s)) for layer, s in squares.items()}
        out[keys.DRIFT_MODEL] = float(np.sqrt(total))
        return out

    def _probe(self, epoch: int) -> dict[str, float]:
        """Fingerprint and norm of the model output on the probe batch, recorded for ``epoch``."""
        output = np.asarray(keras.ops.convert_to_numpy(self.model(self.probe_batch, training=False)))
        progress = self._progress
        progress.probe_epochs.append(epoch)
        progress.probe_hashes.append(exact_hash(output))
        progress.probe_norms.append(l2_norm(output))
        return {keys.PROBE_NORM: progress.probe_norms[-1]}

    def _start_recorder(self, in_step: bool, variables: list[Any]) -> FlightRecorder:
        """The fit's recorder; without a working state reader it still files and publishes the logs.

        Args:
            in_step: let the train step record itself when it can (``inspection.train_step``); not for
                a model captured inside its first step.
            variables: the model's variables (``unique_variables``).
        """
        model = self._model  # not `self.model`: on JAX that would copy the trained state back every time
        reader = self._guard(PART_RECORDER, self._state_reader, model, variables)
        step_recorder = None
        kind = self._guard(PART_RECORDER, recorder_type, model, reader) if reader is not None and in_step else None
        if kind is not None:
            step_recorder = self._guard(PART_RECORDER, self._step_recorder, model, reader, kind)
        recorder = FlightRecorder(reader, step_recorder, [keys.checksum_key(self._paths[id(v)]) for v in variables],
                                  self._progress.record, self._log_timed, self.overhead_budget,
                                  self.log_every_n_steps, first_step=self._step_base + 1,
                                  sink_stats=lambda: getattr(self.sink, "stats", None),
                                  checksum_every=self.checksum_every,
                                  prior_checksum_seconds=_CHECKSUM_SECONDS.get(model))
        if step_recorder is not None:
            model.train_function = step_recorder.train_function  # for this fit; restored at its end
            self._swapped = step_recorder
        return recorder

    @staticmethod
    def _step_recorder(model: Any, reader: StateReader, kind: type) -> Any:
        recorder = _STEP_RECORDERS.get(model)
        if not isinstance(recorder, kind) or not recorder.matches(model, reader):
            recorder = _STEP_RECORDERS[model] = kind(model, reader)
        return recorder

    def _restore_train_function(self) -> None:
        """Give the model back its own train function (after the fit, or when it raised)."""
        recorder, self._swapped = self._swapped, None
        if recorder is not None and getattr(self._model, "train_function", None) is recorder.train_function:
            self._model.train_function = recorder.base_function

    def _state_reader(self, model: Any, variables: list[Any]) -> StateReader:
        reader = _READERS.get(model)
        if reader is None or reader.variable_ids != [id(v) for v in variables]:
            reader = StateReader(model, variables, self._bn_layers)
            reader.warm_up()
            _READERS[model] = reader
        return reader

    def _snapshot(self, step: int, final: bool) -> None:
        if self._recorder.mark(step, final) and self._recorder.reads_each_step:
            self._guard(PART_RECORDER, self._recorder.read, step, final)

    def _end_record_block(self, final: bool) -> None:
        """File the logs and the recorded state (a failing reader does not stop the logs) and publish
        what is due."""
        self._file_logs()
        self._guard(PART_RECORDER, self._recorder.file_reads, final)
        if PART_RECORDER in self._broken:
            self._recorder.drop_state()
        self._guard(PART_SINK, self._recorder.publish_due, final)

    def _log_timed(self, points: dict[str, float], step: int, timestamp_ms: int) -> None:
        if self.sink is not None and points:
            self._guard(PART_SINK, self.sink.log_metrics, points, step, timestamp_ms)

    def _record_batchnorm_of(self, epoch: int, values: VariableValues | None) -> None:
        """A row of ``batchnorm.npz`` for ``epoch``, filed by the background thread after the rows before
        it: from ``values``, or read from the layers now when the values could not be read."""
        if values is None:
            statistics = self._guard(PART_BATCHNORM, moving_statistics, self._bn_layers)
            if statistics is not None:
                self._background(PART_BATCHNORM, self._record_batchnorm, epoch, lambda: statistics)
        else:
            self._background(PART_BATCHNORM, self._record_batchnorm, epoch,
                             lambda: moving_statistics(self._bn_layers, values.get()))

    def _record_batchnorm(self, epoch: int, statistics: Callable[[], dict[str, np.ndarray]]) -> None:
        for name, row in statistics().items():
            self._progress.bn_history.setdefault(name, []).append(row)
        self._progress.bn_epochs.append(epoch)

    def _write_final_weights(self, values: dict[int, np.ndarray]) -> None:
        if sum(array.size for array in values.values()) > self.max_weights_artifact_params:
            return
        arrays = {keys.sanitize_key(path): array for path, _, array in self._named(values)}
        self._save_artifact(keys.WEIGHTS_FINAL, lambda path: np.savez(path, **arrays))

    def _write_json(self, name: str, content: Any) -> None:
        self._save_artifact(name, lambda path: path.write_text(json.dumps(content, indent=1, sort_keys=True)))

    def _save_artifact(self, name: str, write: Callable[[Path], Any]) -> None:
        """Write ``layerprint/<name>`` with ``write(local path)`` and queue it for upload. Each write gets
        a file of its own, so that rewriting one (``steps.parquet`` every epoch) never races its upload."""
        path = Path(self._tmp.name) / uuid.uuid4().hex / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        if self.sink is not None:
            self.sink.log_artifact(path, "/".join([keys.ARTIFACT_DIR, *Path(name).parent.parts]))


class VariableValues:
    """Every variable's value at one point of a fit, by ``id``: taken on the training thread (as copies on
    the device, ``StateReader.snapshot``), brought to the host by the first ``get``, on any thread.

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


def _variables_exist(model: Any) -> bool:
    """Whether the model's variables exist: it has some, and every layer that creates its own is built.

    Decided from the layers that own variables, whatever the root is: a layer without sublayers
    (``Dense``, ``BatchNormalization``) and a layer holding sublayers (a custom block, whose ``build``
    may add weights of its own) must be built. A ``keras.Model`` that holds other models or layers is
    a container: Keras never marks one built when it has no ``call`` (a GAN wrapper holding a built
    generator and discriminator), so it is judged by what it holds.
    """
    flatten = getattr(model, "_flatten_layers", None)
    layers = list(flatten()) if flatten is not None else [model]
    return bool(model.variables) and all(getattr(layer, "built", True) or _is_container(layer) for layer in layers)


def _is_container(layer: Any) -> bool:
    """A model that holds layers (its own weights, if any, are made by them)."""
    if not isinstance(layer, keras.Model):
        return False
    return bool(list(layer._flatten_layers(include_self=False, recursive=False)))


def _optimizers_of(model: Any) -> list[Any]:
    """``model.optimizer`` and the optimizers the model holds as attributes of its own, each once."""
    found: list[Any] = []
    for candidate in [getattr(model, "optimizer", None), *vars(model).values()]:
        if isinstance(candidate, keras.optimizers.Optimizer) and all(candidate is not f for f in found):
            found.append(candidate)
    return found


def _values_initialized(variables: list[Any]) -> bool:
    """Whether every variable holds its initial value already. On TensorFlow, a variable created inside
    the first traced step whose initial value could not be lifted out of the graph (seen in a GAN whose
    submodels are built inside ``tf.GradientTape``) is initialized only when the step runs; read before,
    it is empty."""
    if keras.backend.backend() != "tensorflow":
        return True
    import tensorflow as tf

    return all(bool(tf.compat.v1.is_variable_initialized(v.value)) for v in variables)


def _eager_scope() -> Any:
    """``tf.init_scope()`` on the TensorFlow backend (leaves a graph being traced), else nothing."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.init_scope()
    return contextlib.nullcontext()


def wait_for_runs(timeout: float | None = None) -> bool:
    """Wait for the background work of every ``LayerprintCallback`` of this process (see
    ``LayerprintCallback.wait``), as ``mlflow.flush_async_logging`` does for MLflow's own queue.

    Args:
        timeout: seconds to wait for each callback at most (None: until done).

    Returns:
        Whether all of it is done.
    """
    return all([callback.wait(timeout) for callback in list(_OPEN_CALLBACKS)])


@atexit.register
def _end_open_runs() -> None:
    """End FAILED the runs of fits that raised and were never closed (never left RUNNING)."""
    for callback in list(_OPEN_CALLBACKS):
        try:
            if callback._open:
                callback._end_abandoned_fit()
            callback.wait()
        except Exception:  # noqa: BLE001 - interpreter exit: nothing to raise into
            pass


def _env_or_current_uri() -> str | None:
    import mlflow

    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    current = mlflow.get_tracking_uri()
    return current if mlflow.tracking._tracking_service.utils.is_tracking_uri_set() else None


def _note_last_active_run(run_id: str) -> None:
    """Make ``mlflow.last_active_run()`` on this thread return the run the callback started and ended, as
    it does after a run that ``mlflow.start_run()`` started (MLflow keeps that id per thread, privately)."""
    import mlflow

    mlflow.tracking.fluent._last_active_run_id.set(run_id)


def _fluent_experiment_id(active: Any, name: str | None) -> str | None:
    """The experiment of a run the callback creates, as MLflow's fluent API would choose it on the
    training thread (the active run's, else the one set with ``mlflow.set_experiment``); None when
    ``name`` names it (looked up, or created, with the run)."""
    if name is not None:
        return None
    if active is not None:
        return active.info.experiment_id
    import mlflow

    return mlflow.tracking.fluent._get_experiment_id() or "0"


def _is_number(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return np.ndim(value) == 0


def _sanitized(points: dict[str, Any]) -> dict[str, float]:
    return {keys.sanitize_key(key): float(value) for key, value in points.items()}
