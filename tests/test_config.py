"""Every option of every config group composes and validates; bad values are refused in one line."""

from importlib.resources import files

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from layerprint.config import LAYER_KINDS, VARIANTS, register_configs, validate
from layerprint.errors import ConfigError
from layerprint.train import check_overrides

register_configs()


def _options(group):
    return sorted(p.name[:-5] for p in files("layerprint.conf").joinpath(group).iterdir() if p.name.endswith(".yaml"))


def test_groups_hold_exactly_the_contract_names():
    assert _options("variant") == sorted(VARIANTS)
    assert _options("layer") == sorted(LAYER_KINDS)


@pytest.mark.parametrize("override", [f"{g}={o}" for g in ("variant", "layer", "data", "trainer", "tracking", "experiment")
                                      for o in _options(g)])
def test_every_option_composes(override):
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="layerprint.conf"):
        cfg = compose(config_name="train", overrides=[override] + (["data.path=x.npz"] if override == "data=npz" else []))
    validate(cfg)
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("argv, fragment", [
    (["variant=nope"], "valid variant options: cloned, constant_init"),
    (["layer=dense2"], "valid layer options: batchnorm, conv2d, dense, gru, lstm"),
    (["-m", "variant=shared,bad"], "variant 'bad' is unknown"),
    (["seed=abc"], "seed: Value 'abc'"),
    (["seed=-1"], "seed=-1 is not allowed"),
    (["repeats=0"], "repeats=0 is not allowed"),
    (["trainer.epochs=0"], "trainer.epochs=0 is not allowed"),
    (["trainer.batch_size=-4"], "trainer.batch_size=-4 is not allowed"),
    (["trainer.learning_rate=0"], "trainer.learning_rate=0.0 is not allowed"),
    (["trainer.optimizer=adamw2"], "trainer.optimizer='adamw2' is not allowed"),
    (["device=tpu"], "device='tpu' is not allowed; use one of: cpu, gpu, auto"),
    (["deterministic=maybe"], "deterministic: Value 'maybe'"),
    (["data.validation_split=1.5"], "data.validation_split=1.5 is not allowed"),
    (["data=npz"], "data=npz needs data.path"),
    (["foo=1"], "Key 'foo' not in"),
    (["layer.width=0"], "layer.width=0 is not allowed"),
    (["variant="], "variant"),
])
def test_bad_overrides_raise_one_line(argv, fragment):
    with pytest.raises(ConfigError) as raised:
        check_overrides(argv)
    message = str(raised.value)
    assert fragment in message and "\n" not in message
