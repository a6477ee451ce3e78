"""TensorFlow: the train step records the state every step, with checksums or without, chosen per call.

``train_function`` is the model's own train function made anew by Keras (``make_train_function``) around a
``train_step`` that first writes the row of the state the previous step left into ring buffers on the
device (``tf.Variable``), then runs the model's own ``train_step`` (a custom one too). There are two such
functions, one whose rows have every variable's checksum and one without (the checksums' ops are not in
the step, not skipped by a branch, which would still cost every step), each traced at its first call;
the Python function Keras calls picks one per call from the cadence. Inside a ``steps_per_execution``
block every step writes its row; a block with a due step takes the checksums throughout.

Only for models whose variables exist before training, without a distribution strategy and without XLA
(``jit_compile``): elsewhere ``read`` dispatches one traced read per step between steps. The model's own
train function is given back at the fit's end (``restore``), even when recording failed.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from layerprint.cache import CACHE
from layerprint.compat.keras import steps_per_execution, train_step_replaced
from layerprint.recording.checksum import checksums_tensorflow
from layerprint.recording.device import MISSING_CHECKSUM, Device, Rows

CAPACITY_CALLS = 64  # rows kept on the device, in calls of the train function; the recorder drains sooner


def write_row(bn_values: list[Any], values: list[Any] | None, n_variables: int, ring: tuple[Any, Any, Any],
              capacity: int) -> None:
    """The ops that write a step's row, traced into the recording train step (without checksums) or into the
    row kernel it calls (``row_kernel``).

    Reads the count of rows written, writes at its slot the BatchNorm values as one float32 vector and the
    checksums of ``values`` as float64 (exact for 32-bit values) then a last column of 1 (without
    ``values``, that column alone, 0), and counts the row.

    Args:
        bn_values: the BatchNorm variables' values.
        values: every variable's value, in the record's order, or None: no checksums.
        n_variables: how many variables the record has.
        ring: the ring buffers on the device, as ``tf.Variable``: ``bn_rows``, ``sums``, ``count``.
        capacity: the ring's rows.
    """
    import tensorflow as tf

    bn_rows, sums, count = ring
    slot = tf.reshape(tf.math.floormod(count.read_value() - 1, capacity), (1, 1))  # the previous step's
    if bn_values:  # the raw values: a summary on the device would cost more ops than the copy
        bn_rows.scatter_nd_update(slot, tf.concat([tf.cast(tf.reshape(v, [-1]), tf.float32) for v in bn_values], 0)[None])
    if values is not None:
        checksums = tf.cast(checksums_tensorflow([tf.convert_to_tensor(v) for v in values]), tf.float64)
        sums.scatter_nd_update(slot, tf.concat([checksums, tf.ones((1,), tf.float64)], 0)[None])
    else:
        sums.scatter_nd_update(tf.concat([slot, [[n_variables]]], 1), tf.zeros((1,), tf.float64))
    count.assign_add(1)


def row_kernel(bn_variables: list[Any], variables: list[Any], capacity: int) -> Any:
    """The traced function that writes a step's row with its checksums (``write_row``), shared by every model
    whose variables have these shapes and dtypes (``CACHE.row_kernels``; TensorFlow traces a function given
    variables by their shapes and dtypes, not by which they are). It takes the BatchNorm variables, the
    variables, then the ring. The calling step's graph holds one call: a loop of fresh models of one
    architecture traces the checksums' ops once (traced into each step instead, they grew such a loop's
    process by 10.5 % more than the loop without the callback, against 10 % allowed), at the price of the
    call's own cost in every step."""
    import tensorflow as tf

    key = ("tensorflow", capacity, tuple((tuple(v.shape), str(v.dtype)) for v in bn_variables),
           tuple((tuple(v.shape), str(v.dtype)) for v in variables))

    def row(bn: list[Any], values: list[Any], bn_rows: Any, sums: Any, count: Any) -> None:
        write_row(bn, values, len(values), (bn_rows, sums, count), capacity)

    return CACHE.row_kernel(key, lambda: tf.function(row, autograph=False))


