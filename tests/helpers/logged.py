"""Checks of what ``LayerprintCallback`` logged against the trained model itself.

Used by the compatibility matrix in this process and, for other Keras backends, in a subprocess
(``python -c`` with this folder's parent on ``sys.path``).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np

from layerprint import keys, wait_for_runs
from layerprint.inspection.fingerprint import exact_hash
from layerprint.inspection.paths import SEED_STATE_NAME
from layerprint.recording.checksum import checksum_numpy
from layerprint.recording.record import read_steps


def artifact_json(client: Any, run_id: str, name: str) -> Any:
    with open(client.download_artifacts(run_id, f"{keys.ARTIFACT_DIR}/{name}")) as handle:
        return json.load(handle)


def batchnorm_layers(model: Any) -> list[Any]:
    """Every BatchNormalization layer reachable from ``model``, each once (found by Keras, not by layerprint)."""
    import keras

    seen, found = set(), []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and id(layer) not in seen:
            seen.add(id(layer))
            found.append(layer)
    return found


def weight_variables(model: Any) -> list[Any]:
    """The model's variables, each once, without Keras SeedGenerator state (not weights)."""
    seen, out = set(), []
    for variable in model.variables:
        if variable.path.endswith(SEED_STATE_NAME) or id(variable) in seen:
            continue
        seen.add(id(variable))
        out.append(variable)
    return out


def check_run_matches_model(client: Any, run_id: str, model: Any, steps: list[int],
                            initial_variables: int | None = None) -> dict[str, Any]:
    """Assert that the run is FINISHED without callback errors; its flight record (``steps.parquet``)
    holds a ``train/loss`` at exactly ``steps`` and its MLflow ``train/loss`` steps are some of them,
    the first and last included; every variable is fingerprinted with its final value, and the record's
    last checksums equal the final values'; every BatchNormalization layer is logged with values equal
    to its variables (``batchnorm.npz``, the record's last ``bn/`` row and the ``bn/`` metrics).

    Args:
        client: an ``MlflowClient`` on the store.
        run_id: the run to check.
        model: the trained model.
        steps: the expected global steps of ``train/loss``.
        initial_variables: how many variables the initial fingerprint must hold (default: all).

    Returns:
        ``{"bn_layers": n, "variables": n}`` as checked.
    """
    wait_for_runs()  # the runs the callbacks started end in the background
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED", (run.info.status, run.data.tags)
    assert keys.TAG_CALLBACK_ERROR not in run.data.tags, run.data.tags[keys.TAG_CALLBACK_ERROR]
    record = read_steps(client.download_artifacts(run_id, f"{keys.ARTIFACT_DIR}/{keys.STEPS}"))
    recorded = sorted(record.series(keys.step_key("loss")))
    assert recorded == steps, recorded
    published = sorted(m.step for m in client.get_metric_history(run_id, keys.step_key("loss")))
    assert published[0] == steps[0] and published[-1] == steps[-1] and set(published) <= set(steps), published

    variables = weight_variables(model)
    final = artifact_json(client, run_id, keys.FINGERPRINTS_FINAL)
    assert run.data.tags[keys.TAG_FINAL_FINGERPRINT] == final["model"]
    assert Counter(r["sha256"] for r in final["variables"]) == Counter(
        exact_hash(np.asarray(v.numpy())) for v in variables)
    _, checksums = record.checksums()
    final_paths = sorted(r["path"] for r in final["variables"])
    assert sorted(checksums) == final_paths, (sorted(checksums), final_paths)
    assert Counter(int(values[-1]) for values in checksums.values()) == Counter(
        checksum_numpy(np.asarray(v.numpy())) for v in variables)
    initial = artifact_json(client, run_id, keys.FINGERPRINTS_INITIAL)
    assert run.data.tags[keys.TAG_INIT_FINGERPRINT] == initial["model"]
    assert len(initial["variables"]) == (len(variables) if initial_variables is None else initial_variables)

    bn = batchnorm_layers(model)
    if bn:
        metrics = run.data.metrics
        with np.load(client.download_artifacts(run_id, f"{keys.ARTIFACT_DIR}/{keys.BATCHNORM}")) as npz:
            last_rows = {name: npz[name][-1] for name in npz.files if name != "epochs"}
        assert len(last_rows) == 2 * len(bn), (len(last_rows), len(bn))
        for layer in bn:
            for stat in keys.BN_STATS:
                value = np.asarray(getattr(layer, stat).numpy())
                names = [name for name, row in last_rows.items() if name.endswith("/" + stat) and np.array_equal(row, value)]
                assert names, f"{layer.name}.{stat} not in batchnorm.npz"
                keys_ = [keys.sanitize_key(keys.bn_key(name.rsplit("/", 1)[0], stat, "mean")) for name in names]
                scale = 1e-6 * float(np.max(np.abs(value))) + 1e-9  # float32 summaries of float32 vectors
                assert any(np.isclose(record.columns[k][-1], float(np.mean(value.astype(np.float64))), rtol=1e-4,
                                      atol=scale) for k in keys_ if k in record.columns), (layer.name, stat)
                logged = [metrics.get(k) for k in keys_]
                # float32 summaries, computed on the device: float32 accumulation over up to 2,048 channels
                assert any(m is not None and np.isclose(m, float(np.mean(value.astype(np.float64))), rtol=1e-4, atol=scale)
                           for m in logged), (layer.name, stat, logged, float(np.mean(value)))
    return {"bn_layers": len(bn), "variables": len(variables)}
