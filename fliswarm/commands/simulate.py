"""``simulate``: emit ``filename`` keywords for fake images, a testing aid for other actors."""

from __future__ import annotations

import asyncio
import contextlib
import glob as globlib
import os
import random
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import click

from fliswarm.commands import parser
from fliswarm.commands._common import enabled_names


if TYPE_CHECKING:
    from fliswarm.commands import FLISwarmCommand, NodesType


__all__ = ["simulate", "image_cycle", "find_files", "Simulation"]


def image_cycle(files: Sequence[str], shuffle: bool = False) -> Iterator[str]:
    """Cycles through ``files`` forever, in order or reshuffled at every pass."""

    files = list(files)
    if not files:
        return
    while True:
        order = list(files)
        if shuffle:
            random.shuffle(order)
        yield from order


def find_files(pattern: str) -> list[str]:
    """The regular files matching a glob pattern (``~`` and ``**`` allowed), sorted."""

    paths = globlib.glob(os.path.expanduser(pattern), recursive=True)
    return sorted(path for path in paths if os.path.isfile(path))


class Simulation:
    """A running simulation: what it emits and how to stop it."""

    def __init__(self, pattern: str, n_files: int, delay: float, user: Any):
        self.pattern = pattern
        self.n_files = n_files
        self.delay = delay
        self.user = user
        self.emitted = 0
        self.stop_requested = asyncio.Event()
        self.finished = asyncio.Event()


#: The running simulation of each actor.
_running: weakref.WeakKeyDictionary[Any, Simulation] = weakref.WeakKeyDictionary()


def _actor_running(actor: Any) -> bool:
    return bool(getattr(actor, "_started", True))


@parser.command()
@click.argument("GLOB", type=str, required=False)
@click.option(
    "--delay",
    type=click.FloatRange(min=0.01),
    default=5.0,
    show_default=True,
    help="Seconds between two rounds of images.",
)
@click.option("--random", "shuffle", is_flag=True, help="Random order (reshuffled every pass).")
@click.option("--stop", is_flag=True, help="Stop the running simulation.")
async def simulate(
    command: FLISwarmCommand,
    nodes: NodesType,
    glob: str | None,
    delay: float,
    shuffle: bool,
    stop: bool,
):
    """Emits filename={node, node, path} for each enabled node every DELAY seconds.

    The paths cycle through the files matching GLOB (sorted, or shuffled with --random).
    The command runs until `simulate --stop`; only one simulation runs at a time.
    """

    actor = command.actor
    running = _running.get(actor)

    if stop:
        if running is None:
            return command.fail(error="No simulation is running.")
        running.stop_requested.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(running.finished.wait(), 5)
        return command.finish(text=f"Simulation stopped after {running.emitted} images.")

    if running is not None:
        return command.fail(
            error=f"A simulation of {running.pattern} is already running; "
            "stop it first with simulate --stop."
        )
    if not glob:
        return command.fail(error="A file pattern (GLOB) is needed to start a simulation.")
    try:
        files = await asyncio.wait_for(asyncio.to_thread(find_files, glob), 30)
    except asyncio.TimeoutError:
        return command.fail(error=f"Listing {glob} took more than 30 s.")
    if not files:
        return command.fail(error=f"No files match {glob}.")
    if not enabled_names(nodes):
        return command.fail(error="No enabled nodes to simulate images for.")

    sim = Simulation(glob, len(files), delay, command.commander_id)
    _running[actor] = sim
    paths = image_cycle(files, shuffle)
    command.info(
        text=f"Simulating {len(files)} images every {delay:g} s; stop with simulate --stop."
    )
    try:
        while not sim.stop_requested.is_set() and _actor_running(actor):
            for name in enabled_names(nodes):
                command.info(filename=[name, name, next(paths)])
                sim.emitted += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(sim.stop_requested.wait(), delay)
    finally:
        if _running.get(actor) is sim:
            del _running[actor]
        sim.finished.set()
    return command.finish(text=f"Simulation ended after {sim.emitted} images.")
