"""Make ``mlruns.example/``: the demo sweep, logged through a local ``mlflow server``, as a small,
portable MLflow store.

Portable because the runs are logged through a server with proxied artifacts: the SQLite file holds
``mlflow-artifacts:/...`` URIs, never a path of this machine, and the server that later serves the
copy maps them to whatever ``--artifacts-destination`` it is given. The script checks the result:
at most 5 MB, and no absolute path of this machine in any file.

Run (from the repository root): ``make example``. Open it (from the repository root):
``.venv/bin/layerprint ui --tracking-uri sqlite:///mlruns.example/mlflow.db``, which serves it with
``mlflow server --backend-store-uri sqlite:///mlruns.example/mlflow.db --artifacts-destination mlruns.example/artifacts --host 127.0.0.1 --port 5000``
and prints where the sweep's runs part.
"""

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "mlruns.example"
BIN = Path(sys.executable).parent
MAX_BYTES = 5 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit("mlflow server exited before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("mlflow server did not come up")


def machine_paths(work: str) -> list[bytes]:
    """Strings that would tie the store to this machine."""
    return [s.encode() for s in {str(REPO), str(Path.home()), work, tempfile.gettempdir() + "/"} if len(s) > 1]


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", "sqlite:///mlflow.db", "--artifacts-destination",
         "artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=OUT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", server)
        with tempfile.TemporaryDirectory() as work:
            env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "CUDA_VISIBLE_DEVICES": "-1"}
            done = subprocess.run([str(BIN / "layerprint-train"), "-m", "experiment=demo", "tracking=server",
                                   f"tracking.uri=http://127.0.0.1:{port}", "device=cpu"], cwd=work, env=env)
            if done.returncode != 0:
                raise SystemExit(f"the demo sweep failed (exit {done.returncode})")
            forbidden = machine_paths(work)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    with sqlite3.connect(OUT / "mlflow.db") as db:
        db.execute("VACUUM")
    files = [p for p in OUT.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    leaks = [str(p.relative_to(OUT)) for p in files if any(s in p.read_bytes() for s in forbidden)]
    if leaks:
        raise SystemExit(f"mlruns.example holds a path of this machine in: {', '.join(leaks)}")
    if size > MAX_BYTES:
        raise SystemExit(f"mlruns.example is {size / 1e6:.1f} MB, over the 5 MB limit")
    print(f"mlruns.example: {len(files)} files, {size / 1e6:.2f} MB, no machine paths. Open it with:\n"
          f"  {BIN / 'layerprint'} ui --tracking-uri sqlite:///mlruns.example/mlflow.db")


if __name__ == "__main__":
    main()
