"""The MLflow UI in a real browser (headless Chromium, installed by the script when missing), on
``mlruns.example/``: the sweep's compare-runs page shows its runs, the parent run shows the comparison, the
report renders. (A fresh sweep's printed address is checked the same way in ``test_cli.py``.)"""

import shutil

import pytest
from helpers.processes import REPO, run_cli

pytestmark = pytest.mark.slow
UI_CHECK = str(REPO / "scripts" / "ui_check.py")


def test_the_example_store_shows_its_sweep(tmp_path):
    store = tmp_path / "mlruns.example"
    shutil.copytree(REPO / "mlruns.example", store)  # the server may upgrade the file it serves
    check = run_cli(["python", UI_CHECK, str(store)], tmp_path, timeout=600)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "every check passed (12 runs of sweep 'sweep experiment=demo device=cpu')" in check.stdout
