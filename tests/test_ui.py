"""The MLflow UI in a real browser (headless Chromium, installed by the script when missing), on
``mlruns.example/``: the sweep's loss curves, the gap of every pair and the parent run's metrics, params and
comparison, in MLflow's model-training navigation; the report renders (a fresh sweep's printed address is
checked the same way in ``test_cli.py``). ``layerprint ui`` serves a store and prints those addresses."""

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from helpers.processes import BIN, REPO, free_port, run_cli

pytestmark = pytest.mark.slow
UI_CHECK = str(REPO / "scripts" / "ui_check.py")


def test_the_example_store_shows_its_sweep(tmp_path):
    store = tmp_path / "mlruns.example"
    shutil.copytree(REPO / "mlruns.example", store)  # the server may upgrade the file it serves
    check = run_cli(["python", UI_CHECK, str(store)], tmp_path, timeout=600)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "every check passed (12 runs of sweep 'sweep experiment=demo device=cpu')" in check.stdout


def test_layerprint_ui_serves_a_store_prints_its_latest_sweep_and_stops_on_ctrl_c(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(REPO / "mlruns.example", store)
    port = free_port()
    ui = subprocess.Popen([str(BIN / "layerprint"), "ui", "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}",
                           "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=tmp_path)
    try:
        lines = [ui.stdout.readline() for _ in range(5)]
        assert lines[0].startswith(f"layerprint ui: serving sqlite:///{store}/mlflow.db at http://127.0.0.1:{port}"), lines
        printed = dict(line.split(":", 1) for line in lines[2:])
        curves, gaps = printed["The loss curves"].strip(), printed["The gap per pair"].strip()
        assert curves.startswith(f"http://127.0.0.1:{port}/#/experiments/") and "viewStateShareKey=" in curves
        assert gaps.startswith(f"http://127.0.0.1:{port}/#/experiments/") and "/model-metrics?" in gaps
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            assert response.status == 200
    finally:
        interrupted = ctrl_c_to_another_thread(ui.pid)
        out, err = ui.communicate(timeout=60)
    assert interrupted and ui.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert wait_until_free(port)


def ctrl_c_to_another_thread(pid):
    """SIGINT to one of the process's threads other than its main one that does not block it (a terminal's
    Ctrl-C reaches whichever such thread the kernel picks, and a main thread blocked in a system call then
    never sees it); whether it had one (else the process is sent it)."""
    others = [int(task) for task in os.listdir(f"/proc/{pid}/task")
              if int(task) != pid and not _blocks_sigint(pid, int(task))]
    if not others:
        os.kill(pid, signal.SIGINT)
        return False
    ctypes.CDLL(None, use_errno=True).tgkill(pid, others[0], signal.SIGINT)
    return True


def wait_until_free(port, timeout=30):
    """Whether nothing listens on 127.0.0.1:``port`` within ``timeout`` seconds (the server and its workers
    are gone)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return True
        time.sleep(0.3)
    return False


def test_layerprint_ui_on_a_tracking_server_only_prints_its_addresses(tmp_path, mlflow_server):
    done = run_cli(["layerprint", "ui", "--tracking-uri", mlflow_server.uri], tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"No sweep in this store yet: {mlflow_server.uri}/#/experiments?workflowType=machine_learning"


def _blocks_sigint(pid, task):
    """Whether thread ``task`` of ``pid`` blocks SIGINT (jemalloc's background thread blocks every signal:
    one sent to it alone stays pending)."""
    status = open(f"/proc/{pid}/task/{task}/status").read()
    blocked = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")), 16)
    return bool(blocked & (1 << (signal.SIGINT - 1)))
