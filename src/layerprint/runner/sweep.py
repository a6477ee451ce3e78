"""Hydra callback: one MLflow parent run per multirun sweep, a comparison of its jobs at the end.

``on_multirun_start`` runs in the launching process before any job: it creates (and upgrades) the
store once, opens the parent run, and passes its id and the absolute tracking URI to the jobs through
the environment (``LAYERPRINT_PARENT_RUN_ID``; not ``MLFLOW_RUN_ID``, which would resume the parent
instead of nesting under it) and through ``<sweep dir>/.layerprint-sweep.json``, for worker
processes that were started before the parent run existed (joblib's warm workers, a local Ray
cluster's: see ``layerprint.runner.launchers``) or run elsewhere. A job that fails leaves a FAILED run
and lets the others go on (see ``train.hydra_main``); at the end the parent run lists them in
``layerprint.failed_jobs`` and ends FAILED. Should Hydra itself stop before ``on_multirun_end`` (an
interrupt), the parent is closed from an ``atexit`` hook, as FAILED.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from layerprint import keys
from layerprint.runner.launchers import (
    LocalRay,
    PlotWorkers,
    joblib_map,
    start_joblib_workers,
    stop_joblib_workers,
)
from layerprint.tracking.redact import redact, strip_credentials
from layerprint.tracking.store import experiment_id_for, open_store, resolve_tracking_uri

PARENT_RUN_ENV = "LAYERPRINT_PARENT_RUN_ID"
SWEEP_FILE = ".layerprint-sweep.json"  # in the sweep dir: {"parent_run_id", "tracking_uri"}


failed_jobs: list[str] = []  # "run name: reason" of the last sweep's failed jobs (read by main for the exit code)


def sweep_parent_run_id() -> str | None:
    """The parent run of the sweep this job belongs to: ``LAYERPRINT_PARENT_RUN_ID``, else the
    sweep dir's ``.layerprint-sweep.json`` (worker processes started before the parent run existed,
    or on other machines, find it there), else None (a single run)."""
    if os.environ.get(PARENT_RUN_ENV):
        return os.environ[PARENT_RUN_ENV]
    if not in_multirun():
        return None
    from hydra.core.hydra_config import HydraConfig

    path = os.path.join(str(HydraConfig.get().sweep.dir), SWEEP_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)["parent_run_id"]
    except (OSError, ValueError, KeyError):
        return None


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class SweepParentRun(Callback):
    """Opens the parent run of a sweep and, at its end, logs and prints ``layerprint compare``."""

    def __init__(self) -> None:
        self.client: Any = None
        self.parent_run_id: str | None = None
        self.uri: str | None = None
        self.local_ray: LocalRay | None = None
        self.plot_workers: PlotWorkers | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The Ray launcher sends Hydra's context, callbacks included, to every job; the cluster and the
        # plot workers stay here.
        return {**self.__dict__, "local_ray": None, "plot_workers": None}

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.uri = resolve_tracking_uri(config.tracking.uri)
        os.environ["MLFLOW_TRACKING_URI"] = self.uri
        start_joblib_workers(config.hydra.launcher)
        self.local_ray = LocalRay.start(config.hydra.launcher, unknown_env=[PARENT_RUN_ENV])
        self.plot_workers = PlotWorkers.start(config.hydra.launcher)
        self.client = open_store(self.uri)
        experiment_id = experiment_id_for(self.client, self.uri, config.tracking.experiment)
        overrides = redact(" ".join(config.hydra.overrides.task))
        run = self.client.create_run(
            experiment_id,
            run_name=sweep_run_name(config.hydra.overrides.task),
            tags={keys.TAG_SWEEP_DIR: str(config.hydra.sweep.dir), "layerprint.sweep_overrides": overrides},
        )
        self.parent_run_id = run.info.run_id
        os.environ[PARENT_RUN_ENV] = self.parent_run_id  # jobs in this process and in workers started from now
        sweep_dir = str(config.hydra.sweep.dir)  # workers started earlier (and other machines) read it here
        os.makedirs(sweep_dir, exist_ok=True)
        with open(os.path.join(sweep_dir, SWEEP_FILE), "w", encoding="utf-8") as handle:
            json.dump({"parent_run_id": self.parent_run_id, "tracking_uri": strip_credentials(self.uri)}, handle)
        atexit.register(self._close, "FAILED")
        if self.local_ray is not None:
            self.local_ray.wait_started()  # before the launcher looks for a running Ray

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if self.client is None or self.parent_run_id is None:
            return  # on_multirun_start failed (Hydra reported it); there is no parent run to close
        from layerprint.analysis.compare import compare_records
        from layerprint.analysis.publish import publish_comparison
        from layerprint.analysis.report import format_findings, format_table, write_report
        from layerprint.analysis.runs import collect

        if self.local_ray is not None:
            self.local_ray.stop()  # every job has returned; Ray's shutdown (about 1.4 s) overlaps the comparison
        experiment_id = self.client.get_run(self.parent_run_id).info.experiment_id
        try:
            records = collect(self.client, parent_run_id=self.parent_run_id)
            report = compare_records(records)
        except Exception as error:  # noqa: BLE001 - the jobs' runs are logged; the summary is a bonus
            print(f"layerprint: could not compare the sweep's runs: {error}", file=sys.stderr)
        else:
            out_dir = os.path.join(str(config.hydra.sweep.dir), "layerprint-compare")
            map_fn = joblib_map(config.hydra.launcher) or (self.plot_workers.map if self.plot_workers else None)
            written = write_report(report, out_dir, records, map_fn=map_fn)
            publish_comparison(self.client, self.parent_run_id, report, records, written,
                               sweep_params(config.hydra.overrides.task, config.hydra.sweeper.get("params")))
            print("\n" + format_table(report))
            print("\n" + format_findings(records))
            print(f"\nReport and plots: {out_dir} (also in the parent run, under compare/)")
        if self.plot_workers is not None:
            self.plot_workers.stop()
        failed_jobs[:] = self._failed_jobs()
        if failed_jobs:
            self.client.set_tag(self.parent_run_id, keys.TAG_FAILED_JOBS, "; ".join(failed_jobs)[:5000])
            print(f"\nlayerprint: {len(failed_jobs)} job(s) of this sweep failed (the others finished):", file=sys.stderr)
            for line in failed_jobs:
                print(f"  {line}", file=sys.stderr)
        self._close("FAILED" if failed_jobs else "FINISHED")
        print("\n" + next_steps(self.uri, experiment_id, self.parent_run_id))
        stop_joblib_workers(config.hydra.launcher)
        if self.local_ray is not None:
            self.local_ray.wait_stopped()

    def _children(self) -> list[Any]:
        return self.client.search_runs(
            [self.client.get_run(self.parent_run_id).info.experiment_id],
            filter_string=f"tags.{keys.TAG_PARENT_RUN_ID} = '{self.parent_run_id}'",
            order_by=["attributes.start_time ASC"], max_results=5000)

    def _failed_jobs(self) -> list[str]:
        return [f"{run.info.run_name}: {run.info.status}: {run.data.tags.get(keys.TAG_FAILURE, 'no reason recorded')}"
                for run in self._children() if run.info.status != "FINISHED"]

    def _close(self, status: str) -> None:
        if self.parent_run_id and self.client is not None:
            run = self.client.get_run(self.parent_run_id)
            if run.info.status == "RUNNING":
                self.client.set_terminated(self.parent_run_id, status=status)


def sweep_run_name(task_overrides: list[str]) -> str:
    """The parent run's name: ``sweep`` and the user's own overrides, without where the runs are logged
    (``tracking.*``) or how they are launched (``hydra.*``, ``hydra/...``), e.g.
    ``sweep experiment=demo device=cpu``."""
    kept = [o for o in task_overrides if not o.lstrip("+~").startswith(("tracking", "hydra"))]
    return redact(" ".join(["sweep", *kept]))[:250]


def sweep_params(task_overrides: list[str], sweeper_params: Any) -> dict[str, str]:
    """The parent run's params: every override of the command line under its key (``variant``,
    ``experiment``, ``hydra/launcher``), and what the sweeper sweeps (from an ``experiment`` config) under
    ``sweep.<key>``; credentials removed."""
    params = {}
    for override in task_overrides:
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = redact(value)
    for key, value in (sweeper_params or {}).items():
        params[f"sweep.{key}"] = redact(str(value))
    return params


def next_steps(uri: str, experiment_id: str, parent_run_id: str) -> str:
    """What the sweep prints last: its parent run, and commands that work when pasted into a new shell (the
    programs by their full path: the virtual environment need not be active), with the UI's addresses."""
    from layerprint.analysis.addresses import DEFAULT_UI, comparison_addresses

    bin_dir = Path(sys.executable).parent
    shown = strip_credentials(uri)
    served = uri.startswith(("http://", "https://"))
    curves, gaps, _ = comparison_addresses(shown.rstrip("/") if served else DEFAULT_UI, experiment_id, parent_run_id)
    lines = [f"Sweep parent run: {parent_run_id} ({shown})",
             f"Compare again:    {bin_dir / 'layerprint'} compare --tracking-uri {shown} --parent {parent_run_id}"]
    if not served:
        lines.append(f"Open the UI:      {bin_dir / 'layerprint'} ui --tracking-uri {shown}")
        lines.append(f"                  (serves this store on {DEFAULT_UI}, or the next free port, and prints these)")
    lines.append(f"The loss curves:  {curves}")
    lines.append(f"The gap per pair: {gaps}")
    return "\n".join(lines)

