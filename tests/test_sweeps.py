"""Sweeps on real engines: joblib workers, Ray on a local cluster, submitit's local jobs, a failing
job, real tracking servers on SQLite and on PostgreSQL, cluster configs."""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers.logged import artifact_json
from helpers.processes import MlflowServer, free_port, run_cli, wait_for_port
from mlflow.tracking import MlflowClient

from layerprint import keys

pytestmark = pytest.mark.slow

SMALL = ["layer=dense", "device=cpu", "data.n_samples=64", "trainer.epochs=2"]
STEPS = 2 * 3  # 2 epochs x ceil(48 training samples / 16)


def _runs(client, experiment="layerprint"):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _assert_complete(client, run):
    """Every point and artifact of a finished 6-step run arrived, once."""
    run_id = run.info.run_id
    assert run.info.status == "FINISHED", run.data.tags.get(keys.TAG_FAILURE)
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, STEPS + 1))
    assert [m.step for m in client.get_metric_history(run_id, "epoch/loss")] == [1, 2]
    assert len(client.get_metric_history(run_id, "drift/_model")) == 2
    names = {a.path for a in client.list_artifacts(run_id, keys.ARTIFACT_DIR)}
    assert {f"layerprint/{n}" for n in (keys.FINGERPRINTS_INITIAL, keys.FINGERPRINTS_FINAL, keys.SHARING,
                                        keys.WEIGHTS_FINAL)} <= names
    assert run.data.tags[keys.TAG_FINAL_FINGERPRINT] and run.data.params["trainer.epochs"] == "2"


