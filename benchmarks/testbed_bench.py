"""Bring-up and tear-down times of the Docker test bed (needs root).

Usage: ``python3 benchmarks/testbed_bench.py [--instance I] [--repeat N]``.

Targets: 3 nodes up <= 5 s and down <= 5 s; 7 nodes up <= 10 s. The instance (default
``$FLISWARM_TESTBED_ID`` or 0) must not be up already. Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from fliswarm_testbed import Testbed


TARGETS = {("up", 3): 5.0, ("down", 3): 5.0, ("up", 7): 10.0, ("down", 7): 10.0}


def measure(instance: int | None, n_nodes: int) -> tuple[float, float]:
    """One bring-up and tear-down of an ``n_nodes`` bed; their durations in seconds."""

    bed = Testbed(instance=instance, n_nodes=n_nodes)
    if bed.is_up():
        raise SystemExit(f"test bed {bed.instance} is already up: use another --instance.")
    start = time.monotonic()
    try:
        bed.up()
        up = time.monotonic() - start
        status = bed.status()
        if not all(s["answering"] for s in status.values()):
            raise SystemExit(f"some engines do not answer: {status}")
    finally:
        start = time.monotonic()
        bed.down()
        down = time.monotonic() - start
    return up, down


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instance", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    failed = False
    print(f"{'nodes':>5s} {'phase':>5s} {'median':>8s} {'max':>8s} {'target':>8s}")
    for n_nodes in (3, 7):
        runs = [measure(args.instance, n_nodes) for _ in range(args.repeat)]
        for phase, values in (("up", [r[0] for r in runs]), ("down", [r[1] for r in runs])):
            target = TARGETS[(phase, n_nodes)]
            worst = max(values)
            verdict = "ok" if worst <= target else "SLOW"
            failed |= worst > target
            print(
                f"{n_nodes:5d} {phase:>5s} {statistics.median(values):7.2f}s {worst:7.2f}s "
                f"{target:7.1f}s {verdict}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
