"""Helpers for the hardening tests: a real actor on its own loop thread, a blocking client.

Hypothesis drives synchronous test functions, so the real `FLISwarmActor` runs in a thread
with its own event loop (`ActorThread`) and the tests talk to it over loopback with a raw,
blocking client of the LegacyActor protocol (`LineClient`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from helpers_actor import FINISH_CODES, ActorLine, parse_line

from fliswarm.actor import FLISwarmActor


__all__ = [
    "LoopThread",
    "ActorThread",
    "LineClient",
    "VALID_CODES",
    "GREETING_KEYWORDS",
    "check_stream",
    "close_log_files",
    "log_offsets",
    "logged_since",
]

T = TypeVar("T")

#: Every message code a LegacyActor may write.
VALID_CODES = frozenset(">:fe!iwd")

#: Command ids for every `LineClient` of the process: no two clients ever send the same id,
#: so a reply that carries another client's command id is told apart from one of ours.
_MIDS = itertools.count(1000)

#: The keywords of a LegacyActor's greeting of a new user (command id 0): ``yourUserID``,
#: ``num_users`` and ``version``.
GREETING_KEYWORDS = frozenset({"yourUserID", "num_users", "version"})


class LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Runs a coroutine on the loop and returns its result."""

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def sync(self, func: Callable[[], T], timeout: float = 10.0) -> T:
        """Runs a function on the loop (to read or change its objects safely)."""

        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(func())
            except BaseException as err:  # pragma: no cover - reported to the caller
                future.set_exception(err)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class ActorThread(LoopThread):
    """A started `FLISwarmActor` whose event loop runs in a daemon thread."""

    def __init__(self, config: dict[str, Any], log_dir: str, supervise: bool = True) -> None:
        super().__init__()
        self.log_dir = log_dir
        try:
            self.actor: FLISwarmActor = self.call(self._start(config, log_dir, supervise), 60)
        except BaseException:
            self.close()
            raise

    async def _start(self, config: dict[str, Any], log_dir: str, supervise: bool) -> FLISwarmActor:
        actor = FLISwarmActor.from_config(config, log_dir=log_dir)
        await actor.start()
        if not supervise:  # Nodes without a Docker engine would be seen offline.
            await actor.supervisor.stop()
        return actor

    def counts(self) -> dict[str, int]:
        """Bookkeeping sizes: users, server transports, device ids and sub-commands."""

        def read() -> dict[str, int]:
            actor = self.actor
            return {
                "users": len(actor.transports),
                "server_transports": len(actor._server.transports),
                "ids_in_use": sum(d.id_pool.in_use for d in actor.flicameras.values()),
                "running": sum(len(d.running) for d in actor.flicameras.values()),
                "tasks": len(asyncio.all_tasks(self.loop)),
            }

        return self.sync(read)

    @property
    def port(self) -> int:
        return int(self.actor.port)

    def log_files(self) -> list[Path]:
        """The actor's own log files (not those of the flicamera processes beside them)."""

        return [
            Path(handler.baseFilename)
            for handler in self.actor.log.handlers
            if isinstance(handler, logging.FileHandler)
        ]

    def stop(self) -> None:
        try:
            self.call(self.actor.stop(), 30)
        finally:
            self.close()
            close_log_files(self.actor)


def close_log_files(actor: Any) -> None:
    """Closes the actor's log files (else a ResourceWarning fires in some later test)."""

    for handler in list(getattr(actor.log, "handlers", [])):
        if isinstance(handler, logging.FileHandler):
            handler.close()


