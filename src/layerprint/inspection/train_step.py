"""Train steps that record themselves: the model's own train step, compiled together with the reads of
the state it leaves, so that the flight recorder costs no call from Python at most steps.

The callback swaps ``train_function`` in for a fit (``model.train_function``, which Keras calls at every
step) and gives the model its own back at the fit's end. ``drain`` brings the rows recorded since the last
drain to the host in one transfer. ``recorder_type`` says which recorder, if any, fits a model:

- ``TrainStepRecorder``, TensorFlow: the step writes into ring buffers on the device (``tf.Variable``).
- ``JaxTrainStepRecorder``, JAX: the step returns the BatchNorm statistics it left as one more output,
  beside Keras's logs and state, and the checksums are dispatched from the train function between two
  steps when due; the rows stay on the device until ``drain``.

PyTorch, a distribution strategy, XLA on TensorFlow, Flax NNX, and a model built inside its first step
use ``StateReader`` from the callback's hooks instead (one compiled read per step).
"""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np

from layerprint.inspection.state import StateReader, bn_values_of, checksums_of, jax_state_positions


def recorder_type(model: Any, reader: StateReader) -> type[_StepRecorder] | None:
    """The recorder class whose train step can record itself for ``model``, or None.

    A train function must exist (``fit`` makes it before ``on_train_begin``), and there must be
    something to record in the step: BatchNorm statistics, or the checksums inside a
    ``steps_per_execution`` block (where Keras calls no hook between steps).

    Args:
        model: the compiled Keras model.
        reader: the model's ``StateReader``.

    Returns:
        ``TrainStepRecorder``, ``JaxTrainStepRecorder`` or None.
    """
    import keras

    if getattr(model, "train_function", None) is None:
        return None
    if not reader.bn_variables and _steps_per_execution(model) == 1:
        return None
    for candidate in (TrainStepRecorder, JaxTrainStepRecorder):
        if keras.backend.backend() == candidate.backend and candidate.supported(model, reader):
            return candidate
    return None


def _steps_per_execution(model: Any) -> int:
    return int(getattr(model, "steps_per_execution", 1) or 1)


class _StepRecorder:
    """What both recorders share: the model's own train function, and where the host has read to.

    Attributes:
        base_function: the model's own train function (given back at the fit's end).
        drained: the steps of the fit whose rows were brought to the host.
        steps_run: the steps of the fit run so far, as of the last ``drain``.
    """

    backend = ""

    def __init__(self, model: Any, reader: StateReader) -> None:
        self._model = model
        self.reader = reader
        self.base_function = model.train_function
        self.steps_per_execution = _steps_per_execution(model)
        self.n_bn, self.n_variables = sum(reader.bn_sizes), len(reader.variables)
        self.drained = 0
        self.steps_run = 0

    def matches(self, model: Any, reader: StateReader) -> bool:
        """Whether this recorder still fits ``model`` (same train function, reader and cadence block)."""
        return (self.base_function is model.train_function and self.reader is reader
                and self.steps_per_execution == _steps_per_execution(model))

    def skip_last(self) -> None:
        """The caller read the state the last step left itself: the next drain starts after it."""
        self.drained = self.steps_run


