"""layerprint: see which Keras layers share weights, which start identical, and where runs diverge.

Importing this package imports Keras, NumPy and MLflow only when ``LayerprintCallback`` is used;
it never imports Hydra or the runner.
"""

from typing import Any

__all__ = ["LayerprintCallback", "fingerprint_model", "wait_for_runs", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "LayerprintCallback":
        from layerprint.callback import LayerprintCallback

        return LayerprintCallback
    if name == "wait_for_runs":
        from layerprint.callback import wait_for_runs

        return wait_for_runs
    if name == "fingerprint_model":
        from layerprint.inspection.fingerprint import fingerprint_model

        return fingerprint_model
    raise AttributeError(f"module 'layerprint' has no attribute {name!r}")
