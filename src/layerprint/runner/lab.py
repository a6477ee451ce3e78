"""Running the claims' experiments: ``layerprint claims`` trains ordinary runner runs and judges them
with ``layerprint.analysis.claims``."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from layerprint import keys
from layerprint.analysis.claims import BASE_OVERRIDES, CATALOGUE, EXPERIMENT, claim_result
from layerprint.analysis.runs import RunRecord, load_record
from layerprint.runner.overrides import compose_config
from layerprint.runner.runtime import versions
from layerprint.runner.sweep import PARENT_RUN_ENV
from layerprint.runner.train import train
from layerprint.tracking.store import experiment_id_for, open_store


class TrainingLab:
    """Runs and caches the experiments the claims need; reads back what each run logged.

    Args:
        client: an ``MlflowClient`` on ``uri``.
        uri: the tracking store.
        parent_run_id: every run is created as a child of this run.
    """

    def __init__(self, client: Any, uri: str, parent_run_id: str) -> None:
        self.client = client
        self.uri = uri
        self.parent_run_id = parent_run_id
        self._cache: dict[tuple[str, ...], RunRecord] = {}

    def run(self, *overrides: str) -> RunRecord:
        """Train one run with the base overrides plus ``overrides`` (cached per override set)."""
        key = tuple(sorted(overrides))
        if key not in self._cache:
            self._cache[key] = self._read(self._train(list(BASE_OVERRIDES) + list(overrides)))
        return self._cache[key]

    def _train(self, overrides: list[str]) -> str:
        cfg = compose_config([*overrides, f"tracking.experiment={EXPERIMENT}"])
        cfg.tracking.uri = self.uri
        previous = os.environ.get(PARENT_RUN_ENV)
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        try:
            return train(cfg)["run_id"]
        finally:
            if previous is None:
                os.environ.pop(PARENT_RUN_ENV, None)
            else:
                os.environ[PARENT_RUN_ENV] = previous

    def _read(self, run_id: str) -> RunRecord:
        return load_record(self.client, self.client.get_run(run_id), with_fingerprints=True)


def run_claims(uri: str, only: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the catalogue (or the claims in ``only``) into the store at ``uri``.

    Args:
        uri: tracking URI; the runs go to the experiment ``layerprint-claims``, under one parent run
            that also gets ``claims.json``.
        only: claim ids to run, e.g. ``["C08", "C10"]``.

    Returns:
        ``[{"id", "source", "claim", "verdict", "evidence", "run_ids", "versions"}]``.
    """
    client = open_store(uri)
    installed = versions()
    # Several experiments make identical groups on purpose; their symmetry warnings are the evidence here.
    callback_logger = logging.getLogger("layerprint")
    level = callback_logger.level
    callback_logger.setLevel(logging.ERROR)
    parent = client.create_run(
        experiment_id_for(client, uri, EXPERIMENT), run_name="claims",
        tags={keys.TAG_VERSION_PREFIX + name: value for name, value in installed.items()},
    )
    parent_id = parent.info.run_id
    lab = TrainingLab(client, uri, parent_id)
    results, status = [], "FAILED"
    try:
        for claim in CATALOGUE:
            if only and claim.id not in only:
                continue
            results.append(claim_result(claim, lab, installed))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "claims.json"
            path.write_text(json.dumps(results, indent=1))
            client.log_artifact(parent_id, str(path))
        client.set_tag(parent_id, "layerprint.claims", " ".join(f"{r['id']}={r['verdict']}" for r in results))
        status = "FINISHED"
    finally:
        client.set_terminated(parent_id, status=status)
        callback_logger.setLevel(level)
    return results
