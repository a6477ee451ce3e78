"""PNG plots of a comparison: loss curves, loss gaps of pairs, BatchNorm trajectories and gaps, weight
distances, init equality.

Every plot keeps its legend outside the axes (right of them), so no line is hidden behind it.
Colours follow the variant (one colour per variant across all plots of a report). Runs that start
identical draw identical curves: within an init group each run gets its own line style and marker, so
a curve drawn over another one still shows.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from layerprint import keys  # noqa: E402
from layerprint.analysis.compare import where_weights_part  # noqa: E402

MAX_HEATMAP_PAIRS = 60
MAX_GAP_LINES = 16  # lines per panel of the gap plots (the pairs that part first)
LINE_STYLES = [("-", None), ("--", "o"), (":", "s"), ("-.", "^"), ((0, (5, 1)), "x"), ((0, (1, 3)), "D")]


def variant_colours(records: list[Any]) -> dict[str, Any]:
    """One colour per variant, stable in the order the variants first appear."""
    palette = plt.get_cmap("tab10" if len({r.variant for r in records}) <= 10 else "tab20")
    variants = list(dict.fromkeys(r.variant or "?" for r in records))
    return {name: palette(i % palette.N) for i, name in enumerate(variants)}


def _legend_by_variant(fig: Any, colours: dict[str, Any]) -> None:
    handles = [plt.Line2D([], [], color=colour, lw=2) for colour in colours.values()]
    fig.legend(handles, list(colours), title="variant", loc="upper left", bbox_to_anchor=(1.0, 0.95),
               frameon=False)


def _save(fig: Any, path: Path, colours: dict[str, Any] | None = None) -> Path:
    """Add the variant legend (outside the axes) when given colours, write the PNG, free the figure."""
    if colours is not None:
        _legend_by_variant(fig, colours)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _styles_within_init_groups(records: list[Any]) -> dict[str, tuple[Any, Any]]:
    """``{run_id: (line style, marker)}``: the n-th run of one layer kind and init group gets the n-th
    style, so runs that start identical (and draw one curve) stay visible."""
    seen: dict[tuple[str, str], int] = {}
    styles = {}
    for record in records:
        group = (record.layer or "?", record.init_fingerprint or record.run_id)
        index = seen.get(group, 0)
        seen[group] = index + 1
        styles[record.run_id] = LINE_STYLES[index % len(LINE_STYLES)]
    return styles


def _layers_of_pairs(records: list[Any], report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The report's pairs of runs of one layer kind, by layer kind."""
    layer_of = {r.run_id: r.layer or "?" for r in records}
    by_layer: dict[str, list[dict[str, Any]]] = {}
    for pair in report.get("pairs", []):
        if pair["a"] in layer_of and layer_of[pair["a"]] == layer_of.get(pair["b"]):
            by_layer.setdefault(layer_of[pair["a"]], []).append(pair)
    return by_layer


