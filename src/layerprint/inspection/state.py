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

On TensorFlow, ``TrainStepRecorder`` goes further: the compiled train step itself writes the BatchNorm
statistics that every optimizer step left into a ring buffer on the device, so recording them costs no
call from Python (a call into a compiled function costs about 100 us, 1 % of a 10 ms step); the
checksums, read on their cadence, cost one call each.
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
        self._with_checksums = self._compile(lambda xp, arrays: (_bn_values_of(xp, arrays[:n_bn]),
                                                                 _checksums_of(xp, arrays[n_bn:])),
                                             self.bn_variables + self.variables)
        self._bn_only = self._compile(lambda xp, arrays: (_bn_values_of(xp, arrays), None), self.bn_variables)
        self._checksums_only: Any = None
        self._values: Any = None

    def values(self) -> list[np.ndarray]:
        """The current value of every variable, in ``variables`` order, read in one compiled call on
        TensorFlow (one eager read per variable costs about 0.2 ms: 50 ms for a 260-variable model)."""
        if self._values is None:
            if self.backend == "tensorflow":
                import tensorflow as tf

                refs = [v.value for v in self.variables]
                self._values = tf.function(lambda: [tf.identity(r) for r in refs], autograph=False
                                           ).get_concrete_function()
            else:
                self._values = lambda: [v.numpy() for v in self.variables]
        return [np.array(value) for value in self._values()]  # copies: the caller keeps them across steps

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
            self._checksums_only = self._compile(lambda xp, arrays: _checksums_of(xp, arrays), self.variables)
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
        groups = {"trainable_variables": self._model.trainable_variables,
                  "non_trainable_variables": self._model.non_trainable_variables}
        where = []
        for variable in variables:
            place = None
            for group, members in groups.items():
                for index, member in enumerate(members):
                    if member is variable:
                        place = (group, index)
                        break
                if place:
                    break
            where.append(place)

        def locate() -> list[Any]:
            state = getattr(self._model, "_jax_state", None)
            out = []
            for variable, place in zip(variables, where):
                if state and place and state.get(place[0]) is not None:
                    out.append(state[place[0]][place[1]])
                else:
                    out.append(variable.value)
            return out

        return locate


