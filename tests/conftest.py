"""Pins the CPU and quiet TensorFlow before Keras is imported; gives each test its own SQLite store
and spool folder; clears the Keras session between tests."""

import os
import socket
import subprocess
import sys
from pathlib import Path

os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.pop("MLFLOW_TRACKING_URI", None)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPRINT_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LAYERPRINT_PARENT_RUN_ID", raising=False)
    yield
    import keras

    keras.backend.clear_session()
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(args, cwd, env=None, timeout=300):
    """Run a console script of this environment; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
