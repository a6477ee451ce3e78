"""The runner's Hydra config: composing it, and checking a command line's overrides before Hydra runs.

``check_overrides`` composes the config for every value of every override, as Hydra will, so that a
mistake is one line naming the bad override and what is allowed, before any job or run starts.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from layerprint.errors import ConfigError, first_line
from layerprint.runner.schema import register_configs, validate

CONFIG_MODULE = "layerprint.conf"
CONFIG_NAME = "train"
GROUPS = ("variant", "layer", "data", "trainer", "tracking", "experiment")


def compose_config(overrides: list[str], return_hydra_config: bool = False) -> Any:
    """The runner's config composed from ``overrides``, outside any Hydra app (Hydra's compose API).

    Args:
        overrides: Hydra overrides such as ``["variant=shared", "layer=lstm"]``.
        return_hydra_config: also compose the ``hydra`` node (checks ``hydra/...`` group options).

    Returns:
        The composed ``DictConfig``.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(version_base="1.3", config_module=CONFIG_MODULE):
            return compose(config_name=CONFIG_NAME, overrides=overrides, return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()


def check_overrides(argv: list[str]) -> Any:
    """Compose the config for every value of every override, as Hydra will, and validate it.

    Args:
        argv: the command-line arguments after the program name.

    Returns:
        The config composed from the command line with the first value of every sweep.

    Raises:
        LayerprintError: one line naming the bad override and what is allowed.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    candidates = [arg for arg in argv if not arg.startswith("-") and "=" in arg]
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except HydraException as error:
        raise ConfigError(f"cannot parse overrides: {first_line(error)}") from None
    plain, sweeps, hydra_groups = [], [], []
    for override in parsed:
        key = override.get_key_element()
        if key.lstrip("+~").startswith("hydra"):
            if key.lstrip("+~").startswith("hydra/") and not override.is_sweep_override():
                hydra_groups.append(override.input_line)  # hydra/launcher=joblib: the option must exist
            continue
        if override.is_sweep_override():
            sweeps.append((override, [str(v) for v in override.sweep_string_iterator()]))
        else:
            plain.append(override.input_line)
        group = key.lstrip("+~")
        if group in GROUPS:
            values = [v for _, vs in sweeps[-1:] for v in vs] if override.is_sweep_override() else [override.value()]
            _check_group_options(group, values)
    # Every value of every sweep is checked once, next to the first value of each other sweep.
    first = {o.get_key_element(): values[0] for o, values in sweeps if values}
    variations = [plain + [f"{k}={v}" for k, v in first.items()]]
    for override, values in sweeps:
        key = override.get_key_element()
        for value in values[1:]:
            variations.append(plain + [f"{k}={value if k == key else v}" for k, v in first.items()])
    composed = []
    for index, overrides in enumerate(variations):
        try:
            if index == 0 and hydra_groups:
                compose_config(overrides + hydra_groups, return_hydra_config=True)
            cfg = compose_config(overrides)
        except (HydraException, OmegaConfBaseException) as error:
            raise ConfigError(_composition_message(error)) from None
        validate(cfg)
        composed.append(cfg)
    return composed[0]


def _check_group_options(group: str, values: list[Any]) -> None:
    options = sorted(p.name[:-5] for p in files("layerprint.conf").joinpath(group).iterdir() if p.name.endswith(".yaml"))
    for value in values:
        if str(value) not in options:
            raise ConfigError(f"{group} {value!r} is unknown; valid {group} options: {', '.join(options)}")


def _composition_message(error: BaseException) -> str:
    text = str(error)
    if "Available options in" in text:  # Hydra's missing-option message: one line with the choices
        listed = text.split("Available options in", 1)[1].split("Config search path", 1)[0]
        choices = [line.strip() for line in listed.splitlines() if line.startswith("\t")]
        return f"{first_line(error)}; valid options: {', '.join(choices)}"
    cause = error.__cause__ or error
    detail = first_line(cause)
    key = getattr(cause, "full_key", None)
    if key:
        return f"{key}: {detail}"
    return first_line(error) if detail == first_line(error) else f"{first_line(error)}: {detail}"
