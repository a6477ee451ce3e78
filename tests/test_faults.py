"""Fault tests against real processes: a tracking server killed and restarted, an unreachable
server, SIGINT, NaN, 30+ bad inputs, four concurrent writers, credentials, hostile layer names."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from helpers.bad_input import bad_inputs, write_bad_files
from helpers.processes import BIN, REPO, MlflowServer, free_port, run_cli
from mlflow.tracking import MlflowClient

from layerprint import LayerprintCallback, keys
from layerprint.tracking.store import create_client, experiment_id_for

pytestmark = pytest.mark.slow
FIT_SCRIPT = str(Path(__file__).with_name("fit_script.py"))
BN_MEAN = "bn/bn/moving_mean/mean"


def _fit(uri, experiment, run_id_file, *extra, env=None):
    return subprocess.Popen([sys.executable, FIT_SCRIPT, uri, experiment, str(run_id_file), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _wait_for(predicate, timeout=120, what="condition", process=None):
    """Poll ``predicate`` until it returns something true; fail at once, with its stderr, when ``process``
    (the one that should bring the condition about) has exited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process exited ({process.returncode}) before {what}: "
                                 f"{process.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


ARTIFACTS = {"layerprint/" + name for name in ("fingerprints_initial.json", "fingerprints_final.json", "sharing.json",
                                                "batchnorm.npz", "weights_final.npz", "steps.parquet")}


def _spool_files(tmp_path):
    root = tmp_path / "spool"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.fixture(params=["sqlite", "postgresql"])
