"""What layerprint does around Hydra's launchers, to keep the cores busy during a sweep: joblib's
workers started and warmed while the parent run opens, then drawing the comparison's plots, then
stopped; Ray's local cluster started alongside the parent run, its workers warmed, and shut down
while the runs are compared; for the other launchers (and Ray), plot workers of their own, started
with the sweep and drawing the comparison's plots at its end.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, Callable

from layerprint.compat.hydra import joblib_parallel_arguments, reusable_executor
from layerprint.compat.ray import quiet_sigterm_warning


def _warm_up_worker(parallel_jobs: int) -> int:
    """Run in a fresh worker: import what every job needs (TensorFlow, Keras, MLflow, the runner)
    and give TensorFlow its share of the cores before it starts."""
    from layerprint.runner.runtime import quiet_native_start_up, share_cpu_threads

    with quiet_native_start_up():
        import keras  # noqa: F401
        import mlflow  # noqa: F401

        import layerprint.callback  # noqa: F401
        import layerprint.runner.models  # noqa: F401

        share_cpu_threads(parallel_jobs)
    return os.getpid()


def _is_joblib(launcher: Any) -> bool:
    return str(launcher.get("_target_", "")).endswith("JoblibLauncher")


def _joblib_arguments(launcher: Any) -> dict[str, Any]:
    """The arguments the joblib launcher gives ``joblib.Parallel``: the same ones find its workers again."""
    from omegaconf import OmegaConf

    return joblib_parallel_arguments(OmegaConf.to_container(launcher, resolve=True))


def start_joblib_workers(launcher: Any) -> threading.Thread | None:
    """Start the joblib launcher's worker processes now, in the background, and have them import
    TensorFlow, Keras and MLflow while this process opens the store and the parent run.

    joblib keeps one reusable loky executor per configuration; started with the launcher's own
    arguments, the jobs later run on these warm workers instead of starting cold ones (about 6 s of
    imports a worker on the 2-core machine). Other launchers: nothing happens.

    Returns:
        The thread that started the workers, or None.
    """
    if not _is_joblib(launcher):
        return None
    from joblib import Parallel, delayed

    joblib_cfg = _joblib_arguments(launcher)
    n_jobs = joblib_cfg.get("n_jobs") or 1
    workers = os.cpu_count() or 1 if n_jobs < 0 else n_jobs

    def warm() -> None:
        try:
            Parallel(**joblib_cfg)(delayed(_warm_up_worker)(workers) for _ in range(workers))
        except Exception:  # noqa: BLE001 - only a head start; the launcher starts workers itself if this fails
            return
        import layerprint.analysis.plots  # noqa: F401 - matplotlib, for the comparison at the sweep's end, while jobs run

    thread = threading.Thread(target=warm, name="layerprint-warm-workers", daemon=True)
    thread.start()
    return thread


def joblib_map(launcher: Any) -> Callable[[Callable[[Any], Any], list[Any]], list[Any]] | None:
    """A ``map`` over the joblib launcher's warm workers, for the comparison's plots at the sweep's end
    (each plot is a second or so of matplotlib on one core; the workers are idle by then). Should the
    workers be gone, it maps in this process. Other launchers: None.
    """
    if not _is_joblib(launcher):
        return None
    from joblib import Parallel, delayed

    arguments = _joblib_arguments(launcher)

    def parallel_map(function: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        try:
            return Parallel(**arguments)(delayed(function)(item) for item in items)
        except Exception:  # noqa: BLE001 - a worker lost (killed, out of memory): draw them here instead
            return [function(item) for item in items]

    return parallel_map


def stop_joblib_workers(launcher: Any) -> None:
    """Stop the joblib launcher's reusable workers now that every job has returned.

    Left to interpreter exit, loky waits for each worker to unload TensorFlow (about 2 s of the
    sweep's wall time on the 2-core machine); killing idle workers loses nothing. Other launchers:
    nothing happens.
    """
    if not _is_joblib(launcher):
        return
    executor = reusable_executor()
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


MAX_PLOT_WORKERS = 3  # the comparison draws at most 6 plots, the two largest about half of the time


def _import_plots() -> None:
    import layerprint.analysis.plots  # noqa: F401 - matplotlib


class PlotWorkers:
    """Worker processes that draw the comparison's plots at a sweep's end, for the launchers whose own
    workers cannot: the basic launcher (its jobs run in this process), Ray (its cluster is being shut
    down meanwhile, or is another machine's) and submitit (its jobs are gone).

    Six plots take about 5 s of matplotlib on one core of the 2-core machine, while the other core
    would wait; the workers are started with the sweep and import matplotlib while the jobs run (this
    process imports it then too: it builds the plots' arguments), so that at the end the plots are
    drawn side by side. They are loky processes (joblib's), started without the jobs' imports.
    """

    def __init__(self, workers: int) -> None:
        from joblib.externals.loky import ProcessPoolExecutor

        self._executor = ProcessPoolExecutor(max_workers=workers)
        for _ in range(workers):
            self._executor.submit(_import_plots)
        threading.Thread(target=_import_plots, name="layerprint-import-plots", daemon=True).start()

    @classmethod
    def start(cls, launcher: Any) -> PlotWorkers | None:
        """Start the plot workers of a sweep.

        Args:
            launcher: the sweep's ``hydra.launcher`` config.

        Returns:
            The workers; None for joblib (its own warm workers draw: ``joblib_map``) and on one core.
        """
        workers = min(os.cpu_count() or 1, MAX_PLOT_WORKERS)
        if _is_joblib(launcher) or workers < 2:
            return None
        return cls(workers)

    def map(self, function: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``map`` over the workers, results in order; should a worker be lost, in this process."""
        try:
            return list(self._executor.map(function, items))
        except Exception:  # noqa: BLE001 - a worker lost (killed, out of memory): draw them here instead
            return [function(item) for item in items]

    def stop(self) -> None:
        """Stop the workers without waiting for them."""
        self._executor.shutdown(wait=False, kill_workers=True)


def _is_ray(launcher: Any) -> bool:
    return str(launcher.get("_target_", "")).endswith("RayLauncher")


LOG_GRACE_S = 1.0  # before shutting Ray down: for the workers' last lines to be forwarded and printed


class LocalRay:
    """The Ray launcher's local cluster, started by the sweep callback so that its start overlaps the
    opening of the store and the parent run (each about 2.5 s on one core), and shut down while the
    sweep's runs are compared.

    The Ray launcher starts Ray only when none is running (``ray.is_initialized()``), with the same
    ``hydra.launcher.ray.init`` arguments, so it finds this one. The parent run does not exist yet
    when Ray starts: instead of Ray's ``runtime_env``, the jobs read its id from the sweep dir
    (``layerprint.runner.sweep``), which workers of a local cluster share with this process. Joining an
    existing cluster (``hydra.launcher.ray.init.address``) is left to the launcher, with the parent
    run id in ``runtime_env``.

    Once up, each worker slot imports what every job needs (``_warm_up_worker``), while this process
    prepares the launch. Ray's daemons are started with a parent-death signal, which Linux ties to the
    thread that started them: that thread lives until the cluster is shut down, and shuts it down itself.
    """

    def __init__(self, init: dict[str, Any], cpus_per_job: float) -> None:
        self._init = init
        self._cpus_per_job = cpus_per_job
        self._started = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="layerprint-local-ray", daemon=True)

    @classmethod
    def start(cls, launcher: Any, unknown_env: list[str]) -> LocalRay | None:
        """Start the local cluster of a Ray launcher in the background.

        Args:
            launcher: the sweep's ``hydra.launcher`` config.
            unknown_env: variables of its ``runtime_env`` whose values do not exist yet (the parent
                run id): left out.

        Returns:
            The cluster being started, or None (another launcher, or an existing cluster to join).
        """
        if not _is_ray(launcher) or launcher.ray.init.get("address"):
            return None
        from omegaconf import OmegaConf

        init = OmegaConf.to_container(launcher.ray.init, resolve=True)
        init["address"] = "local"  # a new cluster, as documented, even if `ray start` left one running here
        if init.get("object_store_memory") is None:  # the launcher's default (ray-project/ray#11966)
            init["object_store_memory"] = 78643200
        env_vars = (init.get("runtime_env") or {}).get("env_vars") or {}
        for name in unknown_env:
            env_vars.pop(name, None)
        local = cls(init, float(launcher.ray.get("remote", {}).get("num_cpus") or 1))
        # What ray.init does in the main thread only: SIGTERM exits through atexit (Ray's shutdown, the
        # parent run closed FAILED) instead of killing the process; and not its warning that it could not.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        quiet_sigterm_warning()
        local._thread.start()
        return local

    def _run(self) -> None:
        try:
            import ray

            ray.init(**self._init)
        except Exception:  # noqa: BLE001 - only a head start: the launcher starts Ray and reports its error
            self._started.set()
            return
        self._started.set()
        try:
            slots = max(1, int(ray.cluster_resources().get("CPU", 1) // self._cpus_per_job))
            warm_up = ray.remote(num_cpus=self._cpus_per_job)(_warm_up_worker)
            for _ in range(slots):
                warm_up.remote(slots)  # not waited for: the jobs queue behind it on the same workers
        except Exception:  # noqa: BLE001 - only a head start (and this thread must live on: see above)
            pass
        self._stop.wait()
        # What the workers printed last reaches this process through Ray's log monitor, a little later;
        # Ray waits 0.5 s for it before its own shutdown at exit (not before an explicit one). Here,
        # the runs are being compared meanwhile.
        time.sleep(LOG_GRACE_S)
        ray.shutdown()

    def wait_started(self) -> None:
        """Return once Ray is up (or failed to start, for the launcher to try again)."""
        self._started.wait()

    def stop(self) -> None:
        """Begin the shutdown, in the background."""
        self._stop.set()

    def wait_stopped(self) -> None:
        """Return once Ray is shut down."""
        self._stop.set()
        self._thread.join()