class LineClient:
    """A blocking LegacyActor client: raw bytes out, parsed reply lines in.

    It records the command ids it SENDS (``sent``): `check_stream` checks every line it
    received against them, so a reply misrouted to this client is caught.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout)
        self.buffer = b""
        #: Every parsed line, in order; ``bad`` keeps lines that did not parse.
        self.lines: list[ActorLine] = []
        self.bad: list[bytes] = []
        #: The command ids of every line this client sent.
        self.sent: set[int] = set()
        #: How many of ``lines`` `check_stream` has checked.
        self.checked = 0
        greeting = self.wait(lambda line: "yourUserID" in line.keywords, timeout)
        self.user_id = int(greeting.values("yourUserID")[0])

    def next_mid(self) -> int:
        return next(_MIDS)

    def send_raw(self, data: bytes, mids: Iterable[int] = ()) -> None:
        """Sends bytes as they are; ``mids`` are the command ids of the lines in them."""

        self.sent.update(mids)
        self.sock.sendall(data)

    def send(self, command: str | bytes, mid: int | None = None) -> int:
        """Sends ``"<mid> <command>\\n"``; returns the command id."""

        mid = self.next_mid() if mid is None else mid
        body = command.encode() if isinstance(command, str) else command
        self.send_raw(str(mid).encode() + b" " + body + b"\n", (mid,))
        return mid

    def _read_some(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return False
        if not data:
            raise ConnectionError("the actor closed the connection.")
        self.buffer += data
        *raw_lines, self.buffer = self.buffer.split(b"\n")
        for raw in raw_lines:
            line = parse_line(raw.decode(errors="replace"))
            if line is None:
                self.bad.append(raw)
            else:
                self.lines.append(line)
        return True

    def wait(
        self, predicate: Callable[[ActorLine], bool], timeout: float = 10.0, start: int = 0
    ) -> ActorLine:
        """Reads until a line (from index ``start``) matches; `TimeoutError` otherwise."""

        deadline = time.monotonic() + timeout
        index = start
        while True:
            while index < len(self.lines):
                if predicate(self.lines[index]):
                    return self.lines[index]
                index += 1
            if not self._read_some(deadline) and time.monotonic() >= deadline:
                raise TimeoutError("no matching line from the actor.")

    def finish(self, mid: int, timeout: float = 10.0) -> list[ActorLine]:
        """Waits for the final line of command ``mid``; returns all its lines."""

        self.wait(lambda line: line.command_id == mid and line.code in FINISH_CODES, timeout)
        return [line for line in self.lines if line.command_id == mid]

    def command(self, command: str | bytes, timeout: float = 10.0) -> list[ActorLine]:
        return self.finish(self.send(command), timeout)

    def close(self) -> None:
        self.sock.close()


def check_stream(client: LineClient) -> None:
    """Every line ``client`` received (since the last check) is well-formed and its own.

    A line parses, has a valid code and is either a broadcast (``0 0``), a user greeting
    (command id 0: CLU writes each new user's ``yourUserID`` and ``version`` lines, with
    that user's id, to every connection), or a reply with this client's user id and a
    command id this client SENT. Any other line (another user's id, a command id this
    client never sent) is a misrouted reply.
    """

    assert not client.bad, f"malformed lines from the actor: {client.bad[:3]!r}"
    for line in client.lines[client.checked :]:
        assert line.code in VALID_CODES, f"invalid code: {line.raw[:200]!r}"
        if line.command_id == 0:
            assert line.user_id == 0 or line.keywords.keys() <= GREETING_KEYWORDS, (
                f"a line for user {line.user_id} without a command id that is not a "
                f"greeting: {line.raw[:200]!r}"
            )
            continue
        assert line.user_id == client.user_id, (
            f"a reply for user {line.user_id} reached user {client.user_id}: {line.raw[:200]!r}"
        )
        assert line.command_id in client.sent, (
            f"a reply with command id {line.command_id}, which user {client.user_id} never "
            f"sent: {line.raw[:200]!r}"
        )
    client.checked = len(client.lines)


def log_offsets(paths: Iterable[Path]) -> dict[Path, int]:
    """The size of each log file, to read what is written to it after."""

    return {path: path.stat().st_size if path.exists() else 0 for path in paths}


def logged_since(offsets: dict[Path, int]) -> str:
    """What the log files of ``offsets`` (from `log_offsets`) gained since."""

    text = []
    for path, offset in offsets.items():
        with open(path, "rb") as f:
            f.seek(offset)
            text.append(f.read().decode(errors="replace"))
    return "".join(text)
