"""Many processes logging every step into one store: points per second, and points lost (must be 0).

N writer processes (N = 2, 4, 8) each open a run and log every step of a training run the way the
callback publishes it: ``RunSink.log_metrics`` once a step with the CNN benchmark's 26 series
(``train/loss``, ``train/mae`` and 24 BatchNorm summaries), then ``close`` and ``finish``. They
start together (each waits, imports done and run created, for a start signal) and write as fast as
the sink lets them. Three stores:

- ``sqlite``: the writers open one SQLite file directly (the default, one machine);
- ``server/sqlite``: a real ``mlflow server`` on 127.0.0.1 whose backend is a SQLite file;
- ``server/postgresql``: the same server on a fresh database of the local PostgreSQL
  (127.0.0.1:5432, user ``postgres``), created and dropped by this script.

Points per second = all points / seconds from the start signal until the last writer's run ended.
Lost = points logged - points the store holds afterwards (read back with ``get_metric_history``);
points a writer had to spool are counted separately (they are not lost: ``layerprint sync`` sends them).

Run: ``.venv/bin/python benchmarks/many_writers.py [--writers 2 4 8] [--steps 400]``
"""

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test suite's real-process helpers: mlflow server, PostgreSQL

from helpers import postgres  # noqa: E402
from helpers.processes import MlflowServer  # noqa: E402

SERIES = ["train/loss", "train/mae"] + [f"bn/bn{i}/moving_{stat}/{summary}" for i in range(3)
                                        for stat in ("mean", "variance") for summary in ("mean", "std", "min", "max")]


def writer(uri: str, experiment: str, steps: int, go_file: str, ready_file: str) -> None:
    """One writer process: create a run, wait for the start signal, log every step, end the run.
    Prints ``run_id sent spooled``."""
    from layerprint.tracking.sink import RunSink
    from layerprint.tracking.store import create_client, experiment_id_for

    client = create_client(uri)  # as the callback opens a store
    run = client.create_run(experiment_id_for(client, uri, experiment))
    sink = RunSink(uri, run.info.run_id)
    Path(ready_file).touch()
    while not os.path.exists(go_file):
        time.sleep(0.005)
    for step in range(1, steps + 1):
        sink.log_metrics({key: step * 1e-3 + i for i, key in enumerate(SERIES)}, step)
    stats = sink.close(timeout=600)
    sink.finish("FINISHED")
    print(run.info.run_id, stats.metrics_sent, stats.metrics_spooled, flush=True)


def round_of(uri: str, writers: int, steps: int, work: Path) -> dict[str, float]:
    """Run ``writers`` writer processes against ``uri``; returns points/s, lost and spooled points."""
    experiment = f"writers-{writers}-{time.monotonic_ns()}"
    go, env = work / f"go-{experiment}", {**os.environ, "LAYERPRINT_SPOOL_DIR": str(work / "spool")}
    ready = [work / f"ready-{experiment}-{i}" for i in range(writers)]
    procs = [subprocess.Popen([sys.executable, __file__, "--writer", uri, experiment, str(steps), str(go), str(r)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for r in ready]
    deadline = time.monotonic() + 300
    while not all(r.exists() for r in ready):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            raise SystemExit("a writer did not start: " + "".join(p.communicate()[1][-2000:] for p in procs))
        time.sleep(0.05)
    start = time.perf_counter()
    go.touch()
    outputs = [p.communicate(timeout=900) for p in procs]
    elapsed = time.perf_counter() - start
    if any(p.returncode for p in procs):
        raise SystemExit("a writer failed: " + "".join(err[-2000:] for _, err in outputs))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    stored = spooled = 0
    for out, _ in outputs:
        run_id, _sent, run_spooled = out.split()[-3:]
        spooled += int(run_spooled)
        stored += sum(len(client.get_metric_history(run_id, key)) for key in SERIES)
    logged = writers * steps * len(SERIES)
    return {"points_per_s": logged / elapsed, "seconds": elapsed, "lost": logged - stored - spooled,
            "spooled": spooled, "logged": logged}


@contextlib.contextmanager
def store(kind: str, work: Path):
    """Yield the tracking URI of a fresh store of ``kind``; stop what was started."""
    if kind == "sqlite":
        yield f"sqlite:///{work / 'direct' / 'mlflow.db'}"
        return
    if kind == "server/sqlite":
        server = MlflowServer(work / "server-sqlite").start()
    else:
        reason = postgres.unavailable_reason()
        if reason:
            raise SystemExit(f"server/postgresql: {reason}")
        database = postgres.fresh_database()
        server = MlflowServer(work / "server-postgresql", backend_uri=database.__enter__()).start()
    try:
        yield server.uri
    finally:
        server.kill()
        if kind == "server/postgresql":
            database.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--stores", nargs="+", default=["sqlite", "server/sqlite", "server/postgresql"])
    args = parser.parse_args()
    print(f"{len(SERIES)} series a step, {args.steps} steps a writer, on {os.cpu_count()} CPUs\n")
    print("| store | writers | points | seconds | points/s | spooled | lost |")
    print("|---|---|---|---|---|---|---|")
    lost_any = False
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores:
            work = Path(tmp) / kind.replace("/", "-")
            (work / "direct").mkdir(parents=True)
            with store(kind, work) as uri:
                for writers in args.writers:
                    result = round_of(uri, writers, args.steps, work)
                    lost_any |= result["lost"] != 0
                    print(f"| {kind} | {writers} | {result['logged']:,} | {result['seconds']:.1f} | "
                          f"{result['points_per_s']:,.0f} | {result['spooled']:,} | {result['lost']:,} |", flush=True)
    print("\nlost points: " + ("SOME (see the table)" if lost_any else "0 in every row"))
    if lost_any:
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--writer":
        writer(*sys.argv[2:4], int(sys.argv[4]), *sys.argv[5:7])
    else:
        main()
