"""How often the flight recorder checksums and publishes, under the callback's overhead budget.

Pure arithmetic on measured costs, so that it is tested without a model (``tests/test_parts.py``).

- **Checksums**: every step (cadence 1), unless their measured cost per step is more than
  ``CHECKSUM_SHARE`` of the budget and more than ``ALWAYS_SECONDS``; then the smallest power of two that
  brings it under (two runs on power-of-two cadences always share their checksummed steps), unless what
  the rise saves over the fit's remaining steps is less than what it costs once (where the checksums are
  in the train step, tracing or compiling the train function without them: 18 s for a fresh MobileNetV2
  on two CPU cores). Chosen once per fit, after a few steps, and said on the run
  (``layerprint.checksum_every``).
- **Publishing** MLflow metrics: every step, unless what the sink costs per point, times the points per
  step, does not fit in what is left of the budget; then the smallest power of two that fits.
"""

from __future__ import annotations

CHECKSUM_SHARE = 0.75  # of the budget, at most, for the checksums; the rest for recording and publishing
ALWAYS_SECONDS = 1e-4  # checksums that cost less a step are always taken: no user notices 0.1 ms
MAX_CHECKSUM_EVERY = 2**16
MAX_PUBLISH_EVERY = 2**20


def checksum_every(cost_seconds: float, step_seconds: float, budget: float, steps_left: int | None = None,
                   switch_seconds: float = 0.0) -> int:
    """The checksum cadence for checksums costing ``cost_seconds`` a step they are taken, in steps of
    ``step_seconds``.

    Args:
        cost_seconds: what one step's checksums cost (measured or estimated).
        step_seconds: what one training step takes.
        budget: the share of the fit's time the callback may add.
        steps_left: the steps the fit has still to run, when known.
        switch_seconds: what a rise costs once (where the checksums are in the train step, the trace or
            compile of the train function without them).

    Returns:
        A power of two; 1 when a rise would save less over ``steps_left`` than ``switch_seconds``.
    """
    every = 1
    if step_seconds <= 0 or cost_seconds <= ALWAYS_SECONDS:
        return every
    while cost_seconds / (every * step_seconds) > CHECKSUM_SHARE * budget and every < MAX_CHECKSUM_EVERY:
        every *= 2
    if every > 1 and steps_left is not None and cost_seconds * (1 - 1 / every) * steps_left < switch_seconds:
        return 1
    return every


def publish_every(seconds_per_point: float, points_per_step: int, steps: int, elapsed: float, spent: float,
                  budget: float) -> int:
    """The publishing cadence of step metrics.

    Args:
        seconds_per_point: what the sink spends per metric point sent.
        points_per_step: the points one published step carries.
        steps: the steps of the fit so far.
        elapsed: seconds of the fit so far.
        spent: seconds the callback spent so far (recording, filing, publishing).
        budget: the share of the fit's time the callback may add.

    Returns:
        A power of two (``MAX_PUBLISH_EVERY`` when the budget is spent already).
    """
    available = budget - spent / elapsed
    if available <= 0:
        return MAX_PUBLISH_EVERY
    publishing = points_per_step * seconds_per_point * steps / elapsed  # the share at cadence 1
    every = 1
    while publishing / every > available and every < MAX_PUBLISH_EVERY:
        every *= 2
    return every
