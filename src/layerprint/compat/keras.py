"""Keras's private structure and calls, used by layerprint in one place. Checked against Keras 3.15.1.

- Layer structure: ``Layer._layers`` and ``_flatten_layers`` (sublayers; there is no public route to a
  layer's direct sublayers), ``_trainable_variables`` and ``_non_trainable_variables`` (a layer's own
  variables, without its sublayers'), ``_inbound_nodes`` and ``Functional._nodes`` (where a functional graph
  calls a layer), ``Sequential._functional`` (the graph of a built Sequential model).
- Calls: ``Layer.__call__`` (wrapped for a moment to count calls), the backend's ``compute_output_spec``
  and its ``StatelessScope``/``SymbolicScope`` (a call on symbolic values: no data runs, state changes are
  discarded).
- Training: ``Callback._model`` (the model without the JAX trainer's state sync that ``Callback.model``
  does), ``model._jax_state`` (the trainer's state during a JAX fit), a ``train_step`` set on the instance for
  ``make_train_function``, a method of an optimizer replaced on the instance (``build``, to see the moment
  before its first update).
- Public routes taken where there is one: ``keras.Model.call`` to tell a model without a ``call``,
  ``Layer.get_build_config`` for the input a subclassed model was built for, ``keras.device``,
  ``Model.make_train_function``, ``steps_per_execution``.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from typing import Any, Callable, Iterator

import keras


def direct_sublayers(layer: Any) -> list[Any]:
    """The layers ``layer`` holds directly, each once, in tracking order, without Keras's ``InputLayer``s (a
    ``Sequential`` holding one instance twice lists it twice in ``_layers``)."""
    held = getattr(layer, "_layers", None)
    if held is None:
        flatten = getattr(layer, "_flatten_layers", None)
        held = list(flatten(include_self=False, recursive=False)) if flatten is not None else []
    unique: dict[int, Any] = {}
    for sub in held:
        if not isinstance(sub, keras.layers.InputLayer):
            unique.setdefault(id(sub), sub)
    return list(unique.values())


def own_variables(layer: Any) -> list[Any]:
    """The variables ``layer`` created itself, without its sublayers'."""
    return list(getattr(layer, "_trainable_variables", [])) + list(getattr(layer, "_non_trainable_variables", []))


def unsynced_model(callback: Any) -> Any:
    """A callback's model, without the state sync ``Callback.model`` does on JAX (which copies the trainer's
    state into every variable)."""
    return callback._model


def replace_method(instance: Any, name: str, method: Callable[..., Any]) -> None:
    """Replace ``instance.<name>`` by ``method`` for this instance only (set in its ``__dict__``)."""
    instance.__dict__[name] = method


def restore_method(instance: Any, name: str) -> None:
    """Give ``instance`` its class's ``<name>`` back (``replace_method`` undone; nothing when not replaced)."""
    instance.__dict__.pop(name, None)


def method_replaced(instance: Any, name: str) -> bool:
    return name in instance.__dict__


def all_layers(model: Any) -> list[Any]:
    """``model`` and every layer inside it, each once."""
    flatten = getattr(model, "_flatten_layers", None)
    return list(flatten()) if flatten is not None else [model]


def functional_graph(layer: Any) -> Any:
    """The functional graph that runs ``layer``'s call (a functional model, or a built Sequential's), else
    None (a subclassed model or layer, whose call is Python code)."""
    graph = getattr(layer, "_functional", None) or layer
    return graph if isinstance(getattr(graph, "_nodes", None), set) else None


