"""Check, in a real browser, that the MLflow UI shows a sweep where its runs part, as layerprint prints it.

Serves a store folder (``mlflow.db`` and ``artifacts/``, as ``./mlruns`` of ``make demo`` or
``mlruns.example/``) with MLflow's tracking server on a free port of 127.0.0.1 (as ``layerprint ui`` does),
then opens pages in headless Chromium (driven by Playwright, which waits until a page shows what is checked)
and checks what they show, in MLflow's model-training navigation (none of the GenAI navigation's items):

1. the address the sweep printed for its loss curves (``--address``; by default the one layerprint prints
   for the store's latest sweep): a ``train/loss`` line chart and every run name of the sweep;
2. the parent run's metric charts: the loss gap of the compared pairs (``gap/<run a>__<run b>``);
3. the parent run's page: metrics and params (not "Metrics (0)"), and its description, the comparison;
4. the parent's ``compare/report.html`` in MLflow's artifact viewer (a frame), and the page itself as
   the server hands it out: the run names and the embedded plots.

With ``--screenshots DIR`` it also writes PNG screenshots of those pages (``ui-divergence.png`` is the
first). MLflow opens its Assistant panel on a first visit to a server on 127.0.0.1 (a user closes it once and
it stays closed): the pages here are opened as after that. Chromium comes from Debian's ``chromium``
package; the script installs it (apt-get) when missing.

Run: ``.venv/bin/python scripts/ui_check.py mlruns.example [--address URL] [--screenshots docs]``.
Exit status 0 when every check passed; 1 with one line per failed check otherwise.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from mlflow.tracking import MlflowClient

from layerprint import keys
from layerprint.analysis.addresses import comparison_addresses
from layerprint.analysis.runs import latest_sweep
from layerprint.compat.mlflow import run_artifact_address
from layerprint.tracking import server as tracking_server



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


PAGE_TIMEOUT_MS = 90_000  # what a page may take to show everything checked (the server is busy at first)
ASSISTANT_CLOSED = "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')"


GENAI_NAVIGATION = ["Judges", "Sessions", "Evaluation runs"]  # items of the navigation that is not model training


def check(failures: list[str], label: str, url: str, page: object, expected: list[str], absent: list[str],
          frames: int = 0) -> None:
    """Wait until ``page`` (a Playwright page) shows every ``expected`` text and holds at least ``frames``
    iframes; then note a failure for what is missing, or for any ``absent`` text it shows."""
    try:
        page.wait_for_function("texts => texts.every(text => document.body.innerText.includes(text))",
                               arg=expected, timeout=PAGE_TIMEOUT_MS)
        if frames:
            page.wait_for_selector("iframe", timeout=PAGE_TIMEOUT_MS)
    except Exception:  # noqa: BLE001 - what is missing is reported below
        pass
    text = page.evaluate("document.body.innerText")
    missing = [item for item in expected if item not in text]
    if page.locator("iframe").count() < frames:
        missing.append(f"{frames} iframe(s)")
    shown = [item for item in absent if item in text]
    verdict = "ok" if not missing and not shown else f"MISSING {missing} SHOWN {shown}"
    print(f"ui_check: {label:11} {url[:110]}: {verdict}")
    if missing or shown:
        failures.append(f"{label}: {url} does not show {missing} or shows {shown}")


def open_pages(browser: str, pages: dict[str, tuple[str, list[str], int]], failures: list[str],
               screenshots: Path | None) -> None:
    """Open each page in headless Chromium and check it (``check``); screenshot it into ``screenshots``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chrome = playwright.chromium.launch(executable_path=browser, args=["--no-sandbox", "--disable-gpu"])
        try:
            for label, (url, expected, height) in pages.items():
                context = chrome.new_context(viewport={"width": 1600, "height": height})
                context.add_init_script(ASSISTANT_CLOSED)
                page = context.new_page()
                page.goto(url)
                check(failures, label, url, page, expected, GENAI_NAVIGATION, frames=1 if label == "report" else 0)
                if screenshots:
                    screenshots.mkdir(parents=True, exist_ok=True)
                    page.wait_for_timeout(1000)  # the charts' last transitions
                    page.screenshot(path=str(screenshots / f"ui-{label}.png"))
                context.close()
        finally:
            chrome.close()


def sweep_of(client: MlflowClient) -> tuple[object, list[object]]:
    """The store's most recent sweep parent run and its child runs."""
    parent = latest_sweep(client)
    if parent is None:
        raise SystemExit("ui_check: no sweep parent run in this store")
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
    parent, children = sweep_of(MlflowClient(f"sqlite:///{args.store.resolve() / 'mlflow.db'}"))
    experiment_id, parent_id = parent.info.experiment_id, parent.info.run_id
    names = sorted({run.info.run_name for run in children})
    failures = []
    gap_keys = sorted(key for key in parent.data.metrics if key.startswith(keys.GAP_PREFIX))
    with tempfile.TemporaryDirectory() as tmp:
        process, server = tracking_server.serve(
            f"sqlite:///{args.store.resolve() / 'mlflow.db'}", tracking_server.free_port(5000),
            args.store.resolve() / "artifacts", Path(tmp) / "server.log")
        try:
            curves, gaps, parent_page = comparison_addresses(server, experiment_id, parent_id)
            if args.address:
                printed = urlsplit(args.address)
                curves = f"{server}{printed.path or '/'}" + (f"#{printed.fragment}" if printed.fragment else "")
            pages = {
                "divergence": (curves, ["train/loss", *names], 1000),
                "gaps": (gaps, [gap_keys[0][len(keys.GAP_PREFIX):]] if gap_keys else ["gap/"], 1400),
                "parent-run": (parent_page, ["Where the runs part", "Comparison of this sweep",
                                             f"Metrics ({len(parent.data.metrics)})",
                                             f"Parameters ({len(parent.data.params)})"], 1300),
                "report": (run_artifact_address(server, experiment_id, parent_id, "compare/report.html"),
                           ["compare/report.html"], 1200),
            }
            open_pages(browser, pages, failures, args.screenshots)
            # what the artifact viewer's frame shows: the page itself, as the server hands it out
            url = f"{server}/get-artifact?path=compare/report.html&run_uuid={parent_id}"
            with urllib.request.urlopen(url, timeout=30) as response:
                page = response.read().decode("utf-8")
            missing = [text for text in names + ["data:image/png;base64,"] if text not in page]
            print(f"ui_check: {'report.html':11} {url[:110]}: {'ok' if not missing else f'MISSING {missing}'}")
            if missing:
                failures.append(f"report.html: {url} does not hold {missing}")
        finally:
            tracking_server.stop(process)
    if failures:
        print("\n".join(f"ui_check: FAILED {line}" for line in failures), file=sys.stderr)
        sys.exit(1)
    print(f"ui_check: every check passed ({len(names)} runs of sweep {parent.info.run_name!r})")


if __name__ == "__main__":
    main()
