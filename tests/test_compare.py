"""``layerprint compare``: a known divergence step, BatchNorm gaps, the JSON shape, the plots."""

import base64
import json
import operator
import os
import re
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from helpers.nudge import NUDGE_STEP, deterministic_pair
from helpers.processes import run_cli, run_on_backend

from layerprint import LayerprintCallback, keys
from layerprint.analysis.compare import compare_records, first_divergence, where_weights_part
from layerprint.analysis.report import render, write_report
from layerprint.analysis.runs import collect
from layerprint.recording.record import read_steps

PERTURB_AT_STEP = 5  # the first step whose loss sees the perturbed weights


class Perturb(keras.callbacks.Callback):
    """Adds 0.1 to the first kernel before the given (1-based, global) step."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_begin(self, batch, logs=None):
        if batch + 1 == self.step:
            kernel = self.model.layers[0].kernel
            kernel.assign(kernel + 0.1)


def _fit_pair(uri, bn=False, perturb=True, seeds=(3, 3), nested=False):
    """Two runs from the same initial weights and data; the second perturbed before a known step."""
    x = np.random.default_rng(0).normal(size=(96, 4)).astype("float32")
    y = (x @ np.arange(1, 5, dtype="float32"))[:, None]
    mlflow.set_tracking_uri(uri)
    run_ids = []
    for i, seed in enumerate(seeds):
        keras.utils.set_random_seed(seed)
        layers = [keras.Input((4,)), keras.layers.Dense(6, name="d0")]
        layers += [keras.layers.BatchNormalization(name="bn")] if bn else []
        model = keras.Sequential(layers + [keras.layers.Dense(1, name="head")])
        model.compile("sgd", "mse")
        extra = [Perturb(PERTURB_AT_STEP)] if perturb and i == 1 else []
        with mlflow.start_run(run_name=f"run{i}", nested=nested) as run:
            mlflow.set_tags({"layerprint.variant": f"v{i}", "layerprint.layer": "dense"})
            model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0,
                      callbacks=extra + [LayerprintCallback(strict=True)])
        run_ids.append(run.info.run_id)
    return run_ids


def test_reports_the_step_where_a_perturbation_makes_curves_part(sqlite_uri, client):
    a, b = _fit_pair(sqlite_uri)
    report = compare_records(collect(client, run_ids=[a, b]))
    (pair,) = report["pairs"]
    assert pair["identical_init"] is True
    assert report["init_groups"] == [[a, b]]
    assert pair["first_divergence_step"] == PERTURB_AT_STEP
    assert pair["max_loss_gap"] > 0 and pair["final_weight_distance"] > 0
    assert set(pair["final_weight_distance_per_layer"]) == {"d0", "head"}


def test_unperturbed_twins_never_diverge_and_tolerance_is_settable(sqlite_uri, client):
    a, b = _fit_pair(sqlite_uri, perturb=False)
    (pair,) = compare_records(collect(client, run_ids=[a, b]))["pairs"]
    assert pair["first_divergence_step"] is None and pair["max_loss_gap"] == 0.0
    assert pair["final_weight_distance"] == 0.0
    curve = {1: 1.0, 2: 1.0, 3: 1.0}
    assert first_divergence(curve, {1: 1.0, 2: 1.0 + 1e-3, 3: 1.2}) == (2, pytest.approx(0.2))
    assert first_divergence(curve, {1: 1.0, 2: 1.0 + 1e-3, 3: 1.2}, atol=1e-2)[0] == 3


def test_batchnorm_gap_matches_the_logged_arrays(sqlite_uri, client):
    a, b = _fit_pair(sqlite_uri, bn=True, seeds=(3, 4), perturb=False)
    records = collect(client, run_ids=[a, b])
    (pair,) = compare_records(records)["pairs"]
    expected = max(float(np.max(np.abs(records[0].batchnorm[f"bn/{s}"][-1] - records[1].batchnorm[f"bn/{s}"][-1])))
                   for s in ("moving_mean", "moving_variance"))
    assert pair["batchnorm_gap"] == pytest.approx(expected) and expected > 0
    assert list(pair["batchnorm_gap_per_layer"]) == ["bn"]
    assert pair["identical_init"] is False


def _check_shape(report):
    """The documented ``--format json`` shape (README, DESIGN.md)."""
    assert set(report) >= {"runs", "init_groups", "pairs"}
    for run in report["runs"]:
        assert set(run) >= {"run_id", "run_name", "variant", "layer", "seed", "init_fingerprint", "final_fingerprint"}
        assert isinstance(run["run_id"], str) and len(run["init_fingerprint"]) == 64
    ids = {r["run_id"] for r in report["runs"]}
    assert all(isinstance(g, list) and set(g) <= ids for g in report["init_groups"])
    assert sorted(i for g in report["init_groups"] for i in g) == sorted(ids)
    n = len(ids)
    assert len(report["pairs"]) == n * (n - 1) // 2
    for pair in report["pairs"]:
        assert set(pair) >= {"a", "b", "identical_init", "first_divergence_step", "max_loss_gap", "final_weight_distance"}
        assert isinstance(pair["identical_init"], bool)
        assert pair["first_divergence_step"] is None or isinstance(pair["first_divergence_step"], int)
        assert isinstance(pair["max_loss_gap"], float) and isinstance(pair["final_weight_distance"], float)


@pytest.mark.slow
def test_cli_json_shape_plots_and_parent_logging(sqlite_uri, client, tmp_path):
    mlflow.set_tracking_uri(sqlite_uri)
    with mlflow.start_run(run_name="sweep") as parent:
        pass
    with mlflow.start_run(run_id=parent.info.run_id):
        ids = _fit_pair(sqlite_uri, bn=True, nested=True)
    for run_id in ids:
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    out = tmp_path / "report"
    done = run_cli(["layerprint", "compare", "--tracking-uri", sqlite_uri, "--parent", parent.info.run_id,
                    "--format", "json", "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    _check_shape(report)
    assert report["pairs"][0]["first_divergence_step"] == PERTURB_AT_STEP
    pngs = ["loss_curves.png", "loss_gaps.png", "batchnorm.png", "batchnorm_gaps.png", "weight_distance.png",
            "init_matrix.png"]
    for name in pngs + ["compare.json", "compare.md", "compare.txt", "report.html"]:
        assert (out / name).stat().st_size > 500, name
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one self-contained page: every plot embedded, nothing fetched from beside it
    page = (out / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(pngs) and page.count("src=") == len(pngs)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted((out / name).read_bytes() for name in pngs)
    assert all(r["run_name"] in page for r in report["runs"])
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert {f"compare/{name}" for name in pngs + ["report.html"]} <= logged
    table = run_cli(["layerprint", "compare", "--tracking-uri", sqlite_uri, "--run-ids", *ids], tmp_path)
    assert table.returncode == 0 and max(len(line) for line in table.stdout.splitlines()) <= 100
    assert "BatchNorm moving-stat gap" in table.stdout


def test_write_report_without_records_writes_text_and_a_page_without_plots(tmp_path, sqlite_uri, client):
    ids = _fit_pair(sqlite_uri, perturb=False)
    written = write_report(compare_records(collect(client, run_ids=ids)), tmp_path / "r")
    assert sorted(p.name for p in written) == ["compare.json", "compare.md", "compare.txt", "report.html"]
    page = (tmp_path / "r" / "report.html").read_text()
    assert "run0" in page and "<img" not in page


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["joblib launcher's", "plot workers"])
def test_plots_drawn_by_worker_processes_equal_those_drawn_here(tmp_path, sqlite_uri, client, workers):
    # A sweep draws its plots on the joblib launcher's workers, or on plot workers of its own for the
    # other launchers (write_report's map_fn): the same files, drawn in other processes.
    from joblib import Parallel, delayed
    from omegaconf import OmegaConf

    from layerprint.runner.launchers import PlotWorkers

    records = collect(client, run_ids=_fit_pair(sqlite_uri, bn=True))
    report = compare_records(records)
    plot_workers = PlotWorkers.start(OmegaConf.create(
        {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}))
    assert plot_workers is not None  # two cores or more
    mapped, pids = [], set()

    def on_workers(function, items):
        mapped.append(len(items))
        if workers == "plot workers":
            pids.update(plot_workers.map(operator.call, [os.getpid] * len(items)))
            return plot_workers.map(function, items)
        pids.update(Parallel(n_jobs=2, backend="loky")(delayed(os.getpid)() for _ in items))
        return Parallel(n_jobs=2, backend="loky")(delayed(function)(item) for item in items)

    here = write_report(report, tmp_path / "here", records)
    try:
        there = write_report(report, tmp_path / "there", records, map_fn=on_workers)
    finally:
        plot_workers.stop()
    assert mapped == [6] and pids and os.getpid() not in pids
    assert [p.name for p in there] == [p.name for p in here] and sum(p.suffix == ".png" for p in here) == 6
    for a, b in zip(here, there):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_first_weight_divergence_is_the_nudged_variable_at_its_step(sqlite_uri, client):
    a, b = deterministic_pair(sqlite_uri, nudge_step=NUDGE_STEP)  # the callback at its defaults
    (pair,) = compare_records(collect(client, run_ids=[a, b]))["pairs"]
    assert pair["identical_init"] is True
    assert pair["first_weight_divergence"] == {"step": 5, "last_equal_step": 4, "variables": ["head/kernel"]}
    assert pair["first_divergence_step"] == 6  # the first loss computed with the nudged weight
    assert client.get_run(b).data.tags[keys.TAG_CHECKSUM_EVERY] == "1"


_NUDGE_ON_BACKEND = """
import json, sys
sys.path.insert(0, sys.argv[2])
import keras
from mlflow.tracking import MlflowClient
from helpers.nudge import NUDGE_STEP, deterministic_pair
from layerprint.analysis.compare import compare_records
from layerprint.analysis.runs import collect
a, b = deterministic_pair(sys.argv[1], nudge_step=NUDGE_STEP)
(pair,) = compare_records(collect(MlflowClient(sys.argv[1]), run_ids=[a, b]))["pairs"]
print(json.dumps({"backend": keras.backend.backend(), "weights": pair["first_weight_divergence"],
                  "losses": pair["first_divergence_step"]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_nudge_is_located_at_its_step_at_the_defaults_on_jax_and_pytorch(backend, sqlite_uri):
    done = run_on_backend(backend, _NUDGE_ON_BACKEND, sqlite_uri, str(Path(__file__).parent))
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "backend": backend, "weights": {"step": 5, "last_equal_step": 4, "variables": ["head/kernel"]}, "losses": 6}


def test_sparse_checksums_say_between_which_steps_the_weights_part(sqlite_uri, client):
    # Checksums every 4 steps (and at the first step and epoch ends): 1, 4, 8, ...; the nudge after step 5
    # is first seen at 8, after equal checksums at 4. The losses part at 6, so the weights parted by 5.
    a, b = deterministic_pair(sqlite_uri, nudge_step=NUDGE_STEP, checksum_every=4)
    report = compare_records(collect(client, run_ids=[a, b]))
    (pair,) = report["pairs"]
    assert client.get_run(b).data.tags[keys.TAG_CHECKSUM_EVERY] == "4"
    divergence = pair["first_weight_divergence"]
    assert (divergence["step"], divergence["last_equal_step"]) == (8, 4)
    assert "head/kernel" in divergence["variables"]  # and the others the steps 6 to 8 changed since
    assert where_weights_part(pair) == ("at 5 (by the losses)", 5)
    assert where_weights_part({**pair, "first_divergence_step": None}) == ("between 4 and 8", 8)
    assert "| at 5 (by the losses): " in render(report, "markdown")


def test_twins_never_part_and_the_record_holds_every_step(sqlite_uri, client):
    a, b = deterministic_pair(sqlite_uri)
    (pair,) = compare_records(collect(client, run_ids=[a, b]))["pairs"]
    assert pair["first_weight_divergence"] is None and pair["first_divergence_step"] is None
    steps = read_steps(client.download_artifacts(a, "layerprint/steps.parquet"))
    assert list(steps.columns["step"]) == list(range(1, 17))
    assert all((values >= 0).all() for values in steps.checksums()[1].values())  # a tiny model: every step


def test_loss_divergence_from_the_record_matches_the_per_step_losses(sqlite_uri, client):
    a, b = _fit_pair(sqlite_uri)
    losses = [read_steps(client.download_artifacts(run, "layerprint/steps.parquet")).series("train/loss")
              for run in (a, b)]
    expected = next(step for step in sorted(losses[0])
                    if abs(losses[0][step] - losses[1][step]) > 1e-6 + 1e-5 * max(abs(losses[0][step]), abs(losses[1][step])))
    (pair,) = compare_records(collect(client, run_ids=[a, b]))["pairs"]
    assert pair["first_divergence_step"] == expected == PERTURB_AT_STEP
    assert len(losses[0]) == 12  # every step, whatever the published cadence


def test_the_table_and_markdown_show_where_weights_part(sqlite_uri, client, tmp_path):
    a, b = deterministic_pair(sqlite_uri, nudge_step=NUDGE_STEP)
    assert client.get_run(b).data.tags[keys.TAG_CHECKSUM_EVERY] == "1"
    report = compare_records(collect(client, run_ids=[a, b]))
    assert "at 5: head/kernel" in render(report, "table")
    assert "at 5: head/kernel" in render(report, "markdown")
    assert json.loads(render(report, "json"))["pairs"][0]["first_weight_divergence"]["step"] == 5