class TensorFlowDevice(Device):
    """The state of a model trained by TensorFlow (module doc).

    Args:
        model: the compiled Keras model, its train function made (``fit`` does that first).
        variables: the variables to checksum.
        batchnorm_layers: its BatchNormalization layers.
        in_step: let the train step record itself when the model allows it.
    """

    backend = "tensorflow"

    def __init__(self, model: Any, variables: list[Any], batchnorm_layers: list[tuple[str, Any]], in_step: bool) -> None:
        import tensorflow as tf

        super().__init__(model, variables, batchnorm_layers)
        self.in_step_asked = in_step
        self._bound = self._train_function  # one bound method: what the model holds for the fit
        self.block = steps_per_execution(model)
        self.base_function = getattr(model, "train_function", None)
        self.records_in_step = (in_step and self.base_function is not None and not tf.distribute.has_strategy()
                                and not getattr(model, "jit_compile", False))
        self._functions: dict[bool, Any] = {}
        self._calls = 0
        self._drained = 0  # rows (steps of the fit) brought to the host
        self._pending: list[tuple[int, Any, Any]] = []  # between steps: (step, batchnorm, checksums)
        self._reads: dict[bool, Any] = {}
        if self.records_in_step:
            self.capacity = CAPACITY_CALLS * self.block
            with tf.init_scope():
                self._bn_rows = tf.Variable(tf.zeros((self.capacity, self.n_bn), tf.float32), trainable=False,
                                            name="layerprint_bn_rows")
                # checksums as float64 (exact for 32-bit values), then a last column: 1 where taken
                self._sums = tf.Variable(tf.zeros((self.capacity, len(variables) + 1), tf.float64), trainable=False,
                                         name="layerprint_checksum_rows")
                self._count = tf.Variable(0, dtype=tf.int64, trainable=False, name="layerprint_count")
        else:
            self._read_function(True)()  # traced and run now, with the fit's start, not inside a step's time

    # The fit.
    def train_function(self) -> Callable[..., Any] | None:
        return self._bound if self.records_in_step else None

    def start(self, first_step: int, checksum_every: int) -> None:
        super().start(first_step, checksum_every)
        self._calls = self._drained = 0
        self._pending = []
        if self.records_in_step:
            self._count.assign(0)

    def restore(self) -> None:
        if self.base_function is not None and getattr(self.model, "train_function", None) is self._bound:
            self.model.train_function = self.base_function

    def matches(self, model: Any, variable_ids: list[int]) -> bool:
        """Whether this device still fits ``model`` (its train function, variables and block unchanged), so
        that a later fit reuses its traced functions."""
        return (self.base_function is getattr(model, "train_function", None) and self.variable_ids == variable_ids
                and self.block == steps_per_execution(model))

    def _train_function(self, iterator: Any) -> Any:
        """What Keras calls for every block of steps: the recording function with checksums when a row of
        this block is due (the rows of the state before each of its steps), else the one without."""
        first_row = self.first_step + self._calls * self.block - 1  # the global step of the block's first row
        with_checksums = self.checksum_every == 1 or any(
            self.due(step) for step in range(max(first_row, self.first_step), first_row + self.block))
        self._calls += 1
        function = self._functions.get(with_checksums)
        if function is None:
            function = self._functions[with_checksums] = self._make(with_checksums)
        return function(iterator)

    def _make(self, with_checksums: bool) -> Any:
        """Keras's own ``make_train_function`` around a recording ``train_step``; the model keeps its own."""
        model = self.model
        step = model.train_step

        import tensorflow as tf

        write_row = self._row_writer(with_checksums)

        def recording_step(data: Any) -> Any:
            write_row()
            return step(data)

        with train_step_replaced(model, recording_step):
            model.make_train_function(force=True)
            function = model.train_function
        return function

    def _row_writer(self, with_checksums: bool) -> Callable[[], None]:
        """What the recording step calls first: the row of the state the previous step left, written into the
        ring (at the fit's first step, a row of the state before it, in the ring's last slot until a real one
        replaces it: it is never drained): with checksums by the row kernel traced once per variable signature
        in the process (``row_kernel``); without, by ops traced into the step, which read no other variable (a
        CNN step 0.25-0.3 ms less than the kernel's call, paired, ``benchmarks/step_cost.py``)."""
        bn_variables, variables, ring = self.bn_variables, self.variables, (self._bn_rows, self._sums, self._count)
        capacity = self.capacity
        if not with_checksums:
            return lambda: write_row([v.value for v in bn_variables], None, len(variables), ring, capacity)
        kernel = row_kernel(bn_variables, variables, capacity)

        def write() -> None:
            kernel([v.value for v in bn_variables], [v.value for v in variables], *ring)

        return write

    # Reading.
    def read(self, step: int, with_checksums: bool) -> None:
        batchnorm, checksums = self._read_function(with_checksums)()
        self._pending.append((step, batchnorm, checksums if with_checksums else None))

    def _read_function(self, with_checksums: bool) -> Any:
        """The traced read of the state (``with_checksums`` or not), traced at its first use."""
        import tensorflow as tf

        function = self._reads.get(with_checksums)
        if function is None:
            bn_refs, refs = [v.value for v in self.bn_variables], [v.value for v in self.variables]

            def state() -> Any:
                bn = (tf.concat([tf.cast(tf.reshape(r, [-1]), tf.float32) for r in bn_refs], 0) if bn_refs
                      else tf.zeros((0,), tf.float32))
                return bn, (checksums_tensorflow(refs) if with_checksums else tf.zeros((0,), tf.uint32))

            # the traced graph itself: calling it skips tf.function's per-call dispatch (about 60 us)
            function = self._reads[with_checksums] = tf.function(state, autograph=False).get_concrete_function()
        return function

    def drain(self) -> Rows:
        if not self.records_in_step:
            pending, self._pending = self._pending, []
            rows = Rows.empty(self.n_bn, len(self.variables))
            if not pending:
                return rows
            checksums = np.full((len(pending), len(self.variables)), MISSING_CHECKSUM, np.int64)
            for i, (_, _, sums) in enumerate(pending):
                if sums is not None:
                    checksums[i] = np.asarray(sums).astype(np.int64)
            return Rows(np.asarray([step for step, _, _ in pending], np.int64),
                        np.stack([np.asarray(bn) for _, bn, _ in pending]), checksums)
        import tensorflow as tf

        written = int(self._count.numpy()) - 1  # rows exist for the steps before the last one
        indexes = np.arange(max(self._drained, written - self.capacity, 0), max(written, 0))
        self._drained = max(self._drained, written)
        slots = indexes % self.capacity
        # only the rows wanted leave the device (one gather each): ResNet50's BatchNorm ring is 13.6 MB, whose
        # copy took 13-25 ms on the training thread at every drain, against 1-4 ms for a drain's rows
        batchnorm = tf.gather(self._bn_rows, slots).numpy() if self.n_bn else np.zeros((len(slots), 0), np.float32)
        sums = tf.gather(self._sums, slots).numpy()
        checksums = np.where(sums[:, -1:] > 0, sums[:, :-1], MISSING_CHECKSUM).astype(np.int64)
        return Rows(self.first_step + indexes, batchnorm, checksums)

    def snapshot(self, final: bool = False) -> list[Any]:
        """Every variable's value, read eagerly (a read is never changed in place by a later assignment):
        about 0.1 ms a variable, and no traced function to pay for."""
        import tensorflow as tf

        return [tf.convert_to_tensor(v.value) for v in self.variables]

    def host(self, snapshot: list[Any], final: bool = False) -> list[np.ndarray]:
        """The tensors' own memory, ``final`` or not (no copy: 0.5 ms instead of 25-250 ms for ResNet50).
        TensorFlow copies a variable before it assigns to it while a read of it is alive, so a view is exact.
        A copy here would come on top of that one, not instead of it: the snapshot lives until it is hosted,
        and the fit's first snapshot is hosted after the first step (``fit.session``), an epoch's while the
        next epoch's first step runs (for ResNet50 that copy cost 60-180 ms of CPU beside training)."""
        return [np.asarray(value) for value in snapshot]
