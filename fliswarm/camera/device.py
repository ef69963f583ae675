"""The connection to the flicamera actor of one node, and the relay of its replies.

flicamera is a CLU ``JSONActor``: it receives ``"<command_id> <command string>\\n"`` and answers
with one JSON object per line, ``{"header": {"command_id", "message_code", ...}, "data": {...}}``.
`FlicameraDevice` sends sub-commands on behalf of a fliswarm command, relays every keyword it
receives through the fliswarm actor with the node name prepended to its values, and tracks the
real status of each sub-command. Its reading side, `ReplyStream`, is an asyncio protocol that
hands each complete line to the device as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fliswarm.camera.subcommand import SubCommand
from fliswarm.docker.engine import KEEPALIVE, connection_problem, set_keepalive
from fliswarm.tools import IDPool


if TYPE_CHECKING:
    from clu.command import BaseCommand


__all__ = [
    "FlicameraDevice",
    "ReplyStream",
    "SubCommand",
    "relay_code",
    "DEFAULT_LINE_LIMIT",
    "NO_CAMERA",
]

log = logging.getLogger("fliswarm.camera.device")

#: The reason of a node whose flicamera answers but has no camera connected.
NO_CAMERA = "flicamera has no camera connected (is the camera powered and on the node's USB bus?)"

#: Longest reply line accepted from flicamera (bytes); longer lines are dropped.
DEFAULT_LINE_LIMIT = 1024 * 1024

# flicamera's message code -> the code fliswarm writes. Final codes never reach the user as
# such: the fliswarm command that relays them decides how it ends.
_CODE_MAP = {">": "d", ":": "i", "f": "w", "e": "w", "!": "w", "i": "i", "w": "w", "d": "d"}
_FINAL_OK = frozenset(":")
_FINAL_FAILED = frozenset("f!")
_ERROR_CODES = frozenset("fe!")
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
# Raw (JSON-escaped) sequences that need the slow, sanitising path: they would break the
# line-based keyword format of the LegacyActor protocol.
_UNSAFE = re.compile(rb"\\[nru]|;")  # \n, \r, \uXXXX or ;


#: What to check when the connection to flicamera fails, by kind (`.connection_problem`).
_HINTS = {
    "refused": "is its flicamera container running?",
    "unreachable": "is the node powered on and on the network?",
    "timeout": "is the node powered on and on the network?",
    "reset": "flicamera or its container may have been restarted",
    "closed": "flicamera or its container may have been restarted",
    "dns": "check the node's host in the configuration",
    "other": "the details are in fliswarm's log",
}


def _problem(err: BaseException) -> str:
    """A connection error in plain words, with what to check (``words; hint``)."""

    kind, words = connection_problem(err)
    return f"{words}; {_HINTS[kind]}"


def _set_user_timeout(sock: Any) -> None:
    """Breaks the connection when data sent stays unacknowledged as long as the keep-alive
    takes (a powered-off node): the keep-alive alone stops while data waits for an ACK, and
    the liveness checks keep sending. A frozen flicamera still has its data acknowledged by
    the kernel. Never raises."""

    idle, interval, count = KEEPALIVE
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, option, int((idle + interval * count) * 1000))


def relay_code(code: str) -> str:
    """Returns the message code fliswarm writes for a flicamera message code."""

    return _CODE_MAP[code]


def _sanitise(value: Any) -> Any:
    """Makes string values safe for the keyword format (no line breaks, ``;`` quoted)."""

    if isinstance(value, str):
        if any(char in value for char in "\n\r;\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
            return json.dumps(" ".join(value.splitlines()))
        return value
    if isinstance(value, list):
        return [_sanitise(item) for item in value]
    if isinstance(value, dict):
        return {key: _sanitise(item) for key, item in value.items()}
    return value


def _error_text(name: str, data: dict[str, Any]) -> str | None:
    """The error message of a failing flicamera reply (``error`` or ``text``)."""

    value = data.get("error", data.get("text"))
    if isinstance(value, dict):
        value = value.get("error", value.get("message", value))
    return f"{name}: {value}" if value is not None else None


def _filename_of(value: Any) -> str | None:
    """Extracts the path from a flicamera ``filename`` value (``{camera, filename}``)."""

    if isinstance(value, dict):
        value = value.get("filename")
    elif isinstance(value, list) and value:
        value = value[-1]
    return value if isinstance(value, str) else None


class ReplyStream(asyncio.Protocol):
    """flicamera's side of the connection: splits what arrives into lines and hands each to
    the device at once (no reader task to wake up for every piece of data).

    A line longer than ``limit`` bytes is dropped (with one warning), whole or in pieces.
    ``ended`` is resolved with the reason when the connection ends.
    """

    def __init__(self, device: FlicameraDevice, limit: int) -> None:
        self.device: FlicameraDevice | None = device
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._discarding = False  # Inside a line too long: drop until its end.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start : end + 1])
            start = end + 1
            if self._discarding or len(line) > self.limit:
                self._drop()
                self._discarding = False
                continue
            device = self.device
            if device is None:  # Detached: the connection is being closed.
                continue
            try:
                device.handle_line(line)
            except Exception:
                log.exception("%s: failed relaying %r", device.name, line[:200])
        del buffer[:start]
        if len(buffer) > self.limit:
            self._drop()
            self._discarding = True
            buffer.clear()

    def _drop(self) -> None:
        if not self._discarding and self.device is not None:
            log.warning("%s: dropped a reply line too long.", self.device.name)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            reason = (
                "the connection to flicamera was closed by the remote end (flicamera or its "
                "container stopped)."
            )
        else:
            name = self.device.name if self.device is not None else "?"
            log.info("%s: the connection to flicamera was lost: %r", name, exc)
            reason = f"the connection to flicamera was lost ({_problem(exc)})."
        if not self.ended.done():
            self.ended.set_result(reason)
        device, self.device = self.device, None
        if device is not None:
            device._lost(self, reason)


class FlicameraDevice:
    """One TCP connection to the flicamera actor of a node.

    Parameters
    ----------
    name
        The node name, prepended to every relayed keyword value.
    host
        Where flicamera listens.
    port
        Its port.
    actor
        The fliswarm actor (anything with CLU's ``write(code, message, validate=...)``);
        unsolicited flicamera messages are broadcast through it. May be `None`.
    connect_timeout
        Default time limit for `start`, in seconds.
    line_limit
        Longest reply line accepted, in bytes.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        actor: Any = None,
        connect_timeout: float = 5.0,
        line_limit: int = DEFAULT_LINE_LIMIT,
    ):
        self.name = name
        self.host = host
        self.port = int(port)
        self.actor = actor
        self.connect_timeout = connect_timeout
        self.line_limit = line_limit

        self.id_pool = IDPool()
        #: Sub-commands by command id, until flicamera ends them or the connection goes. One
        #: that timed out stays here (done) until then, so that its id is not reused and a late
        #: reply is never taken for another command's.
        self.running: dict[int, SubCommand] = {}

        self._stream: ReplyStream | None = None
        self._lock = asyncio.Lock()
        self._stop_reason: str | None = None
        #: Why the last connection attempt or connection ended, if it did.
        self.last_error: str | None = None
        #: Whether commands like ``talk`` may connect this device when it is disconnected;
        #: set it to `False` while the container is deliberately down (e.g. ``reconnect``).
        self.auto_connect = True
        #: Called with ``(device, reason)`` when the connection ends by itself (not `stop`).
        self.lost_callbacks: list[Callable[[FlicameraDevice, str], Any]] = []
        #: How many commands sent through fliswarm got no answer within their time limit.
        self.unanswered = 0
        #: When the last reply line came from flicamera (`time.monotonic`; 0: never).
        self.last_reply = 0.0
        #: Why the camera is not connected to flicamera, as far as its answers tell
        #: (`NO_CAMERA`), or `None`; see `camera_known`.
        self.camera_missing: str | None = None
        #: Whether flicamera's answers on this connection told whether it has its camera:
        #: a ``cameras`` keyword (``list``), ``no cameras connected.``, or its broadcast
        #: ``Camera connected: <name>``. A new connection, and the broadcast ``Camera
        #: disconnected: <name>``, make it unknown again (``list`` then tells).
        self.camera_known = False

    def __repr__(self) -> str:
        state = "connected" if self.is_connected() else "disconnected"
        return f"<FlicameraDevice {self.name} {self.host}:{self.port} {state}>"

    @property
    def busy(self) -> bool:
        """Whether a command sent through fliswarm to this camera is in flight (sent and not
        ended). One that timed out is not: it stays in `running` only to keep its id."""

        return any(not sub.future.done() for sub in self.running.values())

    def is_connected(self) -> bool:
        """Whether the connection is open and its reader is alive."""

        stream = self._stream
        return (
            stream is not None
            and stream.transport is not None
            and not stream.transport.is_closing()
            and not stream.ended.done()
        )

    async def start(self, timeout: float | None = None) -> FlicameraDevice:
        """Connects to flicamera. Does nothing if already connected.

        Raises
        ------
        ConnectionError
            If the connection is refused or not made within ``timeout`` seconds.
        """

        timeout = self.connect_timeout if timeout is None else timeout
        async with self._lock:
            if self.is_connected():
                return self
            await self._close("reconnecting")
            loop = asyncio.get_running_loop()
            try:
                _, stream = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: ReplyStream(self, self.line_limit), self.host, self.port
                    ),
                    timeout,
                )
            except asyncio.TimeoutError:
                self.last_error = (
                    f"cannot connect to {self.host}:{self.port}: no answer within {timeout:g} s; "
                    f"{_HINTS['timeout']}"
                )
                raise ConnectionError(f"{self.name}: {self.last_error}") from None
            except OSError as err:
                log.debug("%s: cannot connect to %s:%s: %r", self.name, self.host, self.port, err)
                self.last_error = f"cannot connect to {self.host}:{self.port}: {_problem(err)}"
                raise ConnectionError(f"{self.name}: {self.last_error}") from None
            assert stream.transport is not None
            sock = stream.transport.get_extra_info("socket")
            set_keepalive(sock)  # A dead node breaks it.
            _set_user_timeout(sock)  # Even while a command (a liveness check) is unanswered.
            self._stream = stream
            self.last_error = None
            self._stop_reason = None
            self.camera_missing = None
            self.camera_known = False
            log.debug("%s: connected to flicamera at %s:%s", self.name, self.host, self.port)
        return self

    async def stop(self) -> None:
        """Closes the connection; pending sub-commands fail. Never raises."""

        async with self._lock:
            await self._close("the connection to flicamera was closed by fliswarm.")

    async def restart(self, timeout: float | None = None) -> FlicameraDevice:
        """Closes the connection if open, then connects again."""

        await self.stop()
        return await self.start(timeout)

    async def _close(self, reason: str) -> None:
        self._stop_reason = reason
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.device = None  # What still arrives is not relayed; no "lost" report.
            if stream.transport is not None:
                stream.transport.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(stream.ended), 2.0)
        self._fail_all(reason)

    def send(self, command_string: str, parent: BaseCommand | None = None) -> SubCommand:
        """Sends a command to flicamera and returns its `SubCommand` at once.

        Replies are written through ``parent`` (a CLU command of the fliswarm actor).

        Raises
        ------
        ConnectionError
            If the device is not connected.
        ValueError
            If the command is empty or contains a line break.
        """

        command_string = command_string.strip()
        if not command_string or "\n" in command_string or "\r" in command_string:
            raise ValueError(f"invalid flicamera command {command_string!r}.")
        if not self.is_connected():
            raise ConnectionError(f"{self.name}: flicamera is not connected.")
        assert self._stream is not None and self._stream.transport is not None

        command_id = self.id_pool.get()
        sub = SubCommand(self.name, command_id, command_string, parent)
        self.running[command_id] = sub
        sub.add_listener(self._count_unanswered)
        try:
            self._stream.transport.write(f"{command_id} {command_string}\n".encode())
        except Exception as err:
            log.info("%s: cannot send %r: %r", self.name, command_string, err)
            self._end(sub, False, f"{self.name}: cannot send the command to flicamera.")
            raise ConnectionError(sub.error) from err
        return sub

    async def run(
        self,
        command_string: str,
        parent: BaseCommand | None = None,
        timeout: float | None = 30.0,
    ) -> SubCommand:
        """Sends a command and waits for its end, at most ``timeout`` seconds. Never raises
        for flicamera or connection problems: check ``ok`` and ``error`` of the result."""

        sub = self.submit(command_string, parent)
        return await sub.wait(timeout)

    def submit(self, command_string: str, parent: BaseCommand | None = None) -> SubCommand:
        """Like `send`, but a connection problem gives a failed `SubCommand` (id 0) instead
        of raising."""

        try:
            return self.send(command_string, parent)
        except ConnectionError as err:
            sub = SubCommand(self.name, 0, command_string, parent)
            sub._finish(False, str(err))
            return sub

    def _count_unanswered(self, sub: SubCommand) -> None:
        if sub.timed_out:
            self.unanswered += 1

    def overdue(self, limit: float) -> SubCommand | None:
        """A command other than an exposure in flight for more than ``limit`` seconds while
        flicamera has sent no reply line for that long, if there is one."""

        now = time.monotonic()
        if now - self.last_reply <= limit:
            return None
        for sub in self.running.values():
            if not sub.future.done() and not sub.is_exposure and now - sub.started > limit:
                return sub
        return None

    def overrun(self, readout: float, margin: float) -> tuple[SubCommand, float] | None:
        """An exposure in flight for longer than its exposure time plus ``readout`` per image
        plus ``margin`` (`.SubCommand.overrun_limit`), with that limit, if there is one."""

        now = time.monotonic()
        for sub in self.running.values():
            if sub.future.done() or not sub.is_exposure:
                continue
            limit = sub.overrun_limit(readout, margin)
            if limit is not None and now - sub.started > limit:
                return sub, limit
        return None

    def fail_running(self, reason: str) -> None:
        """Fails every command in flight at once, with ``<node>: <reason>``; their ids stay
        taken until flicamera ends them or the connection goes."""

        for sub in list(self.running.values()):
            sub._finish(False, f"{self.name}: {reason}")

    def _end(self, sub: SubCommand, ok: bool, error: str | None = None) -> None:
        if self.running.get(sub.command_id) is sub:
            del self.running[sub.command_id]
            self.id_pool.put(sub.command_id)
        sub._finish(ok, error)

    def _fail_all(self, reason: str) -> None:
        """Fails every running sub-command and returns all ids to the pool."""

        for sub in list(self.running.values()):
            self._end(sub, False, f"{self.name}: {reason}")

    def _lost(self, stream: ReplyStream, reason: str) -> None:
        """The connection ended by itself (not by `stop`): fail what runs, tell who listens."""

        if self._stream is not stream:
            return
        self._stream = None
        self.last_error = reason
        self._fail_all(reason)
        log.warning("%s: %s", self.name, reason)
        self._notify_lost(reason)

    def _notify_lost(self, reason: str) -> None:
        for callback in list(self.lost_callbacks):
            try:
                callback(self, reason)
            except Exception:
                log.exception("%s: connection-lost callback failed", self.name)
        if self.actor is not None:
            with contextlib.suppress(Exception):
                self.actor.write("w", {"text": f"{self.name}: {reason}"}, validate=False)

    def handle_line(self, line: bytes) -> None:
        """Relays one flicamera reply line and updates the status of its sub-command."""

        self.last_reply = time.monotonic()

        try:
            message = json.loads(line)
            header = message["header"]
            code = header["message_code"]
            command_id = header["command_id"]
            data = message.get("data") or {}
            out_code = _CODE_MAP[code]
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("%s: dropped a malformed reply line %r", self.name, line[:200])
            return
        if data.__class__ is not dict:
            log.warning("%s: dropped a reply with non-object data %r", self.name, line[:200])
            return

        sub: SubCommand | None = None
        if command_id is not None and command_id != 0:
            if command_id.__class__ is not int:
                log.warning("%s: dropped a reply with a bad command id %r", self.name, line[:200])
                return
            sub = self.running.get(command_id)
            if sub is None or sub.future.done():  # Unknown, or timed out: drop.
                if sub is not None and (code in _FINAL_OK or code in _FINAL_FAILED):
                    self._end(sub, False)
                log.debug("%s: dropped a reply for command %r", self.name, command_id)
                return

        if data:
            if "text" in data or "cameras" in data:
                self._camera_news(data, code)
            if sub is not None and code in _ERROR_CODES:
                sub.error = _error_text(self.name, data) or sub.error
            if _UNSAFE.search(line):
                data = _sanitise(data)
            self._relay(out_code, data, sub)

        if sub is not None:
            if code in _FINAL_OK:
                self._end(sub, True)
            elif code in _FINAL_FAILED:
                self._end(sub, False, sub.error or f"{self.name}: '{sub.command_string}' failed.")

    def _camera_news(self, data: dict[str, Any], code: str) -> None:
        """What a flicamera reply says about its camera (see `camera_known`)."""

        cameras = data.get("cameras")
        if isinstance(cameras, list):
            self.camera_known = True
            self.camera_missing = None if cameras else NO_CAMERA
            return
        text = data.get("text")
        if not isinstance(text, str):
            return
        if code in _FINAL_FAILED and text.strip().lower() == "no cameras connected.":
            self.camera_known = True
            self.camera_missing = NO_CAMERA
        elif text.startswith("Camera connected: "):
            self.camera_known = True
            self.camera_missing = None
        elif text.startswith("Camera disconnected: "):
            self.camera_known = False  # Another camera may be left: ``list`` tells.

    def _relay(self, code: str, data: dict[str, Any], sub: SubCommand | None) -> None:
        name = self.name
        parent = sub.parent if sub is not None else None
        target = parent if parent is not None else self.actor

        if "help" in data:
            lines = data.pop("help")
            if target is not None:
                for help_line in lines if isinstance(lines, list) else [lines]:
                    target.write(code, {"help": _sanitise(str(help_line))}, validate=False)

        message: dict[str, Any] = {}
        for key, value in data.items():
            if key.__class__ is not str or not _KEY_RE.match(key):
                log.warning("%s: dropped an invalid keyword name %r", name, key)
                continue
            message[key] = [name, *value] if value.__class__ is list else [name, value]
            if key == "filename" and sub is not None:
                filename = _filename_of(value)
                if filename:
                    sub.filenames.append(filename)

        if message and target is not None:
            try:
                target.write(code, message, validate=False)
            except (TypeError, ValueError) as err:  # e.g. a value nested too deep to format.
                log.warning("%s: cannot relay %r: %s", name, message, err)
