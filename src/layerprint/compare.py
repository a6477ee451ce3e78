"""Comparing logged runs: which started identical, where their loss curves part, how far weights end apart.

``first_divergence_step`` is the first global step logged by both runs where
``|loss_a - loss_b| > atol + rtol * max(|loss_a|, |loss_b|)`` (defaults ``atol=1e-6``,
``rtol=1e-5``, settable); ``max_loss_gap`` the largest ``|loss_a - loss_b|`` over the common steps.
``final_weight_distance`` is the L2 norm of the difference of the final weights over the variables
both runs have (same path and shape), from their ``weights_final.npz``; null when they share none.
``batchnorm_gap`` is the largest ``|a - b|`` between the two runs' moving mean and moving variance at
their last logged epoch, over the BatchNorm layers both runs have (same path), from their
``batchnorm.npz``; null when they share none.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import numpy as np

from layerprint import keys
from layerprint.errors import TrackingError

DEFAULT_ATOL = 1e-6
DEFAULT_RTOL = 1e-5
LOSS_KEY = keys.step_key("loss")


@dataclass
class RunRecord:
    """What compare needs of one run."""

    run_id: str
    run_name: str
    variant: str | None
    layer: str | None
    seed: str | None
    status: str
    init_fingerprint: str | None
    init_tolerant: str | None
    final_fingerprint: str | None
    parent_run_id: str | None = None
    loss: dict[int, float] = field(default_factory=dict)
    weights: dict[str, np.ndarray] | None = None
    batchnorm: dict[str, np.ndarray] | None = None  # "<layer>/moving_mean" -> [epochs, channels]
    batchnorm_epochs: np.ndarray | None = None


def select_runs(client: Any, experiment: str | None = None, run_ids: list[str] | None = None,
                parent_run_id: str | None = None) -> list[Any]:
    """MLflow runs to compare: by id, by sweep parent, or every layerprint run of an experiment.

    Raises:
        TrackingError: unknown run id or experiment, or nothing to compare.
    """
    if run_ids:
        runs = []
        for run_id in run_ids:
            try:
                runs.append(client.get_run(run_id))
            except Exception:  # noqa: BLE001 - MLflow raises several types for a missing run
                raise TrackingError(f"run {run_id!r} does not exist in this tracking store") from None
        return runs
    if parent_run_id:
        try:
            parent = client.get_run(parent_run_id)
        except Exception:  # noqa: BLE001
            raise TrackingError(f"parent run {parent_run_id!r} does not exist in this tracking store") from None
        return client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=5000)
    name = experiment or "layerprint"
    found = client.get_experiment_by_name(name)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise TrackingError(f"experiment {name!r} does not exist; experiments here: {', '.join(names) or 'none'}")
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"], max_results=5000)
    return [r for r in runs if keys.TAG_INIT_FINGERPRINT in r.data.tags]


def load_record(client: Any, run: Any, with_arrays: bool = True) -> RunRecord:
    """Read tags, the step loss curve and (optionally) the final weights and BatchNorm history."""
    tags = run.data.tags
    history = client.get_metric_history(run.info.run_id, LOSS_KEY)
    record = RunRecord(
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        variant=tags.get(keys.TAG_VARIANT),
        layer=tags.get(keys.TAG_LAYER),
        seed=tags.get(keys.TAG_SEED),
        status=run.info.status,
        init_fingerprint=tags.get(keys.TAG_INIT_FINGERPRINT),
        init_tolerant=tags.get(keys.TAG_INIT_TOLERANT),
        final_fingerprint=tags.get(keys.TAG_FINAL_FINGERPRINT),
        parent_run_id=tags.get("mlflow.parentRunId"),
        loss={m.step: m.value for m in history},
    )
    if with_arrays:
        _read_arrays(client, record, run.info.artifact_uri)
    return record


def _local_folder(artifact_uri: str | None) -> Path | None:
    """The run's artifact folder when it is on this machine (the embedded store), else None."""
    if not artifact_uri:
        return None
    parts = urlsplit(artifact_uri)
    if parts.scheme == "file" or (not parts.scheme and artifact_uri.startswith("/")):
        return Path(url2pathname(parts.path))
    return None


