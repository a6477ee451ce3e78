"""The run's files under ``layerprint/``: written into a temporary folder, queued for upload by the sink."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from layerprint import keys
from layerprint.fit.progress import RunProgress
from layerprint.recording.record import StepRecord


class Artifacts:
    """One fit's artifact files (``keys`` names them; ``LayerprintCallback`` documents their content).

    Args:
        upload: ``upload(local path, artifact folder)``: queues a file for the run.
        prefix: the folder of a later fit's start artifacts in its run (``fit_<k>/``), or empty.

    Attributes:
        folder: the temporary folder the files are written to (also where an earlier fit's artifacts are
            downloaded to continue its run); removed by ``cleanup``.
    """

    def __init__(self, upload: Callable[[Path, str], None] | None, prefix: str = "") -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="layerprint-")
        self.folder = self._folder.name
        self.upload, self.prefix = upload, prefix

    def save(self, name: str, write: Callable[[Path], Any]) -> None:
        """Write ``layerprint/<name>`` with ``write(local path)`` and queue it. Each write gets a file of its
        own, so that rewriting one (``steps.parquet`` every epoch) never races its upload."""
        path = Path(self.folder) / uuid.uuid4().hex / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        if self.upload is not None:
            self.upload(path, "/".join([keys.ARTIFACT_DIR, *Path(name).parent.parts]))

    def json(self, name: str, content: Any) -> None:
        self.save(name, lambda path: path.write_text(json.dumps(content, indent=1, sort_keys=True)))

    def start(self, fingerprint: dict[str, Any] | None, sharing: dict[str, Any] | None) -> None:
        """The fit's start: ``fingerprints_initial.json`` and ``sharing.json`` (under ``prefix``)."""
        if fingerprint is not None:
            self.json(self.prefix + keys.FINGERPRINTS_INITIAL, fingerprint)
        if sharing is not None:
            self.json(self.prefix + keys.SHARING, sharing)

    def steps(self, record: StepRecord) -> None:
        """``steps.parquet``, the flight record so far (replacing the last one)."""
        self.save(keys.STEPS, record.write)

    def probe(self, progress: RunProgress) -> None:
        self.json(keys.PROBE, {"epochs": progress.probe_epochs, "sha256": progress.probe_hashes,
                               "l2_norm": progress.probe_norms})

    def batchnorm(self, progress: RunProgress) -> None:
        """``batchnorm.npz``: ``epochs`` and a row per epoch of every BatchNorm layer's statistics."""
        self.save(keys.BATCHNORM, lambda path: np.savez(
            path, epochs=np.asarray(progress.bn_epochs),
            **{keys.sanitize_key(name): np.stack(rows) for name, rows in progress.bn_history.items()}))

    def final_weights(self, named: list[tuple[str, str, np.ndarray]], max_params: int) -> None:
        """``weights_final.npz`` of ``(path, layer, values)``, for models of at most ``max_params`` parameters."""
        if sum(array.size for _, _, array in named) > max_params:
            return
        arrays = {keys.sanitize_key(path): array for path, _, array in named}
        self.save(keys.WEIGHTS_FINAL, lambda path: np.savez(path, **arrays))

    def cleanup(self) -> None:
        """Remove the folder (after the sink has taken every file)."""
        self._folder.cleanup()
