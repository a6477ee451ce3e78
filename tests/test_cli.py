"""The console scripts as a user runs them: one run, a repeat with deterministic=true, bad input."""

import json

import pytest
from helpers.processes import run_cli
from mlflow.tracking import MlflowClient

from layerprint import keys


def _store(cwd):
    return MlflowClient(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")


@pytest.mark.slow
def test_single_run_then_deterministic_repeat_has_the_same_init_fingerprint(tmp_path):
    args = ["layerprint-train", "variant=shared", "layer=batchnorm", "seed=3", "device=cpu"]
    first = run_cli(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    client = _store(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("layerprint").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags[keys.TAG_VARIANT] == "shared" and run.data.tags[keys.TAG_LAYER] == "batchnorm"
    assert run.data.tags[keys.TAG_SEED] == "3" and keys.TAG_INIT_FINGERPRINT in run.data.tags
    assert run.data.tags["layerprint.device"] == "cpu" and run.data.tags[keys.TAG_DETERMINISTIC] == "false"
    fingerprints = []
    for _ in range(2):
        done = run_cli(args + ["deterministic=true"], tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        run_id = done.stdout.split("layerprint-train: run ")[1].split()[0]
        fingerprints.append(client.get_run(run_id).data.tags[keys.TAG_INIT_FINGERPRINT])
    assert fingerprints[0] == fingerprints[1]
    compared = run_cli(["layerprint", "compare", "--format", "json"], tmp_path)
    assert compared.returncode == 0, compared.stderr[-2000:]
    report = json.loads(compared.stdout)
    assert set(report) >= {"runs", "init_groups", "pairs"} and len(report["runs"]) == 3
    deterministic = [r["run_id"] for r in report["runs"] if r["init_fingerprint"] == fingerprints[0]]
    assert sorted(deterministic) in [sorted(g) for g in report["init_groups"]]


@pytest.mark.slow
def test_sweep_children_share_one_parent(tmp_path):
    done = run_cli(["layerprint-train", "-m", "variant=duplicated,shared", "layer=dense", "device=cpu",
                    "trainer.epochs=1", "data.n_samples=32"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Open the UI:" in done.stdout and "diverges at" in done.stdout
    client = _store(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("layerprint").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert parents[0].info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id, "compare")} >= {"compare/compare.json"}


QUIET_START_UP = """
import sys
from layerprint.errors import DeviceError
from layerprint.runner.runtime import quiet_native_start_up
try:
    with quiet_native_start_up():
        import tensorflow as tf
        tf.config.list_physical_devices("GPU")
        print("a line that is not TensorFlow's", file=sys.stderr)
        if sys.argv[1] == "fail":
            raise DeviceError("no GPU")
except DeviceError as error:
    print(f"layerprint-train: error: {error}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.parametrize("outcome", ["fail", "succeed"])
def test_tensorflow_start_up_lines_never_reach_the_terminal(tmp_path, outcome):
    import subprocess
    import sys

    # TF_CPP_MIN_LOG_LEVEL=2 is what the console scripts set; TensorFlow prints its start-up lines anyway
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1", "PATH": "/usr/bin:/bin"}
    loud = subprocess.run([sys.executable, "-c", "import tensorflow as tf; tf.config.list_physical_devices('GPU')"],
                          capture_output=True, text=True, env=env)
    done = subprocess.run([sys.executable, "-c", QUIET_START_UP, outcome], capture_output=True, text=True, env=env)
    assert loud.stderr.strip(), "TensorFlow printed nothing at start-up: this test shows nothing"
    if outcome == "fail":
        assert (done.returncode, done.stderr) == (2, "layerprint-train: error: no GPU\n")
    else:
        assert (done.returncode, done.stderr) == (0, "a line that is not TensorFlow's\n")
