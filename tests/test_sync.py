"""The spool mechanism: an unreachable store never stops training; `layerprint sync` sends it once."""

import json

import keras
import numpy as np
from helpers.processes import free_port, run_cli
from mlflow.tracking import MlflowClient

from layerprint import LayerprintCallback, keys
from layerprint.tracking.spool import sync


def test_unreachable_store_spools_and_sync_sends_exactly_once(tmp_path, monkeypatch, sqlite_uri):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    dead = f"http://127.0.0.1:{free_port()}"
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization(), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    cb = LayerprintCallback(tracking_uri=dead, experiment_name="offline", flush_timeout=5, log_every_n_steps=1)
    model.fit(x, x.sum(1), epochs=2, batch_size=8, verbose=0, callbacks=[cb])  # must not raise
    spooled = list((tmp_path / "spool").glob("*.jsonl"))
    assert len(spooled) == 1

    first = sync(sqlite_uri, send_all=True)  # the server is gone: its spool goes to another store
    assert first.runs == 1 and first.remaining == 0 and first.metrics > 0
    client = MlflowClient(sqlite_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("offline").experiment_id])
    expected = {keys.FINGERPRINTS_INITIAL, keys.SHARING, keys.FINGERPRINTS_FINAL, keys.WEIGHTS_FINAL, keys.BATCHNORM,
                keys.STEPS}
    assert first.artifacts == len(expected) + 1  # steps.parquet is sent at each of the 2 epoch ends
    assert {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, keys.ARTIFACT_DIR)} == expected
    assert run.info.status == "FINISHED"
    assert run.data.tags[keys.TAG_INIT_FINGERPRINT] == cb.initial_fingerprint["model"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, 9))
    assert len(client.get_metric_history(run.info.run_id, "bn/batch_normalization/moving_mean/mean")) == 8

    second = sync(sqlite_uri, send_all=True)
    assert second.runs == 0 and second.metrics == 0
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 8


def _spooled_run(uri, experiment, points):
    """A run that could not even be created in ``uri``, as the callback spools it."""
    from layerprint.tracking.spool import RunSpool

    spool = RunSpool(f"offline-{experiment}", uri)
    spool.create_run(experiment, f"{experiment}-run", None)
    spool.batch([["train/loss", float(step), 1_700_000_000_000 + step, step] for step in range(1, points + 1)], {}, {})
    spool.terminate("FINISHED")
    return spool.run_id


def test_sync_sends_the_spool_of_its_store_lists_the_others_and_drops_on_request(tmp_path, sqlite_uri, client):
    gone = f"http://127.0.0.1:{free_port()}"  # a server that no longer exists
    here = _spooled_run(sqlite_uri, "here", 5)
    there = _spooled_run(gone, "there", 3)
    env = {"MLFLOW_TRACKING_URI": sqlite_uri}

    listed = run_cli(["layerprint", "sync", "--list"], tmp_path, env=env)
    assert listed.returncode == 0 and "2 spooled run(s)" in listed.stdout
    assert f"{here}  {sqlite_uri}  5 point(s)" in listed.stdout and f"{there}  {gone}  3 point(s)" in listed.stdout

    for _ in range(2):  # the vanished store's run is listed, never tried, at every call
        done = run_cli(["layerprint", "sync"], tmp_path, env=env, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "not sent" not in done.stdout
        assert f"1 spooled run(s) of other stores left alone: {gone} (1)" in done.stdout
    (run,) = client.search_runs([client.get_experiment_by_name("here").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5]
    assert client.get_experiment_by_name("there") is None

    unknown = run_cli(["layerprint", "sync", "--drop", "nope"], tmp_path, env=env)
    assert unknown.returncode == 2 and unknown.stderr.strip().splitlines() == [
        "layerprint sync: error: no spooled run 'nope'; `layerprint sync --list` shows them"]
    dropped = run_cli(["layerprint", "sync", "--drop", there], tmp_path, env=env)
    assert dropped.returncode == 0 and f"dropped {there} (3 point(s)" in dropped.stdout
    assert "0 spooled run(s)" in run_cli(["layerprint", "sync", "--list"], tmp_path, env=env).stdout
    assert not list((tmp_path / "spool").iterdir())


def test_a_store_that_does_not_answer_never_holds_up_training(tmp_path, monkeypatch):
    """The callback's own run is created by its sink's thread: with a server that accepts connections and
    never answers, the first step runs before the run exists; the run then goes to the spool."""
    import socket

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections wait in the backlog, unanswered
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization(), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    cb = LayerprintCallback(tracking_uri=f"http://127.0.0.1:{silent.getsockname()[1]}", experiment_name="silent",
                            flush_timeout=15, log_every_n_steps=1)
    seen = []

    class FirstStep(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if not seen:
                seen.append(cb.sink.run_id)

    try:
        model.fit(x, x.sum(1), epochs=2, batch_size=8, verbose=0, callbacks=[cb, FirstStep()])
        assert seen == [None]  # training went on while the run was being created
        assert cb.active_run_id.startswith("offline-")
        cb.wait()
    finally:
        silent.close()
    (spooled,) = (tmp_path / "spool").glob("*.jsonl")
    kinds = [json.loads(line)["kind"] for line in spooled.read_text().splitlines()]
    assert kinds[0] == "create_run" and kinds[-1] == "terminate" and "batch" in kinds and "artifact" in kinds
