"""What earlier fits logged into a run, so that a later fit continues the run instead of overwriting it."""

from __future__ import annotations

import json
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from layerprint import keys
from layerprint.recording.record import StepRecord


@dataclass
class RunProgress:
    """What the fits before this one logged into its run.

    Attributes:
        fits: fits that began in the run.
        last_step: the global step of the last logged training batch.
        last_epoch: the last logged epoch (1-based).
        bn_epochs: epochs of the rows of ``batchnorm.npz``.
        bn_history: ``{"<layer>/<stat>": [vector per row]}``.
        probe_epochs, probe_hashes, probe_norms: the content of ``probe.json``.
        record: the flight record (``steps.parquet``).
        finishing: the end of the last fit in this run, still running in the background (a later fit
            waits for it, so that nothing it uploads lands after the later fit's).
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

    def tags(self, global_step: int) -> dict[str, str]:
        """The tags that say how far the run got (a later fit, even in another process, continues after it)."""
        return {keys.TAG_FITS: str(self.fits), keys.TAG_LAST_STEP: str(global_step),
                keys.TAG_LAST_EPOCH: str(self.last_epoch)}


def progress_in_store(uri: str, run_id: str, folder: str) -> RunProgress:
    """What earlier fits (in another process) logged into ``run_id``, from its tags and artifacts.

    Args:
        uri: the store.
        run_id: the run.
        folder: where its artifacts are downloaded.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    tags = client.get_run(run_id).data.tags
    progress = RunProgress(fits=int(tags.get(keys.TAG_FITS, 0)), last_step=int(tags.get(keys.TAG_LAST_STEP, 0)),
                           last_epoch=int(tags.get(keys.TAG_LAST_EPOCH, 0)))
    if progress.fits == 0:
        return progress
    names = {info.path.rsplit("/", 1)[-1] for info in client.list_artifacts(run_id, keys.ARTIFACT_DIR)}

    def download(name: str) -> Path:
        return Path(client.download_artifacts(run_id, f"{keys.ARTIFACT_DIR}/{name}", folder))

    if keys.BATCHNORM in names:
        with np.load(download(keys.BATCHNORM)) as npz:
            progress.bn_epochs = [int(e) for e in npz["epochs"]]
            progress.bn_history = {name: list(npz[name]) for name in npz.files if name != "epochs"}
    if keys.PROBE in names:
        probe: dict[str, Any] = json.loads(download(keys.PROBE).read_text())
        progress.probe_epochs, progress.probe_hashes = probe["epochs"], probe["sha256"]
        progress.probe_norms = probe["l2_norm"]
    if keys.STEPS in names:
        progress.record = StepRecord.from_file(download(keys.STEPS))
    return progress
