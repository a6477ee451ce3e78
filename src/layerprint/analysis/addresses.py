"""Where MLflow's UI shows a sweep's comparison (``analysis.publish`` saves what these addresses open)."""

from __future__ import annotations

from layerprint.compat.mlflow import run_address, run_metrics_address, runs_view_address

DEFAULT_UI = "http://127.0.0.1:5000"  # where ``layerprint ui`` serves a store when the port is free


def comparison_addresses(ui: str, experiment_id: str, parent_run_id: str) -> tuple[str, str, str]:
    """``(runs, gaps, parent)``: the addresses of the sweep's loss curves (the saved view of the runs page,
    whose key is the parent run's id), of the parent's metric charts (the loss gap of every pair) and of the
    parent run's page, in MLflow's model-training navigation.

    Args:
        ui: the UI's address, e.g. ``http://127.0.0.1:5000`` (empty: addresses relative to the UI's root).
        experiment_id: the sweep's experiment.
        parent_run_id: the sweep's parent run.
    """
    return (runs_view_address(ui, experiment_id, parent_run_id), run_metrics_address(ui, experiment_id, parent_run_id),
            run_address(ui, experiment_id, parent_run_id))
