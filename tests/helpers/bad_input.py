"""The one table of bad command lines, shared by the in-process and the end-to-end checks."""

from pathlib import Path

import numpy as np


def bad_inputs(tmp: Path) -> list[tuple[list[str], str, bool]]:
    """``(command line, fragment of the one-line error, refused by the override check alone)``.

    Every case must exit non-zero with one ``<program>: error: ...`` line, no traceback and no run
    left RUNNING (``test_faults.py``); the override-only ones must also be refused in-process by
    ``runner.overrides.check_overrides`` before TensorFlow or a store is touched (``test_config.py``).
    """
    text, wrong_keys = tmp / "not-an-npz.npz", tmp / "wrong-keys.npz"
    train = "layerprint-train"
    return [
        ([train, "variant=nope"], "valid variant options", True),
        ([train, "layer=conv3d"], "valid layer options", True),
        ([train, "data=csv"], "valid data options", True),
        ([train, "trainer=fast"], "valid trainer options", True),
        ([train, "tracking=cloud"], "valid tracking options", True),
        ([train, "experiment=huge"], "valid experiment options", True),
        ([train, "seed=abc"], "seed: Value 'abc'", True),
        ([train, "seed=-1"], "seed=-1 is not allowed", True),
        ([train, "repeats=0"], "repeats=0 is not allowed", True),
        ([train, "layer.width=0"], "layer.width=0 is not allowed", True),
        ([train, "layer.width=wide"], "layer.width", True),
        ([train, "layer.kernel_size=-3"], "layer.kernel_size=-3 is not allowed", True),
        ([train, "data.n_samples=0"], "data.n_samples=0 is not allowed", True),
        ([train, "trainer.epochs=0"], "trainer.epochs=0 is not allowed", True),
        ([train, "trainer.batch_size=-1"], "trainer.batch_size=-1 is not allowed", True),
        ([train, "trainer.learning_rate=0"], "trainer.learning_rate=0.0 is not allowed", True),
        ([train, "trainer.optimizer=lbfgs"], "trainer.optimizer='lbfgs' is not allowed", True),
        ([train, "trainer.steps_per_execution=0"], "trainer.steps_per_execution=0 is not allowed", True),
        ([train, "trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 is not allowed", True),
        ([train, "trainer.probe_rows=-1"], "trainer.probe_rows=-1 is not allowed", True),
        ([train, "data.validation_split=1.5"], "data.validation_split=1.5 is not allowed", True),
        ([train, "deterministic=maybe"], "deterministic", True),
        ([train, "device=tpu"], "device='tpu' is not allowed", True),
        ([train, "model_style=keras2"], "model_style='keras2' is not allowed; use one of: functional, sequential, subclassed", True),
        ([train, "device=gpu"], "device=gpu but TensorFlow sees no GPU", False),
        ([train, "no_such_key=1"], "no_such_key", True),
        ([train, "variant="], "variant", True),
        ([train, "-m", "layer=dense,dense2"], "valid layer options: batchnorm, conv2d, dense, gru, lstm", True),
        ([train, "-m", "variant=duplicated,nope"], "valid variant options", True),
        ([train, "-m", "hydra/launcher=slurmx"], "valid options: basic, joblib", True),
        ([train, "tracking.uri=ftp://example/x"], "is not supported", False),
        ([train, "tracking.uri=http://127.0.0.1:1"], "cannot reach the tracking server", False),
        ([train, "-m", "variant=duplicated,shared", "tracking.uri=http://127.0.0.1:1"], "cannot reach the tracking server", False),
        ([train, "tracking.uri=sqlite:////proc/layerprint/mlflow.db"], "cannot create the store folder", False),
        ([train, "data=npz"], "data=npz needs data.path", True),
        ([train, "data=npz", f"data.path={tmp / 'missing.npz'}"], "does not exist", False),
        ([train, "data=npz", f"data.path={text}"], "is not a readable .npz archive", False),
        ([train, "data=npz", f"data.path={wrong_keys}"], "'x'", False),
        (["layerprint", "compare", "--run-ids", "0123456789abcdef"], "does not exist in this tracking store", False),
        (["layerprint", "compare", "--experiment", "nope"], "experiment 'nope' does not exist", False),
        (["layerprint", "compare", "--parent", "feedbeef"], "parent run 'feedbeef' does not exist", False),
        (["layerprint", "compare", "--atol", "-1"], "--atol and --rtol must be >= 0", False),
        (["layerprint", "compare", "--format", "xml"], "invalid choice: 'xml'", False),
        (["layerprint", "compare", "--tracking-uri", "sqlite:////nonexistent-dir/x.db"], "no tracking store", False),
        (["layerprint", "claims", "--only", "C99"], "unknown claim id(s) C99", False),
        (["layerprint", "ui", "--port", "0"], "--port must be between 1 and 65535, got 0", False),
        (["layerprint", "ui", "--tracking-uri", "sqlite:////nonexistent-dir/x.db"], "no tracking store", False),
        (["layerprint", "frobnicate"], "invalid choice: 'frobnicate'", False),
    ]


def write_bad_files(tmp: Path) -> None:
    """The data files the table's ``.npz`` cases point at (a text file, an archive without ``x``)."""
    (tmp / "not-an-npz.npz").write_text("hello")
    np.savez(tmp / "wrong-keys.npz", a=np.ones((4, 2)))
