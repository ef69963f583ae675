"""An async client for a tron hub's commander port, and tron's keyword format.

Tron sends every line to every connected client; `TronClient` picks out the lines of its own
commands by commander id and message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field


__all__ = [
    "FINISH_CODES",
    "TronClient",
    "TronReply",
    "TronLine",
    "TronError",
    "TronTimeoutError",
    "parse_keywords",
    "check_host",
]

#: Reply codes with which tron considers a command finished.
FINISH_CODES = frozenset(":fF")

_TESTBED_NET = ipaddress.ip_network("10.250.0.0/16")


class TronError(Exception):
    """A tron hub or client failure."""


class TronTimeoutError(TronError, TimeoutError):
    """A wait on tron timed out."""


def check_host(host: str, loopback_only: bool = False) -> None:
    """Raises `ValueError` unless ``host`` is IPv4 loopback (or a 10.250/16 test-bed address)."""

    if host == "localhost":
        return
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address; use 127.0.0.1.") from None
    if addr.version == 4 and (addr.is_loopback or (not loopback_only and addr in _TESTBED_NET)):
        return
    raise ValueError(f"refusing non-loopback, non-test-bed address {host!r}.")


def _read_value(body: str, i: int) -> tuple[str, int]:
    """Reads one (possibly quoted) value starting at ``i``; stops before ``,`` or ``;``."""

    n = len(body)
    while i < n and body[i] == " ":
        i += 1
    if i < n and body[i] in "\"'":
        quote, chars = body[i], []
        i += 1
        while i < n and body[i] != quote:
            if body[i] == "\\" and i + 1 < n:
                i += 1
            chars.append(body[i])
            i += 1
        i += 1
        while i < n and body[i] not in ",;":  # Anything after the closing quote is dropped.
            i += 1
        return "".join(chars), i
    start = i
    while i < n and body[i] not in ",;":
        i += 1
    return body[start:i].strip(), i


def parse_keywords(body: str) -> dict[str, str | list[str] | None]:
    """Parses a tron keyword string into a dict of raw values.

    ``k1=v1; k2="a; b",2; flag`` gives ``{"k1": "v1", "k2": ["a; b", "2"], "flag": None}``.

    Quoted values are unquoted (backslash escapes removed); several comma-separated values
    give a list; a keyword without ``=`` gives `None`.
    """

    result: dict[str, str | list[str] | None] = {}
    i, n = 0, len(body)
    while i < n:
        while i < n and body[i] in " \t;":
            i += 1
        start = i
        while i < n and body[i] not in "=;":
            i += 1
        key = body[start:i].strip()
        if i >= n or body[i] == ";":
            if key:
                result[key] = None
            continue
        values: list[str] = []
        while True:
            value, i = _read_value(body, i + 1)
            values.append(value)
            if i >= n or body[i] != ",":
                break
        result[key] = values[0] if len(values) == 1 else values
    return result


@dataclass(frozen=True)
class TronLine:
    """One line sent by tron to a client: ``<cid> <mid> <actor> <code> <keywords>``."""

    raw: str
    cid: str
    mid: int | None
    actor: str
    code: str
    body: str

    @classmethod
    def parse(cls, raw: str) -> TronLine:
        parts = raw.split(None, 4)
        if len(parts) < 4:
            return cls(raw, "", None, "", "", raw)
        mid = int(parts[1]) if parts[1].isdigit() else None
        return cls(raw, parts[0], mid, parts[2], parts[3], parts[4] if len(parts) > 4 else "")

    @property
    def keywords(self) -> dict[str, str | list[str] | None]:
        """The parsed keywords of this line (see `parse_keywords`)."""

        return parse_keywords(self.body)

    @property
    def finishes(self) -> bool:
        """Whether this line's code finishes a command (``:``, ``f``, ``F``)."""

        return self.code in FINISH_CODES


