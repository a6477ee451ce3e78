"""Which run one fit logs into, with one way to start and one way to end whatever happened in between."""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass, field
from typing import Any

from layerprint import keys
from layerprint.cache import CACHE
from layerprint.compat import mlflow as mlflow_compat
from layerprint.errors import first_line
from layerprint.fit import parts as part
from layerprint.fit.parts import Parts
from layerprint.fit.progress import RunProgress, progress_in_store
from layerprint.tracking.sink import OFFLINE_PREFIX, RunSink
from layerprint.tracking.store import create_client, experiment_id_for, resolve_tracking_uri

logger = logging.getLogger("layerprint")
# The start's work off the training thread, the run's creation by the sink too, waits for the fit's first step to
# end or this many seconds: not beside Keras's trace of the train function, both Python under one lock.
START_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class RunOptions:
    """The callback's arguments about its run (``LayerprintCallback`` documents them)."""

    run_id: str | None = None
    experiment_name: str | None = None
    run_name: str | None = None
    nested: bool = False
    tracking_uri: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    flush_timeout: float = 30.0
    sink: Any = None
    finish_in_background: bool = False


class RunBinding:
    """The run of one fit: the caller's sink (``sink=``), the caller's run (``run_id=``, the active run), or a
    run of its own, which its sink's thread creates so that the fit never waits for the store.

    Args:
        options: the callback's run arguments.
        parts: the fit's parts (a failure to start is the ``run`` part's).

    Attributes:
        sink: where points, tags, params and files go (None until ``start``, or when it could not be made).
        owns_run: whether this binding created the run (and so ends it).
    """

    def __init__(self, options: RunOptions, parts: Parts) -> None:
        self.options, self.parts = options, parts
        self.sink: Any = None
        self.owns_run = False
        self.uri: str | None = None
        self._run_id: str | None = None  # known at start, except for a run the sink creates
        self._ended = False

    @property
    def run_key(self) -> str:
        """The run's id when known, else a key of this binding's own."""
        return self._run_id or (self.sink.run_id if self.sink is not None and self.sink.run_id else f"binding-{id(self)}")

    def active_run_id(self, timeout: float | None = None) -> str | None:
        """The run's id, waiting up to ``timeout`` seconds for a run the sink creates (``offline-...`` when the
        store could not create it)."""
        if self._run_id is None and self.sink is not None:
            return self.sink.opened_run_id(timeout)
        return self._run_id

    def start(self, folder: str) -> RunProgress:
        """Bind the run and queue its tags and params.

        Args:
            folder: where artifacts of an earlier fit are downloaded (to continue its run).

        Returns:
            What earlier fits logged into the run (empty for a new run).
        """
        import mlflow

        options = self.options
        active = mlflow.active_run()
        progress = None
        if options.sink is not None:
            self.sink, self._run_id = options.sink, options.sink.run_id
        elif options.run_id or (active is not None and not options.nested):
            self.uri = (resolve_tracking_uri(options.tracking_uri or mlflow.get_tracking_uri()) if options.run_id
                        else mlflow.get_tracking_uri())
            self._run_id = options.run_id or active.info.run_id
            self.sink = RunSink(self.uri, self._run_id, strict=self.parts.strict)
            progress = CACHE.progress_of(self._run_id) or self.parts.guard(part.RUN, progress_in_store, self.uri,
                                                                           self._run_id, folder)
        else:
            self._start_own_run(active)  # a run of its own belongs to this fit: nothing to continue, nothing kept
            self._queue_tags_and_params()
            return RunProgress()
        if progress is None:
            progress = CACHE.progress_of(self.run_key) or RunProgress()
        CACHE.keep_progress(self.run_key, progress)
        CACHE.keep_only(self.run_key)
        self._queue_tags_and_params()
        return progress

    def _queue_tags_and_params(self) -> None:
        if self.options.tags:
            self.sink.set_tags(self.options.tags)
        if self.options.params:
            self.sink.log_params(self.options.params)

    def _start_own_run(self, active: Any) -> None:
        options = self.options
        self.uri = resolve_tracking_uri(options.tracking_uri or mlflow_compat.uri_set_by_user())
        self.owns_run = True
        parent_run_id = active.info.run_id if active is not None else None
        experiment_id = None if options.experiment_name else mlflow_compat.current_experiment_id(active)
        create = functools.partial(self._create_run, self.uri, experiment_id, parent_run_id)
        if self.parts.strict:  # errors reach the caller
            self.sink = RunSink(self.uri, create(), strict=True)
            return
        offline = {"experiment_name": options.experiment_name, "run_name": options.run_name,
                   "parent_run_id": parent_run_id}
        try:
            self.sink = RunSink(self.uri, None, offline_run=offline, open_run=create, open_wait=START_WAIT_SECONDS)
        except Exception:
            with contextlib.suppress(Exception):  # a run to tag with the failure and end
                self._run_id = create()
            raise

    def _create_run(self, uri: str, experiment_id: str | None, parent_run_id: str | None,
                    tags: dict[str, str] | None = None) -> str:
        """Create the run (on the sink's thread) with ``tags`` and return its id."""
        client = create_client(uri)
        if experiment_id is None:
            experiment_id = experiment_id_for(client, uri, self.options.experiment_name)
        run_tags = {**(tags or {}), **({keys.TAG_PARENT_RUN_ID: parent_run_id} if parent_run_id else {})}
        return client.create_run(experiment_id, run_name=self.options.run_name, tags=run_tags).info.run_id

    @property
    def stats(self) -> Any:
        """What the sink did so far (``SinkStats``), or None."""
        return getattr(self.sink, "stats", None)

    # Logging, each part guarded.
    def log_metrics(self, points: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        if self.sink is not None and points:
            self.parts.guard(part.SINK, self.sink.log_metrics, points, step, timestamp_ms)

    def first_step_done(self) -> None:
        """The fit's first step is done (Keras traced its train function), or its end came first: a run the
        sink creates is created now (``RunSink.begin``)."""
        if self.sink is not None and self.sink is not self.options.sink:
            self.parts.guard(part.SINK, self.sink.begin)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.sink is not None:
            self.parts.guard(part.TAGS, self.sink.set_tags, tags)

    def log_artifact(self, path: Any, artifact_path: str) -> None:
        if self.sink is not None:
            self.sink.log_artifact(path, artifact_path)

    # The end.
    def end(self, status: str) -> None:
        """End the binding, once, whatever the path (the fit's end, a fit that raised, the interpreter's
        exit): flush a given sink; else close the sink (what the store did not take within ``flush_timeout``
        goes to the spool) and end a run of its own with ``status``. When the sink could not do it, the
        first error is tagged and the run ended through MLflow directly."""
        if self._ended:
            return
        self._ended = True
        stats, ended = None, False
        if self.sink is not None and self.sink is self.options.sink:
            self.parts.guard(part.SINK, self.sink.flush, self.options.flush_timeout)
            ended = True
        elif self.sink is not None:
            try:
                stats = self.sink.close(self.options.flush_timeout)
                if self.owns_run:
                    self.sink.finish(status, self.options.flush_timeout)
                ended = True
            except Exception as error:  # noqa: BLE001 - the fallback below still ends the run
                if self.parts.strict:
                    raise
                self.parts.report(part.SINK, error)
        if self._run_id is None and self.sink is not None:
            self._run_id = self.sink.run_id  # a run of its own, created by the sink (or its local id)
        if self._run_id and (not ended or not self.parts.ok(part.TAGS)):
            self._end_without_sink(status)
        if self.parts.strict and stats is not None and stats.errors:
            raise RuntimeError(f"layerprint: tracking errors: {stats.errors[:3]}")

    def _end_without_sink(self, status: str) -> None:
        if self._run_id.startswith(OFFLINE_PREFIX):
            return
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.uri)
            if self.parts.first_error:
                client.set_tag(self._run_id, keys.TAG_CALLBACK_ERROR, self.parts.first_error)
            if self.owns_run:
                client.set_terminated(self._run_id, status=status)
        except Exception as error:  # noqa: BLE001 - the store is gone too: nothing more can be done
            if self.parts.strict:
                raise
            logger.warning("layerprint: could not end run %s (%s)", self._run_id, first_line(error))

    def note_ended(self) -> None:
        """On the thread that called ``fit``: ``mlflow.last_active_run()`` returns a run this binding created
        and ended, as after a run that ``mlflow.start_run()`` started."""
        if self.owns_run and self._run_id and not self._run_id.startswith(OFFLINE_PREFIX):
            mlflow_compat.set_last_active_run(self._run_id)
