"""The spool mechanism: an unreachable store never stops training; `layerprint sync` sends it once."""

import keras
import numpy as np
from helpers.processes import free_port
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

    first = sync(sqlite_uri)
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

    second = sync(sqlite_uri)
    assert second.runs == 0 and second.metrics == 0
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 8