@dataclass
class TronReply:
    """All the lines tron sent for one command, the last one with a finishing code."""

    command: str
    actor: str
    lines: list[TronLine] = field(default_factory=list)

    @property
    def code(self) -> str:
        """The final code (``:`` done, ``f``/``F`` failed)."""

        return self.lines[-1].code if self.lines else ""

    @property
    def ok(self) -> bool:
        return self.code == ":"

    @property
    def keywords(self) -> dict[str, str | list[str] | None]:
        """Keywords of all lines merged in order (a later line wins)."""

        merged: dict[str, str | list[str] | None] = {}
        for line in self.lines:
            merged.update(line.keywords)
        return merged

    def values(self, key: str) -> list[str]:
        """The value(s) of ``key`` as a list (empty if valueless); `KeyError` if absent."""

        value = self.keywords[key]
        return [] if value is None else [value] if isinstance(value, str) else value

    def __getitem__(self, key: str) -> str | list[str] | None:
        return self.keywords[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keywords

    def __str__(self) -> str:
        return "\n".join(line.raw for line in self.lines)


class TronClient:
    """A user connection to tron's commander port (use `TronClient.connect`).

    Tron sends all traffic to every client; `send` keeps only the lines with this client's
    ``cid`` and the command's ``mid``. `watch` gives a queue of every line received.
    """

    _ids = itertools.count(1)

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, program: str):
        self.cid = f"{program}.p{os.getpid()}c{next(TronClient._ids)}"
        self._reader = reader
        self._writer = writer
        self._mids = itertools.count(1)
        self._pending: dict[int, tuple[list[TronLine], asyncio.Future[None]]] = {}
        self._watchers: list[asyncio.Queue[TronLine]] = []
        self._closed = False
        self._task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(
        cls, host: str, port: int, timeout: float = 10.0, program: str = "fstest"
    ) -> TronClient:
        """Connects to ``host:port``; ``program`` (letters, digits, ``_``) prefixes the cid."""

        check_host(host)
        conn = asyncio.open_connection(host, port, limit=2**22)
        reader, writer = await asyncio.wait_for(conn, timeout)
        return cls(reader, writer, program)

    @property
    def connected(self) -> bool:
        return not self._closed

    async def _read_loop(self) -> None:
        try:
            while data := await self._reader.readline():
                line = TronLine.parse(data.decode(errors="replace").rstrip("\r\n"))
                for queue in list(self._watchers):
                    queue.put_nowait(line)
                entry = self._pending.get(line.mid) if line.cid == self.cid else None  # type: ignore[arg-type]
                if entry is not None:
                    entry[0].append(line)
                    if line.finishes and not entry[1].done():
                        entry[1].set_result(None)
        except (OSError, ValueError):
            pass
        finally:
            self._closed = True
            for _, future in self._pending.values():
                if not future.done():
                    future.set_exception(TronError("the connection to tron was closed."))

    async def send(
        self, command: str, actor: str = "fliswarm", timeout: float = 30.0
    ) -> TronReply:
        """Sends ``command`` to ``actor`` through tron and returns its reply when finished.

        Raises `TronTimeoutError` (listing the lines seen) if no finishing line arrives within
        ``timeout`` seconds, `TronError` if the connection closes. A failed command is not an
        exception: check `TronReply.code`/`TronReply.ok`.
        """

        if self._closed:
            raise TronError("not connected to tron.")
        if "\n" in command or "\r" in command:
            raise ValueError("the command must be a single line.")
        mid = next(self._mids)
        reply = TronReply(command, actor)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[mid] = (reply.lines, future)
        text = f"{self.cid} {mid} {actor} {command}"
        try:
            self._writer.write(text.encode() + b"\n")
            await asyncio.wait_for(self._writer.drain(), timeout)
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            seen = "\n".join(line.raw for line in reply.lines) or "<none>"
            raise TronTimeoutError(
                f"no finishing reply to {text!r} within {timeout} s. Lines seen:\n{seen}"
            ) from None
        except OSError as err:
            raise TronError(f"cannot send {text!r} to tron: {err}") from err
        finally:
            self._pending.pop(mid, None)
        return reply

    async def start_nubs(
        self, *names: str, timeout: float = 30.0, check: bool = True
    ) -> TronReply:
        """``hub startNubs <names>``: tron (re)connects to those actors.

        With ``check``, raises `TronError` if the command fails or tron warns that a nub could
        not be started (e.g. the actor is not listening), then waits until tron has read a first
        line from each actor: until then tron mislabels commands to it and their replies never
        reach the sender.
        """

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        queue = self.watch()
        try:
            reply = await self.send("startNubs " + " ".join(names), actor="hub", timeout=timeout)
            if not check:
                return reply
            if not reply.ok or any(line.code in ("w", "f", "F") for line in reply.lines):
                raise TronError(f"hub startNubs {' '.join(names)} failed:\n{reply}")
            waiting = set(names)
            while waiting:
                line = await self.wait_line(
                    lambda line: line.actor in waiting, max(0.0, deadline - loop.time()), queue
                )
                waiting.discard(line.actor)
        finally:
            self.unwatch(queue)
        return reply

    def watch(self) -> asyncio.Queue[TronLine]:
        """Returns a queue that receives every line from now on (until `unwatch`)."""

        queue: asyncio.Queue[TronLine] = asyncio.Queue()
        self._watchers.append(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue[TronLine]) -> None:
        with contextlib.suppress(ValueError):
            self._watchers.remove(queue)

    async def wait_line(
        self,
        predicate: Callable[[TronLine], bool],
        timeout: float = 30.0,
        queue: asyncio.Queue[TronLine] | None = None,
    ) -> TronLine:
        """Waits for a line matching ``predicate`` (from ``queue``, or lines arriving from now)."""

        own = queue is None
        queue = self.watch() if queue is None else queue
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen: list[str] = []
        try:
            while True:
                try:
                    line = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    tail = "\n".join(seen[-20:]) or "<none>"
                    raise TronTimeoutError(
                        f"no matching line within {timeout} s. Last lines seen:\n{tail}"
                    ) from None
                if predicate(line):
                    return line
                seen.append(line.raw)
        finally:
            if own:
                self.unwatch(queue)

    async def close(self) -> None:
        """Closes the connection (bounded wait)."""

        self._closed = True
        self._task.cancel()
        self._writer.close()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self._task, 2.0)

    async def __aenter__(self) -> TronClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
