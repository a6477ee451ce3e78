"""Real processes for tests: free loopback ports, this environment's console scripts, an ``mlflow server``."""

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float) -> None:
    """Return once something listens on 127.0.0.1:``port``; RuntimeError after ``timeout`` seconds."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def run_cli(args, cwd, env=None, timeout=300):
    """Run a console script of this environment; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


class MlflowServer:
    """A real ``mlflow server`` subprocess on 127.0.0.1 with proxied artifacts; its backend store is a
    SQLite file under ``root`` unless ``backend_uri`` names another (a PostgreSQL database)."""

    def __init__(self, root, port=None, backend_uri=None):
        self.root = Path(root)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend_uri = backend_uri or f"sqlite:///{self.root / 'mlflow.db'}"
        self.process = None

    def start(self, timeout=90):
        import time
        import urllib.request

        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", self.backend_uri,
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=open(self.root / "server.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("mlflow server did not come up")

    def kill(self, sig=None):
        """Stop the server and every process it started (SIGKILL by default)."""
        import signal

        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig or signal.SIGKILL)
            self.process.wait(timeout=30)


SITES = {"jax": "jax-site", "torch": "torch-site", "tf_keras": "tfkeras-site"}  # where `make test` installs them


def run_on_backend(backend: str, script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``script`` (``python -c``) with the Keras backend ``backend`` (``jax``, ``torch``) or with Keras 2
    (``tf_keras``), installed by `make test` outside site-packages; assert that it succeeds (showing its
    stderr when not)."""
    site = Path(sys.prefix) / SITES[backend]
    assert site.is_dir(), f"{backend} is needed: `make test` installs it into {site}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    if backend != "tf_keras":
        env["KERAS_BACKEND"] = backend
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done
