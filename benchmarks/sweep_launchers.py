"""Wall time of the demo sweep (12 jobs) with each launcher, and the fraction of the CPU-bound best it reaches.

Each launcher runs the whole ``layerprint-train -m experiment=demo`` command line (process start,
imports, the parent run, the jobs, compare and plots at the end) into a fresh SQLite store, in
interleaved rounds: Hydra's basic launcher (one job after another, in the launching process), joblib
with 2 workers, Ray on a local cluster of this machine's CPUs, and submitit's local jobs.

The CPU-bound best: a sweep that used C CPU seconds cannot end before C / cores seconds on this
machine. ``fraction = (C / cores) / wall`` is how close a launcher comes to that, from 0 to 1: the
share of the machine's CPU time, while it ran, that went to the sweep. C is read from the whole
machine's counters (``/proc/stat``: user, nice, system, irq, softirq), so it counts the worker
processes and daemons a launcher starts (Ray's) that a parent process never waits for; time the
hypervisor gave to other guests (steal) is left out of the machine's time. The goal (issue 16) is
>= 0.9 for the parallel launchers on 2 cores; the basic launcher runs one job at a time.

Run: ``.venv/bin/python benchmarks/sweep_launchers.py [rounds]``
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
CORES = os.cpu_count() or 1
GOAL = 0.9
LAUNCHERS = {
    "basic": [],
    "joblib, 2 workers": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    f"ray, local cluster of {CORES} CPUs": ["hydra/launcher=ray", f"hydra.launcher.ray.init.num_cpus={CORES}"],
    "submitit local jobs": ["hydra/launcher=submitit_local_jobs"],
}
PARALLEL = [name for name in LAUNCHERS if name != "basic"]


def _cpu_ticks() -> tuple[int, int, int]:
    """(busy, steal, all) clock ticks of the whole machine so far, from ``/proc/stat``."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal, sum(fields[:8])


def sweep(extra: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and the fraction of the CPU-bound best of one demo sweep."""
    with tempfile.TemporaryDirectory() as work:
        busy0, steal0, all0 = _cpu_ticks()
        start = time.perf_counter()
        done = subprocess.run([str(BIN / "layerprint-train"), "-m", "experiment=demo", "device=cpu", *extra],
                              cwd=work, capture_output=True, text=True,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"})
        elapsed = time.perf_counter() - start
        busy1, steal1, all1 = _cpu_ticks()
    if done.returncode != 0:
        raise SystemExit(f"sweep {' '.join(extra) or 'basic'} failed: {done.stderr[-2000:]}")
    busy, available = busy1 - busy0, (all1 - all0) - (steal1 - steal0)
    tick = os.sysconf("SC_CLK_TCK")
    return elapsed, busy / tick, busy / available if available else 0.0


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    walls: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    cpus: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    fractions: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    for _ in range(rounds):
        for name, extra in LAUNCHERS.items():
            wall, cpu, fraction = sweep(extra)
            walls[name].append(wall)
            cpus[name].append(cpu)
            fractions[name].append(fraction)
    basic = statistics.median(walls["basic"])
    print(f"demo sweep (12 jobs) on {CORES} CPUs, {rounds} interleaved rounds, medians:")
    print("| launcher | wall s (rounds) | x basic | CPU s | fraction of the CPU-bound best (rounds) |")
    print("|---|---|---|---|---|")
    for name in LAUNCHERS:
        wall = statistics.median(walls[name])
        print(f"| {name} | {wall:.1f} ({', '.join(f'{v:.1f}' for v in walls[name])}) | {wall / basic:.2f}x | "
              f"{statistics.median(cpus[name]):.1f} | {statistics.median(fractions[name]):.2f} "
              f"({', '.join(f'{v:.2f}' for v in fractions[name])}) |")
    met = [name for name in PARALLEL if statistics.median(fractions[name]) >= GOAL]
    print(f"goal: fraction >= {GOAL} for the parallel launchers: met by {', '.join(met) or 'none'}; "
          f"not met by {', '.join(n for n in PARALLEL if n not in met) or 'none'}")


if __name__ == "__main__":
    main()
