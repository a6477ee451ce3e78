"""Which layers are called at several sites, which variables several layers use, and which distinct
variables start bitwise identical (symmetry that random initialization did not break).

Call sites come from one forward pass of the model, however it is written
(``inspection.call_sites``): the functional graph, or a symbolic run of a subclassed ``call``.
``shared_layers`` lists each layer *instance* called at more than one site, under the first path it is
reached by, with its calls over every path it is reached by; ``shared_variables`` lists each
variable reached from several layer paths or call sites. When the calls inside a layer cannot be
followed (a ``call`` that depends on the values), ``unknown_call_sites`` says so instead of reporting
one call.

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

from layerprint.compat.keras import own_variables
from layerprint.inspection.call_sites import CallSites, count_call_sites
from layerprint.inspection.paths import variable_paths, walk_layers


def call_sites(model: Any) -> dict[str, int]:
    """Number of call sites of every layer path in one forward pass, multiplied through nested blocks
    (``inspection.call_sites``; layers whose calls could not be followed are left out).

    Args:
        model: a built Keras model.

    Returns:
        ``{layer path: n}``.
    """
    return count_call_sites(model).per_path


def shared_layers(model: Any, sites: CallSites) -> dict[str, int]:
    """Layer instances called at more than one site: ``{path: calls}``, under the first path the layer is
    reached by (depth first), the calls summed over every path that reaches it."""
    paths: dict[int, list[str]] = defaultdict(list)
    for path, layer, _ in walk_layers(model):
        paths[id(layer)].append(path)
    shared = {}
    for reached in paths.values():
        total = sum(sites.per_path.get(path, 0) for path in set(reached))
        if total > 1:
            shared[reached[0]] = total
    return dict(sorted(shared.items()))


def shared_variables(model: Any, sites: CallSites) -> dict[str, list[str]]:
    """Variables used by more than one layer path, or by a layer called at several sites.

    Returns:
        ``{variable path: [layer path, ...]}``; a path through which the layer runs ``n > 1`` times is
        listed once per site as ``"<layer path>#<i>"``; a path it is never called through is left out.
    """
    relative = variable_paths(model)
    users: dict[int, tuple[str, list[str]]] = {}
    for path, layer, _ in walk_layers(model):
        n = sites.per_path.get(path, 1)
        for variable in own_variables(layer):
            entry = users.setdefault(id(variable), (relative.get(id(variable), variable.path), []))
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


def sharing_report(model: Any, initial_records: list[dict[str, Any]], sites: CallSites | None = None) -> dict[str, Any]:
    """The content of ``sharing.json``.

    Args:
        model: a built Keras model.
        initial_records: the per-variable records of the initial fingerprint.
        sites: the model's call sites, when counted already (``count_call_sites``: on the training thread,
            since it runs the model's ``call`` symbolically).

    Returns:
        ``{"shared_layers": {layer path: n_call_sites}, "shared_variables": {path: [layers]},
        "identical_initial_values": [[path, ...], ...]}``, and ``"unknown_call_sites": {layer path:
        reason}`` when the calls inside some layer could not be followed.
    """
    sites = count_call_sites(model) if sites is None else sites
    report = {
        "shared_layers": shared_layers(model, sites),
        "shared_variables": shared_variables(model, sites),
        "identical_initial_values": identical_groups(initial_records),
    }
    if sites.unknown:
        report["unknown_call_sites"] = dict(sorted(sites.unknown.items()))
    return report


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
