"""Where ``LayerprintCallback()``'s CPU goes in a fresh fit, by thread and by task: counted, not timed
against a baseline, so that a slow spell of the machine moves it little.

Each fit is of a fresh model (``callback_overhead.build``, the same input pipeline) with the callback at its
defaults, ``fit`` returning with the run complete. Counted with each thread's own CPU clock
(``time.thread_time``):

- **training thread**: each of the callback's hooks (a subclass times them);
- **sink thread**: all of it, and of it MLflow's ``log_batch`` calls (points), the run's creation, and the
  artifacts' uploads, with the number of ``log_batch`` calls and of points published;
- **other background threads**: each task they run (the fingerprints, drift, the record's rows and files,
  the run's end), by the part it is guarded as.

Prints the median of each over the fits (the process's first fit, imports and the store's tables, left out).

    python benchmarks/fit_cpu.py --model cnn --fits 5
"""

import collections
import statistics
import tempfile
import threading
import time

from one_model import fit_data, parse_options

ARGS = parse_options(__doc__.splitlines()[0], "fits", 5)

import callback_overhead as bench  # noqa: E402
import keras  # noqa: E402
import mlflow  # noqa: E402

from layerprint import LayerprintCallback  # noqa: E402
from layerprint.fit.parts import Parts  # noqa: E402
from layerprint.tracking.sink import RunSink  # noqa: E402

SPENT: collections.Counter = collections.Counter()  # seconds (and counts) of the current fit
_NESTED = threading.local()
HOOKS = ("on_train_begin", "on_epoch_begin", "on_train_batch_begin", "on_train_batch_end", "on_epoch_end",
         "on_train_end")


def counted(function, label: str):
    """``function`` with its thread's CPU time added to ``SPENT[label]`` (outermost calls only)."""

    def timed(*args, **kwargs):
        if getattr(_NESTED, "depth", 0):
            return function(*args, **kwargs)
        _NESTED.depth, started = 1, time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            _NESTED.depth = 0
            SPENT[label] += time.thread_time() - started

    return timed


class CountedCallback(LayerprintCallback):
    """The callback, each hook's training-thread CPU counted."""


for _hook in HOOKS:
    setattr(CountedCallback, _hook, counted(getattr(LayerprintCallback, _hook), f"training thread: {_hook}"))

_guard = Parts.guard


def _counted_guard(self, part, function, *args):
    """Tasks off the training thread, counted by part; the sink's thread is counted on its own."""
    name = threading.current_thread().name
    if name == "MainThread" or name.startswith("layerprint-sink"):
        return _guard(self, part, function, *args)
    return counted(_guard, f"background: {part}")(self, part, function, *args)


Parts.guard = _counted_guard
RunSink._run = counted(RunSink._run, "sink thread")
for _method, _label in (("_send", "log_batch"), ("_open_in_store", "the run's creation"),
                        ("_send_artifacts", "artifacts")):
    _plain = getattr(RunSink, _method)

    def _inner(self, *args, _plain=_plain, _label=_label):
        started = time.thread_time()
        try:
            return _plain(self, *args)
        finally:
            SPENT[f"  of which {_label}"] += time.thread_time() - started
            if _label == "log_batch":
                SPENT["  log_batch calls"] += 1

    setattr(RunSink, _method, _inner)


def one_fit(inputs: dict, shape: tuple[int, int], uri: str) -> dict:
    """One fresh fit's counts, and its points published."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = bench.build(ARGS.model, *shape)
    SPENT.clear()
    callback = CountedCallback(tracking_uri=uri, experiment_name="cpu")
    model.fit(**inputs, epochs=1, verbose=0, callbacks=[callback])
    counts = dict(SPENT)
    client = mlflow.MlflowClient(uri)
    run_id = callback.active_run_id
    counts["points published"] = sum(len(client.get_metric_history(run_id, key))
                                     for key in client.get_run(run_id).data.metrics)
    return counts


def main() -> None:
    inputs, (side, channels) = fit_data(bench, ARGS)
    steps = ARGS.steps or bench.MODELS[ARGS.model][1]
    with tempfile.TemporaryDirectory() as store:
        uri = f"sqlite:///{store}/mlflow.db"
        one_fit(inputs, (side, channels), uri)  # the process's first fit: imports, tables
        fits = [one_fit(inputs, (side, channels), uri) for _ in range(ARGS.fits)]
    print(f"{ARGS.model}, {steps} steps, {ARGS.fits} fresh fits, LayerprintCallback() at its defaults "
          f"(medians; CPU in ms)")
    groups = ("training thread", "sink thread", "  ", "background", "points")
    for label in sorted({label for fit in fits for label in fit},
                        key=lambda k: (next(i for i, g in enumerate(groups) if k.startswith(g)), k)):
        value = statistics.median(fit.get(label, 0) for fit in fits)
        counted_only = label.endswith(("calls", "published"))
        print(f"  {label:46s} {value:8.0f}" if counted_only else f"  {label:46s} {value * 1e3:8.1f}")


if __name__ == "__main__":
    main()
