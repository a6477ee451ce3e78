"""Where a variable or layer sits in a model: paths relative to the model, owning layers, each layer once.

Paths are relative to the model: Keras puts the root model's name in front of the variable paths of
Sequential and subclassed models (``sequential_3/dense/kernel``) and numbers that name per process,
so it is left out (``dense/kernel``). Keras ``SeedGenerator`` state variables
(``.../seed_generator_state``) are not weights and are left out: their paths carry a process-wide
counter, so the same model built twice in one process would look different.
"""

from __future__ import annotations

from typing import Any

from layerprint.compat.keras import direct_sublayers


def owning_layer_path(variable_path: str) -> str:
    """The path of the layer that created a variable: its path without the last component
    (``block/bn/moving_mean`` is owned by ``block/bn``)."""
    return variable_path.rsplit("/", 1)[0] if "/" in variable_path else ""


SEED_STATE_NAME = "seed_generator_state"


def unique_variables(model: Any, variables: list[Any] | None = None) -> list[Any]:
    """The model's weight variables in order, each once (a shared layer's variables appear once);
    RNG state variables of Keras ``SeedGenerator`` are left out (see the module doc).

    Args:
        model: a Keras model.
        variables: ``model.variables``, when the caller has it already (Keras walks every layer for it:
            about 3 ms for MobileNetV2).
    """
    seen, out = set(), []
    for variable in model.variables if variables is None else variables:
        if variable.path.rsplit("/", 1)[-1] == SEED_STATE_NAME:
            continue
        if id(variable) not in seen:
            seen.add(id(variable))
            out.append(variable)
    return out


def root_prefix(model: Any, variables: list[Any] | None = None) -> str:
    """``"<model name>/"`` when every variable path starts with it, else ``""``.

    Keras puts the root model's name in front of the variable paths of Sequential and subclassed
    models (``sequential_3/dense/kernel``) but not of functional ones (``dense/kernel``). The name is
    numbered per process, so layerprint leaves it out: the same model built twice in one process (a
    notebook, a sweep) gets the same paths, and so the same fingerprint.
    """
    prefix = f"{model.name}/"
    paths = [v.path for v in (model.variables if variables is None else variables)
             if v.path.rsplit("/", 1)[-1] != SEED_STATE_NAME]  # a Dropout's RNG state is not under the model
    return prefix if paths and all(p.startswith(prefix) for p in paths) else ""


def variable_paths(model: Any, variables: list[Any] | None = None) -> dict[int, str]:
    """``{id(variable): path relative to the model}`` for the model's variables (see ``root_prefix``;
    ``variables`` as for ``unique_variables``)."""
    variables = model.variables if variables is None else variables
    cut = len(root_prefix(model, variables))
    return {id(v): v.path[cut:] for v in variables}


def walk_layers(model: Any) -> list[tuple[str, Any, Any]]:
    """Every layer inside ``model``, depth first, as ``(path, layer, parent)``.

    ``path`` joins layer names with ``/`` like Keras variable paths, relative to the model (the
    root model's own name is not part of it, see ``root_prefix``); a layer reachable
    through several parents appears once per parent.
    """
    found = []

    def visit(parent: Any, prefix: str) -> None:
        for layer in direct_sublayers(parent):
            path = f"{prefix}{layer.name}"
            found.append((path, layer, parent))
            visit(layer, path + "/")

    visit(model, "")
    return found
