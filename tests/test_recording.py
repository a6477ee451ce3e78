"""The flight record on the device: checksums (TensorFlow's compiled kernel against the NumPy reference), the
BatchNorm summaries, and the train step that records every step exactly."""

import keras
import numpy as np
import pytest

from layerprint import keys
from layerprint.inspection.batchnorm import find_batchnorm_layers
from layerprint.inspection.paths import unique_variables, variable_paths
from layerprint.recording.checksum import checksum_numpy, checksums_numpy
from layerprint.recording.tensorflow import TensorFlowDevice


def _model(dtype="float32"):
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(7, dtype=dtype), keras.layers.BatchNormalization(),
                             keras.layers.Dense(1, dtype="float64")])


def _device_checksums(model, variables, layers=()):
    device = TensorFlowDevice(model, variables, list(layers), in_step=False)
    device.start(1, 1)
    device.read(1, with_checksums=True)
    return list(device.drain().checksums[0])


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_compiled_checksums_equal_the_numpy_reference(dtype):
    model = _model(dtype)
    variables = unique_variables(model)
    assert _device_checksums(model, variables) == [checksum_numpy(np.asarray(v.numpy())) for v in variables]


def test_one_flipped_bit_changes_only_that_variable():
    model = _model()
    variables = unique_variables(model)
    before = _device_checksums(model, variables)
    kernel = variables[0]
    values = np.asarray(kernel.numpy()).copy()
    values.view(np.uint32)[2, 3] ^= 1  # the lowest mantissa bit of one value
    kernel.assign(values)
    after = _device_checksums(model, variables)
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
    variables = unique_variables(model)
    device = TensorFlowDevice(model, variables, layers, in_step=False)
    flat, checksums = device.host_row([np.asarray(v.numpy()) for v in variables])
    assert list(checksums) == list(checksums_numpy([np.asarray(v.numpy()) for v in variables]))
    summaries = device.summarize(flat[None, :])[0]
    mean, variance = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    np.testing.assert_allclose(summaries, [mean.mean(), mean.std(), mean.min(), mean.max(),
                                           variance.mean(), variance.std(), variance.min(), variance.max()], rtol=1e-6)
    assert device.bn_columns[:4] == [f"bn/{layers[0][0]}/moving_mean/{s}" for s in ("mean", "std", "min", "max")]


class _HostReference(keras.callbacks.Callback):
    """The state every step left, read on the host before the next step (and at the fit's end)."""

    def __init__(self):
        super().__init__()
        self.checksums, self.bn_means = [], []

    def _take(self):
        variables = unique_variables(self.model)
        self.checksums.append([checksum_numpy(np.asarray(v.numpy())) for v in variables])
        self.bn_means.append(float(np.mean(self.model.get_layer("bn").moving_mean.numpy(), dtype=np.float64)))

    def on_train_batch_begin(self, batch, logs=None):
        if self.params.get("_seen"):
            self._take()
        self.params["_seen"] = True

    def on_train_end(self, logs=None):
        self._take()


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_the_train_step_records_every_step_exactly(tmp_path, steps_per_execution):
    """On TensorFlow the compiled train step writes the state each step left; every step's row equals the
    host's reading of that state (checksums bit for bit), the model keeps its own train function."""
    from layerprint import LayerprintCallback

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(7), keras.layers.BatchNormalization(name="bn"),
                              keras.layers.Dense(1)])
    model.compile("adam", "mse", steps_per_execution=steps_per_execution)
    x = np.random.default_rng(0).normal(size=(72, 5)).astype("float32")
    reference = _HostReference()
    callback = LayerprintCallback(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", checksum_every=1)
    recorded = {}

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            recorded["function"] = self.model.train_function

    model.fit(x, x.sum(axis=1), epochs=2, batch_size=8, verbose=0, callbacks=[Spy(), reference, callback])
    device = callback.session.device
    assert isinstance(device, TensorFlowDevice) and device.records_in_step
    assert recorded["function"] is device.train_function()  # the recording one ran
    assert model.train_function is device.base_function  # and was given back
    table = callback.session.progress.record.to_table()
    assert table.column("step").to_pylist() == list(range(1, 19))
    paths = variable_paths(model)
    names = [keys.checksum_key(paths[id(v)]) for v in unique_variables(model)]
    assert len(names) == 8 and set(names) <= set(table.column_names)
    hooked = list(range(steps_per_execution, 19, steps_per_execution))  # where the host reference looked
    for index, step in enumerate(hooked):
        assert [table.column(n)[step - 1].as_py() for n in names] == reference.checksums[index], step
        np.testing.assert_allclose(table.column("bn/bn/moving_mean/mean")[step - 1].as_py(), reference.bn_means[index],
                                   rtol=1e-6)
    assert all(v is not None for n in names for v in table.column(n).to_pylist())  # inside blocks too


def test_values_are_the_snapshots_memory_final_or_not_and_later_training_leaves_them_unchanged():
    """TensorFlow copies a variable before it assigns to it while a read of it is alive: the views stay exact."""
    from layerprint.fit.values import read_values

    model = _model()
    model.compile(keras.optimizers.SGD(0.5), "mse")
    model.fit(np.ones((4, 5)), np.ones((4, 1)), epochs=1, verbose=0)  # its train function made
    variables = unique_variables(model)
    device = TensorFlowDevice(model, variables, [], in_step=True)
    expected = [np.array(v.numpy()) for v in variables]
    final = read_values(device, variables, final=True).get()
    mid_fit = read_values(device, variables).get()
    x = np.random.default_rng(0).normal(size=(8, 5))
    model.fit(x, np.full((8, 1), 3.0), epochs=2, verbose=0)  # assigns to every trainable variable
    assert not np.array_equal(variables[0].numpy(), expected[0])
    for variable, before in zip(variables, expected):
        np.testing.assert_array_equal(final[id(variable)], before)
        np.testing.assert_array_equal(mid_fit[id(variable)], before)
    assert not final[id(variables[0])].flags.owndata and not mid_fit[id(variables[0])].flags.owndata
