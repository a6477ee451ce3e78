"""How often each layer runs in one forward pass of a model, however the model is written.

- A functional model, and a built ``Sequential``, says it in its graph: a layer's call sites there are
  its nodes in that graph.
- A subclassed model or layer (Python code in ``call``) is run once on symbolic inputs
  (``compat.keras.symbolic_run``: no data runs, no state changes, on TensorFlow, JAX and PyTorch alike),
  counting each sublayer's calls on the way: a layer reused in ``call``, called in a Python loop, reused
  across two nested submodels, a submodel called twice. Its input is the symbolic call of its node
  when a functional graph calls it, else the input it was built with; ``training=True`` when its
  ``call`` takes it (the forward pass that training runs).
- Keras's own layers (``Dense``, ``LSTM``, ``MultiHeadAttention``, ``TimeDistributed``,
  ``Bidirectional``) are closed: their sublayers run once per call of theirs (an LSTM's cell runs at
  every timestep, which is not sharing).
- A ``keras.Model`` without a ``call`` (a GAN wrapper) only holds models: each runs once.

Counts multiply through nesting: a layer inside a block called twice runs at two sites. Paths join layer
names with ``/`` from the model down, as ``inspection.paths.walk_layers`` lists them.

When a count cannot be known (a ``call`` whose Python code depends on the values, a subclassed model
whose input Keras did not record), ``unknown`` names the layer whose call could not be followed and why; the
layers inside it get no count.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from layerprint.compat import keras as keras_compat
from layerprint.errors import first_line


@dataclass
class CallSites:
    """Call counts of one forward pass.

    Attributes:
        per_path: ``{layer path: calls made through that path}``.
        unknown: ``{layer path: why the calls inside it are not known}`` (``""``: the model itself).
    """

    per_path: dict[str, int] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)


def count_call_sites(model: Any) -> CallSites:
    """Count every layer's calls in one forward pass of ``model`` (module doc).

    Args:
        model: a built Keras model (or layer).

    Returns:
        The counts, and the layers whose inside could not be followed.
    """
    sites = CallSites()
    _visit(sites, model, "", 1, None)
    return sites


def _visit(sites: CallSites, layer: Any, prefix: str, times: int, call: tuple[tuple, dict] | None) -> None:
    """Count the calls of ``layer``'s sublayers, ``layer`` itself running ``times`` times.

    Args:
        sites: where the counts go.
        layer: the layer whose inside is counted.
        prefix: its path and a ``/`` (empty for the model).
        times: how often it runs in the forward pass.
        call: the ``(args, kwargs)`` of one symbolic call of it, when its caller's graph has them.
    """
    children = keras_compat.direct_sublayers(layer)
    if not children:
        return
    graph = keras_compat.functional_graph(layer)
    if graph is not None:
        for child in children:
            nodes = keras_compat.graph_calls(child, graph)
            _add(sites, prefix + child.name, len(nodes) * times)
            if nodes:
                arguments = nodes[0].arguments
                _visit(sites, child, f"{prefix}{child.name}/", len(nodes) * times, (arguments.args, arguments.kwargs))
        return
    if not keras_compat.has_own_call(layer) or keras_compat.is_keras_layer(layer):
        for child in children:  # a container, or a closed Keras layer: each sublayer once per call
            _add(sites, prefix + child.name, times)
            _visit(sites, child, f"{prefix}{child.name}/", times, None)
        return
    try:
        counts, closed = _symbolic_counts(layer, call)
    except Exception as error:  # noqa: BLE001 - any failure of the symbolic run: the count is not known
        sites.unknown[prefix.rstrip("/")] = f"its call could not be followed on symbolic inputs ({first_line(error)[:200]})"
        return
    for path, n in counts.items():
        _add(sites, prefix + path, n * times)
    for path, (inner, n) in closed.items():
        _visit(sites, inner, f"{prefix}{path}/", n * times, None)


def _add(sites: CallSites, path: str, n: int) -> None:
    sites.per_path[path] = sites.per_path.get(path, 0) + n


def _symbolic_counts(layer: Any, call: tuple[tuple, dict] | None) -> tuple[Counter, dict[str, tuple[Any, int]]]:
    """Run ``layer.call`` once on symbolic inputs and count its sublayers' calls by path (relative to it).

    Returns:
        ``(counts, closed)``: calls per path, and the closed layers reached (``{path: (layer, calls)}``),
        whose inside ``_visit`` counts by structure.

    Raises:
        ValueError: the layer was never called, so its input is not known; anything the symbolic run
            raises (a ``call`` that depends on the values).
    """
    if call is None:
        built = keras_compat.built_input(layer)
        if built is None:
            raise ValueError("Keras recorded no input shape when it was built: it could not trace the call either")
        call = ((built,), {})
    args, kwargs = call
    if keras_compat.takes_training(layer) and "training" not in kwargs:
        kwargs = {**kwargs, "training": True}
    counts: Counter = Counter()
    closed: dict[str, tuple[Any, int]] = {}
    stack: list[str | None] = []  # paths of the layers running; None inside a closed one

    def observe(sublayer: Any, run: Any) -> Any:
        if stack and stack[-1] is None:
            return run()  # inside a closed Keras layer: its own business
        path = f"{stack[-1]}/{sublayer.name}" if stack else sublayer.name
        counts[path] += 1
        is_closed = (keras_compat.is_keras_layer(sublayer) and keras_compat.functional_graph(sublayer) is None
                     and bool(keras_compat.direct_sublayers(sublayer)))
        if is_closed:
            closed[path] = (sublayer, counts[path])
        stack.append(None if is_closed else path)
        try:
            return run()
        finally:
            stack.pop()

    def forward(*inner_args: Any, **inner_kwargs: Any) -> Any:
        counts.clear()  # a backend may run it more than once (to find dynamic dimensions): keep the last
        closed.clear()
        return layer.call(*inner_args, **inner_kwargs)

    with keras_compat.calls_observed(observe):
        keras_compat.symbolic_run(forward, *args, **kwargs)
    return counts, closed
