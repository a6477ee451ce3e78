"""Where a fresh fit's added time falls: before the first step, the first step (the trace), a steady step,
and the fit's end, with ``LayerprintCallback()`` at its defaults against none.

Each round fits a fresh model (``callback_overhead.build``, the same input pipeline) once without and once
with the callback, in alternating order. A timing callback listed last stamps ``on_train_begin`` and every
``on_train_batch_end``; around it, ``fit``'s start and return:

- **before the first step**: ``fit``'s start to the timer's train begin (layerprint's train-begin hook);
- **first step**: train begin to the first batch end (Keras traces the train function here: the recording
  one with layerprint);
- **steady step**: the median time between batch ends after the first;
- **end**: the last batch end to ``fit``'s return (epoch end and train end: with layerprint, the run
  complete in the store).

Prints the medians of each phase and of the paired differences (layerprint less the baseline of the same
round). The first fit of the process (imports, the store's tables) is left out.

    python benchmarks/fit_phases.py --model cnn --rounds 5
"""

import statistics
import tempfile
import time

from one_model import fit_data, parse_options

ARGS = parse_options(__doc__.splitlines()[0], "rounds", 5)

import callback_overhead as bench  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from layerprint import LayerprintCallback  # noqa: E402

PHASES = ("before the first step", "first step", "steady step", "end", "whole fit")


class Stamps(keras.callbacks.Callback):
    """The times of train begin and of every batch end."""

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.begin, self.batch_ends = time.perf_counter(), []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.batch_ends.append(time.perf_counter())


def phases(config: str, inputs: dict, shape: tuple[int, int], uri: str) -> dict[str, float]:
    """One fresh fit's phases, in seconds."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = bench.build(ARGS.model, *shape)
    stamps = Stamps()
    callbacks = [LayerprintCallback(tracking_uri=uri, experiment_name="phases")] if config == "layerprint" else []
    started = time.perf_counter()
    model.fit(**inputs, epochs=1, verbose=0, callbacks=callbacks + [stamps])
    returned = time.perf_counter()
    ends = stamps.batch_ends
    return dict(zip(PHASES, (stamps.begin - started, ends[0] - stamps.begin, float(np.median(np.diff(ends))),
                             returned - ends[-1], returned - started)))


def main() -> None:
    inputs, (side, channels) = fit_data(bench, ARGS)
    steps = ARGS.steps or bench.MODELS[ARGS.model][1]
    measured: dict[str, list[dict[str, float]]] = {"baseline": [], "layerprint": []}
    with tempfile.TemporaryDirectory() as store:
        uri = f"sqlite:///{store}/mlflow.db"
        phases("layerprint", inputs, (side, channels), uri)  # the process's first fit: imports, tables
        for round_index in range(ARGS.rounds):
            for config in ("baseline", "layerprint")[:: 1 if round_index % 2 else -1]:
                measured[config].append(phases(config, inputs, (side, channels), uri))
    print(f"{ARGS.model}, {steps} steps, {ARGS.rounds} rounds, a fresh model per fit (medians, ms)")
    for phase in PHASES:
        base, ours = ([row[phase] for row in measured[c]] for c in ("baseline", "layerprint"))
        paired = statistics.median(a - b for a, b in zip(ours, base))
        print(f"  {phase:22s} baseline {statistics.median(base) * 1e3:9.1f}  layerprint "
              f"{statistics.median(ours) * 1e3:9.1f}  paired difference {paired * 1e3:8.1f}")


if __name__ == "__main__":
    main()