class TrainStepRecorder(_StepRecorder):
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
    training, without a distribution strategy and without XLA (``jit_compile``): see ``supported``
    and ``recorder_type``.

    Args:
        model: the compiled Keras model, its train function made (``fit`` does that before
            ``on_train_begin``).
        reader: the model's ``StateReader`` (its variables, BatchNorm variables and columns).
        capacity_steps: rows in the ring, in calls of the train function; the callback drains it
            more often than that.

    Attributes:
        checksums_in_step: whether the step writes the checksums (``steps_per_execution`` > 1).
        checksum_seconds: with ``checksums_in_step``, the estimated cost of one step's checksums.
    """

    backend = "tensorflow"

    def __init__(self, model: Any, reader: StateReader, capacity_steps: int = 64) -> None:
        import tensorflow as tf

        super().__init__(model, reader)
        self.capacity = capacity_steps * self.steps_per_execution
        self.checksums_in_step = self.steps_per_execution > 1
        with tf.init_scope():
            self._bn_rows = tf.Variable(tf.zeros((self.capacity, self.n_bn), tf.float32), trainable=False,
                                        name="layerprint_bn_rows")
            self._rows = tf.Variable(tf.zeros((self.capacity, self.n_variables + 1), tf.float64),
                                     trainable=False, name="layerprint_checksum_rows")
            self._count = tf.Variable(0, dtype=tf.int64, trainable=False, name="layerprint_count")
            self._first_step = tf.Variable(1, dtype=tf.int64, trainable=False, name="layerprint_first_step")
            self._every = tf.Variable(1, dtype=tf.int64, trainable=False, name="layerprint_checksum_every")
        if self.checksums_in_step:
            self.checksum_seconds = reader.checksum_seconds()
        else:
            self.checksum_seconds = 0.0
            reader.read_checksums()  # compiled now, not at the fit's first checksum
        self.train_function = self._make_train_function()

    @staticmethod
    def supported(model: Any, reader: StateReader) -> bool:
        """Whether the train step of ``model`` can record itself: no distribution strategy, no XLA."""
        import tensorflow as tf

        return not tf.distribute.has_strategy() and not getattr(model, "jit_compile", False)

    def start(self, first_step: int, checksum_every: int) -> None:
        """Begin a fit: rows count from 0, for global steps from ``first_step`` on."""
        self._count.assign(0)
        self._first_step.assign(first_step)
        self._every.assign(checksum_every)
        self.drained = self.steps_run = 0

    def set_checksum_every(self, every: int) -> None:
        self._every.assign(every)

    def wait(self) -> None:
        """Block until the steps dispatched so far have run (reading the step counter waits for them)."""
        self._count.numpy()

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
            bn = bn_values_of(tf, [v.value for v in self.reader.bn_variables])
            self._bn_rows.scatter_nd_update(slot, tf.expand_dims(bn, 0))
        if not self.checksums_in_step:
            self._count.assign_add(1)
            return
        due = tf.logical_or(tf.equal(index, 0), tf.equal((self._first_step + index) % self._every, 0))
        variables = [v.value for v in self.reader.variables]
        checksums = tf.cond(due, lambda: tf.cast(checksums_of(tf, variables), tf.float64),
                            lambda: tf.zeros((self.n_variables,), tf.float64))
        row = tf.concat([checksums, tf.reshape(tf.cast(due, tf.float64), (1,))], 0)
        self._rows.scatter_nd_update(slot, tf.expand_dims(row, 0))
        self._count.assign_add(1)


class JaxTrainStepRecorder(_StepRecorder):
    """JAX: every step's BatchNorm statistics as an output of the compiled step, checksums between steps.

    ``train_function`` runs the model's own ``train_step`` (a custom one too) in one ``jax.jit`` with the
    writing of the BatchNorm moving statistics of the state it returns (flat, as ``StateReader.read``)
    into a ring buffer on the device: the ring and its step counter are passed through the step and
    donated with Keras's state, so that a step takes no transfer and no call from Python beyond Keras's
    own. ``drain`` brings the rows since the last drain to the host in one transfer. When a step's
    checksums are due (the fit's first step and global steps divisible by the cadence), the train
    function dispatches them on the state that step returned, before the next step, without waiting:
    one compiled call, also between the steps of a ``steps_per_execution`` block. No ``Callback.model``
    state sync (which copies every variable back) is needed either.

    The row of a step is the state it returned; a change a callback makes between two steps shows in the
    next step's row. The trainer's step is compiled at the first call, instead of Keras's own (which is
    then never compiled in that fit), once per model.

    When the recording step cannot be compiled (a custom ``train_step`` whose state is not Keras's), the
    model's own train function runs instead for the rest of the fit and ``drain`` raises the error: the
    user's training goes on, the callback reports the part once.

    Args:
        model: the compiled Keras model, its train function made (``fit`` does that before
            ``on_train_begin``).
        reader: the model's ``StateReader``.
        capacity_steps: rows kept on the device at most, in calls of the train function; the callback
            drains them more often than that.

    Attributes:
        checksums_in_step: True: the train function dispatches the checksums itself.
        checksum_seconds: the cost of one checksum call (dispatch to result, median of three).
    """

    backend = "jax"
    checksums_in_step = True

    def __init__(self, model: Any, reader: StateReader, capacity_steps: int = 64) -> None:
        import jax
        import jax.numpy as jnp

        super().__init__(model, reader)
        self.capacity = capacity_steps * self.steps_per_execution
        self._ring: Any = None  # (rows, count) on the device, passed through each step (``start`` makes it)
        self._checksums: collections.deque = collections.deque(maxlen=self.capacity)  # (index, device vector)
        self._count = 0
        self._first_step = 1
        self._every = 1
        self._failure: BaseException | None = None
        bn_at = jax_state_positions(model, reader.bn_variables)
        variables_at = jax_state_positions(model, reader.variables)
        step, capacity, n_bn = model.train_step, self.capacity, self.n_bn

        def recording_step(state: Any, ring: Any, data: Any) -> Any:
            logs, state = step(state, data)
            rows, count = ring
            if n_bn:
                bn = bn_values_of(jnp, [state[group][index] for group, index in bn_at])
                rows = jax.lax.dynamic_update_slice(rows, bn[None, :], (count % capacity, 0))
            return logs, state, (rows, count + 1)

        def checksums(trainable: Any, non_trainable: Any) -> Any:
            groups = (trainable, non_trainable)
            return checksums_of(jnp, [groups[group][index] for group, index in variables_at])

        self._step = jax.jit(recording_step, donate_argnums=(0, 1))
        self._checksum = jax.jit(checksums)
        self.checksum_seconds = self._time_checksums()
        self.train_function = self._train_function

    @staticmethod
    def supported(model: Any, reader: StateReader) -> bool:
        """Whether the train step of ``model`` can record itself: compiled (``jit_compile``, not
        ``run_eagerly``), no distribution, no Flax NNX, every recorded variable in the trainer's state."""
        import keras

        if not getattr(model, "jit_compile", False) or getattr(model, "run_eagerly", False):
            return False
        if keras.distribution.distribution() is not None or keras.config.is_nnx_enabled():
            return False
        return None not in jax_state_positions(model, reader.bn_variables + reader.variables)

    def start(self, first_step: int, checksum_every: int) -> None:
        """Begin a fit: rows count from 0, for global steps from ``first_step`` on."""
        import jax.numpy as jnp

        self._ring = (jnp.zeros((self.capacity, self.n_bn), jnp.float32), jnp.zeros((), jnp.int32))
        self._checksums.clear()
        self._count = 0
        self._first_step, self._every = first_step, checksum_every
        self.drained = self.steps_run = 0

    def set_checksum_every(self, every: int) -> None:
        self._every = every

    def wait(self) -> None:
        """Block until the steps dispatched so far have run, without bringing anything to the host."""
        import jax

        jax.block_until_ready(self._ring[1])

    def matches(self, model: Any, reader: StateReader) -> bool:
        """Whether this recorder still fits ``model`` and its recording step compiled."""
        return self._step is not None and super().matches(model, reader)

    def drain(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The rows recorded since the last drain, brought to the host together (rows older than
        ``capacity`` calls are gone). Every step has its own row, the last one's too.

        Returns:
            ``(steps, batchnorm, checksummed, checksums)``: the 0-based steps of the fit, the BatchNorm
            values (one row per step, as ``StateReader.read``), whether each step has checksums, and
            the checksums (int64) of those steps only.

        Raises:
            the error that kept the recording step from compiling (once; the fit went on without it).
        """
        import jax

        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        self.steps_run = self._count
        start = max(self.drained, self._count - self.capacity)
        indexes = np.arange(start, self._count)
        sums = [(index, row) for index, row in self._checksums if index >= start]
        self._checksums.clear()
        self.drained = self._count
        # The whole ring, as it is: a gather of the rows wanted would be compiled anew for each count.
        ring, host_sums = jax.device_get((self._ring[0], [row for _, row in sums]))
        batchnorm = ring[indexes % self.capacity]
        checksummed = np.isin(indexes, [index for index, _ in sums])
        checksums = np.array(host_sums, np.int64).reshape(-1, self.n_variables)  # in step order, as indexes
        return indexes, batchnorm, checksummed, checksums

    def _train_function(self, state: Any, iterator: Any) -> Any:
        """Keras's train function (``make_train_function``): a block of ``steps_per_execution`` steps."""
        logs, state = self._run_step(state, next(iterator))
        try:
            for _ in range(self.steps_per_execution - 1):
                logs, state = self._run_step(state, next(iterator))
        except StopIteration:
            pass
        return logs, state

    def _run_step(self, state: Any, data: Any) -> Any:
        if self._failure is not None or self._step is None:
            return self._base_step(state, data)
        try:
            logs, state, self._ring = self._step(state, self._ring, data)
        except Exception as error:  # noqa: BLE001 - the user's fit goes on with its own step (tracing failed)
            self._failure, self._step = error, None
            return self._base_step(state, data)
        index = self._count
        self._count += 1
        if index == 0 or (self._first_step + index) % self._every == 0:
            self._checksums.append((index, self._checksum(state[0], state[1])))
        return logs, state

    def _base_step(self, state: Any, data: Any) -> Any:
        """One step of the model's own train function."""
        return self.base_function(state, iter([data]))

    def _time_checksums(self) -> float:
        """Compile the checksum call now and time it (dispatch to result) on the variables' values."""
        trainable = [v.value for v in self._model.trainable_variables]
        non_trainable = [v.value for v in self._model.non_trainable_variables]
        self._checksum(trainable, non_trainable).block_until_ready()
        times = []
        for _ in range(3):
            started = time.perf_counter()
            self._checksum(trainable, non_trainable).block_until_ready()
            times.append(time.perf_counter() - started)
        return float(np.median(times))
