"""How often the flight recorder checksums and publishes, under the callback's overhead budget.

Pure arithmetic on measured costs, so that it is tested without a model (``tests/test_parts.py``).

- **Checksums**: every step (cadence 1), unless their measured cost per step is more than
  ``CHECKSUM_SHARE`` of the budget and more than ``ALWAYS_SECONDS``; then the smallest power of two that
  brings it under (two runs on power-of-two cadences always share their checksummed steps), unless what
  the rise saves over the fit's remaining steps is less than what it costs once (where the checksums are
  in the train step, tracing or compiling the train function without them: 18 s for a fresh MobileNetV2
  on two CPU cores). Chosen once per fit, after a few steps, and said on the run
  (``layerprint.checksum_every``).
- **Publishing** MLflow metrics: every step, unless what the sink costs per point (its CPU, taken from the
  cores training uses), times the points per step, does not fit in what is left of the budget; then the
  smallest power of two that fits, the logs and the BatchNorm summaries each in half of it.
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


def publish_cadences(seconds_per_point: float, log_points: int, bn_points: int, fit_step_seconds: float,
                     pace_seconds: float, spent_share: float, budget: float) -> tuple[int, int]:
    """The publishing cadences of step metrics: the logs' (``train/``) and the BatchNorm summaries' (``bn/``).

    What is left of the budget after the callback's own time is shared: half for the logs, half for the
    summaries (all of it for the logs of a model without BatchNorm). The logs, a few points a step, are
    weighed against a step of the fit on average, its first step's trace shared by all, so that a short
    fit's loss curve has every step; the summaries (ResNet50: 424 a step) against the pace of the steps
    alone, so that what they cost never grows with a long trace.

    Args:
        seconds_per_point: what the sink spends (CPU) per metric point sent.
        log_points: the ``train/`` points of one step.
        bn_points: the ``bn/`` points of one step.
        fit_step_seconds: what a step of the fit takes on average, its trace included.
        pace_seconds: what a step takes once traced.
        spent_share: the share of the fit's time the callback spent so far (recording, filing, publishing).
        budget: the share of the fit's time the callback may add.

    Returns:
        ``(logs, summaries)``, powers of two, the second a multiple of the first (``MAX_PUBLISH_EVERY`` when
        the budget is spent already).
    """
    available = budget - spent_share
    if available <= 0 or fit_step_seconds <= 0 or pace_seconds <= 0:
        return MAX_PUBLISH_EVERY, MAX_PUBLISH_EVERY
    logs_share = available / 2 if bn_points else available
    logs = _cadence(log_points * seconds_per_point / fit_step_seconds, logs_share)
    summaries = _cadence(bn_points * seconds_per_point / pace_seconds, available - logs_share)
    return logs, max(logs, summaries)


def _cadence(share_every_step: float, allowed: float) -> int:
    """The smallest power of two that brings a share of ``share_every_step`` at cadence 1 under ``allowed``."""
    every = 1
    while share_every_step / every > allowed and every < MAX_PUBLISH_EVERY:
        every *= 2
    return every
