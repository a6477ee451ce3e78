"""``layerprint claims``: every verdict comes from real runs, agrees with its own evidence, and
several agree with a direct Keras computation written here without the claims code."""

import json
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.processes import run_cli
from mlflow.tracking import MlflowClient

from layerprint import keys
from layerprint.analysis.claims import CATALOGUE
from layerprint.runner.lab import run_claims

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("claims")]  # one worker computes the catalogue once


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('claims') / 'mlflow.db'}"
    results = run_claims(uri)
    return uri, {r["id"]: r for r in results}


def _initial(client, run_id):
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, f"{keys.ARTIFACT_DIR}/{keys.FINGERPRINTS_INITIAL}", tmp)
        return {v["path"]: v["sha256"] for v in json.loads(Path(path).read_text())["variables"]}


def test_every_claim_has_a_verdict_from_logged_runs(catalogue):
    uri, results = catalogue
    client = MlflowClient(uri)
    assert list(results) == [c.id for c in CATALOGUE]
    (parent,) = client.search_runs([client.get_experiment_by_name("layerprint-claims").experiment_id],
                                   filter_string="attributes.run_name = 'claims'")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["layerprint.version.keras"] == keras.__version__
    for result in results.values():
        assert result["verdict"] in ("holds", "refuted"), result
        assert result["evidence"] and result["run_ids"]
        assert result["versions"] == {"tensorflow": tf.__version__, "keras": keras.__version__}
        for run_id in result["run_ids"]:
            run = client.get_run(run_id)
            assert run.info.status == "FINISHED"
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        logged = json.loads(Path(client.download_artifacts(parent.info.run_id, "claims.json", tmp)).read_text())
    assert logged == list(results.values())


@pytest.mark.parametrize("claim_id, differ_means", [
    ("C01", "holds"), ("C03", "holds"), ("C06", "holds"), ("C12", "holds"),
    ("C08", "refuted"), ("C10", "refuted"), ("C11", "refuted"), ("C14", "refuted"),
])
def test_init_equality_verdicts_agree_with_the_logged_fingerprints(catalogue, claim_id, differ_means):
    uri, results = catalogue
    result = results[claim_id]
    shas = _initial(MlflowClient(uri), result["run_ids"][0])
    differ = any(sha != shas.get(path.replace("rep_0/", "rep_1/", 1))
                 for path, sha in shas.items() if path.startswith("rep_0/"))
    other = "refuted" if differ_means == "holds" else "holds"
    assert result["verdict"] == (differ_means if differ else other)


def test_coupling_verdicts_agree_with_the_logged_loss_curves(catalogue):
    uri, results = catalogue
    client = MlflowClient(uri)
    for claim_id in ("C15", "C16"):
        shared, separate = results[claim_id]["run_ids"]
        curves = [[m.value for m in client.get_metric_history(r, "train/loss")] for r in (shared, separate)]
        assert len(curves[0]) == len(curves[1]) > 0
        assert results[claim_id]["verdict"] == ("holds" if curves[0] != curves[1] else "refuted")


@pytest.mark.parametrize("claim_id, runs_per_style, verdict", [("C02", 1, "holds"), ("C05", 2, "holds"),
                                                               ("C13", 1, "refuted")])
def test_sharing_claims_give_one_verdict_on_functional_and_subclassed_models(catalogue, claim_id, runs_per_style,
                                                                            verdict):
    uri, results = catalogue
    client = MlflowClient(uri)
    result = results[claim_id]
    assert result["verdict"] == verdict, result["evidence"]
    assert result["evidence"].startswith("functional: ") and "; subclassed: " in result["evidence"]
    styles = [client.get_run(run_id).data.tags[keys.TAG_MODEL_STYLE] for run_id in result["run_ids"]]
    assert styles == ["functional"] * runs_per_style + ["subclassed"] * runs_per_style


# Direct Keras computations, independent of layerprint.

def test_c04_two_fresh_batchnorm_layers_give_equal_outputs(catalogue):
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    a, b = keras.layers.BatchNormalization(), keras.layers.BatchNormalization()
    same = all(np.array_equal(np.asarray(a(x, training=t)), np.asarray(b(x, training=t))) for t in (False, True))
    assert catalogue[1]["C04"]["verdict"] == ("refuted" if same else "holds")


def test_c08_clone_model_draws_new_weights(catalogue):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    clone = keras.models.clone_model(model)
    same = all(np.array_equal(u, v) for u, v in zip(model.get_weights(), clone.get_weights()))
    assert catalogue[1]["C08"]["verdict"] == ("holds" if same else "refuted")


def test_c10_tf_random_set_seed_does_not_fix_keras_initializers(catalogue):
    kernels = []
    for _ in range(2):
        tf.random.set_seed(42)
        layer = keras.layers.Dense(4)
        layer.build((None, 3))
        kernels.append(np.asarray(layer.kernel))
    assert catalogue[1]["C10"]["verdict"] == ("holds" if np.array_equal(*kernels) else "refuted")


def test_c14_one_initializer_instance_gives_equal_kernels(catalogue):
    init = keras.initializers.GlorotUniform()
    layers = [keras.layers.Dense(4, kernel_initializer=init) for _ in range(2)]
    for layer in layers:
        layer.build((None, 3))
    same = np.array_equal(np.asarray(layers[0].kernel), np.asarray(layers[1].kernel))
    assert catalogue[1]["C14"]["verdict"] == ("holds" if same else "refuted")


def test_c15_one_regularizer_instance_trains_like_separate_ones(catalogue):
    x = np.random.default_rng(1).normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    losses = []
    for shared in (True, False):
        keras.utils.set_random_seed(5)
        one = keras.regularizers.L2(1e-2)
        regs = [one, one] if shared else [keras.regularizers.L2(1e-2), keras.regularizers.L2(1e-2)]
        model = keras.Sequential([keras.Input((4,))] + [keras.layers.Dense(4, kernel_regularizer=r) for r in regs]
                                 + [keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        losses.append(model.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0).history["loss"])
    assert catalogue[1]["C15"]["verdict"] == ("refuted" if losses[0] == losses[1] else "holds")


def test_cli_runs_chosen_claims_and_refuses_unknown_ids(tmp_path):
    done = run_cli(["layerprint", "claims", "--only", "C08", "--format", "json",
                    "--tracking-uri", f"sqlite:///{tmp_path / 'c.db'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (result,) = json.loads(done.stdout)
    assert set(result) >= {"id", "source", "claim", "verdict", "evidence", "run_ids"}
    assert result["id"] == "C08" and result["verdict"] == "refuted"
    bad = run_cli(["layerprint", "claims", "--only", "C99"], tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "unknown claim id(s) C99" in bad.stderr.strip().splitlines()[-1]
