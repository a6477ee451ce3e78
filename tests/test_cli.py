"""The console scripts as a user runs them: one run, a repeat with deterministic=true, bad input."""

import json
import re
import subprocess

import pytest
from helpers.processes import REPO, run_cli
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
def test_sweep_children_share_one_parent_described_and_shown_by_the_printed_address(tmp_path):
    # a reproducibility check as a user would run it: the same deterministic run twice
    user_overrides = ["variant=duplicated", "deterministic=true", "layer=dense", "device=cpu", "trainer.epochs=1",
                      "data.n_samples=32"]
    done = run_cli(["layerprint-train", "-m", *user_overrides, "tracking.run_name=first,second",
                    "hydra.job.chdir=false"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Open the UI:" in done.stdout and "diverges at" in done.stdout
    client = _store(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("layerprint").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and sorted(children) == ["first", "second"]
    (parent,) = parents
    assert {c.data.tags["mlflow.parentRunId"] for c in children.values()} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "compare")} >= {"compare/compare.json",
                                                                                       "compare/report.html"}
    # the parent is named after the user's own overrides: not where runs are logged, not how they are launched
    assert parent.info.run_name == "sweep " + " ".join(user_overrides)
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags[keys.TAG_EXPERIMENT_KIND] == keys.EXPERIMENT_KIND  # the UI opens the runs table
    # the parent holds the comparison as MLflow data: the pair's loss gap at every step, the sweep's overrides
    gap = keys.pair_key(keys.GAP_PREFIX, "first", "second")
    assert [(m.step, m.value) for m in client.get_metric_history(parent.info.run_id, gap)] == [(1, 0.0), (2, 0.0)]
    assert parent.data.metrics[keys.SWEEP_RUNS] == 2 and parent.data.metrics[keys.SWEEP_INIT_GROUPS] == 1
    assert parent.data.params["tracking.run_name"] == "first,second" and parent.data.params["variant"] == "duplicated"
    # the printed addresses open the runs' loss curves (a view saved on the experiment) and the gap charts
    printed = dict(re.match(r"(The [a-z ]+):\s+(\S+)$", line).groups() for line in done.stdout.splitlines()
                   if line.startswith("The "))
    curves = printed["The loss curves"]
    assert curves == (f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
                      f"&compareRunsMode=CHART&viewStateShareKey={parent.info.run_id}")
    assert f"mlflow.sharedViewState.{parent.info.run_id}" in experiment.tags
    assert printed["The gap per pair"].endswith(f"/runs/{parent.info.run_id}/model-metrics?workflowType=machine_learning")
    # every command it prints works when pasted into a new shell, the virtual environment not active
    compare_again = next(line.split(":", 1)[1].strip() for line in done.stdout.splitlines() if line.startswith("Compare again"))
    pasted = subprocess.run(compare_again, shell=True, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert pasted.returncode == 0 and "diverges at" in pasted.stdout, pasted.stderr[-2000:]
    assert "/bin/layerprint ui --tracking-uri sqlite:///" in done.stdout
    # descriptions: the parent's is the comparison, each run's says what it is and what it starts equal to
    note = parent.data.tags[keys.TAG_NOTE]
    assert note.startswith("**Where the runs part**: [the loss curves of the 2 runs](#/experiments/")
    assert "Comparison of this sweep's 2 runs" in note and "G1: " in note
    assert re.search(r"\| (first|second) \| (first|second) \| never \| never \|", note), note
    assert f"get-artifact?path=compare%2Floss_curves.png&run_uuid={parent.info.run_id}" in note
    first = children["first"].data.tags[keys.TAG_NOTE]
    assert "| starts bitwise-identical to | second |" in first and "| first non-finite loss | none |" in first
    assert f"`{children['first'].data.tags[keys.TAG_INIT_FINGERPRINT][:16]}`" in first
    assert "| variant | `duplicated` |" in first and "| seed | 0 |" in first
    # `layerprint compare` with no selection compares the store's latest sweep
    latest = run_cli(["layerprint", "compare", "--format", "json"], tmp_path)
    assert latest.returncode == 0 and sorted(r["run_name"] for r in json.loads(latest.stdout)["runs"]) == ["first", "second"]
    # and in a real browser, the printed address shows the loss curves of both runs (scripts/ui_check.py)
    check = run_cli(["python", str(REPO / "scripts" / "ui_check.py"), str(tmp_path / "mlruns"), "--address", curves],
                    tmp_path, timeout=600)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "every check passed (2 runs" in check.stdout and check.stdout.count(": ok") == 5, check.stdout


def test_a_single_run_is_described(tmp_path):
    done = run_cli(["layerprint-train", "variant=shared", "layer=dense", "device=cpu", "trainer.epochs=1",
                    "data.n_samples=32"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    client = _store(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("layerprint").experiment_id])
    note = run.data.tags[keys.TAG_NOTE]
    assert "| shared layers | `rep` (2 call sites) |" in note and "(not compared yet)" in note


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


@pytest.mark.parametrize("entry, argv, exits", [
    ("layerprint.runner.train", ["layerprint-train", "--cfg", "job"], False),  # through Hydra
    ("layerprint.cli", ["layerprint", "compare", "--experiment", "x", "--tracking-uri", "sqlite:///{tmp}/none.db"], True),
])
def test_a_command_leaves_its_objects_out_of_the_exits_garbage_collections(tmp_path, entry, argv, exits):
    # Python's exit collects the cycles among every object still alive (0.9 to 1.7 s of a sweep's end on
    # the 2-core machine); both commands freeze them first, on the way out through an error too.
    import subprocess
    import sys

    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = (f"import gc, sys\nfrom {entry} import main\nsys.argv = {argv!r}\nexited = False\n"
            "try:\n    main()\nexcept SystemExit:\n    exited = True\n"
            "print(exited, gc.get_freeze_count() > 10000)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.stdout.strip().splitlines()[-1] == f"{exits} True", done.stderr[-2000:]
