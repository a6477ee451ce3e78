"""PNG plots of a comparison: loss curves, BatchNorm trajectories, weight distances, init equality.

Every plot keeps its legend outside the axes (right of them), so no line is hidden behind it.
Colours follow the variant (one colour per variant across all plots of a report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

MAX_HEATMAP_PAIRS = 60


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


def plot_loss_curves(records: list[Any], path: Path, report: dict[str, Any] | None = None) -> Path:
    """Per-step loss of every run, one panel per layer kind, coloured by variant; a dotted line marks
    each step where a pair of runs' weights first part (``first_weight_divergence``)."""
    colours = variant_colours(records)
    layer_of = {r.run_id: r.layer or "?" for r in records}
    parts: dict[str, set[int]] = {}
    for pair in (report or {}).get("pairs", []):
        divergence = pair.get("first_weight_divergence")
        if divergence and layer_of.get(pair["a"]) == layer_of.get(pair["b"]):
            parts.setdefault(layer_of[pair["a"]], set()).add(divergence["step"])
    layers = list(dict.fromkeys(r.layer or "?" for r in records))
    fig, axes = plt.subplots(len(layers), 1, figsize=(8, 2.8 * len(layers)), squeeze=False)
    for ax, layer in zip(axes[:, 0], layers):
        for record in (r for r in records if (r.layer or "?") == layer):
            if not record.loss:
                continue
            steps = sorted(record.loss)
            values = [record.loss[s] for s in steps]
            ax.plot(steps, values, color=colours[record.variant or "?"], lw=1.2, alpha=0.85)
        for step in sorted(parts.get(layer, ())):
            ax.axvline(step, color="black", ls=":", lw=0.8)
        marked = f"; weights part at step {', '.join(map(str, sorted(parts[layer])))}" if parts.get(layer) else ""
        ax.set_title(f"layer={layer}{marked}", fontsize=10)
        ax.set_xlabel("global step")
        ax.set_ylabel("train/loss")
        if all(v > 0 for r in records if (r.layer or "?") == layer for v in r.loss.values() if np.isfinite(v)):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    return _save(fig, path, colours)


def plot_batchnorm(records: list[Any], path: Path) -> Path | None:
    """Channel-mean of every BatchNorm layer's moving mean and variance per epoch, per run."""
    with_bn = [r for r in records if r.batchnorm]
    if not with_bn:
        return None
    colours = variant_colours(records)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, stat in zip(axes, ("moving_mean", "moving_variance")):
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


def write_plots(report: dict[str, Any], records: list[Any], out_dir: Path) -> list[Path]:
    """Write ``loss_curves.png``, ``batchnorm.png``, ``weight_distance.png`` and ``init_matrix.png``
    (the middle two only when there is something to show).

    Returns:
        The files written.
    """
    out = Path(out_dir)
    written = [
        plot_loss_curves(records, out / "loss_curves.png", report),
        plot_batchnorm(records, out / "batchnorm.png"),
        plot_distance_heatmap(report, out / "weight_distance.png"),
        plot_init_matrix(report, out / "init_matrix.png"),
    ]
    return [path for path in written if path is not None]
