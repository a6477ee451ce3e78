"""Comparing logged runs: which started identical, where their loss curves and weights part, how far
weights end apart.

Loss curves come from each run's flight record (``steps.parquet``, every step) when it has one, else
from the published ``train/loss`` metric. ``first_weight_divergence`` is ``{"step": K,
"last_equal_step": J, "variables": [path, ...]}``: K the first step, among the steps where both records
hold checksums, at which some variable's checksum differs between the two runs, ``variables`` those that
differ there, J the last step before K at which every checksum was compared and equal (0: the initial
weights, when the runs start bitwise identical; null when they never were equal). The weights parted after
step J and by step K: exactly at K when ``J == K - 1`` (checksums every step), somewhere between otherwise
(a checksum cadence above 1). Null when they never differ or share no checksummed variable and step.
``where_weights_part`` says it in words, narrowed by the losses where they can: a loss that differs at
step L was computed with the weights step L - 1 left, so they had parted by then.

``first_divergence_step`` is the first global step logged by both runs where
``|loss_a - loss_b| > atol + rtol * max(|loss_a|, |loss_b|)`` (defaults ``atol=1e-6``,
``rtol=1e-5``, settable); ``max_loss_gap`` the largest ``|loss_a - loss_b|`` over the common steps.
``final_weight_distance`` is the L2 norm of the difference of the final weights over the variables
both runs have (same path and shape), from their ``weights_final.npz``; null when they share none.
``batchnorm_gap`` is the largest ``|a - b|`` between the two runs' moving mean and moving variance at
their last logged epoch, over the BatchNorm layers matched between them (the same path, or a layer
``rep`` against each ``rep_<i>`` of the other run: a shared layer against the duplicated ones), from
their ``batchnorm.npz``; null when none match.
"""

from __future__ import annotations

import re
from itertools import combinations
from typing import Any

import numpy as np

from layerprint import keys
from layerprint.analysis.runs import RunRecord

DEFAULT_ATOL = 1e-6
DEFAULT_RTOL = 1e-5


def matched_batchnorm_layers(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """BatchNorm layers of two runs to set against each other: the same path in both; else a layer
    ``p`` of one run against each ``p_<i>`` of the other, so that one shared layer (``rep``, called N
    times) is compared with every one of the N duplicated ones (``rep_0``, ``rep_1``, ...).

    Args:
        a, b: ``"<layer>/moving_mean"``-keyed histories, as ``RunRecord.batchnorm``.

    Returns:
        ``[(layer of a, layer of b), ...]``, sorted.
    """
    layers_a = {name.rsplit("/", 1)[0] for name in a}
    layers_b = {name.rsplit("/", 1)[0] for name in b}
    same = layers_a & layers_b
    pairs = [(layer, layer) for layer in same]

    def numbered(layer: str, others: set[str]) -> list[str]:
        return [o for o in others - same if re.fullmatch(re.escape(layer) + r"_\d+", o)]

    pairs += [(layer, other) for layer in layers_a - same for other in numbered(layer, layers_b)]
    pairs += [(other, layer) for layer in layers_b - same for other in numbered(layer, layers_a)]
    return sorted(pairs)


def batchnorm_gap(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray] | None) -> tuple[float | None, dict[str, float]]:
    """Largest absolute difference of the last logged moving statistics, overall and per matched layer
    pair (``matched_batchnorm_layers``; keyed by the path, or ``"<layer a> vs <layer b>"`` when the
    names differ)."""
    if not a or not b:
        return None, {}
    per_layer: dict[str, float] = {}
    for layer_a, layer_b in matched_batchnorm_layers(a, b):
        key = layer_a if layer_a == layer_b else f"{layer_a} vs {layer_b}"
        for stat in keys.BN_STATS:
            history_a, history_b = a.get(f"{layer_a}/{stat}"), b.get(f"{layer_b}/{stat}")
            if history_a is None or history_b is None or history_a[-1].shape != history_b[-1].shape:
                continue
            gap = float(np.max(np.abs(history_a[-1].astype(np.float64) - history_b[-1].astype(np.float64)), initial=0.0))
            per_layer[key] = max(per_layer.get(key, 0.0), gap)
    if not per_layer:
        return None, {}
    return max(per_layer.values()), per_layer


def groups(records: list[RunRecord], attribute: str) -> list[list[str]]:
    """Run ids grouped by an equal fingerprint attribute, largest group first; singletons included."""
    by_value: dict[str, list[str]] = {}
    for record in records:
        value = getattr(record, attribute)
        if value:
            by_value.setdefault(value, []).append(record.run_id)
    return sorted(by_value.values(), key=lambda g: (-len(g), g))


def first_divergence(a: dict[int, float], b: dict[int, float], atol: float = DEFAULT_ATOL,
                     rtol: float = DEFAULT_RTOL) -> tuple[int | None, float | None]:
    """First common step where two loss curves differ beyond the tolerance, and the largest gap.

    Returns:
        ``(step or None, max gap or None when the curves share no step)``.
    """
    steps = sorted(set(a) & set(b))
    if not steps:
        return None, None
    va = np.array([a[s] for s in steps], dtype=np.float64)
    vb = np.array([b[s] for s in steps], dtype=np.float64)
    gap = np.abs(va - vb)
    both_nan = np.isnan(va) & np.isnan(vb)
    gap = np.where(both_nan, 0.0, gap)
    gap = np.where(np.isnan(gap), np.inf, gap)
    over = gap > atol + rtol * np.maximum(np.abs(va), np.abs(vb))
    first = int(steps[int(np.argmax(over))]) if over.any() else None
    return first, float(gap.max())


