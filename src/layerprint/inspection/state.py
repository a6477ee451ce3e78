"""Reading a model's state after a step on the device, without a host sync: exact checksums of every
variable and the BatchNorm moving statistics, each in one compiled function for all variables (their
summaries, ``mean, std, min, max``, are computed on the host, many steps at once).

**Checksum.** For a variable whose values, in C order and seen as 32-bit words (float32 and int32 as
themselves, 16-bit types widened, float64 as two words), are ``w_0 .. w_{n-1}``:
``checksum = sum_i w_i * (2i + 1) mod 2**32`` (unsigned arithmetic, which wraps by definition).
Integer addition is associative, so the result does not depend on the order of the reduction
(device, thread count): the same bits give the same checksum on every machine. A single changed bit
changes it: a word's change of ``2**k`` changes its term by ``2**k * (2i + 1)``, an odd multiple of
``2**k``, never 0 modulo 2**32. Several changed values give the same checksum only when their term
changes cancel exactly modulo 2**32: for unrelated changes, about 1 in 4.3e9 (2**-32). Two values
``a``, ``b`` trading places at ``i``, ``j`` cancel only when ``2 (a - b)(i - j)`` is a multiple of 2**32.
It is a change detector, not a cryptographic hash.

On JAX the trained state lives in the trainer between steps (``model._jax_state``); it is read there,
so no ``Callback.model`` state sync (which copies every variable back) is needed.

``inspection.train_step`` goes further: there the compiled train step itself records the BatchNorm
statistics of every step, so that recording them costs no call from Python per step.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from layerprint import keys

WORD_MODULUS = 2**32


def checksum_numpy(values: np.ndarray) -> int:
    """The checksum of one array (see module doc), on the host; the reference the compiled ones match."""
    words = _words(np.ascontiguousarray(values))
    odd = np.arange(words.size, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    return int(np.sum(words * odd, dtype=np.uint32))


def _words(values: np.ndarray) -> np.ndarray:
    flat = values.ravel()
    if flat.dtype.itemsize == 4:
        return flat.view(np.uint32)
    if flat.dtype.itemsize == 8:
        return flat.view(np.uint32)
    if flat.dtype.itemsize == 2:
        return flat.view(np.uint16).astype(np.uint32)
    return flat.astype(np.uint8).astype(np.uint32)


class StateReader:
    """Device-side reads of the state a step left, for the flight recorder.

    ``read(with_checksums)`` returns device arrays (dispatched, not waited for) from one compiled call;
    ``to_host`` brings a list of them to NumPy in one go.

    Args:
        model: the Keras model being trained.
        variables: the variables to checksum (``inspection.paths.unique_variables``).
        batchnorm_layers: ``(path, layer)`` of the BatchNormalization layers
            (``inspection.batchnorm.find_batchnorm_layers``).
    """

    def __init__(self, model: Any, variables: list[Any], batchnorm_layers: list[tuple[str, Any]]) -> None:
        import keras

        self.backend = keras.backend.backend()
        self._model = model
        self.variable_ids = [id(v) for v in variables]
        self.variables = variables
        self.bn_variables = [getattr(layer, stat) for _, layer in batchnorm_layers for stat in keys.BN_STATS]
        self.bn_columns = [keys.sanitize_key(keys.bn_key(path, stat, summary))
                           for path, _ in batchnorm_layers for stat in keys.BN_STATS for summary in keys.BN_SUMMARIES]
        self.bn_sizes = [int(np.prod(v.shape)) for v in self.bn_variables]
        n_bn = len(self.bn_variables)
        self._with_checksums = self._compile(lambda xp, arrays: (bn_values_of(xp, arrays[:n_bn]),
                                                                 checksums_of(xp, arrays[n_bn:])),
                                             self.bn_variables + self.variables)
        self._bn_only = self._compile(lambda xp, arrays: (bn_values_of(xp, arrays), None), self.bn_variables)
        self._checksums_only: Any = None
        self._values: Any = None

    def snapshot(self) -> list[Any]:
        """The current value of every variable, in ``variables`` order, as copies on the device: one
        compiled call, dispatched and not waited for. ``host`` brings them to NumPy later, from any
        thread: the copies outlive the next step (on JAX it donates the state's own buffers; on
        TensorFlow a variable read is never changed in place). Elsewhere, NumPy copies at once.

        One eager read per variable costs about 0.2 ms on TensorFlow (50 ms for a 260-variable model), and
        one transfer per variable from a GPU about as much: a snapshot costs one call, its transfer
        happens off the training thread.
        """
        if self._values is None:
            if self.backend == "tensorflow":
                import tensorflow as tf

                refs = [v.value for v in self.variables]
                self._values = tf.function(lambda: [tf.identity(r) for r in refs], autograph=False
                                           ).get_concrete_function()
            elif self.backend == "jax":
                import jax
                import jax.numpy as jnp

                copy = jax.jit(lambda arrays: [jnp.copy(array) for array in arrays])
                self._values = lambda: copy([v.value for v in self.variables])
            else:
                self._values = lambda: [np.array(v.numpy()) for v in self.variables]
        return self._values()

    def host(self, snapshot: list[Any]) -> list[np.ndarray]:
        """``snapshot``'s arrays as NumPy arrays of their own (on JAX, one batched transfer)."""
        if self.backend == "jax":
            import jax

            return list(jax.device_get(snapshot))  # the private copies' host values: nothing else holds them
        return [np.array(value) for value in snapshot]

    def checksum_seconds(self) -> float:
        """What the checksums add to one read: a compiled read with them minus one without (medians of
        three warm calls), an estimate of their cost inside a train step."""
        costs = {}
        for with_checksums in (True, False):
            times = []
            for _ in range(3):
                started = time.perf_counter()
                for values in self.read(with_checksums):
                    if values is not None:
                        np.asarray(values)
                times.append(time.perf_counter() - started)
            costs[with_checksums] = float(np.median(times))
        return max(costs[True] - costs[False], 0.0)

    def warm_up(self) -> None:
        """Compile both reads now (tracing takes about a second for a large model), once per model."""
        for with_checksums in (True, False):
            for values in self.read(with_checksums):
                if values is not None:
                    np.asarray(values)

    def read(self, with_checksums: bool) -> tuple[Any, Any]:
        """``(batchnorm, checksums)`` as device arrays: every BatchNorm moving mean and variance, flat in
        one float32 vector (None without BatchNorm; ``summarize`` makes the ``bn_columns`` of it), and
        one 32-bit checksum per variable (None unless ``with_checksums``)."""
        return (self._with_checksums if with_checksums else self._bn_only)()

    def read_checksums(self) -> Any:
        """One 32-bit checksum per variable, as a device array (dispatched, not waited for), from one
        compiled call (compiled at the first)."""
        if self._checksums_only is None:
            self._checksums_only = self._compile(lambda xp, arrays: checksums_of(xp, arrays), self.variables)
        return self._checksums_only()

    def summarize(self, values: np.ndarray) -> np.ndarray:
        """``mean, std, min, max`` of every BatchNorm variable, in ``bn_columns`` order, for each row of
        flat BatchNorm values (``read``'s first output, stacked), on the host in float64.

        Args:
            values: ``(rows, sum of bn_sizes)`` array.

        Returns:
            ``(rows, len(bn_columns))`` float32 array.
        """
        values = np.asarray(values, np.float64)
        starts = np.concatenate([[0], np.cumsum(self.bn_sizes)[:-1]]).astype(np.intp)
        sizes = np.asarray(self.bn_sizes, np.float64)
        mean = np.add.reduceat(values, starts, axis=1) / sizes
        centred = values - np.repeat(mean, self.bn_sizes, axis=1)
        std = np.sqrt(np.add.reduceat(centred * centred, starts, axis=1) / sizes)
        out = np.stack([mean, std, np.minimum.reduceat(values, starts, axis=1),
                        np.maximum.reduceat(values, starts, axis=1)], axis=2)
        return out.reshape(len(values), -1).astype(np.float32)

    def wait(self, arrays: Any) -> None:
        """Block until the device has computed ``arrays`` (any nesting of ``read``'s outputs), without
        bringing them to the host; other backends compute them before ``read`` returns."""
        if self.backend == "jax":
            import jax

            jax.block_until_ready(arrays)

    @staticmethod
    def to_host(arrays: list[Any]) -> np.ndarray:
        """Stack device arrays into one host array (one transfer); checksums come back as int64."""
        stacked = np.stack([np.asarray(a) for a in arrays])
        return stacked.astype(np.int64) if stacked.dtype.kind in "iu" else stacked

    # Backends.
    def _compile(self, kernel: Any, variables: list[Any]) -> Any:
        if self.backend == "tensorflow":
            import tensorflow as tf

            refs = [v.value for v in variables]
            # The traced graph itself: calling it skips tf.function's per-call dispatch (about 60 us).
            return tf.function(lambda: kernel(tf, refs), autograph=False).get_concrete_function()
        if self.backend == "jax":
            import jax
            import jax.numpy as jnp

            locate = self._jax_locator(variables)
            jitted = jax.jit(lambda arrays: kernel(jnp, arrays))
            return lambda: jitted(locate())
        return lambda: kernel(np, [np.asarray(v.numpy()) for v in variables])

    def _jax_locator(self, variables: list[Any]) -> Any:
        """A function giving the current arrays of ``variables``: from the trainer's state during a step
        loop (``model._jax_state``), else the variables' own values."""
        where = jax_state_positions(self._model, variables)

        def locate() -> list[Any]:
            state = getattr(self._model, "_jax_state", None)
            out = []
            for variable, place in zip(variables, where):
                group = JAX_STATE_GROUPS[place[0]] if place else None
                if state and group and state.get(group) is not None:
                    out.append(state[group][place[1]])
                else:
                    out.append(variable.value)
            return out

        return locate