def server_backend(request):
    """The backend store of the tracking server a test starts: None (SQLite) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_uri")


def test_server_killed_mid_fit_and_restarted_loses_nothing_and_duplicates_nothing(tmp_path, server_backend):
    server = MlflowServer(tmp_path / "server", backend_uri=server_backend).start()
    run_id_file = tmp_path / "run_id"
    fit = _fit(server.uri, "faults", run_id_file, "--steps", "60", "--sleep", "0.05")
    try:
        client = MlflowClient(server.uri)
        run_id = _wait_for(lambda: run_id_file.exists() and run_id_file.read_text(), what="the run")
        _wait_for(lambda: len(_steps(client, run_id, "train/loss")) >= 5, what="first points")
        server.kill(signal.SIGKILL)
        time.sleep(3)  # training goes on while nothing listens
        server = MlflowServer(tmp_path / "server", port=server.port, backend_uri=server_backend).start()
        out, err = fit.communicate(timeout=300)
    except BaseException:
        server.kill()
        raise
    finally:
        fit.kill()
    try:  # read back from the restarted server
        assert fit.returncode == 0, err[-3000:]
        client = MlflowClient(server.uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        every_step = list(range(1, 121))  # 60 steps x 2 epochs, each exactly once
        assert _steps(client, run_id, "train/loss") == every_step
        assert _steps(client, run_id, BN_MEAN) == every_step
        assert _steps(client, run_id, "epoch/loss") == [1, 2]
        assert keys.TAG_FINAL_FINGERPRINT in run.data.tags
        assert {a.path for a in client.list_artifacts(run_id, "layerprint")} >= {"layerprint/fingerprints_final.json"}
        assert not [p for p in _spool_files(tmp_path) if p.suffix == ".jsonl"]
    finally:
        server.kill()


def test_unreachable_server_spools_with_one_warning_and_sync_sends_once(tmp_path, sqlite_uri, client):
    dead = f"http://127.0.0.1:{free_port()}"
    fit = _fit(dead, "offline", tmp_path / "run_id", "--steps", "10",
               env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"})
    out, err = fit.communicate(timeout=300)
    assert fit.returncode == 0 and out.startswith("done"), err[-3000:]
    warnings = [line for line in err.splitlines() if "layerprint" in line and "spool" in line]
    assert len(warnings) == 1, warnings
    spooled = _spool_files(tmp_path)
    assert {p.name for p in spooled} >= {"fingerprints_initial.json", "fingerprints_final.json", "sharing.json",
                                         "batchnorm.npz", "weights_final.npz", "steps.parquet"}
    first = run_cli(["layerprint", "sync", "--all", "--tracking-uri", sqlite_uri], tmp_path)
    # the 6 artifacts, steps.parquet once per epoch end (2)
    assert first.returncode == 0 and "1 run(s)" in first.stdout and "7 artifact(s)" in first.stdout, first.stdout
    (run,) = client.search_runs([client.get_experiment_by_name("offline").experiment_id])
    assert run.info.status == "FINISHED"
    assert _steps(client, run.info.run_id, "train/loss") == list(range(1, 21))
    assert {a.path for a in client.list_artifacts(run.info.run_id, "layerprint")} == ARTIFACTS
    second = run_cli(["layerprint", "sync", "--all", "--tracking-uri", sqlite_uri], tmp_path)
    assert second.returncode == 0 and "0 run(s), 0 metric point(s), 0 artifact(s)" in second.stdout
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert _steps(client, run.info.run_id, "train/loss") == list(range(1, 21))


def test_sigint_ends_the_run_killed_with_its_points_and_exit_130(tmp_path):
    store = tmp_path / "mlruns" / "mlflow.db"
    train = subprocess.Popen([str(BIN / "layerprint-train"), "layer=dense", "device=cpu", "trainer.epochs=500",
                              "data.n_samples=256"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        clients = []

        def running_run():
            if not store.exists():
                return None
            if not clients:  # under the store's creation lock: a plain client that opened the file while
                clients.append(create_client(f"sqlite:///{store}"))  # the job created it would migrate it too
            client = clients[0]
            if client.get_experiment_by_name("layerprint") is None:
                return None
            runs = client.search_runs([client.get_experiment_by_name("layerprint").experiment_id])
            return runs[0].info.run_id if runs and len(_steps(client, runs[0].info.run_id, "train/loss")) >= 20 else None

        run_id = _wait_for(running_run, timeout=180, what="a running run with points", process=train)
        client = clients[0]
        seen = len(_steps(client, run_id, "train/loss"))
        train.send_signal(signal.SIGINT)
        out, err = train.communicate(timeout=120)
    finally:
        train.kill()
    assert train.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err.strip().splitlines()[-1]
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    steps = _steps(client, run_id, "train/loss")
    assert len(steps) >= seen and steps == list(range(1, len(steps) + 1))


def test_nan_weights_do_not_crash_the_callback_and_end_the_run_failed(tmp_path, sqlite_uri, client):
    finals = []
    for i in range(2):
        fit = _fit(sqlite_uri, "nan", tmp_path / f"run_id{i}", "--steps", "10", "--nan-at", "4")
        out, err = fit.communicate(timeout=300)
        assert fit.returncode == 0 and "\ndone " in out, err[-3000:]
        assert json.loads(out.split("\ndone ", 1)[1])["last_step"] == 5  # TerminateOnNaN stopped at the first NaN loss
        run = client.get_run((tmp_path / f"run_id{i}").read_text())
        assert run.info.status == "FAILED"
        assert run.data.tags[keys.TAG_FAILURE] == "loss became non-finite at step 5"
        assert _steps(client, run.info.run_id, "train/loss") == [1, 2, 3, 4, 5]
        finals.append(run.data.tags[keys.TAG_FINAL_FINGERPRINT])
    assert finals[0] == finals[1]  # fingerprints of NaN weights are deterministic


@pytest.fixture(scope="module")
def compare_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(np.ones((4, 2)), np.ones(4), verbose=0, callbacks=[LayerprintCallback(experiment_name="layerprint")])
    mlflow.set_tracking_uri(None)
    return uri


def _tensorflow_that_cannot_be_imported(root):
    """A folder to put first on PYTHONPATH: importing tensorflow from it fails with a known message."""
    (root / "tensorflow").mkdir(parents=True)
    (root / "tensorflow" / "__init__.py").write_text('raise ImportError("TENSORFLOW WAS IMPORTED")\n')
    return str(root)


def test_bad_input_table_one_line_nonzero_no_traceback_no_running_run(tmp_path, compare_store):
    # Every case is checked before TensorFlow is imported: TensorFlow cannot be imported here.
    write_bad_files(tmp_path)
    cases = bad_inputs(tmp_path)
    assert len(cases) >= 40
    no_tensorflow = _tensorflow_that_cannot_be_imported(tmp_path / "no-tf")

    def check(index_case):
        index, (args, fragment, _) = index_case
        cwd = tmp_path / f"case{index}"
        cwd.mkdir()
        env = {"MLFLOW_TRACKING_URI": compare_store} if args[0] == "layerprint" and "--tracking-uri" not in args else {}
        done = run_cli(args, cwd, env={**env, "PYTHONPATH": no_tensorflow}, timeout=180)
        problems = []
        if done.returncode == 0:
            problems.append("exit 0")
        if "Traceback" in done.stderr or "TENSORFLOW WAS IMPORTED" in done.stderr:
            problems.append("traceback or TensorFlow imported")
        lines = done.stderr.strip().splitlines()
        if not lines or fragment not in lines[-1] or ": error: " not in lines[-1]:
            problems.append(f"last line {lines[-1] if lines else ''!r}")
        if len((done.stdout + done.stderr).strip().splitlines()) > 2:
            problems.append(f"{len((done.stdout + done.stderr).strip().splitlines())} lines printed")
        store = cwd / "mlruns" / "mlflow.db"
        if store.exists():  # bad input is refused before any run exists: none is left, RUNNING or not
            client = MlflowClient(f"sqlite:///{store}")
            if client.search_runs([e.experiment_id for e in client.search_experiments()]):
                problems.append("a run was created")
        return (" ".join(args[:3]), problems) if problems else None

    with ThreadPoolExecutor(max_workers=3) as pool:
        failures = [f for f in pool.map(check, enumerate(cases)) if f]
    assert not failures, failures
    client = MlflowClient(compare_store)
    assert all(r.info.status == "FINISHED" for r in client.search_runs([e.experiment_id for e in client.search_experiments()]))


@pytest.mark.serial  # a wall-clock bound: `make test` runs it alone, after the tests that run two at a time
def test_bad_input_that_needs_no_tensorflow_is_refused_within_a_second(tmp_path):
    write_bad_files(tmp_path)
    quick = [["layerprint-train", "variant=nope"], ["layerprint-train", "tracking.uri=ftp://example/x"],
             ["layerprint-train", "data=npz", f"data.path={tmp_path / 'not-an-npz.npz'}"],
             ["layerprint-train", "device=gpu"], ["layerprint", "compare", "--atol", "-1"]]
    for args in quick:
        seconds = []
        for _ in range(3):  # the best of three: this machine is shared
            start = time.perf_counter()
            done = run_cli(args, tmp_path, env={"CUDA_VISIBLE_DEVICES": "-1"})
            seconds.append(time.perf_counter() - start)
            assert done.returncode == 2 and ": error: " in done.stderr, done.stderr[-500:]
        assert min(seconds) < 1.0, (args, seconds)


def test_four_concurrent_writers_to_one_sqlite_store(tmp_path, sqlite_uri, client):
    fits = [_fit(sqlite_uri, "concurrent", tmp_path / f"run_id{i}", "--steps", "40") for i in range(4)]
    results = [fit.communicate(timeout=300) for fit in fits]
    for fit, (out, err) in zip(fits, results):
        assert fit.returncode == 0 and out.startswith("done"), err[-3000:]
        assert "locked" not in err and "did not take" not in err and "training goes on without it" not in err
    runs = client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])
    assert len(runs) == 4
    for run in runs:
        assert run.info.status == "FINISHED"
        assert _steps(client, run.info.run_id, "train/loss") == list(range(1, 81))
        assert _steps(client, run.info.run_id, BN_MEAN) == list(range(1, 81))
        assert {a.path for a in client.list_artifacts(run.info.run_id, "layerprint")} == ARTIFACTS
    assert not _spool_files(tmp_path)


OPEN_AT_ONCE = """
import os, sys, time
from layerprint.tracking.store import create_client, experiment_id_for, open_store
uri, go, ready = sys.argv[1:4]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
client = open_store(uri)
print(client.create_run(experiment_id_for(client, uri, "at-once")).info.run_id)
"""


def test_processes_opening_a_new_sqlite_store_at_once_all_get_it(tmp_path, sqlite_uri, client):
    # MLflow creates (and migrates) a new SQLite store on first use; two processes doing it at once
    # collide ("table _alembic_tmp_metrics already exists"). Four processes released together, twice.
    for attempt in range(2):
        uri = sqlite_uri.replace("mlflow.db", f"fresh{attempt}.db")
        go, ready = tmp_path / f"go{attempt}", [tmp_path / f"ready{attempt}-{i}" for i in range(4)]
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, uri, str(go), str(r)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for r in ready]
        _wait_for(lambda: all(r.exists() for r in ready), what="every process to import MLflow")
        go.touch()
        results = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err[-600:] for _, err in results]
        fresh = MlflowClient(uri)
        assert len(fresh.search_runs([fresh.get_experiment_by_name("at-once").experiment_id])) == 4


def test_experiment_created_by_another_writer_between_lookup_and_create_is_used(sqlite_uri):
    """The race four concurrent fits hit: each looks the experiment up, finds none, and creates it."""
    other = MlflowClient(sqlite_uri)

    class LateClient(MlflowClient):
        def get_experiment_by_name(self, name):
            if other.get_experiment_by_name(name) is None:  # this writer's lookup sees no experiment ...
                other.create_experiment(name)  # ... and another writer creates it before this one does
                return None
            return super().get_experiment_by_name(name)

    experiment_id = experiment_id_for(LateClient(sqlite_uri), sqlite_uri, "raced")
    assert experiment_id == other.get_experiment_by_name("raced").experiment_id
    assert [e.name for e in other.search_experiments()].count("raced") == 1


SECRETS = {"MLFLOW_TRACKING_USERNAME": "bob-the-user", "MLFLOW_TRACKING_PASSWORD": "env-s3cret-pw",
           "MLFLOW_TRACKING_TOKEN": "tok-s3cret-123"}
URI_PASSWORD = "uri-s3cret-pw"


def _leaks(text):
    return [s for s in (*SECRETS.values(), URI_PASSWORD, "alice:") if s in text]


def test_credentials_never_reach_params_tags_artifacts_console_or_spool(tmp_path, mlflow_server):
    with_creds = mlflow_server.uri.replace("http://", f"http://alice:{URI_PASSWORD}@")
    done = run_cli(["layerprint-train", "-m", "variant=duplicated,shared", "layer=dense", "device=cpu",
                    "trainer.epochs=1", "data.n_samples=32", f"tracking.uri={with_creds}"], tmp_path, env=SECRETS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not [line for line in (done.stdout + done.stderr).splitlines() if _leaks(line)]
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("layerprint").experiment_id])
    assert len(runs) == 3
    for run in runs:
        assert not _leaks(json.dumps([run.data.params, run.data.tags, list(run.data.metrics), run.info.run_name]))
        local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl" / run.info.run_id)))
        for path in local.rglob("*"):
            if path.is_file():
                assert not _leaks(path.read_bytes().decode("latin-1")), path
    # The spool, the callback's console output and the sink's warning, against a dead server.
    dead = f"http://alice:{URI_PASSWORD}@127.0.0.1:{free_port()}"
    fit = _fit(dead, "offline", tmp_path / "run_id", "--steps", "4",
               env={**SECRETS, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"})
    out, err = fit.communicate(timeout=300)
    assert fit.returncode == 0, err[-3000:]
    assert not [line for line in (out + err).splitlines() if _leaks(line)]
    spooled = _spool_files(tmp_path)
    assert spooled and not [p for p in spooled if _leaks(p.read_bytes().decode("latin-1"))]


def test_hostile_layer_names_stay_inside_the_run_artifact_folder(tmp_path, sqlite_uri, client):
    before = {p for p in tmp_path.rglob("*")}
    # Keras refuses '/' in layer names, so '..' parts are the way out: a block named '..' holding
    # layers named '..' gives variable paths like '../../moving_mean'.
    block = keras.Sequential([keras.layers.Dense(4, name=".."), keras.layers.BatchNormalization(name="...")], name="..")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(block(inputs)))
    model.compile("sgd", "mse")
    mlflow.set_tracking_uri(sqlite_uri)
    model.fit(np.ones((8, 3)), np.ones(8), epochs=1, verbose=0,
              callbacks=[LayerprintCallback(experiment_name="hostile", strict=True)])
    (run,) = client.search_runs([client.get_experiment_by_name("hostile").experiment_id])
    artifact_root = Path(run.info.artifact_uri.replace("file://", ""))
    created = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert created and all(p.is_relative_to(tmp_path / "store") for p in created)
    outside = [p for p in created if p.is_relative_to(tmp_path / "store" / "artifacts") and not p.is_relative_to(artifact_root)]
    assert not outside
    assert not list(tmp_path.parent.glob("x")) and not (tmp_path / "x").exists()
    assert all(".." not in key.split("/") for key in run.data.metrics)
    for name in ("weights_final.npz", "batchnorm.npz"):
        with np.load(artifact_root / "layerprint" / name) as archive:
            assert all(".." not in member.split("/") for member in archive.files), archive.files


def test_every_server_we_start_or_document_binds_loopback():
    commands = []
    for path in [REPO / "README.md", *REPO.glob("docs/*.md"), REPO / "Makefile", *REPO.glob("scripts/*.py"),
                 *REPO.glob("conf/**/*.yaml"), *REPO.glob("src/layerprint/**/*.py"), *REPO.glob("tests/**/*.py"),
                 *REPO.glob("benchmarks/*.py")]:
        text = path.read_text()
        for match in re.finditer(r"mlflow[\"']?,?\s*[\"']?(server|ui)\b", text):
            if path.suffix == ".py":
                command = text[match.start():match.start() + 400]  # the argument list that follows
            else:
                lines = text[match.start():].split("\n")
                end = next((i for i, line in enumerate(lines) if not line.endswith("\\")), len(lines) - 1)
                command = "\n".join(lines[:end + 1])  # with its backslash-continued lines
            if "--" in command.split("`")[0] and "--help" not in command and "test_every_server" not in command:
                commands.append((path.name, command))
    assert len(commands) >= 6, commands
    for name, command in commands:
        assert re.search(r"--host[\"',\s]+127\.0\.0\.1", command), f"{name}: {command}"
