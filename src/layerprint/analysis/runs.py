"""Reading logged runs back from MLflow: which runs, and what each one logged (one reader for compare
and claims)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import numpy as np

from layerprint import keys
from layerprint.errors import TrackingError
from layerprint.recording.record import read_steps

LOSS_KEY = keys.step_key("loss")


@dataclass
class RunRecord:
    """What one run logged, as compare and claims read it."""

    run_id: str
    run_name: str
    variant: str | None
    layer: str | None
    seed: str | None
    status: str
    init_fingerprint: str | None
    init_tolerant: str | None
    final_fingerprint: str | None
    parent_run_id: str | None = None
    loss: dict[int, float] = field(default_factory=dict)
    weights: dict[str, np.ndarray] | None = None
    batchnorm: dict[str, np.ndarray] | None = None  # "<layer>/moving_mean" -> [epochs, channels]
    batchnorm_epochs: np.ndarray | None = None
    checksum_steps: np.ndarray | None = None  # from steps.parquet: the steps ...
    checksums: dict[str, np.ndarray] | None = None  # ... and each variable's checksum there (-1: none taken)
    initial: dict[str, dict[str, Any]] = field(default_factory=dict)  # variable path -> fingerprint record
    final: dict[str, dict[str, Any]] = field(default_factory=dict)
    sharing: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] | None = None

    def variables_of(self, layer: str, stage: str = "initial") -> dict[str, dict[str, Any]]:
        """``{path below the layer: record}`` of the variables whose path starts with ``layer/``."""
        table = self.initial if stage == "initial" else self.final
        return {path[len(layer) + 1:]: entry for path, entry in table.items() if path.startswith(layer + "/")}


def latest_sweep(client: Any) -> Any:
    """The store's most recent sweep parent run (tag ``layerprint.sweep_dir``), in any experiment, or None."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    found = client.search_runs(experiments, filter_string=f"tags.`{keys.TAG_SWEEP_DIR}` != ''",
                               order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def select_runs(client: Any, experiment: str | None = None, run_ids: list[str] | None = None,
                parent_run_id: str | None = None) -> list[Any]:
    """MLflow runs to compare: by id, by sweep parent, every layerprint run of an experiment, or, given
    none of these, the runs of the store's latest sweep (else of the experiment ``layerprint``).

    Raises:
        TrackingError: unknown run id or experiment, or nothing to compare.
    """
    if run_ids:
        runs = []
        for run_id in run_ids:
            try:
                runs.append(client.get_run(run_id))
            except Exception:  # noqa: BLE001 - MLflow raises several types for a missing run
                raise TrackingError(f"run {run_id!r} does not exist in this tracking store") from None
        return runs
    if not experiment and not parent_run_id:
        latest = latest_sweep(client)
        parent_run_id = latest.info.run_id if latest is not None else None
    if parent_run_id:
        try:
            parent = client.get_run(parent_run_id)
        except Exception:  # noqa: BLE001
            raise TrackingError(f"parent run {parent_run_id!r} does not exist in this tracking store") from None
        return client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.{keys.TAG_PARENT_RUN_ID} = '{parent_run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=5000)
    name = experiment or "layerprint"
    found = client.get_experiment_by_name(name)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise TrackingError(f"experiment {name!r} does not exist; experiments here: {', '.join(names) or 'none'}")
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"], max_results=5000)
    return [r for r in runs if keys.TAG_INIT_FINGERPRINT in r.data.tags]


