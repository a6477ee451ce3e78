"""The MLflow UI in a real browser (headless Chromium, installed by the script when missing): the address
a sweep prints shows its runs side by side, the parent run shows the comparison, the report renders."""

import shutil

import pytest
from helpers.processes import REPO, run_cli

pytestmark = pytest.mark.slow
UI_CHECK = str(REPO / "scripts" / "ui_check.py")


def test_the_printed_address_shows_a_fresh_sweep(tmp_path):
    done = run_cli(["layerprint-train", "-m", "variant=duplicated,shared", "layer=batchnorm", "device=cpu",
                    "trainer.epochs=2", "data.n_samples=64"], tmp_path, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    address = next(line.split("then ", 1)[1] for line in done.stdout.splitlines() if "then http" in line)
    check = run_cli(["python", UI_CHECK, str(tmp_path / "mlruns"), "--address", address], tmp_path, timeout=600)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "every check passed (2 runs" in check.stdout
    assert check.stdout.count(": ok") == 5, check.stdout


def test_the_example_store_shows_its_sweep(tmp_path):
    store = tmp_path / "mlruns.example"
    shutil.copytree(REPO / "mlruns.example", store)  # the server may upgrade the file it serves
    check = run_cli(["python", UI_CHECK, str(store)], tmp_path, timeout=600)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "every check passed (12 runs of sweep 'sweep experiment=demo device=cpu')" in check.stdout
