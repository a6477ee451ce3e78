"""Two runs of one seeded model on a GPU: where do they part? The use case no tracker serves.

Without determinism flags, a GPU sums a gradient's contributions in whatever order its threads finish
(atomic additions: an ``Embedding``'s gradient scatter-adds the rows of repeated tokens), so two runs of one
seeded model on one machine part after some step. ``layerprint compare`` names that step and the variables
that differ there. With XLA's deterministic ops (``XLA_FLAGS=--xla_gpu_deterministic_ops=true``, JAX) the
pair never parts.

Each run is its own process (XLA's flags are read at start-up):

    python benchmarks/gpu_divergence.py train URI NAME       # one run into the store at URI
    python benchmarks/gpu_divergence.py compare URI A B      # where runs A and B part (JSON, then the table)

``benchmarks/gpu_check.sh`` runs the pairs, with and without the flag, and the overhead benchmark.
"""

import json
import sys

import keras
import mlflow
import numpy as np

from layerprint import LayerprintCallback

STEPS, BATCH, TOKENS, VOCABULARY = 60, 64, 64, 512


def train(uri: str, name: str) -> None:
    """One seeded run: an embedding of repeated tokens (its gradient is a scatter-add), a convolution with
    BatchNorm, a dense head; SGD, no shuffling, the callback at its defaults."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCABULARY // 8, size=(STEPS * BATCH, TOKENS))  # few distinct tokens: many repeats
    y = rng.normal(size=(STEPS * BATCH, 1)).astype("float32")
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((TOKENS,), dtype="int32"), keras.layers.Embedding(VOCABULARY, 64, name="embedding"),
                              keras.layers.Conv1D(64, 3, padding="same", name="conv"),
                              keras.layers.BatchNormalization(name="bn"), keras.layers.ReLU(),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1, name="head")])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("gpu-divergence")
    with mlflow.start_run(run_name=name):
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[LayerprintCallback()])


def compare(uri: str, a: str, b: str) -> None:
    """Print where the runs named ``a`` and ``b`` part: the pair's JSON, then compare's table."""
    from mlflow.tracking import MlflowClient

    from layerprint.analysis.compare import compare_records, where_weights_part
    from layerprint.analysis.report import render
    from layerprint.analysis.runs import collect

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gpu-divergence").experiment_id
    ids = {run.info.run_name: run.info.run_id for run in client.search_runs([experiment])}
    report = compare_records(collect(client, run_ids=[ids[a], ids[b]]))
    (pair,) = report["pairs"]
    print(json.dumps({"pair": [a, b], "identical_init": pair["identical_init"],
                      "first_divergence_step": pair["first_divergence_step"],
                      "first_weight_divergence": pair["first_weight_divergence"],
                      "weights part": where_weights_part(pair)[0], "max_loss_gap": pair["max_loss_gap"]}))
    print(render(report, "table"))


if __name__ == "__main__":
    {"train": train, "compare": compare}[sys.argv[1]](*sys.argv[2:])