# The parts of the JAX trainer's state that hold model variables, in the order of its state tuple.
JAX_STATE_GROUPS = ("trainable_variables", "non_trainable_variables")


def jax_state_positions(model: Any, variables: list[Any]) -> list[tuple[int, int] | None]:
    """Where each of ``variables`` sits in the JAX trainer's state: ``(group, index)``, the group's
    position in ``JAX_STATE_GROUPS`` (and in the state tuple a train step takes and returns), or None
    for a variable that is in neither group."""
    groups = [model.trainable_variables, model.non_trainable_variables]
    positions: list[tuple[int, int] | None] = []
    for variable in variables:
        place = None
        for group, members in enumerate(groups):
            index = next((i for i, member in enumerate(members) if member is variable), None)
            if index is not None:
                place = (group, index)
                break
        positions.append(place)
    return positions


def checksums_of(xp: Any, arrays: list[Any]) -> Any:
    """The checksum (module doc) of every array, as one vector of unsigned 32-bit values, with the array
    module ``xp`` (``tensorflow``, ``jax.numpy`` or ``numpy``); unsigned sums wrap modulo 2**32 by
    definition on every backend."""
    if xp.__name__ == "numpy":
        return np.asarray([checksum_numpy(a) for a in arrays], dtype=np.uint32)
    if not arrays:
        return xp.zeros((0,), xp.int32)
    if xp.__name__ == "tensorflow":
        tf = xp
        counts = [_word_count(array) for array in arrays]
        odd = tf.bitcast(tf.range(max(counts), dtype=tf.int32) * 2 + 1, tf.uint32)  # shared, sliced per variable
        sums = [tf.reduce_sum(tf.bitcast(_tf_words(tf, array), tf.uint32) * odd[:count])
                for array, count in zip(arrays, counts)]  # uint32 products and sums wrap modulo 2**32
        return tf.stack(sums)
    import jax

    jnp = xp
    return jnp.stack([jnp.sum(words * (jnp.arange(words.size, dtype=jnp.uint32) * 2 + 1), dtype=jnp.uint32)
                      for words in (_jax_words(jax, jnp, array) for array in arrays)])  # uint32: wraps mod 2**32


