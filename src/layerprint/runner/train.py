"""``layerprint-train``: train one variant x layer combination and log it to MLflow (a Hydra app).

``train(cfg)`` does the work and can be called with any composed config; ``main`` checks the
command line's overrides first (one clear line per mistake, no traceback, no run started) and then
hands over to Hydra, so ``-m`` sweeps, launchers and callbacks work as in any Hydra app.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import warnings
from typing import Any, Iterator

import hydra
from omegaconf import DictConfig, OmegaConf

from layerprint import keys
from layerprint.errors import LayerprintError, first_line
from layerprint.runner.overrides import CONFIG_MODULE, CONFIG_NAME, check_overrides
from layerprint.runner.runtime import (
    check_device_early,
    exit_without_collecting,
    quiet_native_start_up,
    quiet_tensorflow,
)
from layerprint.runner.schema import register_configs, validate
from layerprint.runner.sweep import failed_jobs, in_multirun, sweep_parent_run_id
from layerprint.tracking.redact import redact
from layerprint.tracking.store import (
    check_server_reachable,
    ensure_sqlite_parent,
    experiment_id_for,
    open_store,
    resolve_tracking_uri,
)


def flatten_config(cfg: Any, prefix: str = "") -> dict[str, str]:
    """``{"layer.kind": "dense", ...}`` for MLflow params (Hydra's own node left out)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, str] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


def run_name(cfg: Any) -> str:
    """The name of a job's run: ``tracking.run_name``, else ``<variant>-<layer>-s<seed>``, and the model
    style when it is not functional (``shared-dense-s0-subclassed``)."""
    style = "" if cfg.model_style == "functional" else f"-{cfg.model_style}"
    return cfg.tracking.run_name or f"{cfg.variant.name}-{cfg.layer.kind}-s{cfg.seed}{style}"


def train(cfg: Any) -> dict[str, Any]:
    """Build, train and log one run.

    Args:
        cfg: a composed ``TrainConfig`` (DictConfig).

    Returns:
        ``{"run_id", "status", "identical_initial_values", "init_fingerprint", "final_fingerprint",
        "final_loss"}`` (the groups of ``sharing.json``: distinct variables that start bitwise identical).

    Raises:
        LayerprintError: bad config, data, device or store; raised before any run is created.
    """
    validate(cfg)
    from layerprint.runner import data as data_module
    from layerprint.runner.runtime import describe_device, select_device, set_determinism, share_cpu_threads, versions

    # What needs no TensorFlow is checked first: a mistake there costs no TensorFlow start-up.
    x, y = data_module.load(cfg)
    uri = resolve_tracking_uri(cfg.tracking.uri)
    with quiet_native_start_up():
        share_cpu_threads(_parallel_jobs())
        device = select_device(cfg.device)
        set_determinism(cfg.seed, cfg.deterministic)
    client = open_store(uri)

    import keras

    from layerprint.callback import LayerprintCallback, findings
    from layerprint.runner.models import build_model, output_units

    units, loss = output_units(y)
    model = build_model(cfg, tuple(x.shape[1:]), units)
    optimizer = keras.optimizers.get({"class_name": cfg.trainer.optimizer,
                                      "config": {"learning_rate": cfg.trainer.learning_rate}})
    model.compile(optimizer=optimizer, loss=loss, steps_per_execution=cfg.trainer.steps_per_execution,
                  metrics=["mae"] if loss == "mse" else ["accuracy"])

    tags = {
        keys.TAG_VARIANT: cfg.variant.name,
        keys.TAG_LAYER: cfg.layer.kind,
        keys.TAG_SEED: str(cfg.seed),
        keys.TAG_MODEL_STYLE: cfg.model_style,
        keys.TAG_DETERMINISTIC: str(bool(cfg.deterministic)).lower(),
        "layerprint.pid": str(os.getpid()),
        **describe_device(device),
        **{keys.TAG_VERSION_PREFIX + name: value for name, value in versions().items()},
    }
    parent = sweep_parent_run_id()
    if parent:
        tags[keys.TAG_PARENT_RUN_ID] = parent
    experiment_id = experiment_id_for(client, uri, cfg.tracking.experiment)
    run = client.create_run(experiment_id, run_name=run_name(cfg), tags=tags)
    run_id = run.info.run_id
    status, callback = "FAILED", None
    try:  # from here on the run exists: whatever happens, it ends with a status and a reason
        params = {key: redact(value) for key, value in flatten_config(cfg).items()}
        callback = LayerprintCallback(run_id=run_id, tracking_uri=uri, params=params,
                                      log_every_n_steps=cfg.trainer.log_every_n_steps,
                                      probe_batch=x[: cfg.trainer.probe_rows] if cfg.trainer.probe_rows else None)
        with _stop_on_interrupt(model) as interrupted, _findings_held_back(findings):
            history = model.fit(
                x, y,
                epochs=cfg.trainer.epochs,
                batch_size=cfg.trainer.batch_size,
                validation_split=cfg.data.validation_split,
                shuffle=False,
                verbose=0,
                callbacks=[callback, keras.callbacks.TerminateOnNaN()],
            )
        if interrupted.is_set():
            raise KeyboardInterrupt
        final_loss = float(history.history["loss"][-1])
        status = "FINISHED" if math.isfinite(final_loss) else "FAILED"
        if status == "FAILED":
            step = callback.non_finite_step or callback.last_step
            client.set_tag(run_id, keys.TAG_FAILURE, f"loss became {final_loss} at step {step}; "
                           "TerminateOnNaN stopped training")
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except Exception as error:
        client.set_tag(run_id, keys.TAG_FAILURE, redact(f"{type(error).__name__}: {str(error)[:500]}"))
        error.layerprint_run_id = run_id  # type: ignore[attr-defined]  # the run exists and says why
        raise
    finally:
        if callback is not None:
            callback.close(status=status)
        client.set_terminated(run_id, status=status)
    _describe_run(client, run_id)
    return {
        "run_id": run_id,
        "status": status,
        "identical_initial_values": (callback.sharing or {}).get("identical_initial_values") or [],
        "init_fingerprint": callback.initial_fingerprint["model"] if callback.initial_fingerprint else None,
        "final_fingerprint": callback.final_fingerprint["model"] if callback.final_fingerprint else None,
        "final_loss": final_loss,
    }


def _describe_run(client: Any, run_id: str) -> None:
    """Give the run its markdown description (``mlflow.note.content``) from what it logged. In a
    sweep, the parent rewrites it at the end, with the runs it starts identical to."""
    from layerprint.analysis.notes import run_note
    from layerprint.analysis.runs import load_record

    try:
        client.set_tag(run_id, keys.TAG_NOTE, run_note(load_record(client, client.get_run(run_id))))
    except Exception as error:  # noqa: BLE001 - the run is complete; its description is a convenience
        print(f"layerprint-train: warning: run {run_id} has no description ({first_line(error)})", file=sys.stderr)


@contextlib.contextmanager
def _findings_held_back(findings: logging.Logger) -> Iterator[None]:
    """Keep the callback's findings out of the job's log during ``fit``: the runner prints them after the
    run or the sweep. The logger's level is restored after, so that later fits in the process warn."""
    level = findings.level
    findings.setLevel(logging.ERROR)
    try:
        yield
    finally:
        findings.setLevel(level)


@contextlib.contextmanager
def _stop_on_interrupt(model: Any) -> Iterator[threading.Event]:
    """Turn the first SIGINT (Ctrl-C) during ``fit`` into ``model.stop_training``: the step in flight
    ends, the callback logs it and ``fit`` returns; the caller then ends the run KILLED. (A
    KeyboardInterrupt raised inside TensorFlow's input pipeline can end an epoch early instead of
    stopping ``fit``.) A second Ctrl-C interrupts at once. Outside the main thread: nothing changes.
    """
    interrupted = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        interrupted.set()
        model.stop_training = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    try:
        previous = signal.signal(signal.SIGINT, stop)
    except ValueError:  # not the main thread (some launchers' workers)
        yield interrupted
        return
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


register_configs()


def record_failed_job(cfg: Any, reason: str) -> str | None:
    """Leave a FAILED run, with the reason, for a sweep job that failed before its run existed.

    Returns:
        The run id, or None when the store itself cannot be reached.
    """
    try:
        uri = resolve_tracking_uri(cfg.tracking.uri)
        client = open_store(uri)
        tags = {keys.TAG_VARIANT: str(cfg.variant.name), keys.TAG_LAYER: str(cfg.layer.kind),
                keys.TAG_SEED: str(cfg.seed), keys.TAG_FAILURE: redact(reason)[:5000]}
        parent = sweep_parent_run_id()
        if parent:
            tags[keys.TAG_PARENT_RUN_ID] = parent
        run = client.create_run(experiment_id_for(client, uri, cfg.tracking.experiment), run_name=run_name(cfg), tags=tags)
        client.set_terminated(run.info.run_id, status="FAILED")
        return run.info.run_id
    except Exception:  # noqa: BLE001 - the job's error line has been printed already
        return None


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME)
def hydra_main(cfg: DictConfig) -> float:
    """The Hydra task: train, print a one-line summary, return the final loss (for sweepers).

    In a ``-m`` sweep a failing job does not stop the others: its run ends FAILED with the reason
    in the ``layerprint.failure`` tag (a run is created for that when the job failed before its
    run existed), one line is printed, and the sweep's parent run reports it at the end.
    """
    try:
        result = train(cfg)
    except (LayerprintError, Exception) as error:  # noqa: BLE001 - one line per failed job, never a traceback
        reason = str(error) if isinstance(error, LayerprintError) else f"{type(error).__name__}: {first_line(error)}"
        print(f"layerprint-train: error: {redact(reason)}", file=sys.stderr)
        if in_multirun():
            if not getattr(error, "layerprint_run_id", None):
                record_failed_job(cfg, reason)
            return math.nan
        sys.exit(2 if isinstance(error, LayerprintError) else 1)
    print(f"layerprint-train: run {result['run_id']} {result['status']}: {cfg.variant.name} x {cfg.layer.kind}, "
          f"seed {cfg.seed}, init {result['init_fingerprint'][:12]}, final loss {result['final_loss']:.6g}")
    if result["identical_initial_values"] and not in_multirun():  # a sweep prints its findings at its end
        groups = "; ".join(" = ".join(group) for group in result["identical_initial_values"])
        print(f"layerprint-train: finding: these distinct variables start bitwise identical, and training never "
              f"separates them: {groups}")
    return result["final_loss"]


