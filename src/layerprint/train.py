"""``layerprint-train``: train one variant x layer combination and log it to MLflow (a Hydra app).

``train(cfg)`` does the work and can be called with any composed config; ``main`` checks the
command line's overrides first (one clear line per mistake, no traceback, no run started) and then
hands over to Hydra, so ``-m`` sweeps, launchers and callbacks work as in any Hydra app.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
from importlib.resources import files
from typing import Any, Iterator

import hydra
from omegaconf import DictConfig, OmegaConf

from layerprint import keys
from layerprint.config import register_configs, validate
from layerprint.errors import LayerprintError
from layerprint.runtime import quiet_tensorflow

PARENT_RUN_ENV = "LAYERPRINT_PARENT_RUN_ID"
SWEEP_FILE = ".layerprint-sweep.json"  # in the sweep dir: {"parent_run_id", "tracking_uri"}
CONFIG_MODULE = "pkg://layerprint.conf"
CONFIG_NAME = "train"
GROUPS = ("variant", "layer", "data", "trainer", "tracking", "experiment")


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


def open_store(uri: str) -> Any:
    """A client for ``uri``, with the store created (and upgraded) now, once, before any job logs.

    Raises:
        TrackingError: the store cannot be opened.
    """
    from mlflow.tracking import MlflowClient

    from layerprint.errors import TrackingError
    from layerprint.tracking import ensure_sqlite_parent, strip_credentials

    ensure_sqlite_parent(uri)
    _check_server_reachable(uri)
    client = MlflowClient(uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - reported as one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrackingError(f"cannot open the tracking store {strip_credentials(uri)}: {strip_credentials(first)[:300]}") from None
    return client


def _check_server_reachable(uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when nothing answers at an http(s) URI.

    Raises:
        TrackingError: nothing accepts a connection at the URI's host and port.
    """
    from layerprint.errors import TrackingError
    from layerprint.tracking import reachable, strip_credentials

    if not reachable(uri, timeout=5.0):
        raise TrackingError(f"cannot reach the tracking server at {strip_credentials(uri)} (no connection); "
                            "start it (README, 'Server mode') or fix tracking.uri")