def _word_count(array: Any) -> int:
    size = int(np.prod(array.shape))
    return size * 2 if array.dtype.size == 8 else size


def _jax_words(jax: Any, jnp: Any, array: Any) -> Any:
    flat = jnp.ravel(array)
    if flat.dtype.itemsize == 4:
        return jax.lax.bitcast_convert_type(flat, jnp.uint32)
    if flat.dtype.itemsize == 2:
        return jax.lax.bitcast_convert_type(flat, jnp.uint16).astype(jnp.uint32)
    return flat.astype(jnp.uint32)


def _tf_words(tf: Any, array: Any) -> Any:
    flat = tf.reshape(array, [-1])
    size = flat.dtype.size
    if flat.dtype.is_floating or flat.dtype.is_integer:
        if size == 4:
            return tf.bitcast(flat, tf.int32)
        if size == 8:
            return tf.reshape(tf.bitcast(flat, tf.int32), [-1])
        if size == 2:
            return tf.cast(tf.bitcast(flat, tf.uint16), tf.int32)
    return tf.cast(tf.cast(flat, tf.uint8), tf.int32)


def bn_values_of(xp: Any, arrays: list[Any]) -> Any:
    """Every array flat in one float32 vector (None for no arrays)."""
    if not arrays:
        return None
    if xp.__name__ == "tensorflow":
        return xp.concat([xp.cast(xp.reshape(array, [-1]), xp.float32) for array in arrays], 0)
    return xp.concatenate([xp.ravel(xp.asarray(array, dtype=xp.float32)) for array in arrays])
