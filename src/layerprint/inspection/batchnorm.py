"""Finding BatchNormalization layers (also inside nested models) and reading their moving statistics."""

from __future__ import annotations

from typing import Any

import numpy as np

from layerprint import keys
from layerprint.inspection.paths import walk_layers


def find_batchnorm_layers(model: Any) -> list[tuple[str, Any]]:
    """``(path, layer)`` of every built BatchNormalization layer in ``model``, each layer once.

    Args:
        model: a built Keras model; nested models and layers holding sublayers are searched.

    Returns:
        The layers in depth-first order, keyed by the path of their first occurrence; a layer whose
        variables do not exist yet (not built) is left out.
    """
    found, seen = [], set()
    for path, layer, _ in walk_layers(model):
        if _is_batchnorm(layer) and getattr(layer, "moving_mean", None) is not None and id(layer) not in seen:
            seen.add(id(layer))
            found.append((path, layer))
    return found


def _is_batchnorm(layer: Any) -> bool:
    return any(cls.__name__ == "BatchNormalization" for cls in type(layer).__mro__)


def moving_statistics(layers: list[tuple[str, Any]],
                      values: dict[int, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Current moving mean and variance of each layer.

    Args:
        layers: ``(path, layer)`` pairs (``find_batchnorm_layers``).
        values: variable values already read, by ``id`` of the variable (read here when missing).

    Returns:
        ``{"<layer path>/moving_mean": array, "<layer path>/moving_variance": array, ...}``.
    """
    values = values or {}
    stats = {}
    for path, layer in layers:
        for stat in keys.BN_STATS:
            variable = getattr(layer, stat)
            value = values.get(id(variable))
            stats[f"{path}/{stat}"] = np.asarray(variable.numpy()) if value is None else value
    return stats