def test_joblib_runs_four_jobs_in_parallel_into_one_sqlite_store(tmp_path):
    # The sweep also crosses the model style: the shared layer is seen in the subclassed model too.
    done = run_cli(["layerprint-train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4",
                    "variant=duplicated,shared", "model_style=functional,subclassed", "deterministic=true", *SMALL], tmp_path, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "database is locked" not in done.stderr + done.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (parent,), children = _runs(client)
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted((c.data.tags[keys.TAG_VARIANT], c.data.tags[keys.TAG_MODEL_STYLE]) for c in children) == [
        ("duplicated", "functional"), ("duplicated", "subclassed"), ("shared", "functional"), ("shared", "subclassed")]
    for child in children:
        _assert_complete(client, child)
        shared = artifact_json(client, child.info.run_id, keys.SHARING)["shared_layers"]
        assert shared == ({"rep": 2} if child.data.tags[keys.TAG_VARIANT] == "shared" else {}), child.info.run_name
    init = {c.info.run_name: c.data.tags[keys.TAG_INIT_FINGERPRINT] for c in children}
    assert init["shared-dense-s0"] == init["shared-dense-s0-subclassed"]  # one model, written two ways
    pids = {c.data.tags.get("layerprint.pid") for c in children}
    assert len(pids) > 1, "jobs did not run in separate worker processes"
    assert parent.info.status == "FINISHED"
    assert {"compare/compare.json", "compare/loss_curves.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}


def _good_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "good.npz"
    np.savez(path, x=rng.normal(size=(64, 8)).astype("float32"), y=rng.normal(size=(64, 1)).astype("float32"))
    return path


def test_a_failing_job_does_not_lose_the_others(tmp_path):
    _good_npz(tmp_path)
    done = run_cli(["layerprint-train", "-m", "data=npz", f"data.path={tmp_path / 'good.npz'},{tmp_path / 'missing.npz'}",
                    "trainer.optimizer=sgd", "trainer.learning_rate=0.01,1e15", "layer=dense", "device=cpu",
                    "trainer.epochs=2"], tmp_path, timeout=400)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (parent,), children = _runs(client)
    assert len(children) == 4
    by_params = {(c.data.params["data.path"].endswith("good.npz"), float(c.data.params["trainer.learning_rate"])): c
                 for c in children if c.data.params}
    _assert_complete(client, by_params[(True, 0.01)])
    nan_run = by_params[(True, 1e15)]
    assert nan_run.info.status == "FAILED"
    assert "TerminateOnNaN stopped training" in nan_run.data.tags[keys.TAG_FAILURE]
    missing = [c for c in children if "does not exist" in c.data.tags.get(keys.TAG_FAILURE, "")]
    assert len(missing) == 2 and all(c.info.status == "FAILED" for c in missing)
    assert parent.info.status == "FAILED"
    assert parent.data.tags[keys.TAG_FAILED_JOBS].count("FAILED") == 3
    assert "3 job(s) of this sweep failed" in done.stderr
    assert not [r for r in client.search_runs(["0", parent.info.experiment_id]) if r.info.status == "RUNNING"]


def test_server_mode_runs_a_sweep_through_a_real_mlflow_server(tmp_path, mlflow_server):
    done = run_cli(["layerprint-train", "-m", "tracking=server", "variant=duplicated,shared", *SMALL], tmp_path,
                   env={"LAYERPRINT_SERVER_URI": mlflow_server.uri}, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "mlruns").exists()  # nothing went to the local default store
    client = MlflowClient(mlflow_server.uri)
    (parent,), children = _runs(client)
    assert len(children) == 2 and parent.info.status == "FINISHED"
    for child in children:
        _assert_complete(client, child)
        assert child.info.artifact_uri.startswith("mlflow-artifacts:")
        stored = mlflow_server.root / "artifacts" / child.info.experiment_id / child.info.run_id / "artifacts" / "layerprint"
        assert (stored / keys.FINGERPRINTS_INITIAL).is_file()  # proxied to the server's destination
    assert {"compare/compare.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert f"layerprint compare --tracking-uri {mlflow_server.uri} --parent" in done.stdout


def test_joblib_sweep_through_a_server_on_postgresql(tmp_path, postgres_uri):
    server = MlflowServer(tmp_path / "server", backend_uri=postgres_uri).start()
    try:
        done = run_cli(["layerprint-train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "tracking=server",
                        "variant=duplicated,shared,copied,cloned", *SMALL], tmp_path,
                       env={"LAYERPRINT_SERVER_URI": server.uri}, timeout=500)
        assert done.returncode == 0, done.stderr[-3000:]
        client = MlflowClient(server.uri)
        (parent,), children = _runs(client)
        assert parent.info.status == "FINISHED" and len(children) == 4
        assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
        for child in children:
            _assert_complete(client, child)
        assert len({c.data.tags["layerprint.pid"] for c in children}) > 1
    finally:
        server.kill()
    # the runs live in PostgreSQL, not in a SQLite file next to the server
    assert not (tmp_path / "server" / "mlflow.db").exists()
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_uri)
    with engine.connect() as connection:
        stored = connection.execute(sqlalchemy.text(
            "select count(*) from metrics where key = 'train/loss' and run_uuid in "
            "(select run_uuid from tags where key = 'mlflow.parentRunId')")).scalar()
    engine.dispose()
    assert stored == 4 * STEPS  # every step of every job, once


@pytest.mark.xdist_group("ray")  # one Ray cluster at a time on the 2-core machine
def test_ray_sweep_on_a_local_cluster_with_a_failing_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the ray extra is not installed")
    good = _good_npz(tmp_path)
    done = run_cli(["layerprint-train", "-m", "hydra/launcher=ray", "hydra.launcher.ray.init.num_cpus=2",
                    "data=npz", f"data.path={good},{tmp_path / 'missing.npz'}", "variant=duplicated,shared",
                    "layer=dense", "device=cpu", "trainer.epochs=2"], tmp_path, timeout=500)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (parent,), children = _runs(client)
    assert len(children) == 4 and parent.info.status == "FAILED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    finished = [c for c in children if c.info.status == "FINISHED"]
    failed = [c for c in children if c.info.status == "FAILED"]
    assert sorted(c.data.tags[keys.TAG_VARIANT] for c in finished) == ["duplicated", "shared"]
    for child in finished:
        _assert_complete(client, child)
    assert len(failed) == 2 and all("does not exist" in c.data.tags[keys.TAG_FAILURE] for c in failed)
    assert parent.data.tags[keys.TAG_FAILED_JOBS].count("FAILED") == 2
    # each finished run was logged from a Ray worker: Ray prefixes what its workers print with the task's
    # name and the pid (a worker's first task may be layerprint's warm-up, which names the lines after it)
    ray_workers = set(re.findall(r"\(\w+ pid=(\d+)\)", done.stdout + done.stderr))
    assert {c.data.tags["layerprint.pid"] for c in finished} <= ray_workers, done.stdout[-4000:]
    for child in finished:  # each job's summary line reached the terminal before Ray was shut down
        assert f"run {child.info.run_id} FINISHED" in done.stdout + done.stderr
    # layerprint started the local cluster while it opened the parent run; the launcher found it running
    assert "Ray is already running" in done.stdout + done.stderr


@pytest.mark.xdist_group("ray")
def test_ray_sweep_joins_an_existing_cluster_and_passes_the_parent_run_id(tmp_path):
    # A cluster started apart from the sweep (`ray start --head`): the launcher joins it, and the parent
    # run id reaches the jobs through Ray's runtime environment (its workers do not share the sweep dir's
    # working directory, nor the launching process's environment).
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the ray extra is not installed")
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}  # as the sweep connects
    # --block: the cluster lives as long as this process, and ends with it (`ray stop` would end every
    # cluster on the machine)
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    try:
        wait_for_port(port, timeout=120)
        store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
        done = run_cli(["layerprint-train", "-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address=127.0.0.1:{port}",
                        f"tracking.uri={store}", "variant=duplicated,shared", *SMALL], tmp_path, timeout=500)
    finally:
        head.terminate()
        head.wait(timeout=120)
        # `ray start` leaves the address behind, where a plain ray.init() would try to join it later
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Ray is already running" not in done.stdout + done.stderr  # the launcher joined the cluster itself
    (parent,), children = _runs(MlflowClient(store))
    assert len(children) == 2 and parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}


