"""A built (non-editable) wheel carries conf/ and composes from it; the callback import pulls no Hydra."""

import subprocess
import sys
import zipfile

import pytest
from helpers.processes import REPO

_COMPOSE = """
import layerprint, layerprint.conf, sys
from hydra import compose, initialize_config_module
from layerprint.runner.schema import register_configs
register_configs()
with initialize_config_module(version_base="1.3", config_module="layerprint.conf"):
    cfg = compose(config_name="train", overrides=["variant=cloned", "layer=gru", "experiment=demo"])
assert layerprint.__file__.startswith(sys.argv[1]), layerprint.__file__
print(cfg.variant.name, cfg.layer.kind, cfg.tracking.experiment)
"""


@pytest.mark.slow
def test_wheel_holds_the_configs_and_composes_from_them(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("layerprint-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "layerprint/conf/train.yaml" in names and "layerprint/conf/variant/tf_reseeded.yaml" in names
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    done = subprocess.run([sys.executable, "-c", _COMPOSE, str(unpacked)], capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["cloned", "gru", "layerprint-demo"]


def test_importing_the_callback_does_not_import_hydra_or_the_runner():
    code = ("import sys; from layerprint import LayerprintCallback; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf') or m.startswith('layerprint.runner')]; "
            "print(bad)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"CUDA_VISIBLE_DEVICES": "-1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
