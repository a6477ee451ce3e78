import keras

from layerprint.inspection.fingerprint import fingerprint_model
from layerprint.inspection.sharing import call_sites, sharing_report, symmetry_warning


def _report(model):
    return sharing_report(model, fingerprint_model(model)["variables"])


def test_one_initializer_instance_gives_an_identical_group():
    init = keras.initializers.GlorotUniform()
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, kernel_initializer=init, name="a")(inputs)
    x = keras.layers.Dense(4, kernel_initializer=init, name="b")(x)
    x = keras.layers.Dense(4, name="c")(x)
    report = _report(keras.Model(inputs, x))
    assert report["identical_initial_values"] == [["a/kernel", "b/kernel"]]
    assert report["shared_layers"] == {}
    assert "a/kernel = b/kernel" in symmetry_warning(report["identical_initial_values"])


def test_string_initializers_and_zero_biases_do_not_form_groups():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, kernel_initializer="he_normal")(inputs)
    x = keras.layers.Dense(4, kernel_initializer="he_normal")(x)
    report = _report(keras.Model(inputs, x))
    assert report["identical_initial_values"] == []
    assert symmetry_warning([]) is None


def test_a_layer_called_twice_shows_its_call_sites_and_one_set_of_variables():
    shared = keras.layers.Dense(4, name="shared")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, shared(shared(inputs)))
    report = _report(model)
    assert report["shared_layers"] == {"shared": 2}
    assert report["shared_variables"]["shared/kernel"] == ["shared#0", "shared#1"]
    assert len(fingerprint_model(model)["variables"]) == 2


def test_call_sites_multiply_through_a_nested_block():
    block = keras.Sequential([keras.layers.Dense(4, name="inner"), keras.layers.BatchNormalization(name="bn")], name="block")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, block(block(block(inputs))))
    sites = call_sites(model)
    assert sites["block"] == 3 and sites["block/inner"] == 3 and sites["block/bn"] == 3


def test_a_layer_owned_by_two_blocks_is_a_shared_variable():
    common = keras.layers.Dense(4, name="common")
    first = keras.Sequential([common, keras.layers.Dense(4, name="x1")], name="first")
    second = keras.Sequential([common, keras.layers.Dense(4, name="x2")], name="second")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, second(first(inputs)))
    shared = _report(model)["shared_variables"]
    kernel = next(path for path in shared if path.endswith("common/kernel"))
    assert set(shared[kernel]) == {"first/common", "second/common"}
