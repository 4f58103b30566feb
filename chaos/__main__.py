"""`python -m chaos` (`make chaos N=30`): see chaos/run.py. Exit 0 = PASS, 1 = a violation, 2 = no stack."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from chaos.run import Options, main


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("-n", "--journeys", type=int, default=30, help="failed payments to play (default 30)")
    parser.add_argument("--kills", type=int, default=2, help="worker kills (SIGKILL), the two workers in turn (default 2)")
    parser.add_argument("--restarts", type=int, default=1, help="Temporal server restarts (default 1)")
    parser.add_argument("--lost-responses", type=int, default=3, help="charge answers the sandbox drops before each kill (default 3)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the chaos policy's offsets (1 = a 40 s ladder)")
    parser.add_argument("--spread", type=float, default=None, help="seconds over which journeys start (default N/4, at most 10)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for every journey to end after the last delivery")
    parser.add_argument(
        "--fail-orphaned-activities", action="store_true",
        help="fail activity attempts held by a killed worker (or lost in a restart) instead of waiting out their 2-minute timeout",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="use this (empty) dir instead of a temporary one; kept afterwards")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir and logs after a PASS too")
    args = parser.parse_args(argv)
    if args.journeys < 1:
        parser.error("--journeys must be at least 1")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    return Options(
        journeys=args.journeys, kills=args.kills, restarts=args.restarts, lost_responses=args.lost_responses,
        scale=args.scale, spread=args.spread, timeout=args.timeout,
        fail_orphaned_activities=args.fail_orphaned_activities, data_dir=args.data_dir, keep=args.keep,
    )


def _stop(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds into main()'s cleanup


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    sys.exit(main(parse(sys.argv[1:]), say=lambda line: print(line, flush=True)))
