"""A DCGAN-shaped model, as keras-io writes it on each backend: a ``keras.Model`` subclass without ``call``
that holds a generator and a discriminator (both with BatchNormalization, both built before ``fit``), its
own ``compile`` and a ``train_step`` of its own.

- TensorFlow (keras-io ``dcgan_overriding_train_step``): two optimizers, ``tf.GradientTape``.
- PyTorch (keras-io "Customizing what happens in fit() with PyTorch", its GAN): two optimizers,
  ``backward()`` and ``optimizer.apply``.
- JAX (keras-io "Customizing what happens in fit() with JAX"): a stateless ``train_step(state, data)``
  with ``stateless_call`` of both submodels and one ``optimizer.stateless_apply`` over both sets of
  gradients (Keras's JAX trainer carries the state of ``model.optimizer`` only).

The latent vectors come with the data (``fit(real, noise)``: each batch is ``(real, noise)``), so that the
model holds no RNG state.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

LATENT = 8
FEATURES = 4


def generator() -> keras.Model:
    return keras.Sequential([keras.Input((LATENT,)), keras.layers.Dense(16, name="g_dense"),
                             keras.layers.BatchNormalization(name="g_bn"), keras.layers.LeakyReLU(0.2),
                             keras.layers.Dense(FEATURES, name="g_out")], name="generator")


def discriminator() -> keras.Model:
    return keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(16, name="d_dense"),
                             keras.layers.BatchNormalization(name="d_bn"), keras.layers.LeakyReLU(0.2),
                             keras.layers.Dense(1, name="d_out")], name="discriminator")


def _bce(labels: Any, logits: Any) -> Any:
    return ops.mean(keras.losses.binary_crossentropy(labels, logits, from_logits=True))


class GAN(keras.Model):
    """The wrapper: no ``call``, so Keras never marks it built on TensorFlow. Keras's JAX and PyTorch
    trainers refuse to fit a model that is not built (they would build it through its ``call``), so there
    it says it is built, as users of those backends write it."""

    def __init__(self) -> None:
        super().__init__()
        self.discriminator = discriminator()
        self.generator = generator()
        if keras.backend.backend() != "tensorflow":
            self.built = True
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")

    @property
    def metrics(self) -> list[Any]:
        return [self.d_loss_tracker, self.g_loss_tracker]

    def compile(self, d_optimizer: Any = None, g_optimizer: Any = None, optimizer: Any = None) -> None:
        super().compile(optimizer=optimizer or "rmsprop")
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer

    def train_step(self, *args: Any) -> Any:
        return {"tensorflow": self._tf_step, "torch": self._torch_step, "jax": self._jax_step}[
            keras.backend.backend()](*args)

    def _labels(self, batch: Any) -> tuple[Any, Any]:
        return ops.ones((batch, 1)), ops.zeros((batch, 1))

    def _tf_step(self, data: Any) -> dict[str, Any]:
        import tensorflow as tf

        real, noise = data
        ones, zeros = self._labels(tf.shape(real)[0])
        with tf.GradientTape() as tape:
            fake = self.generator(noise, training=True)
            d_loss = (_bce(ones, self.discriminator(real, training=True))
                      + _bce(zeros, self.discriminator(fake, training=True)))
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))
        with tf.GradientTape() as tape:
            g_loss = _bce(ones, self.discriminator(self.generator(noise, training=True), training=True))
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}

    def _torch_step(self, data: Any) -> dict[str, Any]:
        import torch

        real, noise = data
        ones, zeros = self._labels(real.shape[0])
        self.zero_grad()
        fake = self.generator(noise, training=True)
        d_loss = (_bce(ones, self.discriminator(real, training=True))
                  + _bce(zeros, self.discriminator(fake.detach(), training=True)))
        d_loss.backward()
        grads = [v.value.grad for v in self.discriminator.trainable_weights]
        with torch.no_grad():
            self.d_optimizer.apply(grads, self.discriminator.trainable_weights)
        self.zero_grad()
        g_loss = _bce(ones, self.discriminator(self.generator(noise, training=True), training=True))
        g_loss.backward()
        grads = [v.value.grad for v in self.generator.trainable_weights]
        with torch.no_grad():
            self.g_optimizer.apply(grads, self.generator.trainable_weights)
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}

    def _jax_step(self, state: Any, data: Any) -> tuple[dict[str, Any], Any]:
        import jax

        trainable, non_trainable, optimizer_variables, metrics_variables = state
        real, noise = data
        ones, zeros = self._labels(real.shape[0])
        n_dt, n_dn = len(self.discriminator.trainable_variables), len(self.discriminator.non_trainable_variables)
        d_t, g_t = list(trainable[:n_dt]), list(trainable[n_dt:])
        d_n, g_n = list(non_trainable[:n_dn]), list(non_trainable[n_dn:])

        def d_loss_of(d_t: Any, d_n: Any, g_n: Any) -> Any:
            fake, g_n = self.generator.stateless_call(g_t, g_n, noise, training=True)
            real_logits, d_n = self.discriminator.stateless_call(d_t, d_n, real, training=True)
            fake_logits, d_n = self.discriminator.stateless_call(d_t, d_n, fake, training=True)
            return _bce(ones, real_logits) + _bce(zeros, fake_logits), (d_n, g_n)

        (d_loss, (d_n, g_n)), d_grads = jax.value_and_grad(d_loss_of, has_aux=True)(d_t, d_n, g_n)

        def g_loss_of(g_t: Any, g_n: Any, d_n: Any) -> Any:
            fake, g_n = self.generator.stateless_call(g_t, g_n, noise, training=True)
            logits, d_n = self.discriminator.stateless_call(d_t, d_n, fake, training=True)
            return _bce(ones, logits), (g_n, d_n)

        (g_loss, (g_n, d_n)), g_grads = jax.value_and_grad(g_loss_of, has_aux=True)(g_t, g_n, d_n)
        trainable, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, d_grads + g_grads, d_t + g_t)
        logs, new_metrics, start = {}, [], 0
        for tracker, loss in ((self.d_loss_tracker, d_loss), (self.g_loss_tracker, g_loss)):
            own = metrics_variables[start:start + len(tracker.variables)]
            start += len(own)
            own = tracker.stateless_update_state(own, loss)
            logs[tracker.name] = tracker.stateless_result(own)
            new_metrics += list(own)
        return logs, (trainable, d_n + g_n, optimizer_variables, new_metrics)


def compiled_gan() -> GAN:
    """A GAN compiled the way its backend's keras-io example does."""
    gan = GAN()
    if keras.backend.backend() == "jax":
        gan.compile(optimizer=keras.optimizers.Adam(1e-3))
    else:
        gan.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3))
    return gan


def gan_data(n: int = 32, seed: int = 0) -> tuple[Any, Any]:
    """``(real, noise)`` arrays for ``fit(real, noise)``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 0.5, size=(n, FEATURES)).astype("float32"), rng.normal(size=(n, LATENT)).astype("float32")