def plot_loss_curves(records: list[Any], path: Path, report: dict[str, Any] | None = None) -> Path:
    """Per-step loss of every run, one panel per layer kind, coloured by variant, with a line style per
    run within an init group; a dotted line marks each step by which a pair of runs that started equal had
    parted (``compare.where_weights_part``: at that step, or between two checksummed steps)."""
    colours = variant_colours(records)
    styles = _styles_within_init_groups(records)
    parts: dict[str, set[int]] = {}
    words: dict[str, set[str]] = {}
    for layer, pairs in _layers_of_pairs(records, report or {}).items():
        found = [where_weights_part(p) for p in pairs if p.get("first_weight_divergence")]
        parts[layer] = {by for text, by in found if text != "from the start"}
        words[layer] = {text for text, _ in found if text != "from the start"}
    layers = list(dict.fromkeys(r.layer or "?" for r in records))
    fig, axes = plt.subplots(len(layers), 1, figsize=(8, 2.8 * len(layers)), squeeze=False)
    for ax, layer in zip(axes[:, 0], layers):
        for record in (r for r in records if (r.layer or "?") == layer):
            if not record.loss:
                continue
            steps = sorted(record.loss)
            values = [record.loss[s] for s in steps]
            style, marker = styles[record.run_id]
            ax.plot(steps, values, color=colours[record.variant or "?"], lw=1.2, alpha=0.85, ls=style,
                    marker=marker, ms=3, markevery=max(1, len(steps) // 12))
        for step in sorted(parts.get(layer, ())):
            ax.axvline(step, color="black", ls=":", lw=0.8)
        marked = f"; weights part {', '.join(sorted(words[layer]))}" if words.get(layer) else ""
        ax.set_title(f"layer={layer}{marked}", fontsize=10)
        ax.set_xlabel("global step")
        ax.set_ylabel("train/loss")
        if all(v > 0 for r in records if (r.layer or "?") == layer for v in r.loss.values() if np.isfinite(v)):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.text(0.0, -0.01, "Runs that start identical draw one curve: each has its own line style and marker.",
             fontsize=8)
    return _save(fig, path, colours)


def plot_loss_gaps(records: list[Any], report: dict[str, Any], path: Path) -> Path | None:
    """``|loss_a - loss_b|`` per step for each pair of runs of one layer kind (one panel per kind; the
    pairs that part first when there are many), the first divergence of each marked with a dot.
    A symmetric-log axis shows equal losses (a gap of 0) on the axis."""
    by_layer = _layers_of_pairs(records, report)
    if not by_layer:
        return None
    loss = {r.run_id: r.loss for r in records}
    names = {r.run_id: r.run_name for r in records}
    tolerance = report.get("tolerance", {}).get("atol", 1e-6)
    fig, axes = plt.subplots(len(by_layer), 1, figsize=(9, 3.0 * len(by_layer)), squeeze=False)
    for ax, (layer, pairs) in zip(axes[:, 0], by_layer.items()):
        shown = sorted(pairs, key=lambda p: (p["first_divergence_step"] is None, p["first_divergence_step"] or 0))
        for index, pair in enumerate(shown[:MAX_GAP_LINES]):
            a, b = loss[pair["a"]], loss[pair["b"]]
            steps = sorted(set(a) & set(b))
            if not steps:
                continue
            gap = np.abs(np.array([a[s] for s in steps], dtype=np.float64) - np.array([b[s] for s in steps]))
            style, marker = LINE_STYLES[index % len(LINE_STYLES)]  # equal gaps (pairs with a twin run) stay visible
            (line,) = ax.plot(steps, gap, lw=1.1, ls=style, marker=marker, ms=3, markevery=max(1, len(steps) // 10),
                              label=f"{names[pair['a']]} vs {names[pair['b']]}")
            first = pair["first_divergence_step"]
            if first is not None and first in a and first in b:
                ax.plot([first], [abs(a[first] - b[first])], "o", color=line.get_color(), ms=5)
        ax.set_yscale("symlog", linthresh=max(tolerance, 1e-12))
        hidden = len(pairs) - min(len(pairs), MAX_GAP_LINES)
        ax.set_title(f"layer={layer}: |loss a - loss b| per pair; dot: first divergence"
                     + (f" ({hidden} later pairs not drawn)" if hidden else ""), fontsize=9)
        ax.set_xlabel("global step")
        ax.set_ylabel("loss gap")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    return _save(fig, path)


def plot_batchnorm(records: list[Any], path: Path) -> Path | None:
    """Channel-mean of every BatchNorm layer's moving mean and variance per epoch, per run."""
    with_bn = [r for r in records if r.batchnorm]
    if not with_bn:
        return None
    colours = variant_colours(records)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, stat in zip(axes, keys.BN_STATS):
        for record in with_bn:
            epochs = record.batchnorm_epochs
            for name, history in record.batchnorm.items():
                if not name.endswith("/" + stat):
                    continue
                x = epochs if epochs is not None and len(epochs) == len(history) else np.arange(len(history))
                ax.plot(x, history.reshape(len(history), -1).mean(axis=1), marker="o", ms=3, lw=1.2,
                        color=colours[record.variant or "?"], alpha=0.8)
        ax.set_title(f"{stat} (mean over channels), one line per run and layer", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return _save(fig, path, colours)


def plot_batchnorm_gaps(records: list[Any], path: Path) -> Path | None:
    """Per epoch, the largest ``|a - b|`` of the moving mean and variance between BatchNorm layers of
    two runs matched by ``matched_batchnorm_layers``: the same layer, or a shared ``rep`` against each
    duplicated ``rep_i`` (pairs of one layer kind; the largest final gaps when there are many)."""
    from layerprint.analysis.compare import matched_batchnorm_layers

    with_bn = [r for r in records if r.batchnorm and r.batchnorm_epochs is not None]
    lines = []
    for i, a in enumerate(with_bn):
        for b in with_bn[i + 1:]:
            if (a.layer or "?") != (b.layer or "?"):
                continue
            for layer_a, layer_b in matched_batchnorm_layers(a.batchnorm, b.batchnorm):
                epochs = sorted(set(a.batchnorm_epochs.tolist()) & set(b.batchnorm_epochs.tolist()))
                if not epochs:
                    continue
                rows_a = [a.batchnorm_epochs.tolist().index(e) for e in epochs]
                rows_b = [b.batchnorm_epochs.tolist().index(e) for e in epochs]
                gaps = {}
                for stat in keys.BN_STATS:
                    ha, hb = a.batchnorm.get(f"{layer_a}/{stat}"), b.batchnorm.get(f"{layer_b}/{stat}")
                    if ha is None or hb is None or ha.shape[1:] != hb.shape[1:]:
                        continue
                    delta = np.abs(ha[rows_a].astype(np.float64) - hb[rows_b].astype(np.float64))
                    gaps[stat] = delta.reshape(len(epochs), -1).max(axis=1)
                label = f"{a.run_name}:{layer_a} vs {b.run_name}:{layer_b}"
                lines.append((label, epochs, gaps))
    if not lines:
        return None
    lines.sort(key=lambda item: -max((g[-1] for g in item[2].values()), default=0.0))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for ax, stat in zip(axes, keys.BN_STATS):
        for label, epochs, gaps in lines[:MAX_GAP_LINES]:
            if stat in gaps:
                ax.plot(epochs, gaps[stat], marker="o", ms=3, lw=1.1, label=label)
        ax.set_yscale("symlog", linthresh=1e-6)
        ax.set_title(f"{stat}: largest |a - b| over channels", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    return _save(fig, path)


def plot_distance_heatmap(report: dict[str, Any], path: Path) -> Path | None:
    """Final weight distance per layer (columns) for each pair of runs of the same layer kind (rows)."""
    names = {r["run_id"]: r["run_name"] for r in report["runs"]}
    layer_of = {r["run_id"]: r["layer"] for r in report["runs"]}
    pairs = [p for p in report["pairs"]
             if p.get("final_weight_distance_per_layer") and layer_of[p["a"]] == layer_of[p["b"]]][:MAX_HEATMAP_PAIRS]
    if not pairs:
        return None
    layers = sorted({layer for p in pairs for layer in p["final_weight_distance_per_layer"]})
    grid = np.full((len(pairs), len(layers)), np.nan)
    for i, pair in enumerate(pairs):
        for j, layer in enumerate(layers):
            grid[i, j] = pair["final_weight_distance_per_layer"].get(layer, np.nan)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(layers) + 3, 1.2 + 0.32 * len(pairs)))
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(pairs)), [f"{names[p['a']]} vs {names[p['b']]}" for p in pairs], fontsize=7)
    ax.set_title("final weight distance per layer (blank: layer not in both runs)", fontsize=9)
    fig.colorbar(image, ax=ax, label="L2 distance")
    return _save(fig, path)


def plot_init_matrix(report: dict[str, Any], path: Path) -> Path:
    """Which runs start with bitwise-identical weights: a run x run matrix of the init fingerprints."""
    runs = report["runs"]
    n = len(runs)
    equal = np.array([[bool(a["init_fingerprint"]) and a["init_fingerprint"] == b["init_fingerprint"]
                       for b in runs] for a in runs], dtype=float)
    size = 2.5 + 0.3 * n
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(equal, cmap="Greens", vmin=0, vmax=1.3)
    labels = [r["run_name"] for r in runs]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, "=" if equal[i, j] else "", ha="center", va="center", fontsize=7)
    ax.set_title("identical initial weights (=)", fontsize=9)
    return _save(fig, path)


