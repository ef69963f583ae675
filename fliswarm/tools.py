"""Small public helpers: node selection, ids, a do-nothing command, subprocesses, back-off."""

from __future__ import annotations

import asyncio
import heapq
import random
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeVar


__all__ = [
    "select_nodes",
    "IDPool",
    "FakeCommand",
    "Reporter",
    "Backoff",
    "wait_set",
    "subprocess_run_async",
    "split_names",
]


class _Selectable(Protocol):
    name: str
    category: str | None
    enabled: bool


N = TypeVar("N", bound=_Selectable)


def split_names(names: str | Iterable[str] | None) -> list[str]:
    """Normalises a list or comma-separated string of names.

    Parameters
    ----------
    names
        ``"gfa1, gfa2"``, ``["gfa1", "gfa2"]`` or `None`.

    Returns
    -------
    list
        The stripped, non-empty names in their original order, without duplicates.
    """

    if names is None:
        return []
    if isinstance(names, str):
        names = names.split(",")
    out: list[str] = []
    for name in names:
        name = name.strip()
        if name and name not in out:
            out.append(name)
    return out


def select_nodes(
    nodes: Mapping[str, N],
    category: str | Iterable[str] | None = None,
    names: str | Iterable[str] | None = None,
) -> set[N]:
    """Selects the enabled nodes that match some names or a category.

    Parameters
    ----------
    nodes
        The nodes to select from, keyed by node name. Each has ``name``, ``category``
        and ``enabled`` attributes (as `.Node` does).
    category
        A category (``"gfa"``), or several as a list or comma-separated string.
    names
        Node names, as a list or a comma-separated string.

    Returns
    -------
    set
        The union of the nodes matching ``names`` and those matching ``category``; all
        nodes when neither is given. Disabled nodes are never returned.
    """

    wanted_names = set(split_names(names))
    wanted_categories = set(split_names(category))

    selected: set[N] = set()
    for node in nodes.values():
        if not node.enabled:
            continue
        if not wanted_names and not wanted_categories:
            selected.add(node)
        elif node.name in wanted_names or (
            node.category is not None and node.category in wanted_categories
        ):
            selected.add(node)
    return selected


class IDPool:
    """A pool of positive integer ids that can be returned and reused.

    `get` hands out the smallest returned id first, otherwise one more than the
    largest id ever emitted (starting at 1). Both operations are O(log n).
    """

    def __init__(self) -> None:
        self._next = 1
        self._returned: list[int] = []  # a heap
        self._returned_set: set[int] = set()

    def get(self) -> int:
        """Takes an id from the pool."""

        if self._returned:
            value = heapq.heappop(self._returned)
            self._returned_set.discard(value)
            return value
        value = self._next
        self._next += 1
        return value

    def put(self, value: int) -> None:
        """Returns an id to the pool.

        Raises
        ------
        ValueError
            If the id was never emitted or is already in the pool.
        """

        if not isinstance(value, int) or value < 1 or value >= self._next:
            raise ValueError(f"id {value!r} was never emitted by this pool.")
        if value in self._returned_set:
            raise ValueError(f"id {value!r} was already returned to the pool.")
        heapq.heappush(self._returned, value)
        self._returned_set.add(value)

    @property
    def in_use(self) -> int:
        """How many ids are currently out of the pool."""

        return self._next - 1 - len(self._returned)


class Reporter(Protocol):
    """Where the work on a node reports its progress: a CLU command (``command.info(text=...)``
    goes to its user), the supervisor's log, or `FakeCommand` (nowhere)."""

    def info(self, **keywords: Any) -> Any: ...

    def warning(self, **keywords: Any) -> Any: ...

    def debug(self, **keywords: Any) -> Any: ...


class FakeCommand:
    """A stand-in for a CLU `~clu.command.Command` that accepts any call and does nothing."""

    def __getattr__(self, item: str) -> Any:
        def fake_method(*args: Any, **kwargs: Any) -> None:
            return None

        return fake_method


async def subprocess_run_async(
    *args: str,
    shell: bool = False,
    timeout: float | None = None,
) -> asyncio.subprocess.Process:
    """Runs a program and waits for it, without blocking the event loop.

    Parameters
    ----------
    args
        The program and its arguments (an argv list). With ``shell=True``, a single
        string run through ``/bin/sh``: kept for compatibility, never use it with
        values from the configuration or from commands.
    shell
        Whether to run the single string in ``args`` through the shell.
    timeout
        Seconds to wait before killing the program; `None` waits forever.

    Returns
    -------
    Process
        The finished process; its ``returncode`` is set, and its output is available
        as ``process.stdout_data`` and ``process.stderr_data`` (bytes).

    Raises
    ------
    asyncio.TimeoutError
        If ``timeout`` expired (the program has been killed).
    """

    if shell:
        if len(args) != 1:
            raise ValueError("shell=True takes exactly one command string.")
        proc = await asyncio.create_subprocess_shell(
            args[0], stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    else:
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )

    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise

    proc.stdout_data = stdout  # type: ignore[attr-defined]
    proc.stderr_data = stderr  # type: ignore[attr-defined]
    return proc


async def wait_set(event: asyncio.Event, timeout: float) -> None:
    """Waits until ``event`` is set, at most ``timeout`` seconds; never raises a time-out.

    Not ``wait_for``: on Python 3.11 it swallows a cancellation that comes while the event is
    being set, and a loop waiting on it (a reconciler, an event watcher) then never stops.
    """

    if event.is_set():
        return
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()


class Backoff:
    """Exponential back-off with jitter.

    The n-th delay (from 0) is ``min(maximum, initial * factor**n)``, multiplied by a random
    factor in ``[1 - jitter, 1]`` so that nodes failing together do not retry together.

    Parameters
    ----------
    initial
        The first delay, in seconds (> 0).
    maximum
        The longest delay.
    factor
        Growth factor (>= 1).
    jitter
        Fraction of the delay that is random, in ``[0, 1]``.
    rng
        The random generator (for tests).
    """

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.25,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("invalid back-off parameters.")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self.rng = rng or random.Random()
        #: Delays handed out since the last `reset`.
        self.attempts = 0

    def peek(self) -> float:
        """The upper bound of the next delay (without jitter)."""

        try:
            value = self.initial * self.factor**self.attempts
        except OverflowError:
            value = self.maximum
        return min(self.maximum, value)

    def next(self) -> float:
        """The next delay, in seconds."""

        base = self.peek()
        self.attempts += 1
        return base * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempts = 0
