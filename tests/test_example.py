"""``mlruns.example/``: small, free of this machine's paths, and served from any location."""

import json
import shutil
import tempfile
from pathlib import Path

from helpers.processes import REPO, MlflowServer
from mlflow.tracking import MlflowClient

from layerprint import keys

EXAMPLE = REPO / "mlruns.example"


def test_example_store_is_small_and_holds_no_machine_path():
    files = [p for p in EXAMPLE.rglob("*") if p.is_file()]
    assert (EXAMPLE / "mlflow.db").is_file() and len(files) > 20
    assert sum(p.stat().st_size for p in files) <= 5 * 1024 * 1024
    for path in files:
        data = path.read_bytes()
        for machine_path in (b"/tmp/", b"/home/", b"/root/", b"/work/", b"/Users/", b"file://", b"C:\\"):
            assert machine_path not in data, (path, machine_path)


def test_example_store_is_served_from_a_copy_anywhere(tmp_path):
    copy = tmp_path / "somewhere" / "else"
    shutil.copytree(EXAMPLE, copy)
    server = MlflowServer(copy).start()
    try:
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("layerprint-demo")
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(parents) == 1 and len(children) == 12
        assert all(r.info.status == "FINISHED" for r in runs)
        assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
        child = children[0]
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) == 3 * 6  # 3 epochs x 6 steps
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(child.info.run_id, f"{keys.ARTIFACT_DIR}/{keys.FINGERPRINTS_INITIAL}", tmp)
            fingerprints = json.loads(Path(path).read_text())
            assert fingerprints["model"] == child.data.tags[keys.TAG_INIT_FINGERPRINT]
            report = client.download_artifacts(parents[0].info.run_id, "compare/compare.json", tmp)
            assert len(json.loads(Path(report).read_text())["runs"]) == 12
            png = client.download_artifacts(parents[0].info.run_id, "compare/loss_curves.png", tmp)
            assert Path(png).read_bytes()[:4] == b"\x89PNG"
    finally:
        server.kill()
