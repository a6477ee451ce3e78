"""Time ``layerprint compare`` over 50 runs x 1,000 logged steps in a local SQLite store.

Builds the store first (not timed): 50 runs in one experiment, each with the tags, per-step metrics
(``train/loss``, ``train/mae`` and eight BatchNorm summaries: 10,000 points a run, 500,000 in all),
``weights_final.npz`` and ``batchnorm.npz`` as the callback writes them. Then times the console
command end to end (process start, imports, reading, 1,225 pairs, output), three times, and once
more with ``--out`` (report files and the four plots). Target (issue 4): <= 10 s.

Run: ``.venv/bin/python benchmarks/compare_50x1000.py``
"""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from layerprint import keys

RUNS, STEPS, TARGET_S = 50, 1000, 10.0
VARIANTS = ("duplicated", "shared", "cloned", "copied", "reseeded")
BIN = Path(sys.executable).parent


def build_store(root: Path) -> str:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("bench", artifact_location=str(root / "artifacts"))
    rng = np.random.default_rng(0)
    bn_keys = [keys.bn_key("rep_0", stat, s) for stat in keys.BN_STATS for s in keys.BN_SUMMARIES]
    for i in range(RUNS):
        variant = VARIANTS[i % len(VARIANTS)]
        init = f"{i % 10:064x}"  # ten init groups of five runs
        run = client.create_run(experiment_id, run_name=f"{variant}-batchnorm-s{i // 5}", tags={
            keys.TAG_VARIANT: variant, keys.TAG_LAYER: "batchnorm", keys.TAG_SEED: str(i // 5),
            keys.TAG_INIT_FINGERPRINT: init, keys.TAG_INIT_TOLERANT: init, keys.TAG_FINAL_FINGERPRINT: f"{i:064x}"})
        run_id = run.info.run_id
        loss = np.exp(-np.linspace(0, 3, STEPS)) + rng.normal(0, 1e-3 * (i % 7), STEPS)
        now = int(time.time() * 1000)
        metrics = []
        for step in range(STEPS):
            metrics.append(Metric(keys.step_key("loss"), float(loss[step]), now, step + 1))
            metrics.append(Metric(keys.step_key("mae"), float(loss[step]) / 2, now, step + 1))
            metrics += [Metric(k, float(rng.normal()), now, step + 1) for k in bn_keys]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        with tempfile.TemporaryDirectory() as tmp:
            weights = {f"{layer}/{name}": rng.normal(size=shape).astype("float32")
                       for layer in ("spacer_0", "spacer_1", "head")
                       for name, shape in (("kernel", (32, 32)), ("bias", (32,)))}
            np.savez(Path(tmp) / keys.WEIGHTS_FINAL, **weights)
            np.savez(Path(tmp) / keys.BATCHNORM, epochs=np.arange(6),
                     **{f"rep_0/{stat}": rng.normal(size=(6, 32)).astype("float32") for stat in keys.BN_STATS})
            for name in (keys.WEIGHTS_FINAL, keys.BATCHNORM):
                client.log_artifact(run_id, str(Path(tmp) / name), keys.ARTIFACT_DIR)
        client.set_terminated(run_id)
    return uri


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "layerprint"), *args], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"compare failed: {done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        uri = build_store(root)
        print(f"built {RUNS} runs x {STEPS} steps (10 keys a step) in {time.perf_counter() - start:.1f} s")
        args = ["compare", "--tracking-uri", uri, "--experiment", "bench", "--format", "json"]
        times = [timed(args) for _ in range(3)]
        with_plots = timed(args + ["--out", str(root / "report")])
    median = statistics.median(times)
    print(f"layerprint compare, {RUNS} runs x {STEPS} steps, {RUNS * (RUNS - 1) // 2} pairs: "
          f"median {median:.2f} s of {', '.join(f'{t:.2f}' for t in times)}; with --out (report + plots) "
          f"{with_plots:.2f} s; target <= {TARGET_S:.0f} s: {'met' if median <= TARGET_S else 'NOT met'}")


if __name__ == "__main__":
    main()
