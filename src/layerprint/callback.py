"""``LayerprintCallback``: fingerprints, sharing, BatchNorm statistics, loss curves and drift to MLflow."""

from __future__ import annotations

import atexit
import logging
from typing import Any

import keras

from layerprint.cache import CACHE
from layerprint.compat.keras import unsynced_model
from layerprint.fit.binding import RunOptions
from layerprint.fit.session import FitOptions, FitSession, findings
from layerprint.recording.recorder import Budget

__all__ = ["LayerprintCallback", "findings", "wait_for_runs"]
logger = logging.getLogger("layerprint")


class LayerprintCallback(keras.callbacks.Callback):
    """Logs what decides whether two runs can diverge to MLflow.

    At train begin: a fingerprint of every variable (``fingerprints_initial.json``, tag
    ``layerprint.init_fingerprint``) and ``sharing.json`` (layers called at several sites, variables several
    layers use, distinct variables that start bitwise identical; the last also logs one finding, on the
    ``layerprint.findings`` logger, because training never breaks that symmetry). A model whose variables do
    not exist yet at train begin (built at its first call) is captured once they exist, before the first
    optimizer update.

    Every optimizer step goes into the flight record, ``steps.parquet``: loss and compiled metrics
    (``train/<name>``), BatchNorm moving-stat summaries (``bn/...``) and an exact checksum of every variable
    (``checksum/<path>``), recorded on the device by the train step itself where the backend allows it,
    else read between steps (``layerprint.recording``). The same ``train/`` and ``bn/`` series go to MLflow
    at a cadence that keeps the callback within ``overhead_budget`` of the fit's time (first and last steps
    and every epoch end always included). Every epoch: epoch and validation metrics (``epoch/<name>``),
    per-layer weight drift from the start of the fit (``drift/<layer>``), the BatchNorm vectors (for
    ``batchnorm.npz``) and, given a probe batch, the fingerprint and norm of the model's output on it. At
    train end: the final fingerprint and the artifacts. ``fit`` returns with the run complete in the store
    (or in the spool when the store is down); see ``wait`` and ``finish_in_background``. A run the callback
    started ends FINISHED, or FAILED (tag ``layerprint.failure``) when a logged loss was NaN or infinite.

    Telemetry never breaks training: an error inside the callback is one warning and the tag
    ``layerprint.callback_error``; only the part that raised stops.

    Several fits into one run (inside one ``mlflow.start_run()``) continue its steps and epochs; the run's
    initial fingerprint stays the first fit's. A run the callback starts itself belongs to one fit.

    The run: ``run_id`` if given, else the active MLflow run, else a new run that the callback also ends
    (``nested=True``: a child of the active run).

    Args:
        log_every_n_steps: publish step metrics every N optimizer steps (and the logs of the first, last and
            epoch-end steps); None chooses N under the budget.
        overhead_budget: the share of the fit's time the callback may add (default 2 %).
        checksum_every: take the variables' checksums every N steps; None: every step, unless their
            measured cost says otherwise (then a power of two; the run's ``layerprint.checksum_every`` says).
        run_id: log into this existing run.
        experiment_name: experiment for a run the callback starts (default: MLflow's current one).
        run_name: name of a run the callback starts.
        nested: start a child run of the active run.
        tracking_uri: store for a run the callback starts (default: ``MLFLOW_TRACKING_URI`` or MLflow's).
        probe_batch: an input batch evaluated before training and after every epoch.
        tags: extra tags for the run.
        params: params to log on the run (for example the flattened config).
        max_weights_artifact_params: save ``weights_final.npz`` for models of at most this many parameters.
        flush_timeout: seconds to wait at train end for queued points before spooling them.
        strict: raise errors instead of warning and spooling (for tests).
        sink: log through this ``RunSink`` (or an object with its methods) instead of opening a run; the caller
            owns it: it is flushed at train end, never closed.
        finish_in_background: in a run the callback starts itself, let ``fit`` return as soon as training is
            done and end the run on a background thread (for loops of many short fits; see ``wait``).

    Example:

    ```python
    from layerprint import LayerprintCallback
    model.fit(x, y, epochs=3, callbacks=[LayerprintCallback()])
    ```
    """

    def __init__(self, log_every_n_steps: int | None = None, overhead_budget: float = 0.02,
                 checksum_every: int | None = None, run_id: str | None = None, experiment_name: str | None = None,
                 run_name: str | None = None, nested: bool = False, tracking_uri: str | None = None,
                 probe_batch: Any = None, tags: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                 max_weights_artifact_params: int = 1_000_000, flush_timeout: float = 30.0, strict: bool = False,
                 sink: Any = None, finish_in_background: bool = False) -> None:
        super().__init__()
        for name, value in (("log_every_n_steps", log_every_n_steps), ("checksum_every", checksum_every)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if not 0 < overhead_budget < 1:
            raise ValueError(f"overhead_budget must be a fraction between 0 and 1, got {overhead_budget!r}")
        self.log_every_n_steps, self.overhead_budget, self.checksum_every = log_every_n_steps, overhead_budget, checksum_every
        self.run_id, self.experiment_name, self.run_name, self.nested = run_id, experiment_name, run_name, nested
        self.tracking_uri, self.probe_batch = tracking_uri, probe_batch
        self.tags, self.run_params = dict(tags or {}), dict(params or {})  # not `params`: Keras sets that to fit's
        self.max_weights_artifact_params, self.flush_timeout, self.strict = max_weights_artifact_params, flush_timeout, strict
        self.given_sink, self.finish_in_background = sink, finish_in_background
        # Keras may run the batch-end hook off the training thread: it only appends the step's logs.
        self.async_safe = True
        self.session: FitSession | None = None  # the current (or last) fit
        self._sessions: list[FitSession] = []  # fits still finishing in the background

    def _options(self) -> FitOptions:
        run = RunOptions(self.run_id, self.experiment_name, self.run_name, self.nested, self.tracking_uri, self.tags,
                         self.run_params, self.flush_timeout, self.given_sink, self.finish_in_background)
        return FitOptions(run, Budget(self.overhead_budget, self.log_every_n_steps, self.checksum_every),
                          self.probe_batch, self.max_weights_artifact_params, self.strict)

    # What the last fit found (each waits for the background work).
    @property
    def initial_fingerprint(self) -> dict[str, Any] | None:
        """The fingerprint at the start of the last fit (``fingerprint_arrays``)."""
        return self._found("initial_fingerprint")

    @property
    def final_fingerprint(self) -> dict[str, Any] | None:
        """The fingerprint at the end of the last fit."""
        return self._found("final_fingerprint")

    @property
    def sharing(self) -> dict[str, Any] | None:
        """The content of ``sharing.json`` of the last fit."""
        return self._found("sharing")

    def _found(self, name: str) -> Any:
        self.wait()
        return getattr(self.session.state, name) if self.session is not None else None

    @property
    def callback_error(self) -> str | None:
        """The first error inside the callback in the last fit, one line, or None."""
        return self.session.parts.first_error if self.session is not None else None

    @property
    def active_run_id(self) -> str | None:
        """The id of the run the current (or last) fit logs into, None before the first fit; for a run the
        callback starts itself, waits for its sink to create it (``offline-...``: kept in the spool)."""
        return self.session.binding.active_run_id(self.flush_timeout) if self.session is not None else None

    @property
    def sink(self) -> Any:
        """The sink of the current (or last) fit's run, or None."""
        return self.session.binding.sink if self.session is not None else None

    @property
    def non_finite_step(self) -> int | None:
        """The first logged global step whose loss was NaN or infinite, else None."""
        return self.session.state.non_finite_step if self.session is not None else None

    @property
    def last_step(self) -> int:
        """The global step of the last finished training batch (0 before training)."""
        return self.session.state.global_step if self.session is not None else 0

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the work the callback does off the training thread: hashing, artifacts, the last points and
        the run's end. ``fit`` waits for it before it returns, so that the run is complete in the store; with
        ``finish_in_background=True`` it does not, in a run the callback started, and the next fit with this
        callback, ``close``, the properties above and the interpreter's exit wait instead.

        Args:
            timeout: seconds to wait at most for each fit still finishing (None: until done).

        Returns:
            Whether all of it is done.
        """
        self._sessions = [session for session in self._sessions if not session.wait(timeout)]
        return not self._sessions

    def close(self, status: str = "FINISHED") -> None:
        """End the current fit now, with ``status`` for a run the callback started (``"FAILED"`` or
        ``"KILLED"`` when ``fit`` raised, so that the run does not wait for the next fit or the interpreter's
        exit to be ended), and wait for it."""
        if self.session is not None:
            self.session.finish(status, None)
        self.wait()

    # Keras hooks.
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.session is not None and self.session.open:  # the previous fit raised before on_train_end
            self.session.abandon()
        self.wait()
        if not isinstance(self.model, keras.Model):
            logger.warning("layerprint: %s is not a Keras 3 model (Keras 2 / tf_keras?); LayerprintCallback "
                           "supports Keras 3 only and logs nothing for this fit.", type(self.model).__name__)
            self.session = None
            return
        self.session = FitSession(self._options(), lambda: self.model, unsynced_model(self))
        self._sessions.append(self.session)
        self.session.begin(self.params)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._open():
            self.session.batch_begin(batch)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._open():
            self.session.state.begin_epoch(epoch, self.session.progress.last_epoch)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._open():
            self.session.batch_end(batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._open():
            self.session.epoch_end(epoch, logs or {})

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._open():
            self.session.end()

    def _open(self) -> bool:
        return self.session is not None and self.session.open

    # tf_keras (Keras 2) asks its callbacks these before training; without them its fit would crash.
    def _implements_train_batch_hooks(self) -> bool:
        return True

    def _implements_test_batch_hooks(self) -> bool:
        return False

    def _implements_predict_batch_hooks(self) -> bool:
        return False


def wait_for_runs(timeout: float | None = None) -> bool:
    """Wait for the background work of every fit of this process (see ``LayerprintCallback.wait``), as
    ``mlflow.flush_async_logging`` does for MLflow's own queue.

    Args:
        timeout: seconds to wait for each fit at most (None: until done).

    Returns:
        Whether all of it is done.
    """
    return all([session.wait(timeout) for session in CACHE.open_fits()])


@atexit.register
def _end_open_fits() -> None:
    """End FAILED the runs of fits that raised and were never closed (never left RUNNING)."""
    for session in CACHE.open_fits():
        try:
            if session.open:
                session.abandon()
            session.wait()
        except Exception:  # noqa: BLE001 - interpreter exit: nothing to raise into
            pass
