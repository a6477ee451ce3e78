"""Markdown descriptions of runs (MLflow's ``mlflow.note.content``, shown on a run's page in the UI).

A run's note says what it is and what layerprint found: variant, layer, seed, init fingerprint, shared
layers, the runs it starts bitwise-identical to, and the first step whose loss was not finite. A sweep
parent's note is the comparison: the init groups, the pairs that start identical and where they part,
and the plots and the report, shown from the parent's ``compare/`` artifacts.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote

from layerprint.analysis.addresses import comparison_addresses
from layerprint.analysis.compare import where_weights_part
from layerprint.analysis.runs import RunRecord
from layerprint.compat.mlflow import run_artifact_address

MAX_PAIRS_LISTED = 30


def _group_of(run_id: str, report: dict[str, Any] | None) -> list[str]:
    for group in (report or {}).get("init_groups", []):
        if run_id in group:
            return group
    return [run_id]


def first_non_finite_step(record: RunRecord) -> int | None:
    """The first step whose loss is NaN or infinite, else None."""
    return next((step for step in sorted(record.loss) if not math.isfinite(record.loss[step])), None)


def run_note(record: RunRecord, report: dict[str, Any] | None = None) -> str:
    """The description of one run.

    Args:
        record: what the run logged (``layerprint.analysis.runs.load_record``).
        report: a comparison that includes the run (``compare_records``), for its init group; None for
            a run compared with nothing yet.

    Returns:
        Markdown.
    """
    names = {r["run_id"]: r["run_name"] for r in (report or {}).get("runs", [])}
    shared = record.sharing.get("shared_layers") or {}
    same_init = [names.get(run_id, run_id) for run_id in _group_of(record.run_id, report) if run_id != record.run_id]
    non_finite = first_non_finite_step(record)
    finite = [record.loss[s] for s in sorted(record.loss) if math.isfinite(record.loss[s])]
    rows = [
        ("variant", f"`{record.variant}`" if record.variant else "-"),
        ("layer", f"`{record.layer}`" if record.layer else "-"),
        ("seed", record.seed or "-"),
        ("status", record.status),
        ("init fingerprint", f"`{record.init_fingerprint[:16]}`" if record.init_fingerprint else "-"),
        ("shared layers", ", ".join(f"`{layer}` ({calls} call sites)" for layer, calls in sorted(shared.items()))
         or "none"),
        ("starts bitwise-identical to",
         ", ".join(same_init) if same_init else ("no other compared run" if report else "(not compared yet)")),
        ("first non-finite loss", f"step {non_finite}" if non_finite is not None else "none"),
        ("last finite loss", f"{finite[-1]:.6g}" if finite else "-"),
    ]
    lines = [f"**{record.run_name}**: a layerprint run", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines) + "\n"


def _artifact(parent_run_id: str, path: str) -> str:
    """A URL, relative to the MLflow UI's root, that serves one artifact file of a run."""
    return f"get-artifact?path={quote(path, safe='')}&run_uuid={parent_run_id}"


def sweep_note(report: dict[str, Any], parent_run_id: str, experiment_id: str, plots: list[str]) -> str:
    """The description of a sweep's parent run: the comparison of its jobs.

    Args:
        report: ``compare_records`` of the sweep's runs.
        parent_run_id: the parent run, whose ``compare/`` artifacts hold the plots and the report.
        experiment_id: the parent's experiment (for the link to its artifacts page).
        plots: file names of the plots under ``compare/``.

    Returns:
        Markdown.
    """
    names = {r["run_id"]: r["run_name"] for r in report["runs"]}
    groups = [g for g in report["init_groups"] if len(g) > 1]
    # The page shows the first lines only until "Show more" is clicked: the links come first.
    runs_view, gaps, _ = (address.lstrip("/") for address in comparison_addresses("", experiment_id, parent_run_id))
    lines = [f"**Where the runs part**: [the loss curves of the {len(report['runs'])} runs]({runs_view}) · "
             f"[the loss gap of every pair]({gaps}) · "
             f"[report.html]({_artifact(parent_run_id, 'compare/report.html')})", "",
             f"## Comparison of this sweep's {len(report['runs'])} runs", ""]
    lines.append(f"**Identical initial weights**: {len(groups)} group(s) of runs that start bitwise-identical"
                 + (":" if groups else "; every run starts from its own weights."))
    lines += [f"- G{i + 1}: " + ", ".join(names[r] for r in group) for i, group in enumerate(groups)]
    identical = [p for p in report["pairs"] if p["identical_init"]]
    lines += ["", "**Pairs that share an init, and where they part**"
              + (":" if identical else ": none."), ""]
    if identical:
        lines += ["| run a | run b | losses part at step | weights part (variables) |", "|---|---|---|---|"]
        for pair in identical[:MAX_PAIRS_LISTED]:
            weights = pair.get("first_weight_divergence")
            where = (f"{where_weights_part(pair)[0]} ({', '.join(f'`{v}`' for v in weights['variables'][:3])}"
                     f"{' ...' if len(weights['variables']) > 3 else ''})") if weights else "never"
            loss = pair["first_divergence_step"] if pair["first_divergence_step"] is not None else "never"
            lines.append(f"| {names[pair['a']]} | {names[pair['b']]} | {loss} | {where} |")
        if len(identical) > MAX_PAIRS_LISTED:
            lines.append(f"\n({len(identical) - MAX_PAIRS_LISTED} more in the report)")
    lines += ["", f"**Full report**: [report.html]({_artifact(parent_run_id, 'compare/report.html')}) "
              f"(also under [Artifacts]({run_artifact_address('', experiment_id, parent_run_id).lstrip('/')}), `compare/`)",
              ""]
    for plot in plots:
        title = plot.rsplit(".", 1)[0].replace("_", " ")
        lines += [f"**{title}**", "", f"![{title}]({_artifact(parent_run_id, 'compare/' + plot)})", ""]
    return "\n".join(lines)
