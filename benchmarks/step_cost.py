"""What the flight recorder adds to one training step (TensorFlow), paired against the model's own step.

The marginal cost per step is a few tenths of a millisecond on a CNN step of about 9 ms: too small to
read from whole fits of two lengths on a machine whose fits of one configuration vary by a second. Here
one compiled model and one input pipeline run three train functions in interleaved blocks of calls: the
model's own (``make_train_function``), the recording one that writes every step's row with every
variable's checksum (the defaults' cadence, ``checksum_every=1``), and the recording one whose rows hold
the BatchNorm statistics alone (the steps a rising cadence leaves without checksums). Each block's time a
step, less the model's own block of the same round (the order rotated from round to round), gives a
paired difference; the median over the rounds is printed, as ms and as % of the model's own step, in wall
time and in the process's CPU time (every thread; the machine's other tenants move it less).

What this leaves out of the marginal cost: the callback's Python hooks between steps (``on_train_batch_*``,
counted by thread in ``fit_cpu.py``) and the drains of the ring, every 64 steps.

Run: ``.venv/bin/python benchmarks/step_cost.py [--models cnn mobilenetv2 resnet50 efficientnetb0]
[--rounds N] [--calls N]``.
"""

import argparse
import os
import statistics
import sys
import time

from one_model import MODELS

PARSER = argparse.ArgumentParser(description=__doc__.splitlines()[0])
PARSER.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["cnn", "mobilenetv2", "resnet50"])
PARSER.add_argument("--rounds", type=int, default=40, help="interleaved rounds (default 40)")
PARSER.add_argument("--calls", type=int, default=0, help="steps a block (default: 10 for the CNN, 3 otherwise)")
ARGS = PARSER.parse_args()
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.argv = [sys.argv[0], "--models", *ARGS.models]  # callback_overhead reads its own options at import

import callback_overhead as bench  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from layerprint.inspection.batchnorm import find_batchnorm_layers  # noqa: E402
from layerprint.inspection.paths import unique_variables  # noqa: E402
from layerprint.recording.tensorflow import TensorFlowDevice  # noqa: E402

NEVER = 1 << 40  # a cadence no step of these rounds reaches


def train_functions(model: keras.Model) -> dict[str, object]:
    """The model's own train function and the two recording ones, each traced by a first call here."""
    model.make_train_function()
    own = model.train_function
    variables, batchnorm = unique_variables(model), find_batchnorm_layers(model)
    functions = {"own step": own}
    for name, every in (("checksums every step", 1), ("BatchNorm rows only", NEVER)):
        device = TensorFlowDevice(model, variables, batchnorm, in_step=True)
        assert device.records_in_step, "the model's step cannot record itself"
        device.start(first_step=2, checksum_every=every)  # the first call writes no due row: steps 1, 2, ...
        functions[name] = device.train_function()
        model.train_function = own
    return functions


def measure(name: str) -> None:
    """Print the paired cost a step of ``name``'s recording train functions adds."""
    _, _, batch, side, channels = MODELS[name]
    calls = ARGS.calls or (10 if name == "cnn" else 3)
    keras.utils.set_random_seed(0)
    model = bench.build(name, side, channels)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * 8, side, side, channels)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, rng.integers(0, 10, size=(batch * 8,)))).batch(batch)
    iterator = iter(dataset.repeat().prefetch(2))
    functions = train_functions(model)
    for function in functions.values():
        for _ in range(2):
            function(iterator)
    wall = {key: [] for key in functions}
    cpu = {key: [] for key in functions}
    order = list(functions)
    for _ in range(ARGS.rounds):
        order = order[1:] + order[:1]
        for key in order:
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(calls):
                functions[key](iterator)
            wall[key].append((time.perf_counter() - started) / calls * 1e3)
            cpu[key].append((time.process_time() - cpu_started) / calls * 1e3)
    own_wall, own_cpu = statistics.median(wall["own step"]), statistics.median(cpu["own step"])
    print(f"{name}: the model's own step {own_wall:.2f} ms wall, {own_cpu:.2f} ms CPU "
          f"({ARGS.rounds} rounds of {calls} steps)")
    for key in order:
        if key == "own step":
            continue
        extra_wall = statistics.median(a - b for a, b in zip(wall[key], wall["own step"]))
        extra_cpu = statistics.median(a - b for a, b in zip(cpu[key], cpu["own step"]))
        print(f"  {key:<22} +{extra_wall:6.3f} ms wall ({100 * extra_wall / own_wall:5.2f} %), "
              f"+{extra_cpu:6.3f} ms CPU ({100 * extra_cpu / own_cpu:5.2f} %)")


def main() -> None:
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, CPU, {os.cpu_count()} cores")
    for name in ARGS.models:
        measure(name)


if __name__ == "__main__":
    main()
