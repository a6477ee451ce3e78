"""Ray, as layerprint reaches into it. Checked against Ray 2.60.

- ``ray._private.worker``'s logger: Ray warns there, from any thread but the main one, that it could not set
  its SIGTERM handler; layerprint sets that handler itself and silences the warning by its logger's name.
"""

from __future__ import annotations

import logging

WORKER_LOGGER = "ray._private.worker"


def quiet_sigterm_warning() -> None:
    """Keep Ray's warning that it could not set its SIGTERM handler (outside the main thread) off the terminal."""
    logging.getLogger(WORKER_LOGGER).addFilter(lambda record: "SIGTERM handler is not set" not in record.getMessage())