def _draw(plot: Callable[[], Path | None]) -> Path | None:
    return plot()


def write_plots(report: dict[str, Any], records: list[Any], out_dir: Path,
                map_fn: Callable[[Callable[[Any], Any], list[Any]], Any] | None = None) -> list[Path]:
    """Write ``loss_curves.png``, ``loss_gaps.png``, ``batchnorm.png``, ``batchnorm_gaps.png``,
    ``weight_distance.png`` and ``init_matrix.png`` (each but the first and the last only when there
    is something to show).

    Args:
        report: from ``compare_records``.
        records: the compared runs.
        out_dir: an existing folder.
        map_fn: ``map``-like ``(function, items) -> results`` that draws the plots: ``map`` (the
            default) draws them one after another here; a map over worker processes (the sweep's
            joblib workers) draws them at once; results in the order given. The plots are picklable.

    Returns:
        The files written.
    """
    out = Path(out_dir)
    plots = [
        partial(plot_loss_curves, records, out / "loss_curves.png", report),
        partial(plot_loss_gaps, records, report, out / "loss_gaps.png"),
        partial(plot_batchnorm, records, out / "batchnorm.png"),
        partial(plot_batchnorm_gaps, records, out / "batchnorm_gaps.png"),
        partial(plot_distance_heatmap, report, out / "weight_distance.png"),
        partial(plot_init_matrix, report, out / "init_matrix.png"),
    ]
    return [path for path in (map_fn or map)(_draw, plots) if path is not None]
