"""Serving a store with MLflow's own tracking server and UI, bound to 127.0.0.1 (``layerprint ui``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from layerprint.errors import TrackingError
from layerprint.tracking.redact import strip_credentials


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port`` and it can be bound."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(preferred: int) -> int:
    """``preferred`` when it is free, else a port the system picks."""
    if port_is_free(preferred):
        return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(uri: str, port: int, artifacts: Path, log: Path, timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow server`` on the store ``uri`` at 127.0.0.1:``port``, in a process group of its own (its
    workers stop with it), and wait until it answers.

    Args:
        uri: the backend store (``sqlite:///...``, ``postgresql://...``).
        port: the port.
        artifacts: where the server keeps artifacts of runs it creates (``--artifacts-destination``); runs
            whose artifacts are in local folders are served from there.
        log: the server's output goes here.
        timeout: seconds to wait for it.

    Returns:
        The server process and its address.

    Raises:
        TrackingError: the server exited or did not answer in time (with the last line of its log).
    """
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--artifacts-destination",
               str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log.open("ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            lines = log.read_text(errors="replace").strip().splitlines() or ["no output"]
            raise TrackingError(f"mlflow server could not serve {strip_credentials(uri)}: {strip_credentials(lines[-1])}")
        try:
            with urllib.request.urlopen(f"{address}/health", timeout=2):
                return process, address
        except OSError:
            time.sleep(0.2)
    stop(process)
    raise TrackingError(f"mlflow server did not answer on {address} within {timeout:g} s (its log: {log})")


def stop(process: subprocess.Popen) -> None:
    """Stop a server started by ``serve``, and its workers."""
    if process.poll() is None:
        os.killpg(process.pid, 9)
    process.wait(timeout=30)
