"""Getting points into MLflow without slowing training or losing them.

``RunSink`` takes metrics, params, tags and artifact files from the training thread (appending to a
list under a lock: microseconds) and a background thread sends them: points with
``MlflowClient.log_batch`` in chunks within MLflow's limits (1,000 metrics, 100 params, 100 tags a
request), files with ``log_artifact``. A chunk the store refuses or cannot take is written to the
local spool instead, with its original timestamps, and one warning is printed. ``sync`` replays the spool later; MLflow's SQL stores drop a metric whose key,
step, timestamp and value are already stored, so replaying is idempotent and nothing lands twice.

MLflow's own async logging is not used for this: its queue is unbounded and a failed batch is
reported as success to the callers (see README, "Why a sink of our own").
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from layerprint.errors import TrackingError

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
DEFAULT_STORE_DIR = "mlruns"
DEFAULT_DB_NAME = "mlflow.db"
SPOOL_ENV = "LAYERPRINT_SPOOL_DIR"


def default_tracking_uri(base_dir: str | os.PathLike[str] | None = None) -> str:
    """The embedded default store: SQLite at ``<base_dir or cwd>/mlruns/mlflow.db`` (absolute)."""
    root = Path(base_dir or os.getcwd()).resolve() / DEFAULT_STORE_DIR
    return f"sqlite:///{root / DEFAULT_DB_NAME}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: ``uri``, else ``MLFLOW_TRACKING_URI``, else the embedded default.

    A relative SQLite path is made absolute against the current directory, so that jobs which start
    elsewhere (Hydra launchers, worker processes) write to the same file.

    Args:
        uri: an explicit URI, or None/empty.

    Returns:
        The URI, with any relative ``sqlite:///`` path made absolute.

    Raises:
        TrackingError: for a URI whose scheme MLflow cannot use here.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if chosen.startswith("sqlite:///"):
        path = chosen[len("sqlite:///") :]
        if path and not path.startswith("/") and path != ":memory:":
            chosen = f"sqlite:///{Path(path).resolve()}"
        return chosen
    scheme = urlsplit(chosen).scheme
    if scheme in ("http", "https", "postgresql", "mysql", "mssql", "databricks") or scheme.startswith(
        ("postgresql+", "mysql+", "mssql+")
    ):
        return chosen
    raise TrackingError(
        f"tracking URI {strip_credentials(chosen)!r} is not supported; use sqlite:///PATH, "
        "http(s)://HOST:PORT of an MLflow server, or a database URI (postgresql://, mysql://)"
    )


# "scheme://user:password@", also as Hydra logs overrides ("http\://user\:password@").
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*\\?://)[^/\s@'\"]+@")
CREDENTIAL_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME")


def redact(text: str) -> str:
    """``text`` with credentials removed: the ``user:password@`` of every URI in it, and the values of
    ``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN`` and ``MLFLOW_TRACKING_USERNAME`` (4 or
    more characters) replaced by ``***``. Used on everything layerprint prints, logs or spools."""
    clean = _USERINFO.sub(r"\g<scheme>", text)
    for name in CREDENTIAL_ENV:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            clean = clean.replace(secret, "***")
    return clean


def strip_credentials(uri: str) -> str:
    """The URI without ``user:password@`` and without credential values (safe to print, log and store)."""
    return redact(uri)


@contextmanager
def _no_url_print_with_credentials(uri: str) -> Iterator[None]:
    """MLflow prints "View run ... at: <tracking URI>/#/..." when a run ends; with ``user:password@``
    in the URI that line would show the password, so MLflow's print is turned off for that call."""
    if strip_credentials(uri) == uri:
        yield
        return
    previous = os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)
        else:
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = previous


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record through ``redact`` (Hydra's console logs echo the
    overrides, which may hold a tracking URI with credentials; see ``conf/train.yaml``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def reachable(uri: str, timeout: float = 2.0) -> bool:
    """False when nothing accepts a connection at an http(s) URI's host and port; True otherwise
    (other stores are files or databases that MLflow's own call will try)."""
    import socket

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return True
    try:
        with socket.create_connection((parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def ensure_sqlite_parent(uri: str) -> None:
    """Create the folder of a SQLite store file.

    Raises:
        TrackingError: when the folder cannot be created or written.
    """
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///") :])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrackingError(f"cannot create the store folder {path.parent}: {error.strerror}") from None
    if not os.access(path.parent, os.W_OK):
        raise TrackingError(f"the store folder {path.parent} is not writable")


def default_artifact_location(uri: str, experiment_name: str) -> str | None:
    """Artifact folder for a new experiment in a SQLite store: beside the database file, under
    ``artifacts/<experiment name>``, so a whole store is one folder. None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment_name).strip(".") or "exp"
    return str(Path(uri[len("sqlite:///") :]).parent / "artifacts" / safe)


def experiment_id_for(client: Any, uri: str, name: str) -> str:
    """The id of experiment ``name``, created (with ``default_artifact_location``) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=default_artifact_location(uri, name))


def spool_root() -> Path:
    """Where points that could not be sent are kept: ``$LAYERPRINT_SPOOL_DIR``, else
    ``$XDG_CACHE_HOME/layerprint/spool`` (``~/.cache/layerprint/spool``)."""
    if os.environ.get(SPOOL_ENV):
        return Path(os.environ[SPOOL_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "layerprint" / "spool"


@dataclass
class SinkStats:
    """What a sink did: points sent to the store and points written to the spool."""

    metrics_sent: int = 0
    metrics_spooled: int = 0
    metrics_replayed: int = 0  # spooled during an outage, sent from the spool at close
    artifacts_spooled: int = 0
    errors: list[str] = field(default_factory=list)


def _truncate(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RunSink:
    """Non-blocking writer for one MLflow run, with a local spool for what the store does not take.

    Args:
        tracking_uri: the store (credentials are never written to the spool).
        run_id: the MLflow run, or a local id when the run could not be created (``offline``).
        flush_interval: seconds between sends by the background thread.
        offline_run: when the run could not be created: ``{"experiment_name", "run_name", "tags",
            "start_time"}`` so that ``sync`` can create it later.
        strict: raise tracking errors instead of spooling (for tests).
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        flush_interval: float = 1.0,
        offline_run: dict[str, Any] | None = None,
        strict: bool = False,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.flush_interval = flush_interval
        self.strict = strict
        self.stats = SinkStats()
        self._offline = offline_run is not None
        self._lock = threading.Lock()
        self._metrics: list[tuple[str, float, int, int]] = []
        self._params: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._inflight: tuple[list, dict, dict] | None = None
        self._artifacts: list[tuple[Path, str | None]] = []  # files to upload, oldest first
        self._artifact_inflight: tuple[Path, str | None] | None = None
        self._wake = threading.Event()
        self._closing = False
        self._warned = False
        self._client = None
        if self._offline:
            self._spool_record({"kind": "create_run", **offline_run})
        self._thread = threading.Thread(target=self._run, name="layerprint-sink", daemon=True)
        self._thread.start()

    @property
    def offline(self) -> bool:
        """True when the run exists only in the spool."""
        return self._offline

    # Training-thread side: append and return.
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue metric values for one step (the timestamp is taken now)."""
        timestamp = int(time.time() * 1000)
        with self._lock:
            self._metrics.extend((key, float(value), timestamp, step) for key, value in metrics.items())

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

    def flush(self, timeout: float = 30.0) -> bool:
        """Send everything queued so far; True when it was all sent or spooled within ``timeout``."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while time.monotonic() < deadline:
            with self._lock:
                idle = (not (self._metrics or self._params or self._tags or self._artifacts)
                        and self._inflight is None and self._artifact_inflight is None)
            if idle:
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 30.0) -> SinkStats:
        """Flush, stop the thread, spool whatever could not be sent in ``timeout`` seconds."""
        self.flush(timeout)
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=max(0.1, timeout / 10))
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
        path = self.spool_file()
        if self._offline or self.strict or not path.is_file() or not reachable(self.tracking_uri):
            return
        from layerprint.sync import SyncResult, sync_file

        sent = SyncResult()
        try:
            sync_file(self._mlflow_client(), path, sent)
        except Exception:  # noqa: BLE001 - still down after all: the spool keeps everything
            return
        self.stats.metrics_replayed += sent.metrics

    def finish(self, status: str = "FINISHED") -> None:
        """Record the run's final status; for an offline run it goes to the spool for ``sync``."""
        if self._offline:
            self._spool_record({"kind": "terminate", "status": status, "end_time": int(time.time() * 1000)})
            return
        try:
            with _no_url_print_with_credentials(self.tracking_uri):
                self._mlflow_client().set_terminated(self.run_id, status=status)
        except Exception as error:  # noqa: BLE001
            if self.strict:
                raise
            self._note_failure(error)
            self._spool_record({"kind": "terminate", "status": status, "end_time": int(time.time() * 1000)})

    # Background side.
    def _mlflow_client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            with self._lock:
                batch = (self._metrics, self._params, self._tags)
                self._metrics, self._params, self._tags = [], {}, {}
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
            try:
                self._mlflow_client().log_artifact(self.run_id, str(local_path), artifact_path)
            except Exception as error:  # noqa: BLE001 - any store failure must not reach training
                if self.strict:
                    self.stats.errors.append(repr(error))
                self._note_failure(error)
                self._spool_artifact(local_path, artifact_path)
            with self._lock:
                self._artifact_inflight = None

    def _send(self, metrics: list, params: dict, tags: dict) -> None:
        if self._offline:
            self._spool_batch(metrics, params, tags)
            return
        from mlflow.entities import Metric, Param, RunTag

        param_items, tag_items = list(params.items()), list(tags.items())
        n_chunks = max(
            -(-len(metrics) // MAX_METRICS_PER_BATCH),
            -(-len(param_items) // MAX_PARAMS_PER_BATCH),
            -(-len(tag_items) // MAX_TAGS_PER_BATCH),
        )
        for i in range(n_chunks):
            chunk_m = metrics[i * MAX_METRICS_PER_BATCH : (i + 1) * MAX_METRICS_PER_BATCH]
            chunk_p = param_items[i * MAX_PARAMS_PER_BATCH : (i + 1) * MAX_PARAMS_PER_BATCH]
            chunk_t = tag_items[i * MAX_TAGS_PER_BATCH : (i + 1) * MAX_TAGS_PER_BATCH]
            try:
                self._mlflow_client().log_batch(
                    self.run_id,
                    metrics=[Metric(k, v, ts, s) for k, v, ts, s in chunk_m],
                    params=[Param(k, v) for k, v in chunk_p],
                    tags=[RunTag(k, v) for k, v in chunk_t],
                    synchronous=True,
                )
                self.stats.metrics_sent += len(chunk_m)
            except Exception as error:  # noqa: BLE001
                if self.strict:
                    self.stats.errors.append(repr(error))
                self._note_failure(error)
                self._spool_batch(chunk_m, dict(chunk_p), dict(chunk_t))

    # Spool.
    def spool_file(self) -> Path:
        """The JSON-lines file holding this run's spooled records."""
        return spool_root() / f"{self.run_id}.jsonl"

    def _spool_record(self, record: dict[str, Any]) -> None:
        record = {"run_id": self.run_id, "tracking_uri": strip_credentials(self.tracking_uri), **record}
        path = self.spool_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _spool_batch(self, metrics: list, params: dict, tags: dict) -> None:
        self._spool_record({"kind": "batch", "metrics": metrics, "params": params, "tags": tags})
        self.stats.metrics_spooled += len(metrics)

    def _spool_artifact(self, local_path: Path, artifact_path: str | None) -> None:
        target_dir = spool_root() / f"{self.run_id}.artifacts" / uuid.uuid4().hex
        target_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local_path, target_dir / local_path.name)
        self._spool_record(
            {"kind": "artifact", "file": str(target_dir / local_path.name), "artifact_path": artifact_path}
        )
        self.stats.artifacts_spooled += 1

    def _note_failure(self, error: Exception) -> None:
        message = redact(str(error).splitlines()[0] if str(error) else repr(error))
        self.stats.errors.append(message)
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"layerprint: the tracking store did not take some points ({type(error).__name__}); "
                f"training goes on and they are kept in {spool_root()}: run `layerprint sync` later.",
                RuntimeWarning,
                stacklevel=2,
            )
