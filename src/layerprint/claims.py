"""``layerprint claims``: the seed articles' claims C01-C16, each tested by real runs.

Every claim is an experiment made of ordinary ``layerprint-train`` runs (the same ``train`` function
and ``LayerprintCallback`` a user runs), logged as children of one ``claims`` parent run in the
experiment ``layerprint-claims``. A verdict is computed only from what those runs logged: the
per-variable fingerprints (``fingerprints_initial.json`` / ``fingerprints_final.json``),
``sharing.json``, ``batchnorm.npz``, ``probe.json`` and the ``train/loss`` curve. ``holds`` and
``refuted`` say what the evidence shows; ``error`` that the experiment itself failed.

All runs use ``deterministic=true`` and one seed unless a claim is about unseeded construction, so
two runs that differ only in the variable under test are comparable step by step.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from layerprint import keys

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


@dataclass
class RunEvidence:
    """What one run logged, read back from the tracking store."""

    run_id: str
    initial: dict[str, dict[str, Any]]  # variable path -> fingerprint entry
    final: dict[str, dict[str, Any]]
    sharing: dict[str, Any]
    loss: dict[int, float]
    batchnorm: dict[str, np.ndarray] = field(default_factory=dict)
    probe: dict[str, Any] | None = None
    init_fingerprint: str = ""
    final_fingerprint: str = ""

    def variables_of(self, layer: str, stage: str = "initial") -> dict[str, dict[str, Any]]:
        """``{path below the layer: entry}`` of the variables whose path starts with ``layer/``."""
        table = self.initial if stage == "initial" else self.final
        return {path[len(layer) + 1:]: entry for path, entry in table.items() if path.startswith(layer + "/")}


def compare_layers(run: RunEvidence, a: str, b: str, stage: str = "initial") -> tuple[list[str], list[str]]:
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


class Lab:
    """Runs and caches the experiments the claims need; reads back what each run logged.

    Args:
        client: an ``MlflowClient`` on ``uri``.
        uri: the tracking store.
        parent_run_id: every run is created as a child of this run.
    """

    def __init__(self, client: Any, uri: str, parent_run_id: str) -> None:
        self.client = client
        self.uri = uri
        self.parent_run_id = parent_run_id
        self._cache: dict[tuple[str, ...], RunEvidence] = {}

    def run(self, *overrides: str) -> RunEvidence:
        """Train one run with the base overrides plus ``overrides`` (cached per override set)."""
        key = tuple(sorted(overrides))
        if key not in self._cache:
            self._cache[key] = self._read(self._train(list(BASE_OVERRIDES) + list(overrides)))
        return self._cache[key]

    def _train(self, overrides: list[str]) -> str:
        from hydra import compose, initialize_config_module
        from hydra.core.global_hydra import GlobalHydra

        from layerprint.train import CONFIG_NAME, PARENT_RUN_ENV, train

        GlobalHydra.instance().clear()
        with initialize_config_module(version_base="1.3", config_module="layerprint.conf"):
            cfg = compose(config_name=CONFIG_NAME, overrides=[*overrides, f"tracking.experiment={EXPERIMENT}"])
        GlobalHydra.instance().clear()
        cfg.tracking.uri = self.uri
        previous = os.environ.get(PARENT_RUN_ENV)
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        try:
            return train(cfg)["run_id"]
        finally:
            if previous is None:
                os.environ.pop(PARENT_RUN_ENV, None)
            else:
                os.environ[PARENT_RUN_ENV] = previous

    def _read(self, run_id: str) -> RunEvidence:
        run = self.client.get_run(run_id)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(self.client.download_artifacts(run_id, keys.ARTIFACT_DIR, tmp))
            initial = json.loads((folder / keys.FINGERPRINTS_INITIAL).read_text())
            final = json.loads((folder / keys.FINGERPRINTS_FINAL).read_text())
            sharing = json.loads((folder / keys.SHARING).read_text())
            probe = json.loads((folder / keys.PROBE).read_text()) if (folder / keys.PROBE).exists() else None
            batchnorm = {}
            if (folder / keys.BATCHNORM).exists():
                with np.load(folder / keys.BATCHNORM) as archive:
                    batchnorm = {name: archive[name] for name in archive.files}
        history = self.client.get_metric_history(run_id, keys.step_key("loss"))
        return RunEvidence(
            run_id=run_id,
            initial={v["path"]: v for v in initial["variables"]},
            final={v["path"]: v for v in final["variables"]},
            sharing=sharing,
            loss={m.step: m.value for m in history},
            batchnorm=batchnorm,
            probe=probe,
            init_fingerprint=run.data.tags.get(keys.TAG_INIT_FINGERPRINT, ""),
            final_fingerprint=run.data.tags.get(keys.TAG_FINAL_FINGERPRINT, ""),
        )


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


def _layers_equal_at_init(lab: Lab, layer: str, variant: str, *extra: str) -> tuple[bool, str, RunEvidence]:
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


def c02(lab: Lab) -> Verdict:
    run = lab.run("variant=shared", "layer=dense")
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


def c05(lab: Lab) -> Verdict:
    duplicated = lab.run("variant=duplicated", "layer=batchnorm")
    shared = lab.run("variant=shared", "layer=batchnorm")
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


def c13(lab: Lab) -> Verdict:
    equal_at_init, _, run = _layers_equal_at_init(lab, "dense", "copied")
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
    from layerprint.compare import first_divergence

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


def run_claims(uri: str, only: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the catalogue (or the claims in ``only``) into the store at ``uri``.

    Args:
        uri: tracking URI; the runs go to the experiment ``layerprint-claims``, under one parent run
            that also gets ``claims.json``.
        only: claim ids to run, e.g. ``["C08", "C10"]``.

    Returns:
        ``[{"id", "source", "claim", "verdict", "evidence", "run_ids", "versions"}]``.
    """
    from layerprint.runtime import versions
    from layerprint.tracking import experiment_id_for
    from layerprint.train import open_store

    client = open_store(uri)
    installed = versions()
    # Several experiments make identical groups on purpose; their symmetry warnings are the evidence here.
    callback_logger = logging.getLogger("layerprint")
    level = callback_logger.level
    callback_logger.setLevel(logging.ERROR)
    parent = client.create_run(
        experiment_id_for(client, uri, EXPERIMENT), run_name="claims",
        tags={keys.TAG_VERSION_PREFIX + name: value for name, value in installed.items()},
    )
    parent_id = parent.info.run_id
    lab = Lab(client, uri, parent_id)
    results, status = [], "FAILED"
    try:
        for claim in CATALOGUE:
            if only and claim.id not in only:
                continue
            try:
                verdict, evidence, run_ids = claim.test(lab)
            except Exception as error:  # noqa: BLE001 - one failed experiment is reported, the rest go on
                verdict, evidence, run_ids = ERROR, f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}", []
            results.append({"id": claim.id, "source": claim.source, "claim": claim.claim, "verdict": verdict,
                            "evidence": evidence, "run_ids": run_ids,
                            "versions": {"tensorflow": installed["tensorflow"], "keras": installed["keras"]}})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "claims.json"
            path.write_text(json.dumps(results, indent=1))
            client.log_artifact(parent_id, str(path))
        client.set_tag(parent_id, "layerprint.claims", " ".join(f"{r['id']}={r['verdict']}" for r in results))
        status = "FINISHED"
    finally:
        client.set_terminated(parent_id, status=status)
        callback_logger.setLevel(level)
    return results


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
