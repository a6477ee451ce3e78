"""Pins the CPU and quiet TensorFlow before Keras is imported; gives each test its own SQLite store
and spool folder; clears the Keras session between tests."""

import os

os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.pop("MLFLOW_TRACKING_URI", None)

import pytest  # noqa: E402

from helpers.processes import MlflowServer  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPRINT_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LAYERPRINT_PARENT_RUN_ID", raising=False)
    yield
    import keras

    keras.backend.clear_session(free_memory=False)  # a full collection costs 2 s once TensorFlow holds many graphs
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    # mlflow.set_experiment chooses the experiment for the process and its subprocesses (a global and
    # MLFLOW_EXPERIMENT_ID): the next test's runs go to the default experiment of its own store.
    mlflow.tracking.fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


@pytest.fixture
def cfg_train():
    """``cfg_train(*overrides, hydra=False)``: the runner's config composed as ``layerprint-train`` would
    (Hydra's compose API; with ``hydra=True`` the ``hydra`` node too, for launcher options)."""
    from layerprint.runner.overrides import compose_config

    return lambda *overrides, hydra=False: compose_config(list(overrides), return_hydra_config=hydra)


@pytest.fixture
def sqlite_uri(tmp_path):
    """A fresh SQLite store in the test's temp folder."""
    path = tmp_path / "store" / "mlflow.db"
    path.parent.mkdir()
    return f"sqlite:///{path}"


@pytest.fixture
def client(sqlite_uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(sqlite_uri)


@pytest.fixture
def postgres_uri():
    """A fresh database on the local PostgreSQL server, dropped after the test. Skips when there is
    no server, unless ``LAYERPRINT_REQUIRE_POSTGRES`` is set (CI): then the test fails."""
    from helpers import postgres

    reason = postgres.unavailable_reason()
    if reason:
        if postgres.required():
            pytest.fail(f"{reason}, and {postgres.REQUIRE_ENV} is set")
        pytest.skip(reason)
    with postgres.fresh_database() as uri:
        yield uri


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    yield server
    server.kill()