def graph_calls(layer: Any, graph: Any) -> list[Any]:
    """The nodes of ``graph`` that call ``layer`` (a layer's nodes are global: a layer used in two graphs
    has nodes in each). Each has ``arguments.args`` and ``arguments.kwargs``: the symbolic call."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    # Keras keys a graph's nodes as "<id(layer)>_ib-<index in layer._inbound_nodes>".
    return [node for i, node in enumerate(nodes) if f"{id(layer)}_ib-{i}" in graph._nodes]


def has_own_call(layer: Any) -> bool:
    """Whether ``layer`` computes anything itself: False for a ``keras.Model`` subclass that only holds
    other models (a GAN wrapper has no ``call``)."""
    return not (isinstance(layer, keras.Model) and type(layer).call is keras.Model.call)


def is_keras_layer(layer: Any) -> bool:
    """Whether ``layer``'s class is one of Keras's own (``Dense``, ``LSTM``, ``MultiHeadAttention``...),
    whose sublayers are its own business (an LSTM's cell runs once per timestep)."""
    return type(layer).__module__.startswith("keras.")


def built_input(layer: Any) -> Any:
    """Symbolic inputs shaped as the ones ``layer`` was built with (``get_build_config``), or None."""
    config = layer.get_build_config() if getattr(layer, "built", False) else None
    if not config or "input_shape" not in config:
        return None
    return _symbolic(config["input_shape"])


def _symbolic(shape: Any) -> Any:
    if isinstance(shape, dict):
        return {key: _symbolic(value) for key, value in shape.items()}
    if isinstance(shape, (list, tuple)) and shape and all(isinstance(s, (list, tuple)) for s in shape):
        return [_symbolic(s) for s in shape]
    return keras.KerasTensor(tuple(shape))


def takes_training(layer: Any) -> bool:
    """Whether ``layer.call`` takes a ``training`` argument."""
    return "training" in inspect.signature(layer.call).parameters


@contextlib.contextmanager
def calls_observed(observe: Callable[[Any, Callable[[], Any]], Any]) -> Iterator[None]:
    """While inside, every ``Layer.__call__`` made on this thread runs as ``observe(layer, call)``, where
    ``call()`` makes the call itself; other threads' calls are left alone.

    Args:
        observe: ``observe(layer, call) -> result``; must return ``call()``'s result.
    """
    layer_class = keras.layers.Layer
    original = layer_class.__call__
    thread = threading.get_ident()

    def observed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != thread:
            return original(self, *args, **kwargs)
        return observe(self, lambda: original(self, *args, **kwargs))

    layer_class.__call__ = observed
    try:
        yield
    finally:
        layer_class.__call__ = original


def symbolic_run(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``function`` once on symbolic values standing for ``args`` and ``kwargs`` (``KerasTensor``s):
    with TensorFlow, in a scratch graph; with JAX, under ``jax.eval_shape``; with PyTorch, on the ``meta``
    device only (Keras's own symbolic call retries on real tensors, which would run data-dependent code).
    Variable assignments are discarded. A call whose Python code depends on the values raises.

    Returns:
        ``function``'s output, as symbolic values.
    """
    if keras.backend.backend() != "torch":
        from keras.src.backend import compute_output_spec

        return compute_output_spec(function, *args, **kwargs)
    import torch
    from keras.src import tree
    from keras.src.backend.common.stateless_scope import StatelessScope
    from keras.src.backend.common.symbolic_scope import SymbolicScope

    def meta(value: Any) -> Any:
        if isinstance(value, keras.KerasTensor):
            shape = [83 if dim is None else dim for dim in value.shape]
            return torch.ones(shape, dtype=getattr(torch, value.dtype), device="meta")
        return value

    with StatelessScope(), SymbolicScope(), torch.no_grad(), keras.device("meta"):
        meta_args, meta_kwargs = tree.map_structure(meta, (args, kwargs))
        return function(*meta_args, **meta_kwargs)


def steps_per_execution(model: Any) -> int:
    """How many steps one call of the model's train function runs (``compile(steps_per_execution=...)``)."""
    return int(getattr(model, "steps_per_execution", 1) or 1)


@contextlib.contextmanager
def train_step_replaced(model: Any, step: Callable[..., Any]) -> Iterator[None]:
    """While inside, ``model.train_step`` is ``step`` (set on the instance, over its class's method), so that
    Keras's ``make_train_function`` compiles it; the model's own ``train_step`` and ``train_function`` are
    put back on the way out."""
    own = getattr(model, "train_function", None)
    replace_method(model, "train_step", step)
    try:
        yield
    finally:
        restore_method(model, "train_step")
        model.train_function = own


def jax_trainer_state(model: Any) -> dict[str, Any] | None:
    """The JAX trainer's state during a fit (``model._jax_state``: the variables' current arrays by group),
    or None outside one."""
    return getattr(model, "_jax_state", None)


KEPT_ATTRIBUTE = "_layerprint_kept"


def kept(model: Any) -> Any:
    """What layerprint keeps on ``model`` between fits (``keep``), or None."""
    return model.__dict__.get(KEPT_ATTRIBUTE)


def keep(model: Any, value: Any) -> None:
    """Keep ``value`` on ``model`` itself, as Keras keeps ``model.train_function``: it goes with the model.
    Set in the instance's ``__dict__``, past Keras's attribute tracking (it is not a layer or a weight)."""
    model.__dict__[KEPT_ATTRIBUTE] = value
