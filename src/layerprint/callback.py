"""``LayerprintCallback``: fingerprints, sharing, BatchNorm statistics, loss curves and drift to MLflow."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import keras
import numpy as np

from layerprint import keys
from layerprint.batchnorm import StatisticsReader, find_batchnorm_layers, moving_statistics
from layerprint.fingerprint import (
    exact_hash,
    fingerprint_model,
    l2_norm,
    owning_layer_path,
    unique_variables,
    variable_paths,
)
from layerprint.sharing import sharing_report, symmetry_warning
from layerprint.tracking import RunSink, experiment_id_for, resolve_tracking_uri, strip_credentials

logger = logging.getLogger("layerprint")


class LayerprintCallback(keras.callbacks.Callback):
    """Logs what decides whether two runs can diverge to MLflow.

    At train begin: a fingerprint of every variable (``fingerprints_initial.json``, tag
    ``layerprint.init_fingerprint``) and ``sharing.json`` (layers called at several sites, variables
    several layers use, distinct variables that start bitwise identical; the last also prints one
    warning, because that symmetry is not broken by training). Every ``log_every_n_steps`` steps:
    loss and compiled metrics (``train/<name>``) and BatchNorm moving-stat summaries (``bn/...``).
    Every epoch: epoch and validation metrics (``epoch/<name>``), per-layer weight drift from the
    initial weights (``drift/<layer>``), the full BatchNorm vectors (kept for ``batchnorm.npz``) and,
    given a probe batch, a fingerprint and the norm of the model output on it. At train end: the
    final fingerprint and the artifacts. A run the callback started ends FINISHED, or FAILED (with
    the ``layerprint.failure`` tag) when a logged loss was NaN or infinite.

    Points are queued and sent by a background thread in batches, so a step never waits for the
    store. If the store cannot be reached, training goes on and the points are kept in a local spool
    (``layerprint sync`` sends them later).

    The run: ``run_id`` if given, else the active MLflow run, else a new run that the callback also
    ends. Use ``nested=True`` to start a child of the active run instead.

    Args:
        log_every_n_steps: log step metrics and BatchNorm summaries every N optimizer steps.
        run_id: log into this existing run.
        experiment_name: experiment for a run the callback starts (default: MLflow's current one).
        run_name: name of a run the callback starts.
        nested: start a child run of the active run.
        tracking_uri: store for a run the callback starts (default: ``MLFLOW_TRACKING_URI`` or
            MLflow's current URI).
        probe_batch: an input batch to evaluate before training and after every epoch (fingerprint
            and norm of the output; epoch 0 is the untrained model).
        tags: extra tags for the run.
        params: params to log on the run (for example the flattened config).
        max_weights_artifact_params: save the final weights as ``weights_final.npz`` (for
            ``layerprint compare``'s weight distances) when the model has at most this many
            parameters; 0 turns it off.
        flush_timeout: seconds to wait at train end for queued points before spooling them.
        strict: raise tracking errors instead of spooling them (for tests).

    Example:

    ```python
    from layerprint import LayerprintCallback
    model.fit(x, y, epochs=3, callbacks=[LayerprintCallback()])
    ```
    """

    def __init__(
        self,
        log_every_n_steps: int = 1,
        run_id: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        nested: bool = False,
        tracking_uri: str | None = None,
        probe_batch: Any = None,
        tags: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        max_weights_artifact_params: int = 1_000_000,
        flush_timeout: float = 30.0,
        strict: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(log_every_n_steps, int) or log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be a positive integer, got {log_every_n_steps!r}")
        self.log_every_n_steps = log_every_n_steps
        self.run_id = run_id
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.nested = nested
        self.tracking_uri = tracking_uri
        self.probe_batch = probe_batch
        self.tags = dict(tags or {})
        self.run_params = dict(params or {})  # not `params`: Keras sets that to fit's arguments
        self.max_weights_artifact_params = max_weights_artifact_params
        self.flush_timeout = flush_timeout
        self.strict = strict
        self.sink: RunSink | None = None
        self.initial_fingerprint: dict[str, Any] | None = None
        self.final_fingerprint: dict[str, Any] | None = None
        self.sharing: dict[str, Any] | None = None

    # Run lifecycle.
    def _open_run(self) -> tuple[str, str, bool, dict[str, Any] | None]:
        """Returns (tracking URI, run id, whether this callback owns the run, offline-run record)."""
        import mlflow

        active = mlflow.active_run()
        if self.run_id:
            return resolve_tracking_uri(self.tracking_uri or mlflow.get_tracking_uri()), self.run_id, False, None
        if active is not None and not self.nested:
            return mlflow.get_tracking_uri(), active.info.run_id, False, None
        uri = resolve_tracking_uri(self.tracking_uri or _env_or_current_uri())
        try:
            client = mlflow.tracking.MlflowClient(uri)
            experiment_id = _experiment_id(client, uri, self.experiment_name, active)
            run_tags = {}
            if active is not None:
                run_tags["mlflow.parentRunId"] = active.info.run_id
            run = client.create_run(experiment_id, run_name=self.run_name, tags=run_tags)
            return uri, run.info.run_id, True, None
        except Exception as error:  # noqa: BLE001 - the store being down must not stop training
            if self.strict:
                raise
            logger.warning(
                "layerprint: cannot create a run in %s (%s); logging to the local spool, "
                "send it later with `layerprint sync`.",
                strip_credentials(uri),
                type(error).__name__,
            )
            offline = {
                "experiment_name": self.experiment_name,
                "run_name": self.run_name,
                "parent_run_id": active.info.run_id if active is not None else None,
                "start_time": int(time.time() * 1000),
            }
            return uri, "offline-" + uuid.uuid4().hex, True, offline

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        uri, run_id, self._owns_run, offline = self._open_run()
        self.sink = RunSink(uri, run_id, offline_run=offline, strict=self.strict)
        self._global_step = 0
        self._epoch_start_step = 0
        self._non_finite_step: int | None = None
        self._bn_layers = find_batchnorm_layers(self.model)
        self._bn_reader = StatisticsReader(self._bn_layers)
        self._step_keys: dict[str, str] = {}
        self._bn_history: dict[str, list[np.ndarray]] = {}
        self._bn_epochs: list[int] = []
        self._probe_norms: list[float] = []
        self._probe_hashes: list[str] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="layerprint-")
        self._initial_values = {id(v): np.array(v.numpy()) for v in unique_variables(self.model)}
        self._paths = variable_paths(self.model)
        self.initial_fingerprint = fingerprint_model(self.model)
        self.sharing = sharing_report(self.model, self.initial_fingerprint["variables"])
        warning = symmetry_warning(self.sharing["identical_initial_values"])
        if warning:
            logger.warning(warning)
        self.sink.set_tags(
            {
                **self.tags,
                keys.TAG_INIT_FINGERPRINT: self.initial_fingerprint["model"],
                keys.TAG_INIT_TOLERANT: self.initial_fingerprint["tolerant"],
                **({keys.TAG_SYMMETRY_WARNING: "true"} if warning else {}),
            }
        )
        if self.run_params:
            self.sink.log_params(self.run_params)
        self._write_json(keys.FINGERPRINTS_INITIAL, self.initial_fingerprint)
        self._write_json(keys.SHARING, self.sharing)
        self._record_batchnorm(epoch=0)
        if self.probe_batch is not None:
            self.sink.log_metrics(self._probe(), 0)

    @property
    def non_finite_step(self) -> int | None:
        """The first logged global step whose loss was NaN or infinite, else None."""
        return getattr(self, "_non_finite_step", None)

    @property
    def last_step(self) -> int:
        """The global step of the last finished training batch (0 before training)."""
        return getattr(self, "_global_step", 0)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        step = self._epoch_start_step + batch + 1
        crossed = step // self.log_every_n_steps > self._global_step // self.log_every_n_steps
        self._global_step = step
        if not crossed:
            return
        points = {self._step_key(name): float(value) for name, value in logs.items() if _is_number(value)}
        if self._non_finite_step is None and not np.isfinite(points.get(self._step_key("loss"), 0.0)):
            self._non_finite_step = step
        if self._bn_layers:
            _ = self.model  # on the JAX backend, reading `model` syncs the trained state into the variables
            points.update(self._bn_reader.summaries())
        self.sink.log_metrics(points, step)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        self._epoch_start_step = self._global_step
        if self._non_finite_step is None and _is_number(logs.get("loss")) and not np.isfinite(float(logs["loss"])):
            self._non_finite_step = self._global_step
        points = {keys.epoch_key(name): value for name, value in logs.items() if _is_number(value)}
        points.update(self._drift())
        points.update(self._probe())
        self.sink.log_metrics(_sanitized(points), epoch + 1)
        self._record_batchnorm(epoch=epoch + 1)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.sink is None:
            return
        self.final_fingerprint = fingerprint_model(self.model)
        self.sink.set_tags({keys.TAG_FINAL_FINGERPRINT: self.final_fingerprint["model"]})
        if self._probe_hashes:
            self.sink.set_tags({keys.TAG_PROBE_FINGERPRINT: self._probe_hashes[-1]})
            self._write_json(keys.PROBE, {"epochs": list(range(len(self._probe_hashes))),
                                          "sha256": self._probe_hashes, "l2_norm": self._probe_norms})
        self._write_json(keys.FINGERPRINTS_FINAL, self.final_fingerprint)
        variables = unique_variables(self.model)
        if sum(int(np.prod(v.shape)) for v in variables) <= self.max_weights_artifact_params:
            path = Path(self._tmp.name) / keys.WEIGHTS_FINAL
            paths = variable_paths(self.model)
            np.savez(path, **{keys.sanitize_key(paths[id(v)]): np.asarray(v.numpy()) for v in variables})
            self.sink.log_artifact(path, keys.ARTIFACT_DIR)
        if self._bn_layers:
            path = Path(self._tmp.name) / keys.BATCHNORM
            np.savez(path, epochs=np.asarray(self._bn_epochs),
                     **{keys.sanitize_key(name): np.stack(values) for name, values in self._bn_history.items()})
            self.sink.log_artifact(path, keys.ARTIFACT_DIR)
        if self._non_finite_step is not None:
            self.sink.set_tags({keys.TAG_FAILURE: f"loss became non-finite at step {self._non_finite_step}"})
        self.close(status="FINISHED" if self._non_finite_step is None else "FAILED")

    def close(self, status: str = "FINISHED") -> None:
        """Flush the queued points, end the run if this callback started it, release resources.

        Called by ``on_train_end``; call it yourself with ``status="FAILED"`` or ``"KILLED"`` when
        ``fit`` raised, so that a run the callback started does not stay RUNNING.
        """
        if self.sink is None:
            return
        stats = self.sink.close(self.flush_timeout)
        if self._owns_run:
            self.sink.finish(status)
        self._tmp.cleanup()
        self.sink = None
        if self.strict and stats.errors:
            raise RuntimeError(f"layerprint: tracking errors: {stats.errors[:3]}")

    # Helpers.
    def _step_key(self, name: str) -> str:
        key = self._step_keys.get(name)
        if key is None:
            key = self._step_keys[name] = keys.sanitize_key(keys.step_key(name))
        return key

    def _drift(self) -> dict[str, float]:
        """L2 distance of each layer's variables from their initial values, and of the whole model."""
        squares: dict[str, float] = {}
        total = 0.0
        paths = self._paths
        for variable in unique_variables(self.model):
            start = self._initial_values.get(id(variable))
            if start is None or not variable.trainable:
                continue
            delta = np.asarray(variable.numpy(), dtype=np.float64) - start
            square = float(np.sum(delta * delta))
            path = paths.get(id(variable), variable.path)
            layer = owning_layer_path(path) or path
            squares[layer] = squares.get(layer, 0.0) + square
            total += square
        out = {keys.drift_key(layer): float(np.sqrt(s)) for layer, s in squares.items()}
        out[keys.DRIFT_MODEL] = float(np.sqrt(total))
        return out

    def _probe(self) -> dict[str, float]:
        """Fingerprint and norm of the model output on the probe batch (none without one)."""
        if self.probe_batch is None:
            return {}
        output = np.asarray(keras.ops.convert_to_numpy(self.model(self.probe_batch, training=False)))
        self._probe_hashes.append(exact_hash(output))
        self._probe_norms.append(l2_norm(output))
        return {keys.PROBE_NORM: self._probe_norms[-1]}

    def _record_batchnorm(self, epoch: int) -> None:
        if not self._bn_layers:
            return
        for name, values in moving_statistics(self._bn_layers).items():
            self._bn_history.setdefault(name, []).append(values)
        self._bn_epochs.append(epoch)

    def _write_json(self, name: str, content: Any) -> None:
        path = Path(self._tmp.name) / name
        path.write_text(json.dumps(content, indent=1, sort_keys=True))
        self.sink.log_artifact(path, keys.ARTIFACT_DIR)


def _env_or_current_uri() -> str | None:
    import mlflow

    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    current = mlflow.get_tracking_uri()
    return current if mlflow.tracking._tracking_service.utils.is_tracking_uri_set() else None


def _experiment_id(client: Any, uri: str, name: str | None, active: Any) -> str:
    if active is not None and name is None:
        return active.info.experiment_id
    if name is None:
        import mlflow

        return mlflow.tracking.fluent._get_experiment_id() or "0"
    return experiment_id_for(client, uri, name)


def _is_number(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return np.ndim(value) == 0


def _sanitized(points: dict[str, Any]) -> dict[str, float]:
    return {keys.sanitize_key(key): float(value) for key, value in points.items()}
