"""The models the benchmarks fit, and the options and data of a benchmark of one model's fresh fits
(``fit_phases.py``, ``fit_cpu.py``), read before Keras is imported (``callback_overhead`` reads its own
options at import)."""

import argparse
import sys

# name: (short steps, long steps, batch, image side, channels)
MODELS = {"cnn": (64, 192, 32, 28, 1), "mobilenetv2": (10, 30, 16, 96, 3), "resnet50": (10, 30, 16, 96, 3),
          "efficientnetb0": (10, 30, 16, 96, 3)}


def parse_options(description: str, count: str, count_default: int) -> argparse.Namespace:
    """``--model``, ``--<count>`` (how many fits or rounds) and ``--steps``; ``callback_overhead``, imported
    next, is then given the model alone."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
    parser.add_argument(f"--{count}", type=int, default=count_default)
    parser.add_argument("--steps", type=int, default=None, help="the fit's steps (default: the long fit's)")
    args = parser.parse_args()
    sys.argv = [sys.argv[0], "--models", args.model]
    return args


def fit_data(bench, args: argparse.Namespace) -> tuple[dict, tuple[int, int]]:
    """The inputs of one fit of ``args.model`` (``bench.fit_inputs``) and its image ``(side, channels)``."""
    import numpy as np

    _, long, batch, side, channels = MODELS[args.model]
    steps = args.steps or long
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch, side, side, channels)).astype("float32")
    return bench.fit_inputs(x, rng.integers(0, 10, size=(steps * batch,)), batch), (side, channels)
