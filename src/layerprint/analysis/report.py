"""The comparison as text and files: a terminal table, Markdown, JSON, a self-contained HTML page, and
the report folder with plots."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Callable

from layerprint.analysis.compare import same_layer_pairs, where_weights_part
from layerprint.analysis.runs import RunRecord


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _weights_part(pair: dict[str, Any], width: int) -> str:
    """Where a pair's weights part in a cell: ``<where>: <variable>[ +n]`` (``where_weights_part``), cut to
    ``width``."""
    divergence = pair.get("first_weight_divergence")
    if not divergence:
        return "-"
    first, more = divergence["variables"][0], len(divergence["variables"]) - 1
    text = f"{where_weights_part(pair)[0]}: {first}" + (f" +{more}" if more else "")
    return text if len(text) <= width else text[: width - 3] + "..."


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
    pair_rows = [[names[p["a"]], names[p["b"]], _fmt(p["identical_init"]), _fmt(p["first_divergence_step"]),
                  _weights_part(p, 34), _fmt(p["max_loss_gap"]),
                  _fmt(p["final_weight_distance"])] for p in same_layer_pairs(report)]
    return run_rows, pair_rows


RUN_HEADER = ["run", "variant", "layer", "seed", "init group", "init fp", "status"]
PAIR_HEADER = ["run a", "run b", "same init", "diverges at", "weights part at", "max loss gap", "weight dist"]
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
        "'diverges at': first step the losses differ; 'weights part at': where a variable's checksum first",
        "differs, and which: at a step, between two checksummed steps, or from the start ('-' = never):",
        table(PAIR_HEADER, pair_rows),
    ]
    bn_rows = _bn_rows(report)
    if bn_rows:
        lines += ["", "BatchNorm moving-stat gap at the last epoch (same layer, or a shared `rep` vs each `rep_i`):",
                  table(BN_HEADER, bn_rows)]
    return "\n".join(lines)


def format_findings(records: list[RunRecord]) -> str:
    """The symmetry findings of compared runs, for the terminal: in each run, the groups of distinct
    variables that start bitwise identical (``sharing.json``), which training never separates."""
    found = [(record.run_name, record.sharing.get("identical_initial_values") or []) for record in records]
    found = [(name, groups) for name, groups in found if groups]
    if not found:
        return "Findings: no run has distinct variables that start bitwise identical."
    lines = [f"Findings: {len(found)} run(s) have distinct variables that start bitwise identical; "
             "training never separates them:"]
    for name, groups in found:
        shown = "; ".join(" = ".join(group) for group in groups[:2]) + (f" (+{len(groups) - 2} groups)" if len(groups) > 2 else "")
        lines.append(f"  {name}: {shown}")
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


def format_html(report: dict[str, Any], images: list[Path] | None = None, title: str = "layerprint compare") -> str:
    """One self-contained HTML page: the tables of ``format_markdown`` and the plots, embedded as
    base64 PNGs (no file beside it is needed; MLflow's artifact viewer shows it as it is)."""
    run_rows, pair_rows = _rows(report)

    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    tol = report["tolerance"]
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<h2>Runs ({len(report['runs'])})</h2><p>Runs in one init group start with bitwise-identical weights.</p>",
             table(RUN_HEADER, run_rows),
             f"<h2>Pairs of runs of the same layer kind</h2><p>Loss tolerance atol={tol['atol']:g}, rtol={tol['rtol']:g}; "
             "'diverges at': the first step the losses differ; 'weights part at': where a variable's checksum "
             "first differs (at a step, between two checksummed steps, or from the start), and which.</p>",
             table(PAIR_HEADER, pair_rows)]
    bn_rows = _bn_rows(report)
    if bn_rows:
        parts += ["<h2>BatchNorm moving-stat gap (last epoch)</h2>", table(BN_HEADER, bn_rows)]
    for image in images or []:
        data = base64.b64encode(Path(image).read_bytes()).decode("ascii")
        parts.append(f'<h2>{html.escape(Path(image).stem.replace("_", " "))}</h2>'
                     f'<img alt="{html.escape(Path(image).name)}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;"
             "font-size:13px;margin-bottom:1em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def render(report: dict[str, Any], fmt: str) -> str:
    """The report as ``table``, ``json`` or ``markdown``."""
    if fmt == "json":
        return json.dumps(report, indent=1, sort_keys=True)
    if fmt == "markdown":
        return format_markdown(report)
    return format_table(report)


REPORT_HTML = "report.html"


def write_report(report: dict[str, Any], out_dir: str | Path, records: list[RunRecord] | None = None,
                 map_fn: Callable[[Callable[[Any], Any], list[Any]], Any] | None = None) -> list[Path]:
    """Write ``compare.json``, ``compare.md``, ``compare.txt``, given the records the plots, and
    ``report.html`` (the tables and the plots in one self-contained file).

    Args:
        report: from ``compare_records``.
        out_dir: created if missing.
        records: the compared runs; their curves and arrays are plotted (see ``layerprint.analysis.plots``).
        map_fn: how the plots are drawn (see ``write_plots``); default: one after another, here.

    Returns:
        The files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fmt in (("compare.json", "json"), ("compare.md", "markdown"), ("compare.txt", "table")):
        (out / name).write_text(render(report, fmt) + "\n")
        written.append(out / name)
    plots: list[Path] = []
    if records is not None:
        from layerprint.analysis.plots import write_plots

        plots = write_plots(report, records, out, map_fn)
    (out / REPORT_HTML).write_text(format_html(report, plots), encoding="utf-8")
    return written + plots + [out / REPORT_HTML]
