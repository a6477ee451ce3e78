"""``layerprint sync``: send what ``RunSink`` spooled, then delete it.

Each spooled run is one ``<run id>.jsonl`` file (records ``create_run``, ``batch``, ``artifact``,
``terminate``). A run that could not even be created gets created now; its new id is written to
``<local id>.created`` first, so an interrupted sync never creates it twice. Metric points keep their
original timestamps, so points the store already has are dropped by it: running sync twice, or after a
partly successful send, stores nothing twice.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerprint.tracking import MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, MAX_TAGS_PER_BATCH, spool_root


@dataclass
class SyncResult:
    """Counts of one sync."""

    runs: int = 0
    metrics: int = 0
    artifacts: int = 0
    remaining: int = 0


def _records(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write holds nothing that was acknowledged
    return records


def _target_run(client: Any, path: Path, records: list[dict[str, Any]]) -> str:
    create = next((r for r in records if r["kind"] == "create_run"), None)
    if create is None:
        return records[0]["run_id"]
    created = path.with_suffix(".created")
    if created.is_file():
        return created.read_text().strip()
    from layerprint.tracking import experiment_id_for

    experiment_id = experiment_id_for(client, client.tracking_uri, create.get("experiment_name") or "Default")
    tags = {"mlflow.parentRunId": create["parent_run_id"]} if create.get("parent_run_id") else {}
    run = client.create_run(experiment_id, start_time=create.get("start_time"), tags=tags,
                            run_name=create.get("run_name"))
    created.write_text(run.info.run_id)
    return run.info.run_id


def sync_file(client: Any, path: Path, result: SyncResult) -> None:
    """Send one spooled run; the file is deleted only after everything in it was accepted."""
    from mlflow.entities import Metric, Param, RunTag

    records = _records(path)
    if not records:
        path.unlink()
        return
    run_id = _target_run(client, path, records)
    terminate = None
    for record in records:
        if record["kind"] == "batch":
            metrics = [Metric(k, v, ts, s) for k, v, ts, s in record["metrics"]]
            params = [Param(k, v) for k, v in record["params"].items()]
            tags = [RunTag(k, v) for k, v in record["tags"].items()]
            for i in range(0, max(len(metrics), 1), MAX_METRICS_PER_BATCH):
                first = i == 0
                client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH],
                                 params=params[:MAX_PARAMS_PER_BATCH] if first else [],
                                 tags=tags[:MAX_TAGS_PER_BATCH] if first else [])
            for j in range(MAX_PARAMS_PER_BATCH, max(len(params), len(tags)), MAX_PARAMS_PER_BATCH):
                client.log_batch(run_id, params=params[j : j + MAX_PARAMS_PER_BATCH],
                                 tags=tags[j : j + MAX_TAGS_PER_BATCH])
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


def sync(tracking_uri: str | None = None) -> SyncResult:
    """Send every spooled run.

    Args:
        tracking_uri: send everything here; by default each run goes to the store it was meant for
            (as recorded, without credentials: give the URI, or set ``MLFLOW_TRACKING_URI``,
            ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, when the store needs them).

    Returns:
        Counts of runs, metric points and artifacts sent, and spool files left (send failed).
    """
    from mlflow.tracking import MlflowClient

    from layerprint.tracking import resolve_tracking_uri

    result = SyncResult()
    root = spool_root()
    if not root.is_dir():
        return result
    for path in sorted(root.glob("*.jsonl")):
        records = _records(path)
        uri = tracking_uri or (records[0]["tracking_uri"] if records else None)
        try:
            sync_file(MlflowClient(resolve_tracking_uri(uri)), path, result)
        except Exception as error:  # noqa: BLE001 - keep the file for the next try, say why
            print(f"layerprint sync: {path.name}: not sent ({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})")
            result.remaining += 1
    return result