class TrainStepRecorder:
    """TensorFlow: the state after every optimizer step, written by the compiled train step itself.

    ``train_function`` is a copy of the model's train function whose step, before the model's own
    ``train_step``, writes one row into a ring buffer on the device: the state the previous step left
    (with whatever a callback changed between the two steps, as a read before the next step would see
    it): the BatchNorm moving statistics (as ``StateReader.read``). The callback swaps the function in
    for a fit (``model.train_function``, which Keras calls at every step) and ``drain`` brings the rows
    to the host in one transfer; the state the last step left is read at the end of each epoch.

    Checksums: with ``steps_per_execution`` 1, the training thread reads them between steps, on the
    checksum cadence (``StateReader.read_checksums``), and the step writes none
    (``checksums_in_step`` is False). A branch on the cadence inside the step would cost every step:
    the executor visits each op of the branch not taken, about 0.3 ms a step for the small CNN of
    ``benchmarks/callback_overhead.py``, 3 % of its step. Inside a ``steps_per_execution`` block no
    hook runs between steps, so there the step writes every variable's checksum when due (the fit's
    first step and global steps divisible by the cadence, which lives in a device variable: changing
    it retraces nothing), and whether they were taken.

    Built once per model; its first call traces the train step as Keras's own function would (the
    original one is then never traced in that fit). Only for models whose variables exist before
    training, without a distribution strategy and without XLA (``jit_compile``), with something to
    write: see ``supported``.

    Args:
        model: the compiled Keras model, its train function made (``fit`` does that before
            ``on_train_begin``).
        reader: the model's ``StateReader`` (its variables, BatchNorm variables and columns).
        capacity_steps: rows in the ring, in calls of the train function; the callback drains it
            more often than that.

    Attributes:
        drained: the steps of the fit whose rows were brought to the host.
        steps_run: the steps of the fit run so far, as of the last ``drain``.
        checksums_in_step: whether the step writes the checksums (``steps_per_execution`` > 1).
        checksum_seconds: with ``checksums_in_step``, the estimated cost of one step's checksums.
    """

    def __init__(self, model: Any, reader: StateReader, capacity_steps: int = 64) -> None:
        import tensorflow as tf

        self._model = model
        self.reader = reader
        self.base_function = model.train_function
        self.steps_per_execution = int(getattr(model, "steps_per_execution", 1) or 1)
        self.capacity = capacity_steps * self.steps_per_execution
        self.n_bn, self.n_variables = sum(reader.bn_sizes), len(reader.variables)
        self.checksums_in_step = self.steps_per_execution > 1
        with tf.init_scope():
            self._bn_rows = tf.Variable(tf.zeros((self.capacity, self.n_bn), tf.float32), trainable=False,
                                        name="layerprint_bn_rows")
            self._rows = tf.Variable(tf.zeros((self.capacity, self.n_variables + 1), tf.float64),
                                     trainable=False, name="layerprint_checksum_rows")
            self._count = tf.Variable(0, dtype=tf.int64, trainable=False, name="layerprint_count")
            self._first_step = tf.Variable(1, dtype=tf.int64, trainable=False, name="layerprint_first_step")
            self._every = tf.Variable(1, dtype=tf.int64, trainable=False, name="layerprint_checksum_every")
        self.drained = 0
        self.steps_run = 0
        if self.checksums_in_step:
            self.checksum_seconds = reader.checksum_seconds()
        else:
            self.checksum_seconds = 0.0
            reader.read_checksums()  # compiled now, not at the fit's first checksum
        self.train_function = self._make_train_function()

    @staticmethod
    def supported(model: Any, reader: StateReader) -> bool:
        """Whether the train step of ``model`` can record itself and has something to write: TensorFlow,
        no distribution strategy, no XLA, a train function made; BatchNorm statistics, or
        ``steps_per_execution`` blocks (their checksums)."""
        import keras

        if keras.backend.backend() != "tensorflow" or getattr(model, "train_function", None) is None:
            return False
        import tensorflow as tf

        if tf.distribute.has_strategy() or getattr(model, "jit_compile", False):
            return False
        return bool(reader.bn_variables) or int(getattr(model, "steps_per_execution", 1) or 1) > 1

    def matches(self, model: Any, reader: StateReader) -> bool:
        """Whether this recorder still fits ``model`` (same train function, reader and cadence block)."""
        return (self.base_function is model.train_function and self.reader is reader
                and self.steps_per_execution == int(getattr(model, "steps_per_execution", 1) or 1))

    def start(self, first_step: int, checksum_every: int) -> None:
        """Begin a fit: rows count from 0, for global steps from ``first_step`` on."""
        self._count.assign(0)
        self._first_step.assign(first_step)
        self._every.assign(checksum_every)
        self.drained = self.steps_run = 0

    def set_checksum_every(self, every: int) -> None:
        self._every.assign(every)

    def drain(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The rows written since the last drain, in one transfer; ``steps_run`` is then the number of
        steps of the fit so far (the last one's state is written by the next step, or read by the
        caller, who then calls ``skip_last``).

        Returns:
            ``(steps, batchnorm, checksummed, checksums)``: the 0-based steps of the fit, the BatchNorm
            values (one row per step, as ``StateReader.read``), whether each step has checksums, and
            the checksums (int64) of those steps only.
        """
        self.steps_run = int(self._count.numpy())
        end = self.steps_run - 1  # rows exist for the steps before the last one
        indexes = np.arange(max(self.drained, end - self.capacity + 1, 0), max(end, 0))
        self.drained = max(self.drained, end)
        slots = indexes % self.capacity
        batchnorm = self._bn_rows.numpy()[slots] if self.n_bn else np.zeros((len(slots), 0), np.float32)
        if not self.checksums_in_step:
            return indexes, batchnorm, np.zeros(len(slots), bool), np.zeros((0, self.n_variables), np.int64)
        rows = self._rows.numpy()[slots]
        checksummed = rows[:, -1] > 0
        return indexes, batchnorm, checksummed, rows[checksummed, : self.n_variables].astype(np.int64)

    def skip_last(self) -> None:
        """The caller read the state the last step left itself: the next drain starts after it."""
        self.drained = self.steps_run

    def _make_train_function(self) -> Any:
        """Keras's own ``make_train_function`` around a recording ``train_step``; the model keeps its
        own train step and train function."""
        model = self._model
        step = model.train_step

        def recording_step(data: Any) -> Any:
            self._write_row()
            return step(data)

        model.__dict__["train_step"] = recording_step
        try:
            model.make_train_function(force=True)
            return model.train_function
        finally:
            model.__dict__.pop("train_step", None)
            model.train_function = self.base_function

    def _write_row(self) -> None:
        """The row of the state the previous step left (at the fit's first step, a row that the ring's
        last slot holds until a real one replaces it: it is never drained)."""
        import tensorflow as tf

        index = self._count.read_value() - 1  # the previous step, 0-based in the fit
        slot = tf.reshape(tf.math.floormod(index, self.capacity), (1, 1))
        if self.n_bn:  # the raw values: a summary on the device would cost more ops than the copy
            bn = _bn_values_of(tf, [v.value for v in self.reader.bn_variables])
            self._bn_rows.scatter_nd_update(slot, tf.expand_dims(bn, 0))
        if not self.checksums_in_step:
            self._count.assign_add(1)
            return
        due = tf.logical_or(tf.equal(index, 0), tf.equal((self._first_step + index) % self._every, 0))
        variables = [v.value for v in self.reader.variables]
        checksums = tf.cond(due, lambda: tf.cast(_checksums_of(tf, variables), tf.float64),
                            lambda: tf.zeros((self.n_variables,), tf.float64))
        row = tf.concat([checksums, tf.reshape(tf.cast(due, tf.float64), (1,))], 0)
        self._rows.scatter_nd_update(slot, tf.expand_dims(row, 0))
        self._count.assign_add(1)


def _checksums_of(xp: Any, arrays: list[Any]) -> Any:
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


def _bn_values_of(xp: Any, arrays: list[Any]) -> Any:
    """Every array flat in one float32 vector (None for no arrays)."""
    if not arrays:
        return None
    if xp.__name__ == "tensorflow":
        return xp.concat([xp.cast(xp.reshape(array, [-1]), xp.float32) for array in arrays], 0)
    return xp.concatenate([xp.ravel(xp.asarray(array, dtype=xp.float32)) for array in arrays])
