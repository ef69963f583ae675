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
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from helpers_actor import FINISH_CODES, ActorLine, parse_line

from fliswarm.actor import FLISwarmActor


__all__ = ["LoopThread", "ActorThread", "LineClient", "VALID_CODES", "close_log_files"]

T = TypeVar("T")

#: Every message code a LegacyActor may write.
VALID_CODES = frozenset(">:fe!iwd")


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
        self.actor: FLISwarmActor = self.call(self._start(config, log_dir, supervise), 60)

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
    """A blocking LegacyActor client: raw bytes out, parsed reply lines in."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout)
        self.buffer = b""
        #: Every parsed line, in order; ``bad`` keeps lines that did not parse.
        self.lines: list[ActorLine] = []
        self.bad: list[bytes] = []
        self._mids = itertools.count(1000)
        greeting = self.wait(lambda line: "yourUserID" in line.keywords, timeout)
        self.user_id = int(greeting.values("yourUserID")[0])

    def next_mid(self) -> int:
        return next(self._mids)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, command: str | bytes, mid: int | None = None) -> int:
        """Sends ``"<mid> <command>\\n"``; returns the command id."""

        mid = self.next_mid() if mid is None else mid
        body = command.encode() if isinstance(command, str) else command
        self.send_raw(str(mid).encode() + b" " + body + b"\n")
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
