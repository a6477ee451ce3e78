"""Getting points into MLflow without slowing training or losing them.

``RunSink`` takes metrics, params, tags and artifact files from the training thread (appending to a
list under a lock: microseconds) and a background thread sends them: points with
``MlflowClient.log_batch`` in chunks within MLflow's limits (``store.batch_chunks``), every
``flush_interval`` and at once during ``flush`` (a store call costs about 3 ms of CPU whatever it
carries, so points are sent together: a fit's last points in one call, at its end), files with
``log_artifact`` as they come. A chunk the store refuses or cannot take is written to the local spool
(``spool.RunSpool``) instead, with its original timestamps, and one warning is printed;
``layerprint sync`` replays it later and nothing lands twice (see ``spool``).

A sink can also create its run itself, on its thread (``open_run``): the caller's thread then never
waits for the store (creating a run in SQLite costs about 10 ms, a commit to disk); when the run cannot
be created, the sink keeps everything in the spool under a local id, for ``sync`` to create it later.
It creates it when told to begin (``begin``: a fit's first step is done) or ``open_wait`` seconds after
it started, whichever comes first: the store's client is Python that holds the interpreter's lock, and
Keras traces the train function, Python too, during the first step (``fit.session``).

MLflow's own async logging is not used for this: its queue is unbounded and a failed batch is
reported as success to the callers (see README, "Why a sink of our own").
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from layerprint.errors import first_line
from layerprint.tracking.redact import no_url_print_with_credentials, redact, strip_credentials
from layerprint.tracking.spool import RunSpool, SyncResult, spool_root, sync_file
from layerprint.tracking.store import MAX_PARAM_VALUE, MAX_TAG_VALUE, batch_chunks, log_batch, reachable

logger = logging.getLogger("layerprint")
OFFLINE_PREFIX = "offline-"  # the local id of a run that could not be created


@dataclass
class SinkStats:
    """What a sink did: points sent to the store and points written to the spool."""

    metrics_sent: int = 0
    metrics_spooled: int = 0
    send_seconds: float = 0.0  # CPU time the sender thread spent in MLflow's log_batch
    artifacts_spooled: int = 0
    errors: list[str] = field(default_factory=list)


def _truncate(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RunSink:
    """Non-blocking writer for one MLflow run, with a local spool for what the store does not take.

    Args:
        tracking_uri: the store (credentials are never written to the spool).
        run_id: the MLflow run; None when ``open_run`` creates it.
        flush_interval: seconds between sends by the background thread.
        offline_run: ``{"experiment_name", "run_name", "parent_run_id"}`` of a run that is not in the
            store: with ``run_id``, a run that could not be created (``run_id`` is then its local id);
            with ``open_run``, what ``sync`` creates should ``open_run`` fail.
        open_run: creates the run in the store with the tags it is given (those queued by then: one call
            fewer) and returns its id, on the sink's thread, before it sends anything; what the caller
            queues meanwhile waits.
        open_wait: seconds the sink waits for ``begin`` before it calls ``open_run``.
        strict: raise tracking errors instead of spooling (for tests).

    Attributes:
        run_id: the run's id (None until ``open_run`` has returned; a local id, ``offline-...``, when the
            run could not be created).
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str | None,
        flush_interval: float = 1.0,
        offline_run: dict[str, Any] | None = None,
        strict: bool = False,
        open_run: Callable[[dict[str, str]], str] | None = None,
        open_wait: float = 0.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.run_id: str | None = None
        self.flush_interval = flush_interval
        self.strict = strict
        self.stats = SinkStats()
        self._offline = False
        self._open_run, self._offline_run = open_run, offline_run
        self._opened = threading.Event()
        self._begin, self._open_wait = threading.Event(), open_wait
        self.spool: RunSpool | None = None
        self._lock = threading.Lock()
        self._metrics: list[tuple[str, float, int, int]] = []
        self._params: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._inflight: tuple[list, dict, dict] | None = None
        self._artifacts: list[tuple[Path, str | None]] = []  # files to upload, oldest first
        self._artifact_inflight: tuple[Path, str | None] | None = None
        self._wake = threading.Event()
        self._flushing = 0  # ``flush`` calls waiting: what is queued goes at once
        self._closing = False
        self._stalled = False
        self._warned = False
        self._client = None
        if open_run is None:
            self._open(run_id, offline=offline_run is not None)
        self._thread = threading.Thread(target=self._run, name="layerprint-sink", daemon=True)
        self._thread.start()

    # Training-thread side: append and return.
    def log_metrics(self, metrics: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        """Queue metric values for one step, with their timestamp (default: now), in milliseconds."""
        timestamp = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        with self._lock:
            self._metrics.extend((key, float(value), timestamp, step) for key, value in metrics.items())

    def begin(self) -> None:
        """Create the run now, if ``open_run`` creates it and has not yet (module doc)."""
        self._begin.set()

    def log_params(self, params: dict[str, Any]) -> None:
        """Queue params (values cut to MLflow's 6,000 characters)."""
        with self._lock:
            self._params.update({k: _truncate(v, MAX_PARAM_VALUE) for k, v in params.items()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Queue tags (values cut to MLflow's 8,000 characters)."""
        with self._lock:
            self._tags.update({k: _truncate(v, MAX_TAG_VALUE) for k, v in tags.items()})

    def log_artifact(self, local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Queue a file for upload by the background thread (spooled if the upload fails). The file
        must stay in place until ``flush`` or ``close`` returns."""
        if self._offline:
            self._spool_artifact(Path(local_path), artifact_path)
            return
        with self._lock:
            self._artifacts.append((Path(local_path), artifact_path))
        self._wake.set()

    def _open(self, run_id: str, offline: bool) -> bool:
        """Take ``run_id`` as the run's id, once (False when the sink already has one)."""
        with self._lock:
            if self.run_id is not None:
                return False
            self.run_id, self._offline = run_id, offline
            self.spool = RunSpool(run_id, self.tracking_uri)
        if offline:
            info = self._offline_run or {}
            self.spool.create_run(info.get("experiment_name"), info.get("run_name"), info.get("parent_run_id"))
        self._opened.set()
        return True

    def _open_in_store(self) -> None:
        """Create the run with ``open_run`` (the sink's thread) and the tags queued so far, or go offline when
        the store refuses (the tags queued again, for the spool)."""
        with self._lock:
            tags, self._tags = self._tags, {}
        try:
            run_id = self._open_run(tags)
        except Exception as error:  # noqa: BLE001 - the store being down must not stop training
            with self._lock:
                self._tags = {**tags, **self._tags}
            if self.strict:
                self.stats.errors.append(repr(error))
            logger.warning("layerprint: cannot create a run in %s (%s); logging to the local spool, send it later "
                           "with `layerprint sync`.", strip_credentials(self.tracking_uri), type(error).__name__)
            self._open(OFFLINE_PREFIX + uuid.uuid4().hex, offline=True)
            return
        if not self._open(run_id, offline=False):  # ``close`` gave up waiting and spooled under a local id
            self._end_abandoned(run_id)

    def _end_abandoned(self, run_id: str) -> None:
        with contextlib.suppress(Exception):
            self._mlflow_client().set_terminated(run_id, status="KILLED")

    def opened_run_id(self, timeout: float | None = None) -> str | None:
        """The run's id, once the run exists (``open_run`` has returned, or the sink went offline);
        waits up to ``timeout`` seconds for it (the run created now, when it was not yet), then None."""
        self._begin.set()
        self._opened.wait(timeout)
        return self.run_id

    def flush(self, timeout: float = 30.0) -> bool:
        """Send everything queued so far; True when it was all sent or spooled within ``timeout``."""
        deadline = time.monotonic() + timeout
        self._begin.set()
        with self._lock:
            self._flushing += 1
        try:
            while time.monotonic() < deadline:
                with self._lock:
                    idle = (not (self._metrics or self._params or self._tags or self._artifacts)
                            and self._inflight is None and self._artifact_inflight is None)
                if idle:
                    return True
                self._wake.set()  # at every poll: what was queued after the thread's last look goes now
                time.sleep(0.005)
            return False
        finally:
            with self._lock:
                self._flushing -= 1

    def close(self, timeout: float = 30.0) -> SinkStats:
        """Flush, stop the thread, spool whatever could not be sent in ``timeout`` seconds (under a local
        id, with what ``sync`` needs to create the run, when the run was not created by then)."""
        self.flush(timeout)
        if not self._opened.is_set():
            self._open(OFFLINE_PREFIX + uuid.uuid4().hex, offline=True)
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=max(0.1, timeout / 10))
        self._stalled = self._thread.is_alive()  # still inside a request the store does not answer
        with self._lock:
            leftovers = (self._metrics, self._params, self._tags)
            self._metrics, self._params, self._tags = [], {}, {}
            inflight = self._inflight
            files = ([self._artifact_inflight] if self._artifact_inflight else []) + self._artifacts
            self._artifacts, self._artifact_inflight = [], None
        for local_path, artifact_path in files:
            self._spool_artifact(local_path, artifact_path)
        # Whatever the thread still holds is spooled too; should its request succeed later, the
        # replay is dropped by the store as a duplicate.
        for metrics, params, tags in ([inflight] if inflight else []) + [leftovers]:
            if metrics or params or tags:
                self._spool_batch(metrics, params, tags)
        if self.stats.metrics_spooled or self.stats.artifacts_spooled:
            self._replay_spool()
        return self.stats

    def _replay_spool(self) -> None:
        """Send this run's spooled records now when the store is back (an outage that ended before
        training did); otherwise they stay in the spool for ``layerprint sync``."""
        path = self.spool.path
        if self._offline or self.strict or not path.is_file() or not reachable(self.tracking_uri):
            return
        try:
            sync_file(self._mlflow_client(), path, SyncResult())
        except Exception:  # noqa: BLE001 - still down after all: the spool keeps everything
            return

    def finish(self, status: str = "FINISHED", timeout: float = 10.0) -> None:
        """Record the run's final status, waiting ``timeout`` seconds at most; for an offline run, a store
        that does not answer, or a sender that ``close`` had to give up on, it goes to the spool for
        ``sync`` (MLflow's own retries could hold the call for minutes).

        Args:
            status: ``FINISHED``, ``FAILED`` or ``KILLED``.
            timeout: seconds the store has to take it.
        """
        if self._offline or self._stalled or not reachable(self.tracking_uri):
            self.spool.terminate(status)
            return
        outcome: list[BaseException | None] = []

        def terminate() -> None:
            try:
                with no_url_print_with_credentials(self.tracking_uri):
                    self._mlflow_client().set_terminated(self.run_id, status=status)
                outcome.append(None)
            except Exception as error:  # noqa: BLE001 - reported below, on the caller's thread
                outcome.append(error)

        worker = threading.Thread(target=terminate, name="layerprint-end-run", daemon=True)
        worker.start()
        worker.join(timeout)
        error = outcome[0] if outcome else TimeoutError(f"the store did not end the run within {timeout:g} s")
        if error is None:
            return
        if self.strict:
            raise error
        self._note_failure(error)
        self.spool.terminate(status)

    # Background side.
    def _mlflow_client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _run(self) -> None:
        if self._open_run is not None:
            self._begin.wait(self._open_wait)
            self._open_in_store()
        due = time.monotonic() + self.flush_interval  # when the points go, unless hurried
        while True:
            self._wake.wait(max(due - time.monotonic(), 0.0))
            self._wake.clear()
            with self._lock:
                batch: tuple[list, dict, dict] = ([], {}, {})
                if self._flushing or self._closing or time.monotonic() >= due:
                    batch = (self._metrics, self._params, self._tags)
                    self._metrics, self._params, self._tags = [], {}, {}
                    due = time.monotonic() + self.flush_interval
                if any(batch):
                    self._inflight = batch
            if any(batch):
                self._send(*batch)
                with self._lock:
                    self._inflight = None
            self._send_artifacts()
            if self._closing:
                return

    def _send_artifacts(self) -> None:
        while True:
            with self._lock:
                if not self._artifacts or self._closing:
                    return
                self._artifact_inflight = self._artifacts.pop(0)
            local_path, artifact_path = self._artifact_inflight
            if self._offline:
                self._spool_artifact(local_path, artifact_path)
                with self._lock:
                    self._artifact_inflight = None
                continue
            try:
                self._mlflow_client().log_artifact(self.run_id, str(local_path), artifact_path)
            except Exception as error:  # noqa: BLE001 - any store failure must not reach training
                if self.strict:
                    self.stats.errors.append(repr(error))
                self._note_failure(error)
                try:
                    self._spool_artifact(local_path, artifact_path)
                except OSError as lost:  # the file itself is gone: say so, keep the thread alive
                    self._note_failure(lost)
            with self._lock:
                self._artifact_inflight = None

    def _send(self, metrics: list, params: dict, tags: dict) -> None:
        if self._offline:
            self._spool_batch(metrics, params, tags)
            return
        for chunk in batch_chunks(metrics, params, tags):
            try:
                started = time.thread_time()
                log_batch(self._mlflow_client(), self.run_id, *chunk)
                self.stats.send_seconds += time.thread_time() - started
                self.stats.metrics_sent += len(chunk[0])
            except Exception as error:  # noqa: BLE001
                if self.strict:
                    self.stats.errors.append(repr(error))
                self._note_failure(error)
                self._spool_batch(*chunk)

    # Spool.
    def _spool_batch(self, metrics: list, params: dict, tags: dict) -> None:
        self.spool.batch(metrics, params, tags)
        self.stats.metrics_spooled += len(metrics)

    def _spool_artifact(self, local_path: Path, artifact_path: str | None) -> None:
        self.spool.artifact(local_path, artifact_path)
        self.stats.artifacts_spooled += 1

    def _note_failure(self, error: Exception) -> None:
        message = redact(first_line(error))
        self.stats.errors.append(message)
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"layerprint: the tracking store did not take some points ({type(error).__name__}); "
                f"training goes on and they are kept in {spool_root()}: run `layerprint sync` later.",
                RuntimeWarning,
                stacklevel=2,
            )
