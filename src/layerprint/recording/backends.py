"""The device of the current Keras backend (``recording.device`` defines what each provides)."""

from __future__ import annotations

from typing import Any

from layerprint.recording.device import Device


def device_for(model: Any, variables: list[Any], batchnorm_layers: list[tuple[str, Any]], in_step: bool) -> Device:
    """The device of the current Keras backend for ``model``.

    Args:
        model: the compiled Keras model (``fit`` has made its train function).
        variables: the variables to checksum.
        batchnorm_layers: its BatchNormalization layers.
        in_step: let the train step record itself where the backend can (not for a model whose variables
            were created inside its first step).
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        from layerprint.recording.tensorflow import TensorFlowDevice

        return TensorFlowDevice(model, variables, batchnorm_layers, in_step)
    if backend == "jax":
        from layerprint.recording.jax import JaxDevice

        return JaxDevice(model, variables, batchnorm_layers, in_step)
    from layerprint.recording.torch import TorchDevice

    return TorchDevice(model, variables, batchnorm_layers)