def _read_arrays(client: Any, record: RunRecord, artifact_uri: str | None = None) -> None:
    """Fill ``weights`` and ``batchnorm`` from the run's artifacts (both optional); local artifact
    folders are read in place, others downloaded."""
    local = _local_folder(artifact_uri)
    with tempfile.TemporaryDirectory() as tmp:
        for name in (keys.WEIGHTS_FINAL, keys.BATCHNORM):
            if local is not None:
                path = local / keys.ARTIFACT_DIR / name
                if not path.is_file():
                    continue
            else:
                try:
                    path = client.download_artifacts(record.run_id, f"{keys.ARTIFACT_DIR}/{name}", tmp)
                except Exception:  # noqa: BLE001 - large models skip the weights; models without BN have no npz
                    continue
            with np.load(path) as archive:
                arrays = {key: archive[key] for key in archive.files}
            if name == keys.WEIGHTS_FINAL:
                record.weights = arrays
            else:
                record.batchnorm_epochs = arrays.pop("epochs", None)
                record.batchnorm = arrays


def batchnorm_gap(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray] | None) -> tuple[float | None, dict[str, float]]:
    """Largest absolute difference of the last logged moving statistics, overall and per layer."""
    if not a or not b:
        return None, {}
    per_layer: dict[str, float] = {}
    for name in sorted(set(a) & set(b)):
        last_a, last_b = a[name][-1], b[name][-1]
        if last_a.shape != last_b.shape:
            continue
        layer = name.rsplit("/", 1)[0]
        gap = float(np.max(np.abs(last_a.astype(np.float64) - last_b.astype(np.float64)), initial=0.0))
        per_layer[layer] = max(per_layer.get(layer, 0.0), gap)
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


