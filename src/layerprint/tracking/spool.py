"""The spool: what the store did not take, kept on this machine until ``layerprint sync`` sends it.

The format is written and read here only. Each spooled run is one JSON-lines file
``<spool root>/<run id>.jsonl`` of records:

- ``{"kind": "create_run", "experiment_name", "run_name", "parent_run_id", "start_time"}``: the run
  could not even be created;
- ``{"kind": "batch", "metrics": [[key, value, timestamp, step], ...], "params": {}, "tags": {}}``;
- ``{"kind": "artifact", "file", "artifact_path"}``: the file is copied under ``<run id>.artifacts/``;
- ``{"kind": "terminate", "status", "end_time"}``;

each with ``run_id`` and ``tracking_uri`` (credentials removed). A run created at sync time gets its
new id written to ``<local id>.created`` first, so an interrupted sync never creates it twice. Metric
points keep their original timestamps, and MLflow's SQL stores drop a point whose key, step,
timestamp and value they already hold: running sync twice, or after a partly successful send,
stores nothing twice.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerprint import keys
from layerprint.errors import TrackingError, first_line
from layerprint.tracking.redact import strip_credentials
from layerprint.tracking.store import Point, batch_chunks, experiment_id_for, log_batch, resolve_tracking_uri

SPOOL_ENV = "LAYERPRINT_SPOOL_DIR"


def spool_root() -> Path:
    """Where points that could not be sent are kept: ``$LAYERPRINT_SPOOL_DIR``, else
    ``$XDG_CACHE_HOME/layerprint/spool`` (``~/.cache/layerprint/spool``)."""
    if os.environ.get(SPOOL_ENV):
        return Path(os.environ[SPOOL_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "layerprint" / "spool"


class RunSpool:
    """The spool file of one run, appended to record by record (each written through to disk).

    Args:
        run_id: the MLflow run, or the local id of a run that could not be created.
        tracking_uri: the store the records were meant for (credentials are never written).
    """

    def __init__(self, run_id: str, tracking_uri: str) -> None:
        self.run_id = run_id
        self.tracking_uri = strip_credentials(tracking_uri)
        self.path = spool_root() / f"{run_id}.jsonl"
        self._lock = threading.Lock()

    def _append(self, record: dict[str, Any]) -> None:
        record = {"run_id": self.run_id, "tracking_uri": self.tracking_uri, **record}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def create_run(self, experiment_name: str | None, run_name: str | None, parent_run_id: str | None) -> None:
        """Record a run that ``sync`` must create."""
        self._append({"kind": "create_run", "experiment_name": experiment_name, "run_name": run_name,
                      "parent_run_id": parent_run_id, "start_time": int(time.time() * 1000)})

    def batch(self, metrics: list[Point], params: dict[str, str], tags: dict[str, str]) -> None:
        """Record points, params and tags (timestamps as they were taken)."""
        self._append({"kind": "batch", "metrics": metrics, "params": params, "tags": tags})

    def artifact(self, local_path: Path, artifact_path: str | None) -> None:
        """Copy a file into the spool and record where it goes in the run."""
        target_dir = spool_root() / f"{self.run_id}.artifacts" / uuid.uuid4().hex
        target_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local_path, target_dir / local_path.name)
        self._append({"kind": "artifact", "file": str(target_dir / local_path.name), "artifact_path": artifact_path})

    def terminate(self, status: str) -> None:
        """Record the run's final status."""
        self._append({"kind": "terminate", "status": status, "end_time": int(time.time() * 1000)})


@dataclass
class SyncResult:
    """Counts of one sync: what was sent, the files whose send failed, and the spooled runs of other
    stores that were left alone (``{store: runs}``)."""

    runs: int = 0
    metrics: int = 0
    artifacts: int = 0
    remaining: int = 0
    other_stores: dict[str, int] = field(default_factory=dict)


@dataclass
class SpoolEntry:
    """One spooled run, as ``layerprint sync --list`` shows it."""

    run_id: str
    tracking_uri: str
    points: int
    artifacts: int
    modified: float  # seconds since the epoch of the last record
    path: Path


