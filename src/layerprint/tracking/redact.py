"""Keeping credentials out of everything layerprint prints, logs, stores or spools."""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from typing import Iterator

# "scheme://user:password@", also as Hydra logs overrides ("http\://user\:password@").
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*\\?://)[^/\s@'\"]+@")
CREDENTIAL_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME")


def redact(text: str) -> str:
    """``text`` with credentials removed: the ``user:password@`` of every URI in it, and the values of
    ``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN`` and ``MLFLOW_TRACKING_USERNAME`` (4 or
    more characters) replaced by ``***``. Used on everything layerprint prints, logs or spools."""
    clean = _USERINFO.sub(r"\g<scheme>", text)
    for name in CREDENTIAL_ENV:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            clean = clean.replace(secret, "***")
    return clean


def strip_credentials(uri: str) -> str:
    """The URI without ``user:password@`` and without credential values (safe to print, log and store)."""
    return redact(uri)


@contextmanager
def no_url_print_with_credentials(uri: str) -> Iterator[None]:
    """MLflow prints "View run ... at: <tracking URI>/#/..." when a run ends; with ``user:password@``
    in the URI that line would show the password, so MLflow's print is turned off for that call."""
    if strip_credentials(uri) == uri:
        yield
        return
    previous = os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)
        else:
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = previous


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record through ``redact`` (Hydra's console logs echo the
    overrides, which may hold a tracking URI with credentials; see ``conf/train.yaml``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True