def load_record(client: Any, run: Any, with_fingerprints: bool = False) -> RunRecord:
    """Read a run's tags, step loss curve, final weights and BatchNorm history.

    Args:
        client: an ``MlflowClient``.
        run: an MLflow ``Run``.
        with_fingerprints: also read the per-variable fingerprints and ``probe.json``.

    Returns:
        The record.
    """
    tags = run.data.tags
    history = client.get_metric_history(run.info.run_id, LOSS_KEY)
    record = RunRecord(
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        variant=tags.get(keys.TAG_VARIANT),
        layer=tags.get(keys.TAG_LAYER),
        seed=tags.get(keys.TAG_SEED),
        status=run.info.status,
        init_fingerprint=tags.get(keys.TAG_INIT_FINGERPRINT),
        init_tolerant=tags.get(keys.TAG_INIT_TOLERANT),
        final_fingerprint=tags.get(keys.TAG_FINAL_FINGERPRINT),
        parent_run_id=tags.get(keys.TAG_PARENT_RUN_ID),
        loss={m.step: m.value for m in history},
    )
    _read_arrays(client, record, run.info.artifact_uri)
    if with_fingerprints:
        _read_json_artifacts(client, record)
    return record


def _local_folder(artifact_uri: str | None) -> Path | None:
    """The run's artifact folder when it is on this machine (the embedded store), else None."""
    if not artifact_uri:
        return None
    parts = urlsplit(artifact_uri)
    if parts.scheme == "file" or (not parts.scheme and artifact_uri.startswith("/")):
        return Path(url2pathname(parts.path))
    return None


def _read_arrays(client: Any, record: RunRecord, artifact_uri: str | None = None) -> None:
    """Fill ``weights``, ``batchnorm``, ``sharing`` and, from ``steps.parquet``, the every-step loss
    curve and checksums (all optional); local artifact folders are read in place, others downloaded."""
    local = _local_folder(artifact_uri)
    with tempfile.TemporaryDirectory() as tmp:
        for name in (keys.WEIGHTS_FINAL, keys.BATCHNORM, keys.STEPS, keys.SHARING):
            if local is not None:
                path = local / keys.ARTIFACT_DIR / name
                if not path.is_file():
                    continue
            else:
                try:
                    path = client.download_artifacts(record.run_id, f"{keys.ARTIFACT_DIR}/{name}", tmp)
                except Exception:  # noqa: BLE001 - large models skip the weights; models without BN have no npz
                    continue
            if name == keys.SHARING:
                record.sharing = json.loads(Path(path).read_text())
                continue
            if name == keys.STEPS:
                steps = read_steps(path)
                record.loss = steps.series(LOSS_KEY) or record.loss  # every step, not only the published ones
                record.checksum_steps, record.checksums = steps.checksums()
                continue
            with np.load(path) as archive:
                arrays = {key: archive[key] for key in archive.files}
            if name == keys.WEIGHTS_FINAL:
                record.weights = arrays
            else:
                record.batchnorm_epochs = arrays.pop("epochs", None)
                record.batchnorm = arrays


def _read_json_artifacts(client: Any, record: RunRecord) -> None:
    """Fill the per-variable fingerprints and ``probe`` from the run's JSON artifacts."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(client.download_artifacts(record.run_id, keys.ARTIFACT_DIR, tmp))
        record.initial = {v["path"]: v for v in json.loads((folder / keys.FINGERPRINTS_INITIAL).read_text())["variables"]}
        record.final = {v["path"]: v for v in json.loads((folder / keys.FINGERPRINTS_FINAL).read_text())["variables"]}
        if (folder / keys.PROBE).exists():
            record.probe = json.loads((folder / keys.PROBE).read_text())


def collect(client: Any, experiment: str | None = None, run_ids: list[str] | None = None,
            parent_run_id: str | None = None) -> list[RunRecord]:
    """Select runs and read what compare and the plots need.

    Raises:
        TrackingError: no runs found, or an unknown run or experiment.
    """
    runs = select_runs(client, experiment, run_ids, parent_run_id)
    if not runs:
        raise TrackingError("no layerprint runs to compare in that selection")
    return [load_record(client, run) for run in runs]


def common_parent(records: list[RunRecord]) -> str | None:
    """The sweep parent run id all ``records`` share, else None."""
    parents = {r.parent_run_id for r in records}
    return parents.pop() if len(parents) == 1 else None