def entries() -> list[SpoolEntry]:
    """Every spooled run, oldest first."""
    root = spool_root()
    found = []
    for path in sorted(root.glob("*.jsonl")) if root.is_dir() else []:
        records = read_records(path)
        if not records:
            continue
        found.append(SpoolEntry(
            run_id=path.stem, tracking_uri=records[0].get("tracking_uri", "?"),
            points=sum(len(r["metrics"]) for r in records if r["kind"] == "batch"),
            artifacts=sum(1 for r in records if r["kind"] == "artifact"), modified=path.stat().st_mtime, path=path))
    return sorted(found, key=lambda entry: entry.modified)


def drop(run_id: str) -> SpoolEntry:
    """Delete one spooled run (its records and its copied files): the user gives up on sending it.

    Raises:
        TrackingError: no spooled run has that id.
    """
    entry = next((e for e in entries() if e.run_id == run_id), None)
    if entry is None:
        raise TrackingError(f"no spooled run {run_id!r}; `layerprint sync --list` shows them")
    entry.path.unlink()
    entry.path.with_suffix(".created").unlink(missing_ok=True)
    shutil.rmtree(entry.path.with_suffix(".artifacts"), ignore_errors=True)
    return entry


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of one spool file; a line cut by a crash mid-write is skipped (nothing in it was
    acknowledged)."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _target_run(client: Any, path: Path, records: list[dict[str, Any]]) -> str:
    create = next((r for r in records if r["kind"] == "create_run"), None)
    if create is None:
        return records[0]["run_id"]
    created = path.with_suffix(".created")
    if created.is_file():
        return created.read_text().strip()
    experiment_id = experiment_id_for(client, client.tracking_uri, create.get("experiment_name") or "Default")
    tags = {keys.TAG_PARENT_RUN_ID: create["parent_run_id"]} if create.get("parent_run_id") else {}
    run = client.create_run(experiment_id, start_time=create.get("start_time"), tags=tags,
                            run_name=create.get("run_name"))
    created.write_text(run.info.run_id)
    return run.info.run_id


def sync_file(client: Any, path: Path, result: SyncResult) -> None:
    """Send one spooled run; the file is deleted only after everything in it was accepted."""
    records = read_records(path)
    if not records:
        path.unlink()
        return
    run_id = _target_run(client, path, records)
    terminate = None
    for record in records:
        if record["kind"] == "batch":
            metrics = [tuple(point) for point in record["metrics"]]
            for chunk in batch_chunks(metrics, record["params"], record["tags"]):
                log_batch(client, run_id, *chunk)
            result.metrics += len(metrics)
        elif record["kind"] == "artifact":
            client.log_artifact(run_id, record["file"], record.get("artifact_path"))
            result.artifacts += 1
        elif record["kind"] == "terminate":
            terminate = record
    if terminate is not None:
        client.set_terminated(run_id, status=terminate["status"], end_time=terminate.get("end_time"))
    path.unlink()
    path.with_suffix(".created").unlink(missing_ok=True)
    shutil.rmtree(path.with_suffix(".artifacts"), ignore_errors=True)
    result.runs += 1


def sync(tracking_uri: str | None = None, send_all: bool = False) -> SyncResult:
    """Send the spooled runs of one store, or of every store.

    Args:
        tracking_uri: the store whose spool is sent (resolved as everywhere: the argument, else
            ``MLFLOW_TRACKING_URI``, else the embedded default). Runs spooled for other stores are
            left alone and counted in ``other_stores``. With ``send_all``: the store to send every
            spooled run to, instead of the store each was meant for.
        send_all: send every spooled run, each to the store it was meant for (as recorded, without
            credentials: set ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` when the store needs them), or to
            ``tracking_uri`` when given.

    Returns:
        Counts of runs, metric points and artifacts sent, spool files left (send failed), other stores.
    """
    from mlflow.tracking import MlflowClient

    result = SyncResult()
    target = None if send_all and not tracking_uri else strip_credentials(resolve_tracking_uri(tracking_uri))
    for entry in entries():
        if not send_all and entry.tracking_uri != target:
            result.other_stores[entry.tracking_uri] = result.other_stores.get(entry.tracking_uri, 0) + 1
            continue
        uri = tracking_uri or (entry.tracking_uri if send_all else resolve_tracking_uri(None))
        try:
            sync_file(MlflowClient(resolve_tracking_uri(uri)), entry.path, result)
        except Exception as error:  # noqa: BLE001 - keep the file for the next try, say why
            print(f"layerprint sync: {entry.run_id}: not sent ({type(error).__name__}: {first_line(error)[:200]})")
            result.remaining += 1
    return result
