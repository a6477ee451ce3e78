"""When a fit's start can be captured: whether the model's variables exist, and the moment before the first
update when they are created inside the first step."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable

import keras

from layerprint.compat import keras as keras_compat


def variables_exist(model: Any) -> bool:
    """Whether the model's variables exist: it has some, and every layer that creates its own is built.

    Decided from the layers that own variables, whatever the root is: a layer without sublayers
    (``Dense``, ``BatchNormalization``) and a layer holding sublayers (a custom block, whose ``build``
    may add weights of its own) must be built. A ``keras.Model`` that holds other models or layers is
    a container: Keras never marks one built when it has no ``call`` (a GAN wrapper holding a built
    generator and discriminator), so it is judged by what it holds.
    """
    return bool(model.variables) and all(getattr(layer, "built", True) or _is_container(layer)
                                         for layer in keras_compat.all_layers(model))


def _is_container(layer: Any) -> bool:
    return isinstance(layer, keras.Model) and bool(keras_compat.direct_sublayers(layer))


def values_initialized(variables: list[Any]) -> bool:
    """Whether every variable holds its initial value already. On TensorFlow, a variable created inside the
    first traced step whose initial value could not be lifted out of the graph (seen in a GAN whose
    submodels are built inside ``tf.GradientTape``) is initialized only when the step runs; read before, it
    is empty."""
    if keras.backend.backend() != "tensorflow":
        return True
    import tensorflow as tf

    return all(bool(tf.compat.v1.is_variable_initialized(v.value)) for v in variables)


def eager_scope() -> Any:
    """``tf.init_scope()`` on the TensorFlow backend (leaves a graph being traced), else nothing."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.init_scope()
    return contextlib.nullcontext()


def optimizers_of(model: Any) -> list[Any]:
    """``model.optimizer`` and the optimizers the model holds as attributes of its own, each once."""
    found: list[Any] = []
    for candidate in [getattr(model, "optimizer", None), *vars(model).values()]:
        if isinstance(candidate, keras.optimizers.Optimizer) and all(candidate is not f for f in found):
            found.append(candidate)
    return found


class OptimizerBuildHook:
    """Calls ``capture()`` from inside the first ``build`` of any of the model's optimizers, once the variables
    hold their values: on TensorFlow without a distribution strategy, Keras builds an unbuilt model inside
    the first traced train step, and an optimizer builds its state right before it applies the first update
    (``model.optimizer``, or one the model holds itself, as a GAN's ``d_optimizer`` and ``g_optimizer``).
    The values are read eagerly there (``tf.init_scope``).

    Args:
        model: the model being fitted.
        capture: called once, before the first update.
        pending: whether the capture is still wanted (it may have happened another way).
    """

    def __init__(self, model: Any, capture: Callable[[], None], pending: Callable[[], bool]) -> None:
        self.model, self.capture, self.pending = model, capture, pending
        self.hooked: list[Any] = []
        for optimizer in optimizers_of(model):
            if getattr(optimizer, "built", True) or keras_compat.method_replaced(optimizer, "build"):
                continue
            keras_compat.replace_method(optimizer, "build", functools.partial(self._build, optimizer, optimizer.build))
            self.hooked.append(optimizer)

    def _build(self, optimizer: Any, build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        keras_compat.restore_method(optimizer, "build")
        if self.pending():
            with eager_scope():
                if values_initialized(self.model.variables):  # else: after the step (``init_step``)
                    self.capture()
        return build(*args, **kwargs)

    def remove(self) -> None:
        """Give the optimizers never built in the fit their own ``build`` back."""
        for optimizer in self.hooked:
            keras_compat.restore_method(optimizer, "build")