def compare_records(records: list[RunRecord], atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> dict[str, Any]:
    """The comparison report (the ``--format json`` document).

    Returns:
        ``{"runs": [...], "init_groups": [[run_id, ...]], "tolerant_init_groups": [...],
        "pairs": [{"a", "b", "identical_init", "first_divergence_step", "max_loss_gap",
        "final_weight_distance", "final_weight_distance_per_layer", "batchnorm_gap",
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
        distance, per_layer = weight_distance(a.weights, b.weights)
        bn_gap, bn_per_layer = batchnorm_gap(a.batchnorm, b.batchnorm)
        pairs.append({
            "a": a.run_id,
            "b": b.run_id,
            "identical_init": bool(a.init_fingerprint) and a.init_fingerprint == b.init_fingerprint,
            "first_divergence_step": step,
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


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _bn_rows(report: dict[str, Any]) -> list[list[str]]:
    names = {r["run_id"]: r["run_name"] for r in report["runs"]}
    return [[names[p["a"]], names[p["b"]], _fmt(p["batchnorm_gap"]),
             ", ".join(f"{layer} {gap:.3g}" for layer, gap in p["batchnorm_gap_per_layer"].items())[:40]]
            for p in report["pairs"] if p.get("batchnorm_gap") is not None]


def _rows(report: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    names = {r["run_id"]: r["run_name"] for r in report["runs"]}
    group_of = {rid: i + 1 for i, g in enumerate(report["init_groups"]) for rid in g}
    run_rows = [[r["run_name"], r["variant"] or "-", r["layer"] or "-", r["seed"] or "-",
                 f"G{group_of.get(r['run_id'], '-')}", (r["init_fingerprint"] or "-")[:12], r["status"]]
                for r in report["runs"]]
    same_layer = [p for p in report["pairs"]
                  if _layer_of(report, p["a"]) == _layer_of(report, p["b"])]
    pair_rows = [[names[p["a"]], names[p["b"]], _fmt(p["identical_init"]), _fmt(p["first_divergence_step"]),
                  _fmt(p["max_loss_gap"]), _fmt(p["final_weight_distance"])] for p in same_layer]
    return run_rows, pair_rows


def _layer_of(report: dict[str, Any], run_id: str) -> str | None:
    return next(r["layer"] for r in report["runs"] if r["run_id"] == run_id)


RUN_HEADER = ["run", "variant", "layer", "seed", "init group", "init fp", "status"]
PAIR_HEADER = ["run a", "run b", "same init", "diverges at", "max loss gap", "weight dist"]
BN_HEADER = ["run a", "run b", "bn gap", "largest per layer"]


def format_table(report: dict[str, Any]) -> str:
    """A terminal table (fits 100 columns): runs with their init group, then pairs of runs of the
    same layer kind."""
    run_rows, pair_rows = _rows(report)

    def table(header: list[str], rows: list[list[str]]) -> str:
        widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)] if rows else [len(h) for h in header]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])

    groups_line = sum(1 for g in report["init_groups"] if len(g) > 1)
    tol = report["tolerance"]
    lines = [
        f"Runs ({len(report['runs'])}); runs in one init group start with bitwise-identical weights "
        f"({groups_line} group(s) of 2+):",
        table(RUN_HEADER, run_rows),
        "",
        f"Pairs of runs of the same layer (loss tolerance atol={tol['atol']:g}, rtol={tol['rtol']:g});",
        "'-' = never diverged / not comparable:",
        table(PAIR_HEADER, pair_rows),
    ]
    bn_rows = _bn_rows(report)
    if bn_rows:
        lines += ["", "BatchNorm moving-stat gap at the last epoch (layers of the same path in both runs):",
                  table(BN_HEADER, bn_rows)]
    return "\n".join(lines)


def format_markdown(report: dict[str, Any]) -> str:
    """The same content as ``format_table`` as Markdown tables."""
    run_rows, pair_rows = _rows(report)

    def table(header: list[str], rows: list[list[str]]) -> str:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        return "\n".join(out)

    parts = ["## Runs", table(RUN_HEADER, run_rows), "## Pairs (same layer kind)", table(PAIR_HEADER, pair_rows)]
    bn_rows = _bn_rows(report)
    if bn_rows:
        parts += ["## BatchNorm moving-stat gap (last epoch)", table(BN_HEADER, bn_rows)]
    return "\n\n".join(parts)


def render(report: dict[str, Any], fmt: str) -> str:
    """The report as ``table``, ``json`` or ``markdown``."""
    if fmt == "json":
        return json.dumps(report, indent=1, sort_keys=True)
    if fmt == "markdown":
        return format_markdown(report)
    return format_table(report)


def collect(client: Any, experiment: str | None = None, run_ids: list[str] | None = None,
            parent_run_id: str | None = None) -> list[RunRecord]:
    """Select runs and read what compare and the plots need.

    Raises:
        TrackingError: no runs found, or an unknown run or experiment.
    """
    runs = select_runs(client, experiment, run_ids, parent_run_id)
    if not runs:
        raise TrackingError("no layerprint runs to compare in that selection")
    return [load_record(client, run) for run in runs]


def compare(client: Any, experiment: str | None = None, run_ids: list[str] | None = None,
            parent_run_id: str | None = None, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> dict[str, Any]:
    """Select runs, read them, and build the report (see ``compare_records``).

    Raises:
        TrackingError: no runs found, or an unknown run or experiment.
    """
    return compare_records(collect(client, experiment, run_ids, parent_run_id), atol, rtol)


def common_parent(records: list[RunRecord]) -> str | None:
    """The sweep parent run id all ``records`` share, else None."""
    parents = {r.parent_run_id for r in records}
    return parents.pop() if len(parents) == 1 else None


def write_report(report: dict[str, Any], out_dir: str | Path, records: list[RunRecord] | None = None) -> list[Path]:
    """Write ``compare.json``, ``compare.md``, ``compare.txt`` and, given the records, the plots.

    Args:
        report: from ``compare_records``.
        out_dir: created if missing.
        records: the compared runs; their curves and arrays are plotted (see ``layerprint.plots``).

    Returns:
        The files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fmt in (("compare.json", "json"), ("compare.md", "markdown"), ("compare.txt", "table")):
        (out / name).write_text(render(report, fmt) + "\n")
        written.append(out / name)
    if records is not None:
        from layerprint.plots import write_plots

        written += write_plots(report, records, out)
    return written
