"""fliswarm against the original sdss-fliswarm 0.7.0, side by side on the same real test bed.

Usage (root)::

    python3 benchmarks/run.py [--nodes 7] [--repeat 5] [--smoke] [--output docs/performance.md]
    python3 benchmarks/run.py --prepare      # only the slow first-time set-up, then exit

It brings up the test bed (instance ``$FLISWARM_TESTBED_ID``, default 12), builds the simulated
flicamera image, installs the original into a cached virtual environment, runs every scenario
against both actors in alternating sessions (the order flips at every repetition), prints the
table (median, min/max, ratio original/ours, target) and writes the page: by default
``docs/performance.md`` for a full run; a ``--smoke`` or ``--only`` run writes only to an
explicit ``--output``. The page records the commit it measured. The bed is brought down at the
end unless it was already up.

SIGTERM stops the run and cleans up as at the end of a run (actors and flicamera processes
stopped, bed down), then exits with 143.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType


sys.path.insert(0, str(Path(__file__).parent))

import floor  # noqa: E402
import harness  # noqa: E402
import report  # noqa: E402
import scenarios  # noqa: E402
from provenance import source_revision  # noqa: E402
from scenarios import Bench, Results  # noqa: E402

from fliswarm_testbed.bed import Testbed, default_names  # noqa: E402
from fliswarm_testbed.image import ensure_flicamera_image  # noqa: E402


ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = Path("docs/performance.md")
#: Idle CPU is measured over this many equal windows per actor, spread over the repetitions.
IDLE_WINDOWS = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=None, help="test bed nodes (7; smoke 3)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (5; smoke 1)")
    parser.add_argument("--smoke", action="store_true", help="short CI run")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"markdown page to write (default {DEFAULT_OUTPUT} for a full run; "
        "none with --smoke or --only)",
    )
    parser.add_argument("--idle", type=float, default=None, help="idle time, s (60; smoke 5)")
    parser.add_argument(
        "--scale", type=str, default=None, help="node counts of the scale scenario (5,10,20,50)"
    )
    parser.add_argument(
        "--only", type=str, default="", help="comma-separated: a,b,floor,idle,scale"
    )
    parser.add_argument("--instance", type=int, default=None, help="test bed instance")
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="only the slow first-time set-up (the original's virtual environment, the "
        "flicamera image built and pushed to the bed's registry), then exit",
    )
    args = parser.parse_args(argv)
    partial = bool(args.only.strip())
    args.nodes = args.nodes or (3 if args.smoke else 7)
    args.repeat = args.repeat or (1 if args.smoke else 5)
    args.idle = args.idle if args.idle is not None else (5.0 if args.smoke else 60.0)
    args.idle_windows = IDLE_WINDOWS
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
    if args.output is None and not (args.smoke or partial or args.prepare):
        args.output = DEFAULT_OUTPUT
    return args


def idle_windows(repeat: int, windows: int = IDLE_WINDOWS) -> list[int]:
    """How many idle windows each repetition measures (``windows`` in all)."""

    return [windows // repeat + (1 if rep < windows % repeat else 0) for rep in range(repeat)]


class Terminated(BaseException):
    """SIGTERM was received: stop, clean up, exit 143 (not caught by ``except Exception``)."""


class Sigterm:
    """SIGTERM handling: outside the event loop it raises `Terminated`; inside, it cancels
    the main task (so every ``finally`` of the scenarios runs: actors and flicamera
    processes stopped). Once received, later SIGTERMs are ignored so that the clean-up is
    not cut short (the sender escalates to SIGKILL if it takes too long)."""

    def __init__(self) -> None:
        self.received = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN if self.received else self._raise)

    def ignore(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def _raise(self, signum: int, frame: FrameType | None) -> None:
        self._note()
        self.ignore()
        raise Terminated()

    def _note(self) -> None:
        self.received = True
        print("SIGTERM: stopping and cleaning up ...", file=sys.stderr, flush=True)

    def _cancel(self, task: asyncio.Task[object]) -> None:
        if not self.received:
            self._note()
            task.cancel()

    def enter_loop(self) -> None:
        """Called first thing in the main coroutine."""

        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._cancel, task)

    def leave_loop(self) -> None:
        """Called last thing in the main coroutine (the loop would reset SIGTERM to its
        default action when it closes)."""

        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        self.install()


async def run(
    args: argparse.Namespace, bed: Testbed, image: str, sigterm: Sigterm
) -> tuple[Results, list[int]]:
    sigterm.enter_loop()
    try:
        return await _run(args, bed, image)
    finally:
        sigterm.leave_loop()


async def _run(args: argparse.Namespace, bed: Testbed, image: str) -> tuple[Results, list[int]]:
    results = Results()
    for node in bed.nodes:
        await asyncio.to_thread(harness.provide_usb_bus, bed, node.name)
    workdir = harness.CACHE_DIR / "work" / str(bed.instance)
    bench = Bench(bed, image, [n.name for n in bed.nodes], workdir, results, args.smoke)
    idle = (
        idle_windows(args.repeat, args.idle_windows) if "idle" in args.only else [0] * args.repeat
    )
    idle_window = args.idle / args.idle_windows

    for rep in range(args.repeat):
        order = ["orig", "ours"] if rep % 2 == 0 else ["ours", "orig"]
        for kind in order if {"a", "b"} & args.only else []:
            print(f"repetition {rep + 1}/{args.repeat}: {kind}", flush=True)
            if "a" in args.only:
                await scenarios.session_a(bench, kind)
            if "b" in args.only:
                await scenarios.session_b(bench, kind)
                await scenarios.session_start(bench, kind)
        if "floor" in args.only:
            await floor.session_floor(bench)
        for kind in order if idle[rep] else []:
            print(f"idle: {kind} ({idle[rep]} x {idle_window:g} s)", flush=True)
            await scenarios.session_idle(bench, kind, idle_window, idle[rep])
    counts: list[int] = []
    if "scale" in args.only and args.scale_counts:
        import scale

        counts = await scale.run_scale(bench, args.scale_counts)
    await asyncio.to_thread(harness.clean_nodes, bed)
    for note in (floor.floor_note(bench), floor.relay_floor_note(bench)):
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


def prepare(bed: Testbed) -> str:
    """The slow first-time set-up: the original's venv, the image built and pushed."""

    t0 = time.monotonic()
    image = ensure_flicamera_image(bed.registry)
    print(f"flicamera image {image} ready after {time.monotonic() - t0:.1f} s", flush=True)
    harness.ensure_orig_venv()
    print(f"original's venv ready after {time.monotonic() - t0:.1f} s", flush=True)
    return image


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
    revision = source_revision()
    sigterm = Sigterm()
    sigterm.install()
    try:
        bed.up()
        image = prepare(bed)
        if args.prepare:
            return 0
        results, counts = asyncio.run(run(args, bed, image, sigterm))
    except (Terminated, asyncio.CancelledError):
        if not sigterm.received:
            raise
        return 143
    finally:
        sigterm.ignore()  # The clean-up must not be cut short by another SIGTERM.
        if not was_up:
            bed.down()
            print(f"test bed {instance} down", flush=True)
    rows = report.table(results, report.METRICS + report.scale_metrics(counts))
    failed = report.verdicts(rows)
    info = {"commit": revision, **harness.machine_info()}
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
