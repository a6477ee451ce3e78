"""Every variant x layer combination builds and trains a few steps into a temp SQLite store."""

import pytest

from layerprint import keys
from layerprint.runner.schema import LAYER_KINDS, VARIANTS
from layerprint.runner.train import train


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the whole file: creating its tables once saves ~1 s per combination."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("variants") / "mlflow.db"
    uri = f"sqlite:///{path}"
    MlflowClient(uri).search_experiments()
    return uri, MlflowClient(uri)


@pytest.mark.parametrize("layer", LAYER_KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_combination_trains_and_logs(variant, layer, store, cfg_train):
    sqlite_uri, client = store
    cfg = cfg_train(f"variant={variant}", f"layer={layer}", f"tracking.uri={sqlite_uri}", "device=cpu",
                    "data.n_samples=16", "data.validation_split=0", "trainer.epochs=1", "trainer.batch_size=8")
    result = train(cfg)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags[keys.TAG_VARIANT] == variant and tags[keys.TAG_LAYER] == layer and tags[keys.TAG_SEED] == "0"
    assert tags[keys.TAG_INIT_FINGERPRINT] == result["init_fingerprint"]
    assert [m.step for m in client.get_metric_history(result["run_id"], "train/loss")] == [1, 2]
    assert run.data.params["variant.name"] == variant and run.data.params["layer.kind"] == layer
    assert tags["layerprint.version.keras"].startswith("3.")
    if variant == "shared":
        import json

        sharing = json.loads(open(client.download_artifacts(result["run_id"], "layerprint/sharing.json")).read())
        assert sharing["shared_layers"]["rep"] == 2
