"""Errors a user can cause. Each message is one sentence naming the bad value and what is allowed."""


class LayerprintError(Exception):
    """Base class: the command line prints the message as one line and exits non-zero."""


class ConfigError(LayerprintError):
    """A config value or override is not allowed."""


class DataError(LayerprintError):
    """A data file is missing, unreadable or shaped wrongly for the chosen layer."""


class DeviceError(LayerprintError):
    """The requested device is not available."""


class TrackingError(LayerprintError):
    """The tracking store cannot be used (bad URI, missing run or experiment)."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
