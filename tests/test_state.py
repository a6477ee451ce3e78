"""The device-side state reader: exact checksums (compiled TensorFlow against the NumPy reference) and
BatchNorm summaries."""

import keras
import numpy as np
import pytest

from layerprint.inspection.batchnorm import find_batchnorm_layers
from layerprint.inspection.paths import unique_variables
from layerprint.inspection.state import StateReader, checksum_numpy


def _model(dtype="float32"):
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(7, dtype=dtype), keras.layers.BatchNormalization(),
                             keras.layers.Dense(1, dtype="float64")])


def _host_checksums(reader):
    return list(StateReader.to_host([reader.read(True)[1]])[0])


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_compiled_checksums_equal_the_numpy_reference(dtype):
    model = _model(dtype)
    variables = unique_variables(model)
    reader = StateReader(model, variables, find_batchnorm_layers(model))
    assert _host_checksums(reader) == [checksum_numpy(np.asarray(v.numpy())) for v in variables]


def test_one_flipped_bit_changes_only_that_variable():
    model = _model()
    variables = unique_variables(model)
    reader = StateReader(model, variables, [])
    before = _host_checksums(reader)
    kernel = variables[0]
    values = np.asarray(kernel.numpy()).copy()
    values.view(np.uint32)[2, 3] ^= 1  # the lowest mantissa bit of one value
    kernel.assign(values)
    after = _host_checksums(reader)
    assert after[0] != before[0] and after[1:] == before[1:]


def test_two_values_trading_places_change_the_checksum():
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    swapped = values.copy()
    swapped[0, 0], swapped[2, 3] = values[2, 3], values[0, 0]
    assert checksum_numpy(values) != checksum_numpy(swapped)
    assert checksum_numpy(values) == checksum_numpy(values.copy(order="F"))  # by value, in C order


def test_batchnorm_summaries_are_the_moving_statistics_moments():
    model = _model()
    layers = find_batchnorm_layers(model)
    (_, bn), = layers
    bn.moving_mean.assign(np.linspace(-1, 2, 7).astype("float32"))
    reader = StateReader(model, unique_variables(model), layers)
    summaries, checksums = reader.read(False)
    assert checksums is None
    mean = bn.moving_mean.numpy()
    np.testing.assert_allclose(np.asarray(summaries)[:4], [mean.mean(), mean.std(), mean.min(), mean.max()], rtol=1e-6)
    assert reader.bn_columns[:4] == [f"bn/{layers[0][0]}/moving_mean/{s}" for s in ("mean", "std", "min", "max")]
