"""A hyperparameter loop keeps no more with the callback than without it, plus 10 %: each fit's run, record
and traced row kernel go when the fit ends (``tests/helpers/memory_loop.py``)."""

import subprocess
import sys
from pathlib import Path

import pytest

LOOP = Path(__file__).parent / "helpers" / "memory_loop.py"
FITS, WARMUP, DEPTH = 100, 5, 4
ALLOWED = 1.10


@pytest.mark.slow
@pytest.mark.serial  # its two loops take both cores: alone, 3 min; beside other tests, 8
def test_a_hundred_fresh_fits_grow_the_process_no_more_than_without_the_callback_plus_10_percent(tmp_path):
    loops = {}
    for mode in ("with", "without"):  # side by side: one core each
        store = tmp_path / mode
        store.mkdir()
        loops[mode] = subprocess.Popen(
            [sys.executable, str(LOOP), str(FITS), str(WARMUP), mode, f"sqlite:///{store}/mlflow.db", str(DEPTH)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=store)
    grew = {}
    for mode, loop in loops.items():
        out, err = loop.communicate(timeout=1200)
        assert loop.returncode == 0, err[-3000:]
        grew[mode] = int(out.split("grew")[-1].split()[0])
    print(f"resident set growth over {FITS} fits: with {grew['with'] / 1e6:.0f} MB, "
          f"without {grew['without'] / 1e6:.0f} MB")
    assert grew["without"] > 0  # the loop itself grows (TensorFlow keeps each fit's traced graphs)
    assert grew["with"] <= ALLOWED * grew["without"], grew
