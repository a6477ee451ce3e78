"""Every option of every config group composes and validates; bad values are refused in one line."""

from importlib.resources import files
from pathlib import Path

import pytest

from helpers.bad_input import bad_inputs
from layerprint.errors import ConfigError
from layerprint.runner.overrides import GROUPS, check_overrides
from layerprint.runner.schema import LAYER_KINDS, VARIANTS, validate


def _options(group):
    return sorted(p.name[:-5] for p in files("layerprint.conf").joinpath(group).iterdir() if p.name.endswith(".yaml"))


def test_groups_hold_exactly_the_contract_names():
    assert _options("variant") == sorted(VARIANTS)
    assert _options("layer") == sorted(LAYER_KINDS)


@pytest.mark.parametrize("override", [f"{g}={o}" for g in GROUPS for o in _options(g)])
def test_every_option_composes(override, cfg_train):
    validate(cfg_train(override, *(["data.path=x.npz"] if override == "data=npz" else [])))


@pytest.mark.parametrize("args, fragment", [(args, fragment) for args, fragment, early in bad_inputs(Path("/nonexistent"))
                                             if early], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_bad_overrides_raise_one_line(args, fragment):
    with pytest.raises(ConfigError) as raised:
        check_overrides(args[1:])
    message = str(raised.value)
    assert fragment in message and "\n" not in message
