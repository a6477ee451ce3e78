"""The layer rules, enforced on the import graph of ``src/layerprint`` (read with ``ast``, nothing imported):
no cycles, counting imports inside functions too; the callback library (the callback, its rooms in ``fit``,
``recording``, ``tracking``, ``inspection``) and the analysis never import the runner or Hydra; data flows one
way, hook -> recording -> sink; private APIs of the dependencies are used in ``compat`` only."""

import ast
import re
import tokenize
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
                                   "layerprint.callback", "layerprint.fit", "layerprint.recording", "layerprint.cache",
                                   "layerprint.compat.keras", "layerprint.compat.mlflow"])
def test_lower_layers_never_import_the_runner_or_hydra(layer):
    bad = {name: sorted(t for t in targets if _in(t, "layerprint.runner", *HYDRA))
           for name, targets in GRAPH.items() if _in(name, layer)}
    assert {name: targets for name, targets in bad.items() if targets} == {}


def _ours(name: str) -> set[str]:
    return {t for t in GRAPH[name] if t.startswith("layerprint")}


def _only(names: set[str], *allowed: str) -> list[str]:
    return sorted(t for t in names if not _in(t, *allowed))


def test_the_callback_is_a_thin_adapter_over_its_rooms():
    assert _only(_ours("layerprint.callback"), "layerprint.fit", "layerprint.recording.recorder", "layerprint.cache",
                 "layerprint.compat.keras") == []


def test_data_flows_one_way_hook_recording_sink():
    for name in GRAPH:
        if _in(name, "layerprint.fit"):  # a fit uses the layers below it, never the analysis or the runner
            assert _only(_ours(name), "layerprint.fit", "layerprint.recording", "layerprint.inspection",
                         "layerprint.tracking", "layerprint.compat.keras", "layerprint.compat.mlflow", "layerprint.cache",
                         "layerprint.keys", "layerprint.errors") == [], name
        if _in(name, "layerprint.recording"):  # it is given its sink: it never imports tracking, nor a fit
            assert _only(_ours(name), "layerprint.recording", "layerprint.compat.keras", "layerprint.cache",
                         "layerprint.keys") == [], name


def test_tracking_and_inspection_stand_alone():
    for name, targets in GRAPH.items():
        if _in(name, "layerprint.tracking"):
            assert _only(_ours(name), "layerprint.tracking", "layerprint.keys", "layerprint.errors") == [], name
        if _in(name, "layerprint.inspection"):
            assert _only(_ours(name), "layerprint.inspection", "layerprint.compat.keras", "layerprint.keys",
                         "layerprint.errors") == [], name
            assert "mlflow" not in targets, name


PRIVATE = re.compile(r"(keras\.src\b|mlflow\.tracking\.(_|fluent\._)|hydra_plugins\.\w+\._|ray\._private|"
                     r"loky\.\w+\._|\b(?!self\b|cls\b)[a-z]\w*\._(?!_)[a-z]\w*|__dict__\[)")


def _code_lines(path: Path) -> dict[int, str]:
    """Each line's code with its strings and comments blanked (so that docstrings may name private things)."""
    lines = path.read_text().splitlines()
    with path.open("rb") as handle:
        for token in tokenize.tokenize(handle.readline):
            if token.type in (tokenize.STRING, tokenize.COMMENT):
                for row in range(token.start[0], token.end[0] + 1):
                    line = lines[row - 1]
                    start = token.start[1] if row == token.start[0] else 0
                    end = token.end[1] if row == token.end[0] else len(line)
                    lines[row - 1] = line[:start] + " " * (end - start) + line[end:]
    return dict(enumerate(lines, 1))


def test_private_apis_of_the_dependencies_are_used_in_compat_only():
    found = []
    for name, path in MODULES.items():
        if _in(name, "layerprint.compat"):
            continue
        for number, code in _code_lines(path).items():
            for match in PRIVATE.finditer(code):
                if not match.group(0).startswith(("local._", "record._")):
                    found.append(f"{name}:{number}: {match.group(0)}")
    assert found == []
