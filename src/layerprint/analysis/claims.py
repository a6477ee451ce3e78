"""``layerprint claims``: the seed articles' claims C01-C16, each tested by real runs.

Every claim is an experiment made of ordinary ``layerprint-train`` runs (the same ``train`` function
and ``LayerprintCallback`` a user runs), logged as children of one ``claims`` parent run in the
experiment ``layerprint-claims``; the runner trains them (``layerprint.runner.lab``), this module only
reads what they logged and judges. A verdict is computed only from what those runs logged: the
per-variable fingerprints (``fingerprints_initial.json`` / ``fingerprints_final.json``),
``sharing.json``, ``batchnorm.npz``, ``probe.json`` and the ``train/loss`` curve. ``holds`` and
``refuted`` say what the evidence shows; ``error`` that the experiment itself failed.

All runs use ``deterministic=true`` and one seed unless a claim is about unseeded construction, so
two runs that differ only in the variable under test are comparable step by step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from layerprint import keys
from layerprint.analysis.compare import first_divergence
from layerprint.analysis.runs import RunRecord
from layerprint.errors import first_line

HOLDS, REFUTED, ERROR = "holds", "refuted", "error"
EXPERIMENT = "layerprint-claims"
SEED = 42
BASE_OVERRIDES = (
    "device=cpu",
    "deterministic=true",
    f"seed={SEED}",
    "data.n_samples=64",
    "trainer.epochs=2",
    "trainer.batch_size=16",
    "layer.image_size=4",
    "layer.timesteps=4",
)


def compare_layers(run: RunRecord, a: str, b: str, stage: str = "initial") -> tuple[list[str], list[str]]:
    """Variables of layer ``a`` and layer ``b`` (matched by their path below the layer) that are
    bitwise equal and that differ.

    Returns:
        ``(equal names, different names)``.
    """
    va, vb = run.variables_of(a, stage), run.variables_of(b, stage)
    names = sorted(set(va) & set(vb))
    if not names:
        raise RuntimeError(f"run {run.run_id} has no variables common to layers {a!r} and {b!r}")
    equal = [n for n in names if va[n]["sha256"] == vb[n]["sha256"]]
    return equal, [n for n in names if n not in equal]


def _short(entry: dict[str, Any]) -> str:
    return entry["sha256"][:8]


class Lab(Protocol):
    """Where the claims' runs come from: ``run(*overrides)`` trains one ``layerprint-train`` run (with
    the base overrides below) and returns what it logged (``runner.lab.TrainingLab`` does this)."""

    def run(self, *overrides: str) -> RunRecord:
        ...


Verdict = tuple[str, str, list[str]]


def _layers_differ_at_init(lab: Lab, layer: str, variant: str = "duplicated") -> Verdict:
    """Holds when the two repeats of ``layer`` start with at least one differing variable."""
    run = lab.run(f"variant={variant}", f"layer={layer}")
    equal, different = compare_layers(run, "rep_0", "rep_1")
    a, b = run.variables_of("rep_0"), run.variables_of("rep_1")
    shown = different[0] if different else equal[0]
    detail = (f"rep_0/{shown} {_short(a[shown])} vs rep_1/{shown} {_short(b[shown])}; "
              f"{len(different)} of {len(equal) + len(different)} variables differ at init")
    if different:
        return HOLDS, f"{variant} {layer}: {detail}", [run.run_id]
    return REFUTED, f"{variant} {layer}: all variables bitwise equal at init ({detail})", [run.run_id]


def _layers_equal_at_init(lab: Lab, layer: str, variant: str, *extra: str) -> tuple[bool, str, RunRecord]:
    run = lab.run(f"variant={variant}", f"layer={layer}", *extra)
    equal, different = compare_layers(run, "rep_0", "rep_1")
    total = len(equal) + len(different)
    if different:
        name = different[0]
        a, b = run.variables_of("rep_0")[name], run.variables_of("rep_1")[name]
        text = f"{variant} {layer}: {len(different)} of {total} variables differ at init (rep_0/{name} {_short(a)} vs rep_1/{name} {_short(b)})"
        return False, text, run
    return True, f"{variant} {layer}: all {total} variables of rep_0 and rep_1 bitwise equal at init", run


def c01(lab: Lab) -> Verdict:
    return _layers_differ_at_init(lab, "dense")


# Claims about sharing are tested on the model written two ways: the runner's functional model, and the
# same layers held by a subclassed model whose ``call`` applies them in a loop (``model_style``).
STYLES = {"functional": (), "subclassed": ("model_style=subclassed",)}


def in_both_styles(test: Callable[[Lab, tuple[str, ...]], Verdict]) -> Callable[[Lab], Verdict]:
    """A claim's test run on a functional and on a subclassed model: the verdict both give, with both
    pieces of evidence; ``error`` when they disagree (the finding would depend on how the model is written)."""

    def both(lab: Lab) -> Verdict:
        results = {style: test(lab, extra) for style, extra in STYLES.items()}
        verdicts = {verdict for verdict, _, _ in results.values()}
        evidence = "; ".join(f"{style}: {text}" for style, (_, text, _) in results.items())
        run_ids = [run_id for _, _, ids in results.values() for run_id in ids]
        if len(verdicts) > 1:
            return ERROR, f"the model styles disagree: {evidence}", run_ids
        return verdicts.pop(), evidence, run_ids

    return both


@in_both_styles
def c02(lab: Lab, style: tuple[str, ...] = ()) -> Verdict:
    run = lab.run("variant=shared", "layer=dense", *style)
    sites = run.sharing["shared_layers"].get("rep", 0)
    owned = sorted(run.variables_of("rep"))
    separate = sorted(run.variables_of("rep_0")) + sorted(run.variables_of("rep_1"))
    evidence = f"shared dense: layer 'rep' has {sites} call sites and one set of variables ({', '.join(owned)})"
    ok = sites == 2 and owned == ["bias", "kernel"] and not separate
    return (HOLDS if ok else REFUTED), evidence, [run.run_id]


def c03(lab: Lab) -> Verdict:
    return _layers_differ_at_init(lab, "lstm")


def c04(lab: Lab) -> Verdict:
    equal, text, run = _layers_equal_at_init(lab, "batchnorm", "duplicated")
    if equal:
        names = ", ".join(sorted(run.variables_of("rep_0")))
        return REFUTED, (f"duplicated batchnorm: rep_0 and rep_1 start bitwise equal ({names}); a BatchNormalization "
                         "output is a function of its input and these, so the same input gives the same output"), [run.run_id]
    return HOLDS, text, [run.run_id]


@in_both_styles
def c05(lab: Lab, style: tuple[str, ...] = ()) -> Verdict:
    duplicated = lab.run("variant=duplicated", "layer=batchnorm", *style)
    shared = lab.run("variant=shared", "layer=batchnorm", *style)
    gaps = {}
    for stat in keys.BN_STATS:
        a, b = duplicated.batchnorm[f"rep_0/{stat}"][-1], shared.batchnorm[f"rep/{stat}"][-1]
        gaps[stat] = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    evidence = (f"after {max(duplicated.loss)} steps, duplicated rep_0 vs shared rep: max |moving_mean gap| "
                f"{gaps['moving_mean']:.3g}, max |moving_variance gap| {gaps['moving_variance']:.3g}")
    verdict = HOLDS if max(gaps.values()) > 1e-6 else REFUTED
    return verdict, evidence, [duplicated.run_id, shared.run_id]


def c06(lab: Lab) -> Verdict:
    return _layers_differ_at_init(lab, "dense", "seeded_once")


def c07(lab: Lab) -> Verdict:
    copied_equal, text, copied = _layers_equal_at_init(lab, "dense", "copied")
    again = lab.run("variant=copied", "layer=dense", "tracking.run_name=copied-dense-reseeded")
    same_model = copied.init_fingerprint == again.init_fingerprint
    evidence = (f"{text}; a second run re-seeded with seed {SEED} has "
                f"{'the same' if same_model else 'a different'} model init fingerprint "
                f"({copied.init_fingerprint[:8]} vs {again.init_fingerprint[:8]})")
    return (HOLDS if copied_equal and same_model else REFUTED), evidence, [copied.run_id, again.run_id]


def c08(lab: Lab) -> Verdict:
    equal, text, run = _layers_equal_at_init(lab, "dense", "cloned")
    if equal:
        return HOLDS, f"{text} (rep_1 is a clone_model of rep_0)", [run.run_id]
    return REFUTED, f"{text}: clone_model builds new layers with freshly drawn weights", [run.run_id]


def c09(lab: Lab) -> Verdict:
    runs = [lab.run("variant=duplicated", "layer=dense", "deterministic=false", "trainer.probe_rows=1",
                    f"tracking.run_name=unseeded-dense-{i}") for i in (1, 2)]
    hashes = [run.probe["sha256"][0] for run in runs]
    norms = [run.probe["l2_norm"][0] for run in runs]
    evidence = (f"two runs built without a seed, output on the same input row before training: "
                f"{hashes[0][:8]} (norm {norms[0]:.4g}) vs {hashes[1][:8]} (norm {norms[1]:.4g})")
    return (HOLDS if hashes[0] != hashes[1] else REFUTED), evidence, [r.run_id for r in runs]


def c10(lab: Lab) -> Verdict:
    equal, text, run = _layers_equal_at_init(lab, "dense", "tf_reseeded")
    if equal:
        return HOLDS, text, [run.run_id]
    return REFUTED, f"{text}: Keras 3 initializers do not draw from tf.random's global seed", [run.run_id]


def c11(lab: Lab) -> Verdict:
    equal, text, run = _layers_equal_at_init(lab, "dense", "constant_init")
    return (HOLDS if equal else REFUTED), f"{text}, so equal inputs give equal outputs", [run.run_id]


def c12(lab: Lab) -> Verdict:
    return _layers_differ_at_init(lab, "conv2d")


@in_both_styles
def c13(lab: Lab, style: tuple[str, ...] = ()) -> Verdict:
    equal_at_init, _, run = _layers_equal_at_init(lab, "dense", "copied", *style)
    equal_after, different_after = compare_layers(run, "rep_0", "rep_1", stage="final")
    shared = [path for path in run.sharing["shared_variables"] if path.startswith(("rep_0/", "rep_1/"))]
    evidence = (f"copied dense: rep_0 and rep_1 {'equal' if equal_at_init else 'differ'} after set_weights; "
                f"after {max(run.loss)} steps that change rep_0, {len(different_after)} of "
                f"{len(equal_after) + len(different_after)} variables differ; sharing.json: {len(shared)} shared variables")
    coupled = equal_at_init and not different_after and bool(shared)
    return (HOLDS if coupled else REFUTED), evidence, [run.run_id]


def c14(lab: Lab) -> Verdict:
    equal, text, run = _layers_equal_at_init(lab, "dense", "shared_initializer")
    groups = [g for g in run.sharing["identical_initial_values"] if any(p.startswith("rep_0/") for p in g)]
    return (HOLDS if equal else REFUTED), f"{text}; sharing.json identical groups: {groups}", [run.run_id]


def _coupled(lab: Lab, variant: str, layer: str) -> Verdict:
    """Holds when one shared instance trains differently from one instance per layer."""
    shared = lab.run(f"variant={variant}", f"layer={layer}")
    separate = lab.run(f"variant={variant}", f"layer={layer}", "variant.shared_instance=false")
    step, gap = first_divergence(shared.loss, separate.loss, atol=0.0, rtol=0.0)
    same_final = shared.final_fingerprint == separate.final_fingerprint
    evidence = (f"{layer}, one instance vs one per layer, same seed: init "
                f"{'equal' if shared.init_fingerprint == separate.init_fingerprint else 'different'}, "
                f"loss curves {'never differ' if step is None else f'differ from step {step}'} over {len(shared.loss)} steps "
                f"(max gap {gap:.3g}), final weights {'bitwise equal' if same_final else 'differ'}")
    coupled = step is not None or not same_final
    return (HOLDS if coupled else REFUTED), evidence, [shared.run_id, separate.run_id]


def c15(lab: Lab) -> Verdict:
    return _coupled(lab, "shared_regularizer", "dense")


def c16(lab: Lab) -> Verdict:
    return _coupled(lab, "shared_constraint", "lstm")


@dataclass(frozen=True)
class Claim:
    """One claim of the catalogue and the experiment that tests it."""

    id: str
    source: str
    claim: str
    test: Callable[[Lab], Verdict]


CATALOGUE: tuple[Claim, ...] = (
    Claim("C01", "000", "Two separately built Dense layers with the same arguments start with different weights.", c01),
    Claim("C02", "000", "One layer instance called twice holds a single set of weights.", c02),
    Claim("C03", "000", "Two separately built LSTM layers start with different weights.", c03),
    Claim("C04", "000", "Duplicated BatchNormalization layers give different outputs for the same input before training.", c04),
    Claim("C05", "000", "Duplicated BatchNormalization layers end training with different moving statistics than one shared instance.", c05),
    Claim("C06", "001", "After one global seed, two models built in sequence start with different weights.", c06),
    Claim("C07", "001", "Re-seeding, then copying weights with `set_weights`, gives identical weights.", c07),
    Claim("C08", "001", "`keras.models.clone_model` gives a model with the original's weights.", c08),
    Claim("C09", "002", "Dense layers built without a seed give different outputs for the same input row.", c09),
    Claim("C10", "002", "`tf.random.set_seed(42)` before each Dense layer gives identical weights and outputs.", c10),
    Claim("C11", "002", "Constant initializers give identical outputs across instances.", c11),
    Claim("C12", "003", "Separately built Conv2D duplicates start with different weights.", c12),
    Claim("C13", "003", "After `b.set_weights(a.get_weights())`, changing `a`'s weights changes `b`'s (they are shared).", c13),
    Claim("C14", "004", "Layers given one initializer instance start with identical weights.", c14),
    Claim("C15", "004", "Layers given one regularizer instance are coupled: their training differs from separate instances.", c15),
    Claim("C16", "004", "LSTM layers given one constraint instance are coupled: their training differs from separate instances.", c16),
)


def claim_result(claim: Claim, lab: Lab, versions: dict[str, str]) -> dict[str, Any]:
    """Run one claim's experiment: ``{"id", "source", "claim", "verdict", "evidence", "run_ids", "versions"}``;
    an experiment that raises gives the verdict ``error`` with the reason as evidence."""
    try:
        verdict, evidence, run_ids = claim.test(lab)
    except Exception as error:  # noqa: BLE001 - one failed experiment is reported, the rest go on
        verdict, evidence, run_ids = ERROR, f"{type(error).__name__}: {first_line(error)[:200]}", []
    return {"id": claim.id, "source": claim.source, "claim": claim.claim, "verdict": verdict, "evidence": evidence,
            "run_ids": run_ids, "versions": {"tensorflow": versions["tensorflow"], "keras": versions["keras"]}}


def format_table(results: list[dict[str, Any]]) -> str:
    """``id  source  verdict  evidence`` one claim a line, under a line naming the versions."""
    if not results:
        return "no claims run"
    header = f"Claims tested on TensorFlow {results[0]['versions']['tensorflow']}, Keras {results[0]['versions']['keras']}:"
    lines = [header, f"{'id':<4} {'src':<4} {'verdict':<8} evidence", f"{'-' * 4} {'-' * 4} {'-' * 8} {'-' * 8}"]
    lines += [f"{r['id']:<4} {r['source']:<4} {r['verdict']:<8} {r['evidence']}" for r in results]
    return "\n".join(lines)


def format_markdown(results: list[dict[str, Any]]) -> str:
    """The claims as a Markdown table (the README's table is made with this)."""
    lines = ["| id | source | claim | verdict | evidence |", "|---|---|---|---|---|"]
    lines += [f"| {r['id']} | {r['source']} | {r['claim']} | **{r['verdict']}** | {r['evidence']} |" for r in results]
    return "\n".join(lines)
