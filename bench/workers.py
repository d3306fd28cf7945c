"""Does `launch.workers: 2` pay on this machine? The same beta sweep run with `workers: 1` (the runs one after another
in the command's own process) and `workers: 2` (two `run-one` processes at once, each with its share of the cores),
and `workers: 2` without that split (every process all the cores, as before the launcher split them), the three
alternated in each round, each into a fresh --out directory.

A warm-up sweep first fills the dporef cache (the world, the reference scores), which every round then shares: what is
timed is what a user waits for once the cache is warm, the whole `dporef sweep-beta` command (prepare, runs, report),
and the runs stage alone as the command's results.json records it. Prints the machine, a row per round, and the
medians' ratios to one worker (below 1: faster), for two workers with the launcher's core split and without it.

    python bench/workers.py                  # 4 betas x 30 steps (5 runs with the SFT row), 2 rounds of each arm
    python bench/workers.py --sweep default --split-only   # the default RQ1 sweep as it ships (7 runs)
    python bench/workers.py --sweep quick --rounds 1   # 1 beta x 2 steps: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the sweeps it can time: the embedded default RQ1 experiment as it ships (6 betas, its own steps), the 4-beta 30-step
# cut of it the workers question was first measured on, and a tiny one that only checks the benchmark runs
SWEEPS = {
    "default": [],
    "short": ["objectives.0.betas=[3,1,0.3,0.1]", "train.max_steps=30"],
    "quick": ["objectives.0.betas=[0.3]", "train.max_steps=2", "eval.n_prompts=16"],
}
# (label, launch.workers, environment): one worker (the runs in the command's process), two workers with the cores
# split between them (what the local launcher does), and two that each use every core (the launcher without its split:
# a user-set OMP_NUM_THREADS is kept as it is)
EVERY_CORE = {v: str(len(os.sched_getaffinity(0))) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
ARMS = [("1 worker", 1, {}), ("2 workers, cores split", 2, {}), ("2 workers, every core each", 2, EVERY_CORE)]


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    threads = ", ".join(f"{v}={os.environ[v]}" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if v in os.environ)
    return f"{model}, {len(os.sched_getaffinity(0))} usable cores; {threads or 'OMP_NUM_THREADS unset'}"


def sweep(out: Path, workers: int, sets: list[str], env: dict) -> tuple[float, float]:
    """One `dporef sweep-beta` of the embedded default experiment into `out`: (wall seconds, runs-stage seconds)."""
    sets = [*sets, f"launch.workers={workers}"]
    argv = [sys.executable, "-m", "dpo_ref", "sweep-beta", "--out", str(out), *[a for s in sets for a in ("--set", s)]]
    out.mkdir(parents=True)
    log = out / "dporef.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
        code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=environment)
    wall = time.perf_counter() - t0
    if code.returncode:
        sys.exit(f"{' '.join(argv)} exited with {code.returncode}; its output ends:\n{log.read_text()[-3000:]}")
    results = json.loads((out / "rq1_sweep_beta" / "results.json").read_text())
    return wall, results["stage_seconds"]["runs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", choices=SWEEPS, default="short", help="which sweep (default: short)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each arm (default 2)")
    parser.add_argument("--split-only", action="store_true", help="leave out the arm without the core split (slow)")
    parser.add_argument("--work", type=Path, help="where the rounds write (default: a temporary directory)")
    args = parser.parse_args()
    sets, work = SWEEPS[args.sweep], args.work or Path(tempfile.mkdtemp(prefix="dporef-bench-workers-"))
    arms = ARMS[:2] if args.split_only else ARMS
    print(f"machine: {machine()}")
    print(f"sweep: {args.sweep} ({' '.join(sets) or 'as it ships'}), plus the SFT row; {args.rounds} rounds; in {work}")
    sweep(work / "warm-up", 1, sets, {})
    seconds = {label: {"wall": [], "runs": []} for label, _, _ in arms}
    print(f"{'round':>5}  {'arm':<28} {'wall s':>8} {'runs s':>8}")
    for r in range(1, args.rounds + 1):
        for i, (label, workers, env) in enumerate(arms):
            wall, runs = sweep(work / f"round{r}-arm{i}", workers, sets, env)
            seconds[label]["wall"].append(wall)
            seconds[label]["runs"].append(runs)
            print(f"{r:>5}  {label:<28} {wall:>8.1f} {runs:>8.1f}", flush=True)
    base = ARMS[0][0]
    median = {label: {k: statistics.median(v) for k, v in by.items()} for label, by in seconds.items()}
    for label in seconds:
        ratio = median[label]["wall"] / median[base]["wall"]
        runs_ratio = median[label]["runs"] / median[base]["runs"]
        print(f"{label:<28} median wall {median[label]['wall']:.1f}s, runs {median[label]['runs']:.1f}s; "
              f"ratio to {base}: {ratio:.3f} (runs stage {runs_ratio:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