def _parallel_jobs() -> int:
    """How many jobs of this sweep run at once on this machine: the joblib launcher's ``n_jobs``; for
    launchers that reserve CPUs per job (Ray's ``ray.remote.num_cpus``, submitit's ``cpus_per_task``),
    as many as fit on this machine's cores; 1 otherwise."""
    from hydra.core.hydra_config import HydraConfig

    if not in_multirun():
        return 1
    launcher = HydraConfig.get().launcher
    cores = os.cpu_count() or 1
    n_jobs = launcher.get("n_jobs")
    if isinstance(n_jobs, int):
        return cores if n_jobs < 0 else n_jobs
    ray = launcher.get("ray")
    cpus_per_job = ray.get("remote", {}).get("num_cpus") if ray is not None else launcher.get("cpus_per_task")
    if isinstance(cpus_per_job, (int, float)) and cpus_per_job >= 1:
        return max(1, int(cores // cpus_per_job))
    return 1


def main() -> None:
    """Console entry point of ``layerprint-train``."""
    quiet_tensorflow()
    # conf/hydra/launcher/ray.yaml shares its name with the Ray launcher plugin's schema, which Hydra then
    # validates it against (wanted), warning at every step that this matching is deprecated (not wanted).
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")
    # One summary line per run is printed here; MLflow's own "View run <url>" line would repeat the
    # tracking URI (credentials included, if the user put them there) for every run.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        cfg = check_overrides(sys.argv[1:])
        # The store and the device are checked here, before TensorFlow or MLflow is imported, so that a
        # mistake costs a fraction of a second and prints one line; and in a sweep, because Hydra turns a
        # failing sweep callback into a warning and runs the jobs anyway.
        uri = resolve_tracking_uri(cfg.tracking.uri)
        ensure_sqlite_parent(uri, keep=False)
        check_server_reachable(uri)
        check_device_early(cfg.device)
        if cfg.data.source == "npz" and not {"-m", "--multirun"} & set(sys.argv[1:]):
            # One run's data file, before Hydra runs (in a sweep, each job that has a bad file fails alone).
            from layerprint.runner.data import check_npz

            check_npz(cfg.data.path)
    except LayerprintError as error:
        print(f"layerprint-train: error: {redact(str(error))}", file=sys.stderr)
        sys.exit(2)
    try:
        hydra_main()
    except KeyboardInterrupt:
        # train() has flushed the points logged so far and ended the run KILLED.
        print("layerprint-train: interrupted; the run was ended KILLED with the points logged so far", file=sys.stderr)
        sys.exit(130)
    finally:
        exit_without_collecting()
    if failed_jobs:
        sys.exit(1)


if __name__ == "__main__":
    main()