def train(cfg: Any) -> dict[str, Any]:
    """Build, train and log one run.

    Args:
        cfg: a composed ``TrainConfig`` (DictConfig).

    Returns:
        ``{"run_id", "status", "init_fingerprint", "final_fingerprint", "final_loss"}``.

    Raises:
        LayerprintError: bad config, data, device or store; raised before any run is created.
    """
    validate(cfg)
    from layerprint import data as data_module
    from layerprint.runtime import describe_device, select_device, set_determinism, share_cpu_threads, versions
    from layerprint.tracking import experiment_id_for, redact, resolve_tracking_uri

    share_cpu_threads(_parallel_jobs())
    device = select_device(cfg.device)
    set_determinism(cfg.seed, cfg.deterministic)
    x, y = data_module.load(cfg)
    uri = resolve_tracking_uri(cfg.tracking.uri)
    client = open_store(uri)

    import keras

    from layerprint.callback import LayerprintCallback
    from layerprint.variants import build_model, output_units

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
        keys.TAG_DETERMINISTIC: str(bool(cfg.deterministic)).lower(),
        "layerprint.pid": str(os.getpid()),
        **describe_device(device),
        **{keys.TAG_VERSION_PREFIX + name: value for name, value in versions().items()},
    }
    parent = sweep_parent_run_id()
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_name = cfg.tracking.run_name or f"{cfg.variant.name}-{cfg.layer.kind}-s{cfg.seed}"
    experiment_id = experiment_id_for(client, uri, cfg.tracking.experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    status, callback = "FAILED", None
    try:  # from here on the run exists: whatever happens, it ends with a status and a reason
        params = {key: redact(value) for key, value in flatten_config(cfg).items()}
        callback = LayerprintCallback(run_id=run_id, tracking_uri=uri, params=params,
                                      log_every_n_steps=cfg.trainer.log_every_n_steps,
                                      probe_batch=x[: cfg.trainer.probe_rows] if cfg.trainer.probe_rows else None)
        with _stop_on_interrupt(model) as interrupted:
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
    return {
        "run_id": run_id,
        "status": status,
        "init_fingerprint": callback.initial_fingerprint["model"],
        "final_fingerprint": callback.final_fingerprint["model"] if callback.final_fingerprint else None,
        "final_loss": final_loss,
    }


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


def sweep_parent_run_id() -> str | None:
    """The parent run of the sweep this job belongs to: ``LAYERPRINT_PARENT_RUN_ID``, else the
    sweep dir's ``.layerprint-sweep.json`` (worker processes started before the parent run existed,
    or on other machines, find it there), else None (a single run)."""
    if os.environ.get(PARENT_RUN_ENV):
        return os.environ[PARENT_RUN_ENV]
    if not _in_multirun():
        return None
    from hydra.core.hydra_config import HydraConfig

    path = os.path.join(str(HydraConfig.get().sweep.dir), SWEEP_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)["parent_run_id"]
    except (OSError, ValueError, KeyError):
        return None


def record_failed_job(cfg: Any, reason: str) -> str | None:
    """Leave a FAILED run, with the reason, for a sweep job that failed before its run existed.

    Returns:
        The run id, or None when the store itself cannot be reached.
    """
    from layerprint.tracking import experiment_id_for, redact, resolve_tracking_uri

    try:
        uri = resolve_tracking_uri(cfg.tracking.uri)
        client = open_store(uri)
        tags = {keys.TAG_VARIANT: str(cfg.variant.name), keys.TAG_LAYER: str(cfg.layer.kind),
                keys.TAG_SEED: str(cfg.seed), keys.TAG_FAILURE: redact(reason)[:5000]}
        parent = sweep_parent_run_id()
        if parent:
            tags["mlflow.parentRunId"] = parent
        run_name = cfg.tracking.run_name or f"{cfg.variant.name}-{cfg.layer.kind}-s{cfg.seed}"
        run = client.create_run(experiment_id_for(client, uri, cfg.tracking.experiment), run_name=run_name, tags=tags)
        client.set_terminated(run.info.run_id, status="FAILED")
        return run.info.run_id
    except Exception:  # noqa: BLE001 - the job's error line has been printed already
        return None


@hydra.main(version_base="1.3", config_path=CONFIG_MODULE, config_name=CONFIG_NAME)
def hydra_main(cfg: DictConfig) -> float:
    """The Hydra task: train, print a one-line summary, return the final loss (for sweepers).

    In a ``-m`` sweep a failing job does not stop the others: its run ends FAILED with the reason
    in the ``layerprint.failure`` tag (a run is created for that when the job failed before its
    run existed), one line is printed, and the sweep's parent run reports it at the end.
    """
    try:
        result = train(cfg)
    except (LayerprintError, Exception) as error:  # noqa: BLE001 - one line per failed job, never a traceback
        reason = str(error) if isinstance(error, LayerprintError) else f"{type(error).__name__}: {_first_line(error)}"
        print(f"layerprint-train: error: {_redact(reason)}", file=sys.stderr)
        if _in_multirun():
            if not getattr(error, "layerprint_run_id", None):
                record_failed_job(cfg, reason)
            return math.nan
        sys.exit(2 if isinstance(error, LayerprintError) else 1)
    print(f"layerprint-train: run {result['run_id']} {result['status']}: {cfg.variant.name} x {cfg.layer.kind}, "
          f"seed {cfg.seed}, init {result['init_fingerprint'][:12]}, final loss {result['final_loss']:.6g}")
    return result["final_loss"]


def _parallel_jobs() -> int:
    """How many jobs of this sweep run at once on this machine (the launcher's ``n_jobs``; 1 otherwise)."""
    from hydra.core.hydra_config import HydraConfig

    if not _in_multirun():
        return 1
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if not isinstance(n_jobs, int):
        return 1
    return os.cpu_count() or 1 if n_jobs < 0 else n_jobs


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_overrides(argv: list[str]) -> Any:
    """Compose the config for every value of every override, as Hydra will, and validate it.

    Args:
        argv: the command-line arguments after the program name.

    Returns:
        The config composed from the command line with the first value of every sweep.

    Raises:
        LayerprintError: one line naming the bad override and what is allowed.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from layerprint.errors import ConfigError

    candidates = [arg for arg in argv if not arg.startswith("-") and "=" in arg]
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except HydraException as error:
        raise ConfigError(f"cannot parse overrides: {_first_line(error)}") from None
    plain, sweeps, hydra_groups = [], [], []
    for override in parsed:
        key = override.get_key_element()
        if key.lstrip("+~").startswith("hydra"):
            if key.lstrip("+~").startswith("hydra/") and not override.is_sweep_override():
                hydra_groups.append(override.input_line)  # hydra/launcher=joblib: the option must exist
            continue
        if override.is_sweep_override():
            sweeps.append((override, [str(v) for v in override.sweep_string_iterator()]))
        else:
            plain.append(override.input_line)
        group = key.lstrip("+~")
        if group in GROUPS:
            values = [v for _, vs in sweeps[-1:] for v in vs] if override.is_sweep_override() else [override.value()]
            _check_group_options(group, values)
    # Every value of every sweep is checked once, next to the first value of each other sweep.
    first = {o.get_key_element(): values[0] for o, values in sweeps if values}
    variations = [plain + [f"{k}={v}" for k, v in first.items()]]
    for override, values in sweeps:
        key = override.get_key_element()
        for value in values[1:]:
            variations.append(plain + [f"{k}={value if k == key else v}" for k, v in first.items()])
    GlobalHydra.instance().clear()
    composed = []
    with initialize_config_module(version_base="1.3", config_module="layerprint.conf"):
        for index, overrides in enumerate(variations):
            try:
                if index == 0 and hydra_groups:
                    compose(config_name=CONFIG_NAME, overrides=overrides + hydra_groups, return_hydra_config=True)
                cfg = compose(config_name=CONFIG_NAME, overrides=overrides)
            except (HydraException, OmegaConfBaseException) as error:
                raise ConfigError(_composition_message(error)) from None
            validate(cfg)
            composed.append(cfg)
    GlobalHydra.instance().clear()
    return composed[0]


def _check_group_options(group: str, values: list[Any]) -> None:
    from layerprint.errors import ConfigError

    options = sorted(p.name[:-5] for p in files("layerprint.conf").joinpath(group).iterdir() if p.name.endswith(".yaml"))
    for value in values:
        if str(value) not in options:
            raise ConfigError(f"{group} {value!r} is unknown; valid {group} options: {', '.join(options)}")


def _redact(text: str) -> str:
    from layerprint.tracking import redact

    return redact(text)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _composition_message(error: BaseException) -> str:
    text = str(error)
    if "Available options in" in text:  # Hydra's missing-option message: one line with the choices
        listed = text.split("Available options in", 1)[1].split("Config search path", 1)[0]
        choices = [line.strip() for line in listed.splitlines() if line.startswith("\t")]
        return f"{_first_line(error)}; valid options: {', '.join(choices)}"
    cause = error.__cause__ or error
    detail = _first_line(cause)
    key = getattr(cause, "full_key", None)
    if key:
        return f"{key}: {detail}"
    return _first_line(error) if detail == _first_line(error) else f"{_first_line(error)}: {detail}"


def main() -> None:
    """Console entry point of ``layerprint-train``."""
    quiet_tensorflow()
    # One summary line per run is printed here; MLflow's own "View run <url>" line would repeat the
    # tracking URI (credentials included, if the user put them there) for every run.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        cfg = check_overrides(sys.argv[1:])
        if {"-m", "--multirun"} & set(sys.argv[1:]):
            # Hydra turns a failing sweep callback into a warning and runs the jobs anyway: check the
            # store here (cheaply: MLflow itself is imported later, while parallel workers start), so
            # that an unreachable or unwritable one stops the sweep in one line.
            from layerprint.tracking import ensure_sqlite_parent, resolve_tracking_uri

            uri = resolve_tracking_uri(cfg.tracking.uri)
            ensure_sqlite_parent(uri)
            _check_server_reachable(uri)
    except LayerprintError as error:
        print(f"layerprint-train: error: {_redact(str(error))}", file=sys.stderr)
        sys.exit(2)
    try:
        hydra_main()
    except KeyboardInterrupt:
        # train() has flushed the points logged so far and ended the run KILLED.
        print("layerprint-train: interrupted; the run was ended KILLED with the points logged so far", file=sys.stderr)
        sys.exit(130)
    sweep = sys.modules.get("layerprint.sweep")
    if sweep is not None and sweep.failed_jobs:
        sys.exit(1)


if __name__ == "__main__":
    main()
