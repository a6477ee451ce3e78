"""The tracking store: which URI, whether it answers, its experiments, and MLflow's batch limits."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from layerprint import keys
from layerprint.errors import TrackingError, first_line
from layerprint.tracking.redact import strip_credentials

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
DEFAULT_STORE_DIR = "mlruns"
DEFAULT_DB_NAME = "mlflow.db"

Point = tuple[str, float, int, int]  # (key, value, timestamp in ms, step), as the spool keeps them too


def default_tracking_uri(base_dir: str | os.PathLike[str] | None = None) -> str:
    """The embedded default store: SQLite at ``<base_dir or cwd>/mlruns/mlflow.db`` (absolute)."""
    root = Path(base_dir or os.getcwd()).resolve() / DEFAULT_STORE_DIR
    return f"sqlite:///{root / DEFAULT_DB_NAME}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: ``uri``, else ``MLFLOW_TRACKING_URI``, else the embedded default.

    A relative SQLite path is made absolute against the current directory, so that jobs which start
    elsewhere (Hydra launchers, worker processes) write to the same file.

    Args:
        uri: an explicit URI, or None/empty.

    Returns:
        The URI, with any relative ``sqlite:///`` path made absolute.

    Raises:
        TrackingError: for a URI whose scheme MLflow cannot use here.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if chosen.startswith("sqlite:///"):
        path = chosen[len("sqlite:///") :]
        if path and not path.startswith("/") and path != ":memory:":
            chosen = f"sqlite:///{Path(path).resolve()}"
        return chosen
    scheme = urlsplit(chosen).scheme
    if scheme in ("http", "https", "postgresql", "mysql", "mssql", "databricks") or scheme.startswith(
        ("postgresql+", "mysql+", "mssql+")
    ):
        return chosen
    raise TrackingError(
        f"tracking URI {strip_credentials(chosen)!r} is not supported; use sqlite:///PATH, "
        "http(s)://HOST:PORT of an MLflow server, or a database URI (postgresql://, mysql://)"
    )


def reachable(uri: str, timeout: float = 2.0) -> bool:
    """False when nothing accepts a connection at an http(s) URI's host and port; True otherwise
    (other stores are files or databases that MLflow's own call will try)."""
    import socket

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return True
    try:
        with socket.create_connection((parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def check_server_reachable(uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when nothing answers at an http(s) URI.

    Raises:
        TrackingError: nothing accepts a connection at the URI's host and port.
    """
    if not reachable(uri, timeout=5.0):
        raise TrackingError(f"cannot reach the tracking server at {strip_credentials(uri)} (no connection); "
                            "start it (README, 'Deployment') or fix tracking.uri")


def ensure_sqlite_parent(uri: str, keep: bool = True) -> None:
    """Create the folder of a SQLite store file.

    Args:
        uri: a resolved tracking URI; other stores: nothing happens.
        keep: False to only prove that the folder can be made and written: the folders this call
            created are removed again (a command line checked before anything runs leaves no trace).

    Raises:
        TrackingError: when the folder cannot be created or written.
    """
    if not uri.startswith("sqlite:///"):
        return
    folder = Path(uri[len("sqlite:///") :]).parent
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrackingError(f"cannot create the store folder {folder}: {error.strerror}") from None
    writable = os.access(folder, os.W_OK)
    if not keep:
        for created in missing:  # deepest first
            created.rmdir()
    if not writable:
        raise TrackingError(f"the store folder {folder} is not writable")


@contextlib.contextmanager
def _store_creation_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock, across processes, on the folder of a SQLite store while MLflow creates
    or upgrades it: processes that open a new store at once would otherwise run its migrations
    together and fail (``table _alembic_tmp_metrics already exists``). Other stores, or systems
    without ``fcntl``: no lock."""
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    if fcntl is None or not uri.startswith("sqlite:///"):
        yield
        return
    folder = os.open(Path(uri[len("sqlite:///") :]).parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # released when the descriptor is closed
        yield
    finally:
        os.close(folder)


# The stores this process has created or checked (a SQLite file is checked again when it is gone).
_READY_STORES: set[str] = set()


def create_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri`` whose store exists and is up to date: created and upgraded now,
    one process at a time for a SQLite file (see ``_store_creation_lock``); once per process and store
    (the check costs a lock and a query, about 7 ms, at every fit otherwise).

    Raises:
        TrackingError: the folder of a SQLite store cannot be created or written.
        Exception: whatever MLflow raises when the store cannot be opened.
    """
    from mlflow.tracking import MlflowClient

    if uri in _READY_STORES and (not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).is_file()):
        return MlflowClient(uri)
    ensure_sqlite_parent(uri)
    migrations = logging.getLogger("mlflow.store.db.utils")  # "Creating initial MLflow database tables..."
    level = migrations.level
    migrations.setLevel(logging.WARNING)
    try:
        with _store_creation_lock(uri):
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)
    finally:
        migrations.setLevel(level)
    _READY_STORES.add(uri)
    return client


def open_store(uri: str) -> Any:
    """A client for ``uri``, with the store created (and upgraded) now, once, before any job logs.

    Args:
        uri: a resolved tracking URI (``resolve_tracking_uri``).

    Returns:
        An ``MlflowClient``.

    Raises:
        TrackingError: the store cannot be opened.
    """
    check_server_reachable(uri)
    try:
        return create_client(uri)
    except TrackingError:
        raise
    except Exception as error:  # noqa: BLE001 - reported as one line
        raise TrackingError(f"cannot open the tracking store {strip_credentials(uri)}: "
                            f"{strip_credentials(first_line(error))[:300]}") from None


def default_artifact_location(uri: str, experiment_name: str) -> str | None:
    """Artifact folder for a new experiment in a SQLite store: beside the database file, under
    ``artifacts/<experiment name>``, so a whole store is one folder. None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment_name).strip(".") or "exp"
    return str(Path(uri[len("sqlite:///") :]).parent / "artifacts" / safe)


def experiment_id_for(client: Any, uri: str, name: str) -> str:
    """The id of experiment ``name``, created (with ``default_artifact_location``, and tagged as a
    model-training experiment so that MLflow's UI opens it on its runs table) if missing.

    Several processes may start at once against one store (a sweep's jobs, concurrent fits); when another
    one created the experiment between the lookup and the creation, its experiment is returned.

    Args:
        client: an ``MlflowClient`` for ``uri``.
        uri: the tracking URI, which decides the default artifact location.
        name: the experiment's name.

    Returns:
        The experiment's id.
    """
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=default_artifact_location(uri, name),
                                        tags={keys.TAG_EXPERIMENT_KIND: keys.EXPERIMENT_KIND})
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def batch_chunks(metrics: list[Point], params: dict[str, str],
                 tags: dict[str, str]) -> Iterator[tuple[list[Point], dict[str, str], dict[str, str]]]:
    """Split one batch into chunks within MLflow's limits (1,000 metrics, 100 params, 100 tags a request)."""
    param_items, tag_items = list(params.items()), list(tags.items())
    n_chunks = max(
        -(-len(metrics) // MAX_METRICS_PER_BATCH),
        -(-len(param_items) // MAX_PARAMS_PER_BATCH),
        -(-len(tag_items) // MAX_TAGS_PER_BATCH),
    )
    for i in range(n_chunks):
        yield (metrics[i * MAX_METRICS_PER_BATCH : (i + 1) * MAX_METRICS_PER_BATCH],
               dict(param_items[i * MAX_PARAMS_PER_BATCH : (i + 1) * MAX_PARAMS_PER_BATCH]),
               dict(tag_items[i * MAX_TAGS_PER_BATCH : (i + 1) * MAX_TAGS_PER_BATCH]))


def log_batch(client: Any, run_id: str, metrics: list[Point], params: dict[str, str], tags: dict[str, str]) -> None:
    """One ``MlflowClient.log_batch`` request for a chunk (see ``batch_chunks``), sent synchronously."""
    from mlflow.entities import Metric, Param, RunTag

    client.log_batch(run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in metrics],
                     params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
