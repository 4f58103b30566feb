"""Benchmark `dunning simulate`: generate N scenarios, simulate them on every core, report journeys/s.

    .venv/bin/python bench/simulate.py                  # 100,000 scenarios, default policy
    .venv/bin/python bench/simulate.py -n 20000 --workers 1
    .venv/bin/python bench/simulate.py --profile 2000   # cProfile of 2,000 journeys in one process

The figure is simulation only (reading, validating, simulating, checking rules, reporting);
generating the file is timed separately. cProfile sees only Python code: the modules `make install`
compiles show up as single built-in calls (after `make clean` the profile covers their source).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dunning import generator, simulate  # noqa: E402
from dunning.policy import load_policy  # noqa: E402


def _group_lines(args: tuple[int, int, int]) -> list[str]:
    seed, first, last = args
    return [generator.to_line(scenario) for index in range(first, last) for scenario in generator.scenario_group(seed, index)]


def generate(path: Path, n: int, seed: int, workers: int) -> None:
    """The same file as `dunning scenarios generate n --seed seed`, made on every core."""
    chunk = 2000
    tasks = [(seed, i, i + chunk) for i in range(0, n, chunk)]  # groups; n scenarios need <= n groups
    written = 0
    with open(path, "w", encoding="utf-8") as handle, get_context("fork").Pool(workers) as pool:
        for lines in pool.imap(_group_lines, tasks):
            for line in lines:
                if written == n:
                    return
                handle.write(line)
                written += 1


def profile(path: Path, policy, journeys: int) -> None:
    lines = simulate.read_lines(path)[:journeys]
    small = path.with_suffix(".profile.jsonl")
    small.write_text("".join(line.text if line.text.endswith("\n") else line.text + "\n" for line in lines))
    profiler = cProfile.Profile()
    profiler.enable()
    simulate.simulate_file(small, policy, workers=1)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    rows = []
    for (filename, line, name), (_, _, tottime, cumtime, _) in stats.stats.items():
        where = os.path.relpath(filename, ROOT) if filename.startswith(str(ROOT)) else Path(filename).name
        rows.append((cumtime, tottime, f"{where}:{line}({name})"))
    print(f"\nprofile of {len(lines)} journeys in one process ({total:.2f} s): cumulative % of the run")
    for cumtime, tottime, label in sorted(rows, reverse=True)[:40]:
        if label.startswith(("dunning/", "bench/")) or "pydantic" in label:
            print(f"  {100 * cumtime / total:5.1f}%  (self {100 * tottime / total:4.1f}%)  {label}")


def _interpreter() -> str:
    """Which Python ran it: builds of one version differ by a quarter in speed (README, Speed)."""
    return f"Python {platform.python_version()} at {os.path.realpath(sys.executable)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000, help="scenarios (default 100,000)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--policy", default=str(ROOT / "policies" / "default.yaml"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="also profile N journeys in one process")
    args = parser.parse_args()
    policy = load_policy(args.policy)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scenarios.jsonl"
        started = time.perf_counter()
        generate(path, args.n, args.seed, args.workers)
        made = time.perf_counter() - started
        print(f"generated {args.n:,} scenarios in {made:.1f} s ({args.n / made:,.0f}/s, {args.workers} processes)")
        started = time.perf_counter()
        result = simulate.simulate_file(path, policy, workers=args.workers)
        took = time.perf_counter() - started
        report = result.policy.to_dict()
        print(
            f"simulated {report['journeys']:,} journeys in {took:.1f} s: {report['journeys'] / took:,.0f} journeys/s "
            f"({args.workers} processes, {os.cpu_count()} cores, {_interpreter()})"
        )
        print(
            f"recovered {report['recovered']['rate']:.1%}, {report['attempts']['total']:,} attempts, "
            f"{report['messages']['total']:,} messages, violations: network {report['violations']['network']}, "
            f"messaging {report['violations']['messaging']}"
        )
        if args.profile:
            profile(path, policy, args.profile)


if __name__ == "__main__":
    main()
