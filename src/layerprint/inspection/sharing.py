"""Which layers are called at several sites, which variables several layers use, and which distinct
variables start bitwise identical (symmetry that random initialization did not break).

Call sites come from the functional graph: a layer's call sites are its inbound nodes times the call
sites of the functional model that contains it (a layer inside a block that is called twice runs at
two sites). Layers of subclassed models create no nodes; their reuse inside ``call`` is not counted.

Identity groups consider the variables that are meant to start different: weights of two or more
dimensions (kernels, recurrent kernels, filters, embeddings), where random initialization breaks
symmetry. Variables that start from fixed values by design in every model are left out, whatever their
rank: one-dimensional ones, and offsets, scales and statistics by their name (``BIAS_LIKE_NAMES``:
``bias`` of any shape, as the ``(heads, key_dim)`` query, key and value biases of
``MultiHeadAttention`` or the ``(2, 3 * units)`` bias of a ``GRU``; ``gamma``, ``beta``, PReLU's
``alpha``, the BatchNorm moving statistics). Identical kernels still form a group, constant
initializers included: that is the symmetry training never breaks.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from layerprint.inspection.paths import variable_paths, walk_layers


def call_sites(model: Any) -> dict[str, int]:
    """Number of call sites of every layer (by path), multiplied through nested blocks.

    Args:
        model: a built Keras model.

    Returns:
        ``{layer path: n}``; layers with no node (subclassed models) count as one site.
    """
    sites: dict[str, int] = {}
    parent_sites: dict[int, int] = {id(model): 1}
    for path, layer, parent in walk_layers(model):
        n = _sites_in_graph(layer, parent) * parent_sites.get(id(parent), 1)
        parent_sites[id(layer)] = max(parent_sites.get(id(layer), 0), n)
        sites[path] = sites.get(path, 0) + n
    return sites


def _sites_in_graph(layer: Any, parent: Any) -> int:
    """How often ``parent``'s own graph calls ``layer`` (a layer's nodes are global: a layer used in
    two blocks has one node in each); 1 when the parent has no graph (subclassed models)."""
    graph = getattr(parent, "_functional", None) or parent
    graph_nodes = getattr(graph, "_nodes", None)
    nodes = getattr(layer, "_inbound_nodes", None) or []
    if graph_nodes is None:
        return max(1, len(nodes))
    # Keras keys a graph's nodes as "<id(layer)>_ib-<index in layer._inbound_nodes>".
    return max(1, sum(1 for i in range(len(nodes)) if f"{id(layer)}_ib-{i}" in graph_nodes))


def _own_variables(layer: Any) -> list[Any]:
    return list(getattr(layer, "_trainable_variables", [])) + list(
        getattr(layer, "_non_trainable_variables", [])
    )


def shared_variables(model: Any, sites: dict[str, int]) -> dict[str, list[str]]:
    """Variables used by more than one layer path, or by a layer called at several sites.

    Returns:
        ``{variable path: [layer path, ...]}``; a layer with ``n > 1`` call sites is listed once per
        site as ``"<layer path>#<i>"``.
    """
    relative = variable_paths(model)
    users: dict[int, tuple[str, list[str]]] = {}
    for path, layer, _ in walk_layers(model):
        for variable in _own_variables(layer):
            entry = users.setdefault(id(variable), (relative.get(id(variable), variable.path), []))
            n = sites.get(path, 1)
            entry[1].extend([path] if n == 1 else [f"{path}#{i}" for i in range(n)])
    return {vpath: sorted(set(paths)) for vpath, paths in users.values() if len(set(paths)) > 1}


# Variables that start from fixed values by design (offsets, scales, statistics), by their own name.
BIAS_LIKE_NAMES = frozenset({"bias", "beta", "gamma", "alpha", "moving_mean", "moving_variance"})


def meant_to_start_different(path: str, shape: list[int]) -> bool:
    """Whether a variable's initial values should differ from any other's (module doc): two or more
    dimensions, and not an offset, scale or statistic by its name (``bias``, ``recurrent_bias``, ...).

    Args:
        path: the variable's path (its last component is its name).
        shape: its shape.
    """
    name = path.rsplit("/", 1)[-1]
    return len(shape) >= 2 and name not in BIAS_LIKE_NAMES and not name.endswith("bias")


def identical_groups(records: list[dict[str, Any]]) -> list[list[str]]:
    """Groups of distinct variables, meant to start different, that hold bitwise-identical values.

    Args:
        records: per-variable fingerprint records (``path``, ``shape``, ``sha256``).

    Returns:
        Sorted lists of variable paths, one per group of two or more (``meant_to_start_different``
        decides which variables count).
    """
    by_hash: dict[str, list[str]] = defaultdict(list)
    for record in records:
        if meant_to_start_different(record["path"], record["shape"]):
            by_hash[record["sha256"]].append(record["path"])
    return sorted(sorted(paths) for paths in by_hash.values() if len(paths) > 1)


def sharing_report(model: Any, initial_records: list[dict[str, Any]]) -> dict[str, Any]:
    """The content of ``sharing.json``.

    Args:
        model: a built Keras model.
        initial_records: the per-variable records of the initial fingerprint.

    Returns:
        ``{"shared_layers": {layer path: n_call_sites}, "shared_variables": {path: [layers]},
        "identical_initial_values": [[path, ...], ...]}``.
    """
    sites = call_sites(model)
    return {
        "shared_layers": {path: n for path, n in sorted(sites.items()) if n > 1},
        "shared_variables": shared_variables(model, sites),
        "identical_initial_values": identical_groups(initial_records),
    }


def symmetry_warning(groups: list[list[str]]) -> str | None:
    """One readable line for the console when distinct variables start identical, else None."""
    if not groups:
        return None
    shown = "; ".join(" = ".join(group) for group in groups[:3])
    more = f" (and {len(groups) - 3} more groups)" if len(groups) > 3 else ""
    return (
        f"layerprint: symmetry is not broken: {sum(len(g) for g in groups)} distinct variables in "
        f"{len(groups)} group(s) start bitwise identical: {shown}{more}. Separate layers given one "
        "initializer instance, constant initializers or copied weights do this."
    )