def first_weight_divergence(a: RunRecord, b: RunRecord, identical_init: bool = False) -> dict[str, Any] | None:
    """Where two runs' weights first differ, to the step and the variable (module doc).

    Args:
        a, b: the runs.
        identical_init: whether they start bitwise identical (then step 0 is the last equal one, unless a
            later compared step is).
    """
    if a.checksums is None or b.checksums is None:
        return None
    paths = sorted(set(a.checksums) & set(b.checksums))
    if not paths:
        return None
    rows_a = {int(step): row for row, step in enumerate(a.checksum_steps)}
    rows_b = {int(step): row for row, step in enumerate(b.checksum_steps)}
    table_a = np.stack([a.checksums[p] for p in paths], 1)
    table_b = np.stack([b.checksums[p] for p in paths], 1)
    last_equal = 0 if identical_init else None
    for step in sorted(set(rows_a) & set(rows_b)):
        left, right = table_a[rows_a[step]], table_b[rows_b[step]]
        taken = (left >= 0) & (right >= 0)
        if not taken.any():
            continue
        differ = taken & (left != right)
        if differ.any():
            return {"step": step, "last_equal_step": last_equal, "variables": [paths[i] for i in np.flatnonzero(differ)]}
        if taken.all():
            last_equal = step
    return None


def where_weights_part(pair: dict[str, Any]) -> tuple[str, int | None]:
    """Where a pair's weights part, in words, and the last step by which they had parted: ``at K`` (exact),
    ``between J and K`` (checksums on a cadence; narrowed by the losses where they can), ``from the start``
    (they never were equal), ``never``.

    Args:
        pair: one of ``compare_records``' pairs.
    """
    divergence, losses = pair.get("first_weight_divergence"), pair.get("first_divergence_step")
    if not divergence:
        return "never", None
    step, last_equal = divergence["step"], divergence.get("last_equal_step")
    if last_equal is None:
        return "from the start", step
    by = min(step, losses - 1) if losses is not None and losses - 1 > last_equal else step
    if by == last_equal + 1:
        return f"at {by}" + (" (by the losses)" if by != step else ""), by
    return f"between {last_equal} and {by}", by


def weight_distance(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray] | None) -> tuple[float | None, dict[str, float]]:
    """L2 distance over common variables, overall and per owning layer."""
    if not a or not b:
        return None, {}
    per_layer: dict[str, float] = {}
    for path in sorted(set(a) & set(b)):
        if a[path].shape != b[path].shape:
            continue
        delta = a[path].astype(np.float64) - b[path].astype(np.float64)
        layer = path.rsplit("/", 1)[0]
        per_layer[layer] = per_layer.get(layer, 0.0) + float(np.sum(delta * delta))
    if not per_layer:
        return None, {}
    total = float(np.sqrt(sum(per_layer.values())))
    return total, {layer: float(np.sqrt(v)) for layer, v in per_layer.items()}


def same_layer_pairs(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's pairs of runs of the same layer kind (the ones the tables show: pairs of different
    layers part at step 1 by construction)."""
    layer = {run["run_id"]: run["layer"] for run in report["runs"]}
    return [pair for pair in report["pairs"] if layer[pair["a"]] == layer[pair["b"]]]


def compare_records(records: list[RunRecord], atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> dict[str, Any]:
    """The comparison report (the ``--format json`` document).

    Returns:
        ``{"runs": [...], "init_groups": [[run_id, ...]], "tolerant_init_groups": [...],
        "pairs": [{"a", "b", "identical_init", "first_divergence_step", "first_weight_divergence",
        "max_loss_gap", "final_weight_distance", "final_weight_distance_per_layer", "batchnorm_gap",
        "batchnorm_gap_per_layer"}], "tolerance": {...}}``.
    """
    runs = [
        {"run_id": r.run_id, "run_name": r.run_name, "variant": r.variant, "layer": r.layer, "seed": r.seed,
         "status": r.status, "init_fingerprint": r.init_fingerprint, "final_fingerprint": r.final_fingerprint}
        for r in records
    ]
    pairs = []
    for a, b in combinations(records, 2):
        step, gap = first_divergence(a.loss, b.loss, atol, rtol)
        identical = bool(a.init_fingerprint) and a.init_fingerprint == b.init_fingerprint
        distance, per_layer = weight_distance(a.weights, b.weights)
        bn_gap, bn_per_layer = batchnorm_gap(a.batchnorm, b.batchnorm)
        pairs.append({
            "a": a.run_id,
            "b": b.run_id,
            "identical_init": identical,
            "first_divergence_step": step,
            "first_weight_divergence": first_weight_divergence(a, b, identical),
            "max_loss_gap": gap,
            "final_weight_distance": distance,
            "final_weight_distance_per_layer": per_layer,
            "batchnorm_gap": bn_gap,
            "batchnorm_gap_per_layer": bn_per_layer,
        })
    return {
        "runs": runs,
        "init_groups": groups(records, "init_fingerprint"),
        "tolerant_init_groups": groups(records, "init_tolerant"),
        "pairs": pairs,
        "tolerance": {"atol": atol, "rtol": rtol},
    }
