"""A raw client of the LegacyActor protocol, for tests that talk to a real fliswarm actor.

It sends ``"<mid> <command>\\n"`` and reads ``"<uid> <mid> <code> k1=v1; k2=v2"`` lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clu import LegacyActor
from helpers_net import free_port

from fliswarm_testbed.tron_client import TronClient, TronTimeoutError, parse_keywords


__all__ = [
    "ActorLine",
    "ActorReply",
    "ActorClient",
    "FlicameraProcesses",
    "free_port",
    "running_flicameras",
    "tron_ready",
    "write_config",
]

FINISH_CODES = frozenset(":f!")


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


class FlicameraProcesses:
    """Real flicamera actors (fliswarm's test-bed launcher) on the host, on loopback.

    A synchronous wrapper for module-scoped fixtures: `start` launches them all at once and
    waits until each listens; `kill` and `stop` end them.
    """

    def __init__(self, data_dir: str | os.PathLike[str]):
        self.data_dir = Path(data_dir)
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}

    def start(self, names: Sequence[str], timeout: float = 60.0) -> FlicameraProcesses:
        """Starts the actors; if one does not listen, stops them all and raises."""

        try:
            return self._start(names, timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, names: Sequence[str], timeout: float) -> FlicameraProcesses:
        from fliswarm_testbed.image import LAUNCHER

        for name in names:
            port = free_port()
            env = dict(os.environ)
            env.update(
                ACTOR_NAME=name,
                OBSERVATORY="APO",
                FLICAMERA_HOST="127.0.0.1",
                FLICAMERA_PORT=str(port),
                FLICAMERA_DATA_DIR=str(self.data_dir),
            )
            log_path = self.data_dir / "logs" / f"flicamera-launcher-{name}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, str(LAUNCHER)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            self.ports[name] = port
        deadline = time.monotonic() + timeout
        for name in names:
            while True:
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"flicamera {name} exited; see {self.data_dir}/logs.")
                try:
                    with socket.create_connection(("127.0.0.1", self.ports[name]), 0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"flicamera {name} not listening.") from None
                    time.sleep(0.05)
        return self

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def running_flicameras(
    data_dir: str | os.PathLike[str], names: Sequence[str]
) -> Iterator[FlicameraProcesses]:
    """Starts flicamera actors, yields them and stops them: a fixture body (``yield from``)."""

    procs = FlicameraProcesses(data_dir)
    try:
        yield procs.start(names)
    finally:
        procs.stop()


async def tron_ready(client: TronClient, actor: str, timeout: float) -> None:
    """Waits until ``actor`` answers a ping through tron (tron has connected to it).

    A command sent while tron connects to the actor can be lost (tron mislabels it until it has
    read a first line from the actor): those time out and are retried.
    """

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            reply = await client.send("ping", actor=actor, timeout=2)
        except TronTimeoutError as err:
            last = str(err)
            continue
        if reply.ok:
            return
        last = str(reply)
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{actor} not reachable through tron:\n{last}")


def write_config(
    path: str | os.PathLike[str],
    actor_port: int,
    ports: dict[str, int],
    enabled: Sequence[str],
    categories: dict[str, str] | None = None,
    **extra: object,
) -> Path:
    """Writes a flat fliswarm configuration for nodes on the host (127.0.0.1).

    Each node's Docker engine address points to a closed port (Docker unreachable).
    """

    import yaml

    closed = free_port()
    categories = categories or {}
    actor = {"name": "fliswarm", "host": "127.0.0.1", "port": actor_port}
    actor.update(extra.pop("actor", {}))  # type: ignore[call-overload]
    config: dict[str, object] = {
        "actor": actor,
        "image": "sdss/flicamera:latest",
        "nodes": {
            name: {
                "host": "127.0.0.1",
                "port": port,
                "category": categories.get(name, name.rstrip("0123456789")),
                "docker-client": f"tcp://127.0.0.1:{closed}",
            }
            for name, port in ports.items()
        },
        "enabled_nodes": list(enabled),
    }
    config.update(extra)
    path = Path(path)
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.asynccontextmanager
async def plain_actor(name: str, parser: object) -> AsyncIterator[LegacyActor]:
    """A real CLU `~clu.legacy.LegacyActor` (not fliswarm) with ``parser`` on a free
    loopback port, without a tron connection; stopped with its clients at the end."""

    actor = LegacyActor(name, "127.0.0.1", free_port(), version="1.2.3")
    actor.parser = parser
    actor.load_schema(None, additional_properties=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "starting LegacyActor without Tron connection."
        await asyncio.wait_for(actor.start(), 10)
    try:
        yield actor
    finally:
        for transport in list(actor.transports.values()):
            transport.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(actor.stop(), 10)
