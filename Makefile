# Front door: `make demo` runs the demo sweep, `make test` the whole test suite.
# Both create .venv and install layerprint with everything it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench example clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	# JAX for the JAX-backend test only, kept out of site-packages: TensorFlow imports jax whenever
	# it can (tensorflow/lite), which costs every TensorFlow import about 0.8 s.
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/jax-site "jax>=0.4.34" "jaxlib>=0.4.34"
	touch $@

demo: $(BIN)/.installed  ## demo sweep into ./mlruns (SQLite), then the comparison and the UI command
	$(BIN)/layerprint-train -m experiment=demo

test: $(BIN)/.installed  ## every test, the slow ones too
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(BIN)/.installed  ## benchmarks; prints ratios measured in one run
	$(BIN)/python benchmarks/callback_overhead.py
	$(BIN)/python benchmarks/fingerprint_resnet50.py
	$(BIN)/python benchmarks/compare_50x1000.py
	$(BIN)/python benchmarks/sweep_launchers.py

example: $(BIN)/.installed  ## remake mlruns.example/ from the demo sweep (through a local mlflow server)
	$(BIN)/python scripts/make_example.py

clean:
	rm -rf $(VENV) mlruns outputs multirun .pytest_cache
