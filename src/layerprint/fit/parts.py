"""The parts of the callback's work: a part that raises is reported once and skipped from then on; the fit
goes on. Only ``KeyboardInterrupt`` (and other ``BaseException``) gets through, and, with ``strict``, every
error (for tests)."""

from __future__ import annotations

import logging
from typing import Any, Callable

from layerprint.errors import first_line
from layerprint.tracking.redact import redact

logger = logging.getLogger("layerprint")

RUN = "run"
FINGERPRINTS = "fingerprints"
SHARING = "sharing"
BATCHNORM = "batchnorm"
DRIFT = "drift"
PROBE = "probe"
ARTIFACTS = "artifacts"
SINK = "sink"  # sending points
TAGS = "tags"
STEPS = "steps"  # filing each step's logs in the flight record
RECORDER = "recorder"  # the state of each step on the device
FINISH = "finish"  # the end of a fit, off the training thread
VALUES = "values"  # reading every variable's value (for fingerprints, drift, BatchNorm, weights)
CALIBRATION = "calibration"  # measuring the checksum kernel's speed (once per process)


class Parts:
    """Guards the parts of one fit.

    Args:
        strict: let errors through instead (for tests).

    Attributes:
        broken: the parts that raised.
        first_error: the first error, one line (``part: Type: message``), credentials removed.
        on_first_error: called with ``first_error`` once (the run's ``layerprint.callback_error`` tag).
    """

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.broken: set[str] = set()
        self.first_error: str | None = None
        self.on_first_error: Callable[[str], None] | None = None

    def ok(self, part: str) -> bool:
        return part not in self.broken

    def guard(self, part: str, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)``, or None when it raises (reported once; the part is skipped from then on)."""
        if part in self.broken:
            return None
        try:
            return function(*args)
        except Exception as error:  # noqa: BLE001 - telemetry never breaks training
            if self.strict:
                raise
            self.report(part, error)
            return None

    def report(self, part: str, error: BaseException) -> None:
        """One warning; the first error is also tagged on the run."""
        self.broken.add(part)
        message = redact(f"{part}: {type(error).__name__}: {first_line(error)}")[:500]
        logger.warning("layerprint: %s failed, training goes on without it (%s)", part, message)
        if self.first_error is None:
            self.first_error = message
            if self.on_first_error is not None:
                self.on_first_error(message)
