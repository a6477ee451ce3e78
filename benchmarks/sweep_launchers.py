"""Wall time of the demo sweep (12 jobs) with Hydra's basic launcher and with joblib on 2 workers.

Each launcher runs the whole ``layerprint-train -m experiment=demo`` command line (process start,
imports, the parent run, the jobs, compare and plots at the end) into a fresh SQLite store, in
interleaved rounds. Target (issue 5): joblib <= 0.65x of basic.

It also reports the CPU seconds each command used (its own and its worker processes', user + system):
no launcher can finish in less wall time than that CPU time divided by the machine's cores, so
``joblib CPU / cores / basic wall`` is the best ratio this machine allows for the same work.

Run: ``.venv/bin/python benchmarks/sweep_launchers.py [rounds]``
"""

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
TARGET = 0.65
LAUNCHERS = {
    "basic": [],
    "joblib, 2 workers": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sweep(extra: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one demo sweep."""
    with tempfile.TemporaryDirectory() as work:
        cpu = _children_cpu()
        start = time.perf_counter()
        done = subprocess.run([str(BIN / "layerprint-train"), "-m", "experiment=demo", "device=cpu", *extra],
                              cwd=work, capture_output=True, text=True,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"})
        elapsed = time.perf_counter() - start
        cpu = _children_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"sweep failed: {done.stderr[-2000:]}")
    return elapsed, cpu


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    times: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    cpus: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    for _ in range(rounds):
        for name, extra in LAUNCHERS.items():
            wall, cpu = sweep(extra)
            times[name].append(wall)
            cpus[name].append(cpu)
    basic, joblib = (statistics.median(times[name]) for name in LAUNCHERS)
    for name, values in times.items():
        print(f"{name:>18}: median {statistics.median(values):.1f} s ({', '.join(f'{v:.1f}' for v in values)}), "
              f"CPU {statistics.median(cpus[name]):.1f} s")
    ratio = joblib / basic
    cores = os.cpu_count() or 1
    best = statistics.median(cpus["joblib, 2 workers"]) / cores / basic
    print(f"demo sweep (12 jobs), joblib/basic = {ratio:.2f}x on {cores} CPUs; "
          f"target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'}; "
          f"joblib CPU time / {cores} cores = {best:.2f}x of basic (the best this machine allows)")


if __name__ == "__main__":
    main()
