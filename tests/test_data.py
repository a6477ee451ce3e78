"""The user's own .npz: it trains, and each kind of bad file gets one line and no run."""

import numpy as np
import pytest
from helpers.processes import run_cli
from mlflow.tracking import MlflowClient

from layerprint.runner.data import input_shape, synthetic


def test_synthetic_data_is_deterministic_and_shaped_per_layer():
    from types import SimpleNamespace

    layer = SimpleNamespace(kind="conv2d", width=4, image_size=6, timesteps=5)
    x1, y1 = synthetic(layer, 8, seed=3)
    x2, y2 = synthetic(layer, 8, seed=3)
    assert x1.shape == (8, *input_shape(layer)) == (8, 6, 6, 4) and y1.shape == (8, 1)
    np.testing.assert_array_equal(x1, x2)
    assert not np.array_equal(x1, synthetic(layer, 8, seed=4)[0])


@pytest.mark.slow
def test_npz_with_other_feature_count_and_class_labels_trains(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mine.npz", x=rng.normal(size=(40, 5)).astype("float32"), y=rng.integers(0, 3, 40))
    done = run_cli(["layerprint-train", "data=npz", f"data.path={tmp_path / 'mine.npz'}", "device=cpu",
                    "trainer.epochs=1"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("layerprint").experiment_id])
    assert run.info.status == "FINISHED" and "epoch/accuracy" in run.data.metrics
    assert run.data.params["data.source"] == "npz"


@pytest.mark.parametrize("arrays, layer, fragment", [
    (None, "dense", "does not exist"),
    ({"x": np.zeros((4, 3))}, "dense", "lacks array(s) y"),
    ({"x": np.zeros((4, 3)), "y": np.zeros(4)}, "lstm", "layer=lstm needs 3-D x"),
    ({"x": np.zeros((4, 3)), "y": np.zeros(5)}, "dense", "same number (>= 2) of samples"),
    ("garbage", "dense", "not a readable .npz archive"),
])
def test_bad_npz_is_one_line_and_no_run(arrays, layer, fragment, tmp_path):
    path = tmp_path / "bad.npz"
    if arrays == "garbage":
        path.write_text("not a zip")
    elif arrays is not None:
        np.savez(path, **arrays)
    done = run_cli(["layerprint-train", "data=npz", f"data.path={path}", f"layer={layer}", "device=cpu"], tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert fragment in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "mlruns").exists()
