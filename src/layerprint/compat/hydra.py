"""Hydra's joblib launcher and joblib's loky, as layerprint reaches into them. Checked against
hydra-joblib-launcher 1.2.0 and joblib 1.5.

- ``hydra_plugins.hydra_joblib_launcher._core.process_joblib_cfg``: how the launcher turns its config into
  the arguments of ``joblib.Parallel`` (layerprint starts the same workers early, with the same arguments,
  so that the launcher finds them warm);
- ``joblib.externals.loky.reusable_executor._executor``: the one executor loky reuses; there is no public
  getter, and stopping it is the only way to stop its idle workers before the interpreter's exit.
"""

from __future__ import annotations

from typing import Any


def joblib_parallel_arguments(launcher_config: dict[str, Any]) -> dict[str, Any]:
    """The arguments the joblib launcher gives ``joblib.Parallel`` for its config (``_target_`` left out)."""
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg

    arguments = {k: v for k, v in launcher_config.items() if k != "_target_"}
    arguments["backend"] = "loky"  # as the launcher does
    process_joblib_cfg(arguments)
    return arguments


def reusable_executor() -> Any:
    """The executor loky reuses across ``joblib.Parallel`` calls, or None when none was started."""
    from joblib.externals.loky import reusable_executor as module

    return getattr(module, "_executor", None)
