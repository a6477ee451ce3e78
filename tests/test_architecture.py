"""The layer rules, enforced on the import graph of ``src/layerprint`` (read with ``ast``, nothing imported):
no cycles, counting imports inside functions too; analysis, tracking, inspection and the callback never
import the runner or Hydra; the callback uses only inspection, tracking, keys and errors."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "layerprint"
HYDRA = ("hydra", "omegaconf")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """Every module ``name`` imports, at module level or inside a function (layerprint modules resolved
    to the module, others to their top-level package)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            found.add(target if target.startswith("layerprint") else target.split(".")[0])
    return found - {name}


GRAPH = {name: _imports(name) for name in MODULES}


def _in(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_the_graph_was_read():
    assert len(MODULES) >= 25 and "layerprint.runner.train" in GRAPH["layerprint.runner.lab"]


def test_no_module_imports_another_in_a_cycle():
    internal = {name: {t for t in targets if t in MODULES} for name, targets in GRAPH.items()}
    # Imports of a package's own __init__ (``from layerprint import keys`` resolves to the module) aside,
    # a depth-first search finds any back edge.
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(internal[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(internal):
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize("layer", ["layerprint.analysis", "layerprint.tracking", "layerprint.inspection",
                                   "layerprint.callback"])
def test_lower_layers_never_import_the_runner_or_hydra(layer):
    bad = {name: sorted(t for t in targets if _in(t, "layerprint.runner", *HYDRA))
           for name, targets in GRAPH.items() if _in(name, layer)}
    assert {name: targets for name, targets in bad.items() if targets} == {}


def test_the_callback_imports_only_inspection_tracking_keys_and_errors():
    ours = {t for t in GRAPH["layerprint.callback"] if t.startswith("layerprint")}
    assert ours and all(_in(t, "layerprint.inspection", "layerprint.tracking", "layerprint.keys", "layerprint.errors")
                        for t in ours), ours


def test_tracking_and_inspection_stand_alone():
    for name, targets in GRAPH.items():
        if _in(name, "layerprint.tracking"):
            assert not [t for t in targets if _in(t, "layerprint.inspection", "layerprint.analysis", "layerprint.callback")]
        if _in(name, "layerprint.inspection"):
            assert not [t for t in targets if _in(t, "layerprint.tracking", "layerprint.analysis", "layerprint.callback",
                                                   "mlflow")], (name, targets)


def test_compare_leaves_no_hydra_module_loaded(tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom layerprint.cli import main\ntry:\n    main(['compare', '--experiment', 'x', "
            f"'--tracking-uri', 'sqlite:///{tmp_path}/none.db'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stderr[-2000:]
