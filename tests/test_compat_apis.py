"""Every use of a dependency's private or version-dependent API (``layerprint.compat``) against the installed
version: when a release changes one, the test of that use fails and says which, before a user's fit does."""

import json
import logging

import keras
import mlflow
import numpy as np
import pytest

from layerprint.compat import hydra as hydra_compat
from layerprint.compat import keras as keras_compat
from layerprint.compat import mlflow as mlflow_compat
from layerprint.compat import ray as ray_compat


def _changed(use, dependency, version):
    return f"layerprint.compat: {use} no longer works with {dependency} {version}; update layerprint.compat"


KERAS = ("Keras", keras.__version__)
MLFLOW = ("MLflow", mlflow.__version__)


def _nested():
    block = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, name="inner")], name="block")
    inputs = keras.Input((3,))
    return keras.Model(inputs, block(block(inputs))), block


def test_keras_layer_structure():
    model, block = _nested()
    assert keras_compat.direct_sublayers(model) == [block], _changed("direct_sublayers (Layer._layers)", *KERAS)
    assert block in keras_compat.all_layers(model), _changed("all_layers (Layer._flatten_layers)", *KERAS)
    graph = keras_compat.functional_graph(model)
    assert graph is not None and len(keras_compat.graph_calls(block, graph)) == 2, \
        _changed("graph_calls (Functional._nodes, Layer._inbound_nodes)", *KERAS)
    assert keras_compat.functional_graph(block) is not None, _changed("functional_graph (Sequential._functional)", *KERAS)
    inner = block.get_layer("inner")
    assert [v.name for v in keras_compat.own_variables(inner)] == ["kernel", "bias"], \
        _changed("own_variables (Layer._trainable_variables)", *KERAS)
    assert keras_compat.own_variables(block) == [], _changed("own_variables of a container", *KERAS)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.d = keras.layers.Dense(2)

    def call(self, x, training=False):
        return self.d(self.d(x))


def test_keras_calls():
    model = _Subclassed()
    model(np.ones((4, 2), "float32"))
    assert keras_compat.has_own_call(model) and not keras_compat.has_own_call(keras.Model()), \
        _changed("has_own_call (keras.Model.call)", *KERAS)
    assert keras_compat.is_keras_layer(keras.layers.Dense(1)) and not keras_compat.is_keras_layer(model)
    assert keras_compat.takes_training(model)
    built = keras_compat.built_input(model)
    assert tuple(built.shape) == (4, 2), _changed("built_input (Layer.get_build_config)", *KERAS)
    seen = []

    def observe(layer, call):
        seen.append(layer.name)
        return call()

    with keras_compat.calls_observed(observe):
        out = keras_compat.symbolic_run(model.call, built)
    assert tuple(out.shape) == (4, 2), _changed("symbolic_run (backend.compute_output_spec)", *KERAS)
    assert seen == [model.d.name, model.d.name], _changed("calls_observed (Layer.__call__)", *KERAS)


def test_keras_training_hooks():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse", steps_per_execution=3)
    assert keras_compat.steps_per_execution(model) == 3
    model.make_train_function()
    own = model.train_function
    replaced = []
    with keras_compat.train_step_replaced(model, lambda data: replaced.append(1) or model.__class__.train_step(model, data)):
        model.make_train_function(force=True)
        recording = model.train_function
    assert model.train_function is own and recording is not own, _changed("train_step_replaced", *KERAS)
    optimizer = keras.optimizers.SGD()
    keras_compat.replace_method(optimizer, "build", lambda *a: "hooked")
    assert keras_compat.method_replaced(optimizer, "build") and optimizer.build() == "hooked"
    keras_compat.restore_method(optimizer, "build")
    assert not keras_compat.method_replaced(optimizer, "build")
    keras_compat.keep(model, "kept")
    assert keras_compat.kept(model) == "kept" and "kept" not in [str(v) for v in model.variables]

    class Spy(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.unsynced = keras_compat.unsynced_model(self)

    spy = Spy()
    model.fit(np.ones((3, 2), "float32"), np.ones((3, 1)), verbose=0, callbacks=[spy])
    assert spy.unsynced is model, _changed("unsynced_model (Callback._model)", *KERAS)
    assert keras_compat.jax_trainer_state(model) is None  # outside a JAX fit


def test_mlflow_fluent_state(sqlite_uri, monkeypatch):
    mlflow.set_tracking_uri(sqlite_uri)
    assert mlflow_compat.uri_set_by_user() == sqlite_uri, _changed("uri_set_by_user (is_tracking_uri_set)", *MLFLOW)
    experiment = mlflow.set_experiment("compat")
    assert mlflow_compat.current_experiment_id(None) == experiment.experiment_id, \
        _changed("current_experiment_id (fluent._get_experiment_id)", *MLFLOW)
    run = mlflow.MlflowClient().create_run(experiment.experiment_id)
    mlflow_compat.set_last_active_run(run.info.run_id)
    assert mlflow.last_active_run().info.run_id == run.info.run_id, \
        _changed("set_last_active_run (fluent._last_active_run_id)", *MLFLOW)


def test_mlflow_ui_shared_view(sqlite_uri, client):
    experiment_id = client.create_experiment("view")
    mlflow_compat.save_runs_chart_view(client, experiment_id, "key1", "a view", "tags.x = '1'", ["train/loss"],
                                       [f"m{i}" for i in range(2000)])  # too many to hide: dropped
    value = json.loads(client.get_experiment(experiment_id).tags["mlflow.sharedViewState.key1"])
    state = json.loads(value["state"])
    assert value["name"] == "a view" and state["searchFilter"] == "tags.x = '1'"
    assert [chart["metricKey"] for chart in state["compareRunCharts"]] == ["train/loss"]
    address = mlflow_compat.runs_view_address("http://h", experiment_id, "key1")
    assert address.endswith("?workflowType=machine_learning&compareRunsMode=CHART&viewStateShareKey=key1")


def test_hydra_joblib_and_loky():
    arguments = hydra_compat.joblib_parallel_arguments({"_target_": "x.JoblibLauncher", "n_jobs": 2, "prefer": "processes",
                                                        "require": None, "verbose": 0, "timeout": None,
                                                        "pre_dispatch": "2*n_jobs", "batch_size": "auto",
                                                        "temp_folder": None, "max_nbytes": None, "mmap_mode": "r"})
    assert arguments["backend"] == "loky" and arguments["n_jobs"] == 2 and "_target_" not in arguments, \
        _changed("joblib_parallel_arguments (hydra_joblib_launcher._core.process_joblib_cfg)", "hydra-joblib-launcher", "")
    from joblib import Parallel, delayed

    Parallel(n_jobs=2, backend="loky")(delayed(abs)(i) for i in range(2))
    executor = hydra_compat.reusable_executor()
    assert executor is not None and hasattr(executor, "shutdown"), \
        _changed("reusable_executor (loky.reusable_executor._executor)", "joblib", "")


def test_ray_worker_logger():
    pytest.importorskip("ray")
    import ray._private.worker as worker  # noqa: F401 - the module whose logger is named

    ray_compat.quiet_sigterm_warning()
    logger = logging.getLogger(ray_compat.WORKER_LOGGER)
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "SIGTERM handler is not set", (), None)
    assert not logger.filter(record) and logger.filter(
        logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "other", (), None))
