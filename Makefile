# Front door: `make demo` runs the demo sweep, `make test` the whole test suite.
# Both create .venv and install layerprint with everything it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast bench example clean

# uv installs from its cache in seconds where pip takes a minute (TensorFlow's wheel); pip when uv is not there.
$(BIN)/.installed: pyproject.toml Makefile  ## what the demo needs: layerprint and its dependencies
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv && $(BIN)/uv pip install --quiet --python $(BIN)/python -e . \
		|| $(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(BIN)/.installed-for-tests: $(BIN)/.installed  ## the test tools, the launchers' engines, the other backends
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[dev]" || $(BIN)/pip install --quiet -e ".[dev]"
	# JAX for the JAX-backend test only, kept out of site-packages: TensorFlow imports jax whenever
	# it can (tensorflow/lite), which costs every TensorFlow import about 0.8 s.
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/jax-site "jax>=0.4.34" "jaxlib>=0.4.34"
	# PyTorch (CPU build) for the PyTorch-backend test, kept out the same way, with the pure-Python
	# packages it needs that the venv does not have already.
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/torch-site "torch==2.13.0" "sympy>=1.13.3" "mpmath>=1.1" \
		"networkx>=2.5.1" filelock "fsspec>=0.8.5"
	# Keras 2 (tf_keras), to test what its users see: a warning, never a crash.
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/tfkeras-site "tf-keras~=2.21.0"
	touch $@

demo: $(BIN)/.installed  ## demo sweep into ./mlruns (SQLite), then the comparison and how to open the UI
	$(BIN)/layerprint-train -m experiment=demo

test: $(BIN)/.installed-for-tests  ## every test, the slow ones too: two at a time (one xdist_group's one after another), then the timed ones alone
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25 -n 2 --dist loadgroup -m "not serial"
	$(BIN)/python -m pytest -q -p no:cacheprovider -m serial

# The parts, each on its own: the record, the cadences, the recorder, the sink into a real store and a real
# server that dies, the spool, the checksum on three backends, the config, the data, the hooks driven
# directly, fingerprints and sharing, the import graph and the private APIs in compat. No full run trained.
FAST_TESTS := tests/test_parts.py tests/test_checksum.py tests/test_recording.py tests/test_architecture.py \
	tests/test_compat_apis.py tests/test_config.py tests/test_data.py tests/test_callback_hooks.py \
	tests/test_fingerprint.py tests/test_sharing.py

test-fast: $(BIN)/.installed-for-tests  ## the parts' tests (about a minute on 2 cores)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 -m "not slow" $(FAST_TESTS)

bench: $(BIN)/.installed-for-tests  ## benchmarks; prints ratios measured in one run
	$(BIN)/python benchmarks/callback_overhead.py
	$(BIN)/python benchmarks/fingerprint_resnet50.py
	$(BIN)/python benchmarks/compare_50x1000.py
	$(BIN)/python benchmarks/sweep_launchers.py

example: $(BIN)/.installed-for-tests  ## remake mlruns.example/ from the demo sweep (through a local mlflow server)
	$(BIN)/python scripts/make_example.py

clean:
	rm -rf $(VENV) mlruns outputs multirun .pytest_cache
