"""A sweep's comparison published on its parent run, so that MLflow's own pages show where the runs part.

The parent run gets:

- artifacts under ``compare/`` (the report files and plots, ``report.write_report``);
- its description (``mlflow.note.content``, ``notes.sweep_note``) and each run's (``notes.run_note``);
- metrics, for each compared pair of runs of the same layer (at most ``MAX_PAIRS_AS_METRICS``, the pairs
  that share an init first): ``gap/<run a>__<run b>``, the loss gap at every step both logged, and, at
  step 0, ``losses_part_at_step/<pair>``, ``weights_part_at_step/<pair>`` and
  ``weights_equal_until_step/<pair>`` (compare's ``first_divergence_step`` and ``first_weight_divergence``'s
  ``step`` and ``last_equal_step``; absent when they never part); and
  ``sweep/runs``, ``sweep/identical_init_groups``, ``sweep/pairs_sharing_init``;
- params: what the caller gives (the sweep's overrides);
- a saved view of the experiment's runs page (``compat.mlflow.save_runs_chart_view``, keyed by the
  parent's id): the sweep's runs, every one, as line charts of ``train/loss`` and ``epoch/loss`` over
  steps. ``analysis.addresses.comparison_addresses`` gives the addresses that open it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from layerprint import keys
from layerprint.analysis.compare import same_layer_pairs
from layerprint.analysis.notes import run_note, sweep_note
from layerprint.analysis.runs import RunRecord
from layerprint.compat.mlflow import save_runs_chart_view
from layerprint.tracking.store import Point, batch_chunks, log_batch

MAX_PAIRS_AS_METRICS = 100
CHARTS = (keys.step_key("loss"), keys.epoch_key("loss"))  # what the saved view draws, in this order


def run_labels(report: dict[str, Any]) -> dict[str, str]:
    """A label per run: its name, with the start of its id added where two runs share a name."""
    names = [run["run_name"] for run in report["runs"]]
    return {run["run_id"]: run["run_name"] if names.count(run["run_name"]) == 1
            else f"{run['run_name']}-{run['run_id'][:6]}" for run in report["runs"]}


def comparison_metrics(report: dict[str, Any], records: list[RunRecord], timestamp_ms: int) -> list[Point]:
    """The comparison as metric points (module doc): ``(key, value, timestamp, step)``."""
    labels = run_labels(report)
    losses = {record.run_id: record.loss for record in records}
    pairs = sorted(same_layer_pairs(report), key=lambda pair: not pair["identical_init"])[:MAX_PAIRS_AS_METRICS]
    points: list[Point] = []
    for pair in pairs:
        a, b = pair["a"], pair["b"]
        for step in sorted(set(losses[a]) & set(losses[b])):
            gap = abs(losses[a][step] - losses[b][step])
            if np.isfinite(gap):
                points.append((keys.pair_key(keys.GAP_PREFIX, labels[a], labels[b]), float(gap), timestamp_ms, step))
        weights = pair.get("first_weight_divergence") or {}
        for prefix, step in ((keys.LOSSES_PART_PREFIX, pair["first_divergence_step"]),
                             (keys.WEIGHTS_PART_PREFIX, weights.get("step")),
                             (keys.WEIGHTS_EQUAL_PREFIX, weights.get("last_equal_step"))):
            if step is not None:
                points.append((keys.pair_key(prefix, labels[a], labels[b]), float(step), timestamp_ms, 0))
    counts = {keys.SWEEP_RUNS: len(report["runs"]),
              keys.SWEEP_INIT_GROUPS: sum(1 for group in report["init_groups"] if len(group) > 1),
              keys.SWEEP_PAIRS_SHARING_INIT: sum(1 for pair in report["pairs"] if pair["identical_init"])}
    return points + [(key, float(value), timestamp_ms, 0) for key, value in counts.items()]


def publish_comparison(client: Any, parent_run_id: str, report: dict[str, Any], records: list[RunRecord],
                       files: list[Path], params: dict[str, str] | None = None) -> None:
    """Log the comparison on the parent run (module doc).

    Args:
        client: an ``MlflowClient`` on the store.
        parent_run_id: the sweep's parent run.
        report: ``compare_records`` of the sweep's runs.
        records: those runs as read (``runs.collect``).
        files: the report's files (``report.write_report``), logged under ``compare/``.
        params: params for the parent (the sweep's overrides).
    """
    parent = client.get_run(parent_run_id)
    experiment_id = parent.info.experiment_id
    for path in files:
        client.log_artifact(parent_run_id, str(path), "compare")
    points = comparison_metrics(report, records, int(time.time() * 1000))
    for chunk in batch_chunks(points, dict(params or {}), {}):
        log_batch(client, parent_run_id, *chunk)
    plots = [path.name for path in files if path.suffix == ".png"]
    client.set_tag(parent_run_id, keys.TAG_NOTE, sweep_note(report, parent_run_id, experiment_id, plots))
    for record in records:  # now that the init groups are known
        client.set_tag(record.run_id, keys.TAG_NOTE, run_note(record, report))
    logged = set()
    for run in client.search_runs([experiment_id], filter_string=f"tags.{keys.TAG_PARENT_RUN_ID} = '{parent_run_id}'",
                                  max_results=5000):
        logged |= set(run.data.metrics)
    save_runs_chart_view(client, experiment_id, parent_run_id, f"{parent.info.run_name}: where the runs part",
                         f"tags.{keys.TAG_PARENT_RUN_ID} = '{parent_run_id}'", list(CHARTS),
                         sorted(logged - set(CHARTS)))
