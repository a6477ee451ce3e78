"""What a backend's checksum kernel costs on this machine, measured once per process.

The checksums in a train step cannot be timed apart from the step; their cost is estimated from the
kernel's measured speed instead: ``words * seconds_per_word + variables * seconds_per_variable + calls *
seconds_per_call``, the three speeds from the kernel itself, run on one array of 16 words, on one of 2**20
words and on 32 of 16 words (the fastest of seven calls each, warm, the three in turn: noise only adds).
The first is what a call of the kernel costs by itself (its dispatch), which checksums computed inside the
train step do not pay (``calls`` is 0 there) and reads between steps do: it is taken off the other two.
Measured off the training thread, the first time a fit needs it; kept in ``CACHE.kernel_speeds``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

import numpy as np

from layerprint.cache import CACHE

BIG_WORDS = 1 << 20
SMALL_ARRAYS = 32
# What the kernel costs at most on a CPU core (seen: 0.7 ns a word, 4 us a variable on 2 cores): checksums
# below ``policy.ALWAYS_SECONDS`` by this bound need no measurement at all.
UPPER_SECONDS_PER_WORD = 4e-9
UPPER_SECONDS_PER_VARIABLE = 3e-5
UPPER_SECONDS_PER_CALL = 1e-3
# While measuring, the interpreter hands its lock over within 10 us instead of 5 ms: the training thread runs
# Python most of the time, and each kernel call, which takes the lock back on return, would otherwise wait
# up to 5 ms for it (seen: 140 us "a variable" on a 16-word variable).
MEASURING_SWITCH_INTERVAL = 1e-5


def kernel_speed(backend: str) -> tuple[float, float, float]:
    """``(seconds a word, seconds a variable, seconds a call)`` of ``backend``'s checksum kernel, measured once per process."""
    speed = CACHE.kernel_speeds.get(backend)
    if speed is None:
        prepare = _kernel(backend)
        interval = sys.getswitchinterval()
        sys.setswitchinterval(MEASURING_SWITCH_INTERVAL)
        try:
            # one array of 16 words: the call itself, which a step's checksums do not pay
            one, big, small = _fastest_seconds([prepare([16]), prepare([BIG_WORDS]), prepare([16] * SMALL_ARRAYS)])
        finally:
            sys.setswitchinterval(interval)
        per_variable = max(small - one, 0.0) / (SMALL_ARRAYS - 1)
        speed = CACHE.kernel_speeds[backend] = (max(big - one, 0.0) / BIG_WORDS, per_variable, one)
    return speed


def upper_bound(words: int, variables: int, calls: int) -> float:
    """Seconds one step's checksums cost at most, without a measurement."""
    return words * UPPER_SECONDS_PER_WORD + variables * UPPER_SECONDS_PER_VARIABLE + calls * UPPER_SECONDS_PER_CALL


def needs_measuring(backend: str, words: int, variables: int, calls: int) -> bool:
    """Whether the cadence of checksums of this size depends on the kernel's measured speed."""
    from layerprint.recording.policy import ALWAYS_SECONDS

    return backend not in CACHE.kernel_speeds and upper_bound(words, variables, calls) > ALWAYS_SECONDS


def estimate(backend: str, words: int, variables: int, calls: int) -> float | None:
    """Seconds one step's checksums cost, for ``words`` 32-bit words in ``variables`` variables read in
    ``calls`` calls of their own; None until ``kernel_speed`` has measured the backend, when the size needs
    it (it never measures here: this is called on the training thread)."""
    speed = CACHE.kernel_speeds.get(backend)
    if speed is None:
        return None if needs_measuring(backend, words, variables, calls) else upper_bound(words, variables, calls)
    per_word, per_variable, per_call = speed
    return words * per_word + variables * per_variable + calls * per_call


def _fastest_seconds(calls: list[Callable[[], Any]], rounds: int = 7) -> list[float]:
    """The fastest time of each call, over ``rounds`` rounds of all of them in turn (so that a slow spell of
    the machine falls on all alike)."""
    for call in calls:
        call()  # compiled here
    times = [[] for _ in calls]
    for _ in range(rounds):
        for call, seen in zip(calls, times):
            started = time.perf_counter()
            call()
            seen.append(time.perf_counter() - started)
    return [min(seen) for seen in times]


def _kernel(backend: str) -> Callable[[list[int]], Callable[[], Any]]:
    """A maker, for arrays of the given sizes, of one call of the backend's checksum kernel on them that
    returns when the result is on the host.

    On TensorFlow the kernel reads variables it captures, as the train step's row function does: a call
    with 32 arguments would time TensorFlow's handling of each argument in Python, which a step does not
    pay (and which a training thread holding the interpreter slows further)."""
    if backend == "tensorflow":
        import tensorflow as tf

        from layerprint.recording.checksum import checksums_tensorflow

        def prepare(sizes: list[int]) -> Callable[[], Any]:
            variables = [tf.Variable(tf.ones((n,), tf.float32), trainable=False) for n in sizes]
            compiled = tf.function(lambda: checksums_tensorflow([v.read_value() for v in variables]), autograph=False)
            return lambda: compiled().numpy()

        return prepare
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        from layerprint.recording.checksum import checksums_jax

        compiled = jax.jit(checksums_jax)

        def prepare(sizes: list[int]) -> Callable[[], Any]:
            arrays = [jnp.ones((n,), jnp.float32) for n in sizes]
            return lambda: np.asarray(compiled(arrays))

        return prepare
    import torch

    from layerprint.recording.checksum import checksums_torch

    def prepare(sizes: list[int]) -> Callable[[], Any]:
        arrays = [torch.ones(n) for n in sizes]
        return lambda: checksums_torch(arrays).cpu().numpy()

    return prepare
