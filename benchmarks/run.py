"""fliswarm against the original sdss-fliswarm 0.7.0, side by side on the same real test bed.

Usage (root)::

    python3 benchmarks/run.py [--nodes 7] [--repeat 5] [--smoke] [--output docs/performance.md]

It brings up the test bed (instance ``$FLISWARM_TESTBED_ID``, default 12), builds the simulated
flicamera image, installs the original into a cached virtual environment, runs every scenario
against both actors in alternating sessions (the order flips at every repetition), prints the
table (median, min/max, ratio original/ours, target) and writes it to ``--output``. The bed is
brought down at the end unless it was already up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))

import floor  # noqa: E402
import harness  # noqa: E402
import report  # noqa: E402
import scenarios  # noqa: E402
from scenarios import Bench, Results  # noqa: E402

from fliswarm.testbed.bed import Testbed, default_names  # noqa: E402
from fliswarm.testbed.image import ensure_flicamera_image  # noqa: E402


ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=None, help="test bed nodes (7; smoke 3)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (5; smoke 1)")
    parser.add_argument("--smoke", action="store_true", help="short CI run")
    parser.add_argument("--output", type=Path, default=None, help="markdown report to write")
    parser.add_argument("--idle", type=float, default=None, help="idle window, s (60; smoke 5)")
    parser.add_argument(
        "--scale", type=str, default=None, help="node counts of the scale scenario (5,10,20,50)"
    )
    parser.add_argument(
        "--only", type=str, default="", help="comma-separated: a,b,floor,idle,scale"
    )
    parser.add_argument("--instance", type=int, default=None, help="test bed instance")
    args = parser.parse_args(argv)
    args.nodes = args.nodes or (3 if args.smoke else 7)
    args.repeat = args.repeat or (1 if args.smoke else 5)
    args.idle = args.idle if args.idle is not None else (5.0 if args.smoke else 60.0)
    if args.scale is None:
        args.scale = "3,6" if args.smoke else "5,10,20,50"
    args.scale_counts = [int(c) for c in args.scale.split(",") if c.strip()]
    args.only = {p.strip() for p in args.only.split(",") if p.strip()} or {
        "a",
        "b",
        "floor",
        "idle",
        "scale",
    }
    return args


async def run(args: argparse.Namespace, bed: Testbed) -> tuple[Results, list[int]]:
    results = Results()
    image = await asyncio.to_thread(ensure_flicamera_image, bed.registry)
    await asyncio.to_thread(harness.ensure_orig_venv)
    for node in bed.nodes:
        await asyncio.to_thread(harness.provide_usb_bus, bed, node.name)
    workdir = harness.CACHE_DIR / "work" / str(bed.instance)
    bench = Bench(bed, image, [n.name for n in bed.nodes], workdir, results, args.smoke)

    for rep in range(args.repeat):
        order = ["orig", "ours"] if rep % 2 == 0 else ["ours", "orig"]
        for kind in order if {"a", "b"} & args.only else []:
            print(f"repetition {rep + 1}/{args.repeat}: {kind}", flush=True)
            if "a" in args.only:
                await scenarios.session_a(bench, kind)
            if "b" in args.only:
                await scenarios.session_b(bench, kind)
        if "floor" in args.only:
            await floor.session_floor(bench)
    if "idle" in args.only:
        for kind in ("orig", "ours"):
            print(f"idle: {kind} ({args.idle:g} s)", flush=True)
            await scenarios.session_idle(bench, kind, args.idle)
    counts: list[int] = []
    if "scale" in args.only and args.scale_counts:
        import scale

        counts = await scale.run_scale(bench, args.scale_counts)
    await asyncio.to_thread(harness.clean_nodes, bed)
    note = floor.floor_note(bench)
    if note:
        results.note(note)
    return results, counts


def write_doc(
    path: Path,
    info: dict[str, str],
    rows: list[list[str]],
    args: argparse.Namespace,
    results: Results,
    failed: list[str],
) -> None:
    from doc_text import render

    path.write_text(render(info, report.markdown(rows), args, results.notes, failed))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("The benchmarks need root (test bed: network namespaces, dockerd).")
        return 2
    instance = args.instance
    if instance is None:
        instance = int(os.environ.get("FLISWARM_TESTBED_ID", "12") or 12)
    names = default_names(args.nodes)
    bed = Testbed(instance, names=names)
    state = bed._load()
    was_up = state is not None and state["names"] == names
    if state is not None and not was_up:
        print(
            f"Test bed {instance} is up with nodes {state['names']} (someone else's?): "
            "bring it down first or choose another --instance."
        )
        return 2
    started = time.monotonic()
    bed.up()
    try:
        results, counts = asyncio.run(run(args, bed))
    finally:
        if not was_up:
            bed.down()
    rows = report.table(results, report.METRICS + report.scale_metrics(counts))
    failed = report.verdicts(rows)
    info = harness.machine_info()
    info["duration"] = f"{(time.monotonic() - started) / 60:.1f} min"
    print()
    for key, value in info.items():
        print(f"{key}: {value}")
    print()
    print(report.text_table(rows))
    for note in results.notes:
        print(f"note: {note}")
    for line in failed:
        print(line)
    if args.output:
        output = args.output if args.output.is_absolute() else ROOT / args.output
        write_doc(output, info, rows, args, results, failed)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