def test_submitit_local_jobs_sweep(tmp_path):
    done = run_cli(["layerprint-train", "-m", "hydra/launcher=submitit_local_jobs", "variant=duplicated,shared", *SMALL],
                   tmp_path, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (parent,), children = _runs(client)
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    for child in children:
        _assert_complete(client, child)
    # each run was logged by its own submitit job: its line is in that job's log, and in no other
    logs = [p.read_text() for p in (tmp_path / "multirun").rglob(".submitit/*/*_log.out")]
    assert len(logs) == 2
    for child in children:
        assert sum(f"run {child.info.run_id} FINISHED" in log for log in logs) == 1


def test_cluster_and_server_configs_compose(monkeypatch, cfg_train):
    monkeypatch.setenv("LAYERPRINT_SERVER_URI", "http://mlflow.internal:5000")
    slurm = cfg_train("hydra/launcher=slurm", "tracking=server", "hydra.launcher.partition=gpu", hydra=True)
    local = cfg_train("hydra/launcher=submitit_local_jobs", hydra=True)
    joblib = cfg_train("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", hydra=True)
    ray = cfg_train("hydra/launcher=ray", "hydra.launcher.ray.init.address=auto", hydra=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
    assert slurm.hydra.launcher.partition == "gpu" and slurm.hydra.launcher.cpus_per_task == 4
    assert slurm.tracking.uri == "http://mlflow.internal:5000"
    assert local.hydra.launcher._target_.endswith("LocalLauncher")
    assert joblib.hydra.launcher._target_.endswith("JoblibLauncher") and joblib.hydra.launcher.n_jobs == 2
    assert ray.hydra.launcher._target_.endswith("RayLauncher") and ray.hydra.launcher.ray.init.address == "auto"
    assert ray.hydra.launcher.ray.remote.num_cpus == 1
    monkeypatch.delenv("LAYERPRINT_SERVER_URI")
    assert cfg_train("tracking=server").tracking.uri == "http://127.0.0.1:5000"
