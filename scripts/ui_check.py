"""Check, in a real browser, that the MLflow UI shows a sweep as layerprint prints it.

Serves a store folder (``mlflow.db`` and ``artifacts/``, as ``./mlruns`` of ``make demo`` or
``mlruns.example/``) with MLflow's tracking server on a free port of 127.0.0.1, then opens pages in headless
Chromium (``--dump-dom``, after the page's scripts have run) and checks what they show:

1. the address the sweep printed (``--address``; by default the one layerprint prints for the store's
   latest sweep, MLflow's compare-runs page of its runs): every run name of the sweep;
2. the experiment's runs table: the sweep's parent run;
3. the parent run's page: its description, the comparison;
4. the parent's ``compare/report.html`` in MLflow's artifact viewer (a frame), and the page itself as
   the server hands it out: the run names and the embedded plots.

With ``--screenshots DIR`` it also writes PNG screenshots of those pages. Chromium comes from Debian's
``chromium`` package; the script installs it (apt-get) when it is missing.

Run: ``.venv/bin/python scripts/ui_check.py mlruns.example [--address URL] [--screenshots docs]``.
Exit status 0 when every check passed; 1 with one line per failed check otherwise.
"""

import argparse
import html
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from mlflow.tracking import MlflowClient

from layerprint import keys
from layerprint.runner.sweep import compare_runs_address

BIN = Path(sys.executable).parent
PAGE_BUDGET_MS = 25000  # virtual time Chromium gives a page's scripts and requests before the dump


def chromium() -> str:
    """The Chromium binary, installed from Debian's packages when missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit("ui_check: Chromium is missing; install Debian's `chromium` package")
    print("ui_check: installing Chromium (apt-get install chromium)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0 and command[1] == "install":
            raise SystemExit(f"ui_check: could not install Chromium: {done.stderr.strip()[-300:]}")
    return shutil.which("chromium") or "chromium"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(store: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """Start the tracking server on the store (bound to 127.0.0.1); returns the process and its address."""
    port = _free_port()
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store.resolve() / 'mlflow.db'}",
         "--artifacts-destination", str(store.resolve() / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"ui_check: the tracking server exited: {log.read_text()[-1000:]}")
        try:
            with urllib.request.urlopen(f"{address}/health", timeout=2):
                return process, address
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("ui_check: the tracking server did not come up in 90 s")


def dump_dom(browser: str, url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (headless Chromium)."""
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={profile}", f"--virtual-time-budget={PAGE_BUDGET_MS}",
                           "--window-size=1600,1000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=180)
    return done.stdout


def screenshot(browser: str, url: str, path: Path, profile: Path, height: int = 1000) -> None:
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                    f"--user-data-dir={profile}", f"--virtual-time-budget={PAGE_BUDGET_MS}",
                    f"--window-size=1600,{height}", f"--screenshot={path}", url],
                   capture_output=True, timeout=180, check=True)


def check(failures: list[str], label: str, url: str, page: str, expected: list[str]) -> None:
    """Print whether ``page`` shows every ``expected`` text; note a failure when not."""
    missing = [text for text in expected if text not in page]
    print(f"ui_check: {label:11} {url[:110]}: {'ok' if not missing else f'MISSING {missing}'}")
    if missing:
        failures.append(f"{label}: {url} does not show {missing}")


def latest_sweep(client: MlflowClient) -> tuple[object, list[object]]:
    """The store's most recent sweep parent run and its child runs."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, filter_string=f"tags.`{keys.TAG_SWEEP_DIR}` != ''",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise SystemExit("ui_check: no sweep parent run in this store")
    parent = parents[0]
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`{keys.TAG_PARENT_RUN_ID}` = '{parent.info.run_id}'",
                                  max_results=5000)
    return parent, children


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path, help="folder with mlflow.db and artifacts/")
    parser.add_argument("--address", help="the UI address the sweep printed (its host and port are replaced by "
                        "this check's server)")
    parser.add_argument("--screenshots", type=Path, help="write PNG screenshots of the checked pages here")
    args = parser.parse_args()
    if not (args.store / "mlflow.db").is_file():
        raise SystemExit(f"ui_check: {args.store / 'mlflow.db'} does not exist")
    browser = chromium()
    parent, children = latest_sweep(MlflowClient(f"sqlite:///{args.store.resolve() / 'mlflow.db'}"))
    experiment_id, parent_id = parent.info.experiment_id, parent.info.run_id
    names = sorted({run.info.run_name for run in children})
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        process, server = serve(args.store, Path(tmp) / "server.log")
        try:
            if args.address:
                printed = urlsplit(args.address)
                sweep_page = f"{server}{printed.path or '/'}" + (f"#{printed.fragment}" if printed.fragment else "")
            else:
                sweep_page = compare_runs_address(server, experiment_id, [run.info.run_id for run in children])
            pages = {
                "sweep": (sweep_page, names, 1100),
                "experiment": (f"{server}/#/experiments/{experiment_id}/runs", [parent.info.run_name], 800),
                "parent-run": (f"{server}/#/experiments/{experiment_id}/runs/{parent_id}",
                               ["Comparison of this sweep"], 1500),
                "report": (f"{server}/#/experiments/{experiment_id}/runs/{parent_id}/artifacts/compare/report.html",
                           ["compare/report.html", "<iframe"], 1200),
            }
            for label, (url, expected, height) in pages.items():
                dom = html.unescape(dump_dom(browser, url, Path(tmp) / f"profile-{label}"))
                check(failures, label, url, dom, expected)
                if args.screenshots:
                    args.screenshots.mkdir(parents=True, exist_ok=True)
                    screenshot(browser, url, args.screenshots / f"ui-{label}.png", Path(tmp) / f"shot-{label}", height)
            # what the artifact viewer's frame shows: the page itself, as the server hands it out
            url = f"{server}/get-artifact?path=compare/report.html&run_uuid={parent_id}"
            with urllib.request.urlopen(url, timeout=30) as response:
                page = response.read().decode("utf-8")
            check(failures, "report.html", url, page, names + ["data:image/png;base64,"])
        finally:
            os.killpg(process.pid, 9)
            process.wait(timeout=30)
    if failures:
        print("\n".join(f"ui_check: FAILED {line}" for line in failures), file=sys.stderr)
        sys.exit(1)
    print(f"ui_check: every check passed ({len(names)} runs of sweep {parent.info.run_name!r})")


if __name__ == "__main__":
    main()
