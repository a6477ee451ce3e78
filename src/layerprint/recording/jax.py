"""JAX: the train step records the state every step, inside the model's own ``jax.jit``-compiled step.

``train_function`` runs the model's ``train_step`` (a custom one too) in one ``jax.jit`` together with the
writing of the row of the state it was given (the state the previous step left, with whatever a callback
changed between the two) into a ring on the device: the flat BatchNorm statistics and, when due, every
variable's checksum. The ring and its counter go through the step, donated with Keras's state, so a step
makes no extra call and no transfer. There are two compiled steps, with checksums and without, picked per
call from the cadence (no branch inside the step). ``drain`` brings the ring to the host in one transfer.
The trained state lives in the trainer between steps (``model._jax_state``): no ``Callback.model`` sync
(which copies every variable back) is needed.

When the recording step cannot be compiled (a custom ``train_step`` whose state is not Keras's), the model's
own train function trains on for the rest of the fit and ``drain`` raises the error once. Not used with
Flax NNX, a distribution, or ``jit_compile=False``: there ``read`` dispatches a ``jax.jit`` read of the
trainer's state between steps.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from layerprint.compat.keras import jax_trainer_state, steps_per_execution
from layerprint.recording.checksum import checksums_jax
from layerprint.recording.device import MISSING_CHECKSUM, Device, Rows

CAPACITY_CALLS = 64
# The parts of the JAX trainer's state that hold model variables, in the order of its state tuple.
STATE_GROUPS = ("trainable_variables", "non_trainable_variables")


def state_positions(model: Any, variables: list[Any]) -> list[tuple[int, int] | None]:
    """Where each of ``variables`` sits in the JAX trainer's state: ``(group, index)``, the group's position in
    ``STATE_GROUPS`` (and in the state tuple a train step takes and returns), or None when in neither."""
    groups = [{id(v): i for i, v in enumerate(model.trainable_variables)},
              {id(v): i for i, v in enumerate(model.non_trainable_variables)}]
    positions: list[tuple[int, int] | None] = []
    for variable in variables:
        place = None
        for group, members in enumerate(groups):
            if id(variable) in members:
                place = (group, members[id(variable)])
                break
        positions.append(place)
    return positions


class JaxDevice(Device):
    """The state of a model trained by JAX (module doc).

    Args:
        model: the compiled Keras model, its train function made.
        variables: the variables to checksum.
        batchnorm_layers: its BatchNormalization layers.
        in_step: let the train step record itself when the model allows it.
    """

    backend = "jax"

    def __init__(self, model: Any, variables: list[Any], batchnorm_layers: list[tuple[str, Any]], in_step: bool) -> None:
        import jax

        super().__init__(model, variables, batchnorm_layers)
        self.in_step_asked = in_step
        self._bound = self._train_function  # one bound method: what the model holds for the fit
        self.block = steps_per_execution(model)
        self.base_function = getattr(model, "train_function", None)
        self._bn_at = state_positions(model, self.bn_variables)
        self._at = state_positions(model, variables)
        self.records_in_step = in_step and self.base_function is not None and self._supported()
        self.capacity = CAPACITY_CALLS * self.block
        self._ring: Any = None
        self._count = 0
        self._drained = 0
        self._failure: BaseException | None = None
        self._failure_reported = False
        self._pending: list[tuple[int, Any, Any]] = []
        self._reads: dict[bool, Any] = {}
        if self.records_in_step:
            self._step = jax.jit(self._recording_step, donate_argnums=(0, 1), static_argnames=("with_checksums",))
        else:  # compiled now, with the fit's start, not inside a step's time
            jax.block_until_ready(self._read_function(True)(self._arrays(self.bn_variables, self._bn_at),
                                                            self._arrays(self.variables, self._at)))

    def _supported(self) -> bool:
        import keras

        model = self.model
        if not getattr(model, "jit_compile", False) or getattr(model, "run_eagerly", False):
            return False
        if keras.distribution.distribution() is not None or keras.config.is_nnx_enabled():
            return False
        return None not in self._bn_at + self._at

    # The fit.
    def train_function(self) -> Callable[..., Any] | None:
        return self._bound if self.records_in_step else None

    def start(self, first_step: int, checksum_every: int) -> None:
        import jax.numpy as jnp

        super().start(first_step, checksum_every)
        self._ring = (jnp.zeros((self.capacity, self.n_bn), jnp.float32),
                      jnp.zeros((self.capacity, len(self.variables)), jnp.uint32),
                      jnp.zeros((self.capacity,), jnp.bool_), jnp.zeros((), jnp.int32))
        self._count = self._drained = 0
        self._pending = []

    def restore(self) -> None:
        if self.base_function is not None and getattr(self.model, "train_function", None) is self._bound:
            self.model.train_function = self.base_function

    def matches(self, model: Any, variable_ids: list[int]) -> bool:
        """Whether this device still fits ``model`` and its recording step compiled (a later fit reuses it)."""
        return (self._failure is None and self.base_function is getattr(model, "train_function", None)
                and self.variable_ids == variable_ids and self.block == steps_per_execution(model))

    def _recording_step(self, state: Any, ring: Any, data: Any, with_checksums: bool) -> Any:
        import jax
        import jax.numpy as jnp

        rows, sums, taken, count = ring
        slot = (count - 1) % self.capacity  # the previous step's row; at the fit's first step, never drained
        if self.n_bn:
            bn = jnp.concatenate([jnp.ravel(state[g][i]).astype(jnp.float32) for g, i in self._bn_at])
            rows = jax.lax.dynamic_update_slice(rows, bn[None, :], (slot, 0))
        if with_checksums:
            sums = jax.lax.dynamic_update_slice(sums, checksums_jax([state[g][i] for g, i in self._at])[None, :], (slot, 0))
        taken = taken.at[slot].set(with_checksums)
        logs, state = self.model.train_step(state, data)
        return logs, state, (rows, sums, taken, count + 1)

    def _train_function(self, state: Any, iterator: Any) -> Any:
        """Keras's train function (``make_train_function``): a block of ``steps_per_execution`` steps."""
        logs, state = self._run_step(state, next(iterator))
        try:
            for _ in range(self.block - 1):
                logs, state = self._run_step(state, next(iterator))
        except StopIteration:
            pass
        return logs, state

    def _run_step(self, state: Any, data: Any) -> Any:
        if self._failure is not None:
            return self.base_function(state, iter([data]))
        row = self.first_step + self._count - 1  # the global step whose state this step is given
        with_checksums = self.checksum_every == 1 or (row >= self.first_step and self.due(row))
        try:
            logs, state, self._ring = self._step(state, self._ring, data, with_checksums=with_checksums)
        except Exception as error:  # noqa: BLE001 - the user's fit goes on with its own step (tracing failed)
            self._failure = error
            return self.base_function(state, iter([data]))
        self._count += 1
        return logs, state

    # Reading.
    def read(self, step: int, with_checksums: bool) -> None:
        function = self._read_function(with_checksums)
        batchnorm, checksums = function(self._arrays(self.bn_variables, self._bn_at), self._arrays(self.variables, self._at))
        self._pending.append((step, batchnorm, checksums))

    def _read_function(self, with_checksums: bool) -> Any:
        """The compiled read of the state (``with_checksums`` or not)."""
        import jax
        import jax.numpy as jnp

        function = self._reads.get(with_checksums)
        if function is None:
            def state(bn: list[Any], arrays: list[Any]) -> Any:
                flat = jnp.concatenate([jnp.ravel(a).astype(jnp.float32) for a in bn]) if bn else jnp.zeros((0,))
                return flat, (checksums_jax(arrays) if with_checksums else None)

            function = self._reads[with_checksums] = jax.jit(state)
        return function

    def _arrays(self, variables: list[Any], places: list[tuple[int, int] | None]) -> list[Any]:
        """The current arrays of ``variables``: from the trainer's state during a step loop, else their own."""
        state = jax_trainer_state(self.model)
        out = []
        for variable, place in zip(variables, places):
            group = state.get(STATE_GROUPS[place[0]]) if state and place else None
            out.append(group[place[1]] if group is not None else variable.value)
        return out

    def wait(self) -> None:
        import jax

        if self._ring is not None:
            jax.block_until_ready(self._ring[3])
        if self._pending:
            jax.block_until_ready([entry[1:] for entry in self._pending])

    def drain(self) -> Rows:
        import jax

        if self._failure is not None and not self._failure_reported:
            self._failure_reported = True
            raise self._failure
        if not self.records_in_step:
            pending, self._pending = self._pending, []
            if not pending:
                return Rows.empty(self.n_bn, len(self.variables))
            hosted = jax.device_get([(bn, sums) for _, bn, sums in pending])
            checksums = np.full((len(pending), len(self.variables)), MISSING_CHECKSUM, np.int64)
            for i, (_, sums) in enumerate(hosted):
                if sums is not None:
                    checksums[i] = np.asarray(sums).astype(np.int64)
            return Rows(np.asarray([step for step, _, _ in pending], np.int64),
                        np.stack([np.asarray(bn, np.float32) for bn, _ in hosted]), checksums)
        if self._failure is not None:
            return Rows.empty(self.n_bn, len(self.variables))
        written = self._count - 1
        indexes = np.arange(max(self._drained, written - self.capacity, 0), max(written, 0))
        self._drained = max(self._drained, written)
        rows, sums, taken, _ = jax.device_get(self._ring)  # the whole ring: a gather would compile per count
        slots = indexes % self.capacity
        checksums = np.where(taken[slots][:, None], sums[slots].astype(np.int64), MISSING_CHECKSUM)
        return Rows(self.first_step + indexes, np.asarray(rows[slots], np.float32), checksums)

    def snapshot(self, final: bool = False) -> list[Any]:
        """Every variable's value, brought to the host now in one batched transfer (JAX donates the trainer's
        buffers to the next step, so they cannot be kept on the device without a compiled copy)."""
        import jax

        return list(jax.device_get(self._arrays(self.variables, self._at)))

    def host(self, snapshot: list[Any], final: bool = False) -> list[np.ndarray]:
        return [np.asarray(value) for value in snapshot]
