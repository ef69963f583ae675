"""A raw client of the LegacyActor protocol, for tests that talk to a real fliswarm actor.

It sends ``"<mid> <command>\\n"`` and reads ``"<uid> <mid> <code> k1=v1; k2=v2"`` lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fliswarm.testbed.tron_client import parse_keywords


__all__ = ["ActorLine", "ActorReply", "ActorClient", "free_port"]

FINISH_CODES = frozenset(":f!")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""

    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class ActorLine:
    """One reply line: user id, command id, code and raw keywords."""

    user_id: int
    command_id: int
    code: str
    keywords: dict[str, str | list[str] | None]
    raw: str

    def values(self, key: str) -> list[str]:
        """The values of a keyword as a list (empty if absent or valueless)."""

        value = self.keywords.get(key)
        if value is None:
            return []
        return value if isinstance(value, list) else [value]


@dataclass
class ActorReply:
    """All the lines of one command, until its final code."""

    command_id: int
    lines: list[ActorLine] = field(default_factory=list)

    @property
    def code(self) -> str | None:
        """The final code (``:``, ``f`` or ``!``), if finished."""

        if self.lines and self.lines[-1].code in FINISH_CODES:
            return self.lines[-1].code
        return None

    def with_keyword(self, key: str) -> list[ActorLine]:
        return [line for line in self.lines if key in line.keywords]

    def texts(self) -> list[str]:
        return [" ".join(line.values("text")) for line in self.with_keyword("text")]

    def __str__(self) -> str:
        return "\n".join(line.raw for line in self.lines)


def parse_line(raw: str) -> ActorLine | None:
    """Parses ``"<uid> <mid> <code> keywords"``; `None` if it is not such a line."""

    parts = raw.split(" ", 3)
    if len(parts) < 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    body = parts[3] if len(parts) == 4 else ""
    return ActorLine(int(parts[0]), int(parts[1]), parts[2], parse_keywords(body), raw)


class ActorClient:
    """A connection to a LegacyActor. Use `connect`, `command`, `close`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        #: Every line received, in order.
        self.lines: list[ActorLine] = []
        self._changed = asyncio.Condition()
        self._mids = itertools.count(100)
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float = 10.0) -> ActorClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return cls(reader, writer)

    async def _read(self) -> None:
        while True:
            data = await self.reader.readline()
            if not data:
                break
            line = parse_line(data.decode(errors="replace").rstrip("\n"))
            if line is None:
                continue
            async with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    @property
    def connected(self) -> bool:
        return not self._task.done()

    async def wait_for(
        self, predicate: Callable[[ActorLine], bool], timeout: float = 10.0, start: int = 0
    ) -> ActorLine:
        """Waits for a line (from index ``start`` on) that matches ``predicate``."""

        deadline = time.monotonic() + timeout
        index = start
        async with self._changed:
            while True:
                while index < len(self.lines):
                    if predicate(self.lines[index]):
                        return self.lines[index]
                    index += 1
                left = deadline - time.monotonic()
                if left <= 0 or self._task.done():
                    raise TimeoutError("no matching line from the actor.")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)

    def send(self, command: str, mid: int | None = None) -> int:
        """Sends a command; returns its command id."""

        mid = next(self._mids) if mid is None else mid
        self.writer.write(f"{mid} {command}\n".encode())
        return mid

    async def command(self, command: str, timeout: float = 30.0) -> ActorReply:
        """Sends a command and collects its lines until its final code.

        Raises
        ------
        TimeoutError
            If the command does not finish within ``timeout`` seconds.
        """

        start = len(self.lines)
        mid = self.send(command)
        await self.wait_for(
            lambda line: line.command_id == mid and line.code in FINISH_CODES, timeout, start
        )
        return ActorReply(mid, [line for line in self.lines[start:] if line.command_id == mid])

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
