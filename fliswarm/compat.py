"""Work-arounds for bugs of sdss-clu, each behind a version guard.

Each `Workaround` names a bug of CLU (found in 2.6.1, the newest release checked) and the
release that fixes it, `None` while no release does. A work-around is active only with a
CLU older than that release (`Workaround.active`). ``tests/test_compat.py`` reproduces each
bug with plain CLU: when a new CLU release fixes one, its reproducer fails, and setting
``fixed_in`` turns the work-around off from that release on. The patches proposed upstream,
with the same reproducers, are in ``docs/upstream-clu.md``.

- `SERVER_LEAK` (`SafeStreamServer`, the server of `HardenedLegacyActor`):
  ``TCPStreamServer.connection_made`` only survives ``IncompleteReadError`` and
  ``ConnectionResetError``. Any other error while serving a client (a line over the stream
  limit, a data callback raising) ends the handler with an exception: the transport stays in
  ``transports`` (and the user in the actor's) for good.
- `COMMAND_LINES` (`HardenedLegacyActor`): ``LegacyActor.new_command`` raises on a line that
  is not UTF-8 (the client is then dropped, see above), answers a line without a command id
  with an ``f`` broadcast to every user under command id 0, and ``parse_command`` raises on an
  unbalanced quote, so that command never ends; ``new_user`` registers a client that is
  already gone.
- `CONTEXT_LEAK` (`HardenedLegacyActor.parse_command`): ``ClickParser.parse_command`` pushes
  each command's click context on click's global stack and never pops it: every command, with
  its replies, stays in memory for good.
- `VERSION_LOOKUP` (`CluGroupOnce`): ``CluGroup.parse_args`` reads click's version from the
  installed package's metadata (``importlib.metadata.version("click")``: files opened and
  parsed) at every command, to pick click's attribute names; 0.25 ms of every command's
  0.6 ms of parsing on the test bed, the largest cost a ``talk`` adds.
- `BUILTIN_COMMANDS` (`help_command`, `command_model`): the built-in ``help`` walks every word
  as a sub-command (``help "talk -n gfa1 status"`` raises ``AttributeError``), and
  ``get-command-model`` validates its reply against the actor's keyword schema, which has no
  ``command_model``: the final reply is replaced by an ``e`` line and the command never ends.

Not a work-around but fliswarm's own: `HardenedLegacyActor` greets no client that connects
from `HEALTH_CHECK_ADDRESS`, the Docker image's health check (see the class).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import inspect
import logging
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
from clu import CommandError
from clu.command import Command, parse_legacy_command
from clu.legacy import LegacyActor
from clu.parsers.click import CluCommand, CluGroup, help_
from clu.protocol import TCPStreamServer


__all__ = [
    "Workaround",
    "SERVER_LEAK",
    "COMMAND_LINES",
    "CONTEXT_LEAK",
    "BUILTIN_COMMANDS",
    "VERSION_LOOKUP",
    "clu_version",
    "SafeStreamServer",
    "HardenedLegacyActor",
    "CluGroupOnce",
    "help_command",
    "command_model",
    "DEFAULT_COMMAND_LINE_LIMIT",
    "HEALTH_CHECK_ADDRESS",
]


def clu_version() -> tuple[int, ...]:
    """The installed sdss-clu release, as integers (``(2, 6, 1)``)."""

    text = importlib.metadata.version("sdss-clu")
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@dataclass(frozen=True)
class Workaround:
    """A work-around for a CLU bug, active until the release that fixes it."""

    #: What it works around, in a few words.
    bug: str
    #: The first CLU release with the bug fixed (``"2.7.0"``), `None` while there is none.
    fixed_in: str | None = None

    @property
    def active(self) -> bool:
        """Whether the installed CLU still has the bug."""

        if self.fixed_in is None:
            return True
        fixed = tuple(int(part) for part in self.fixed_in.split("."))
        return clu_version() < fixed


SERVER_LEAK = Workaround("TCPStreamServer keeps the transport of a client whose handler failed")
COMMAND_LINES = Workaround("LegacyActor mishandles undecodable, id-less and unsplittable lines")
CONTEXT_LEAK = Workaround("CluGroup never pops the click context it pushes for each command")
BUILTIN_COMMANDS = Workaround("help and get-command-model fail on fliswarm's commands")
VERSION_LOOKUP = Workaround("CluGroup.parse_args reads click's version from disk at every command")


# ----------------------------------------------------------------------------- server

#: Longest command line accepted by the actor, in bytes (asyncio's default stream limit).
DEFAULT_COMMAND_LINE_LIMIT = 64 * 1024
#: How many bytes of an overlong line are passed to ``overflow_callback``.
_HEAD = 256

OverflowCallback = Callable[[Any, bytes, int], Any]


class SafeStreamServer(TCPStreamServer):
    """CLU's `~clu.protocol.TCPStreamServer` whose connections never leak (`SERVER_LEAK`).

    Same callbacks and ``transports`` as CLU's, but a connection error ends the connection
    quietly, a line longer than ``line_limit`` is dropped and reported through
    ``overflow_callback`` (with its first bytes, so that the command can fail with its own
    id), an exception of a callback is logged and the connection goes on, and whatever
    happens the transport is forgotten and the disconnect callback called.

    Parameters
    ----------
    args, kwargs
        As `~clu.protocol.TCPStreamServer`.
    log
        Where to report dropped lines and failed callbacks.
    line_limit
        Longest line accepted, in bytes.
    overflow_callback
        Called with ``(transport, head, size)`` when a line longer than ``line_limit`` was
        dropped; ``head`` is its beginning, ``size`` its length.
    """

    def __init__(
        self,
        *args: Any,
        log: logging.Logger | None = None,
        line_limit: int = DEFAULT_COMMAND_LINE_LIMIT,
        overflow_callback: OverflowCallback | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.log = log or logging.getLogger("fliswarm.server")
        self.line_limit = line_limit
        self.overflow_callback = overflow_callback

    @property
    def serving(self) -> bool:
        """Whether the server was started and still accepts connections."""

        return self._server is not None and self._server.is_serving()

    async def connection_made(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serves one client until it goes; never raises, never leaks its transport."""

        if not SERVER_LEAK.active:
            return await super().connection_made(reader, writer)
        if self.max_connections and len(self.transports) >= self.max_connections:
            with contextlib.suppress(Exception):
                writer.write(b"Max number of connections reached.\n")
                writer.close()
            return
        transport = writer.transport
        self.transports[transport] = writer
        try:
            if self.connection_callback:
                await self._do_callback(self.connection_callback, transport)
            await self._serve(reader, transport)
        except (ConnectionError, asyncio.IncompleteReadError) as err:
            self.log.debug(f"client {_peer(transport)} went away: {err!r}")
        except Exception as err:
            self.log.warning(f"client {_peer(transport)}: connection ended by {err!r}")
        finally:
            self.transports.pop(transport, None)
            with contextlib.suppress(Exception):
                transport.close()
            if self.connection_callback:
                try:
                    await self._do_callback(self.connection_callback, transport)
                except Exception as err:
                    self.log.warning(f"client {_peer(transport)}: disconnect failed: {err!r}")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, transport: Any) -> None:
        # Lines over the reader's own limit (64 KiB) are read in pieces and dropped here.
        head = b""
        size = 0
        while True:
            try:
                data = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as err:
                chunk = await reader.readexactly(err.consumed)
                if size == 0:
                    head = chunk[:_HEAD]
                size += len(chunk)
                continue
            except asyncio.IncompleteReadError:
                return
            if size or len(data) > self.line_limit:
                if size == 0:
                    head = data[:_HEAD]
                size += len(data)
                await self._overflow(transport, head, size)
                head, size = b"", 0
                continue
            if not data:
                return
            if self.data_received_callback:
                try:
                    await self._do_callback(self.data_received_callback, transport, data)
                except Exception as err:
                    self.log.warning(f"client {_peer(transport)}: dropped {data[:200]!r}: {err!r}")

    async def _overflow(self, transport: Any, head: bytes, size: int) -> None:
        self.log.warning(f"client {_peer(transport)}: dropped a {size}-byte line {head[:60]!r}")
        if self.overflow_callback:
            try:
                await self._do_callback(self.overflow_callback, transport, head, size)
            except Exception as err:
                self.log.warning(f"client {_peer(transport)}: overflow callback failed: {err!r}")


def _peer_host(transport: Any) -> str | None:
    """The client's IP address (IPv4 as such, also when mapped to IPv6)."""

    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        return peer[0].removeprefix("::ffff:")
    return None


def _peer(transport: Any) -> str:
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "?"


# ----------------------------------------------------------------------------- command lines

#: The loopback address the Docker image's health check connects from (its ``HEALTHCHECK``).
#: CLU greets every new connection with four lines written to every connected client
#: (``yourUserID``, ``UserInfo`` for each user, ``version``); a client from this address is
#: served without them, so that the check (a ``ping`` every 30 s) disturbs no one, tron included.
HEALTH_CHECK_ADDRESS = "127.0.0.2"

# The command id of a line ``[commander] <command_id> ...`` (commander: tron's ``a.b``).
_LINE_IDS = re.compile(r"\s*(?:[A-Za-z0-9]*\.[A-Za-z0-9_.]+\s+)?(\d{1,9})(?:\s|$)")


class HardenedLegacyActor(LegacyActor):
    """`~clu.legacy.LegacyActor` with the work-arounds of this module.

    Its server is a `SafeStreamServer` (`SERVER_LEAK`). It answers every line of a user, and
    only that user (`COMMAND_LINES`): invalid UTF-8 is replaced and NUL bytes removed, a line
    that is not ``[commander] [command_id] command`` or cannot be split (an unbalanced quote)
    fails for its user only, with the line's command id when it has one, and so does a line
    longer than the server's ``line_limit``. It pops the click context of each command
    (`CONTEXT_LEAK`). A client connecting from `HEALTH_CHECK_ADDRESS` gets a user id as any
    other but no greeting, and the other clients are not told of it (no ``UserInfo`` lines).
    """

    _server: SafeStreamServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # LegacyActor makes its server in __init__, with no way to choose another class.
        self._server = SafeStreamServer(
            self.host,
            self.port,
            connection_callback=self.new_user,
            data_received_callback=self.new_command,
            log=self.log,
            overflow_callback=self.line_too_long,
        )

    def new_user(self, transport: Any) -> Any:
        """Registers a new client, or forgets one that left (never a closing one)."""

        if COMMAND_LINES.active and transport.is_closing():
            user_id = getattr(transport, "user_id", None)
            if user_id is not None and self.transports.get(user_id) is transport:
                self.log.debug(f"user {user_id} disconnected.")
                return self.transports.pop(user_id)
            return None
        if not transport.is_closing() and _peer_host(transport) == HEALTH_CHECK_ADDRESS:
            user_id = max(self.transports, default=0) + 1  # as CLU numbers its users
            transport.user_id = user_id
            self.transports[user_id] = transport
            self.log.debug(f"user {user_id} connected from {HEALTH_CHECK_ADDRESS} (health check).")
            return None
        return super().new_user(transport)

    def new_command(self, transport: Any, command_str: bytes) -> Any:
        """Handles a command line (see the class)."""

        if not COMMAND_LINES.active:
            return super().new_command(transport, command_str)
        text = command_str.decode(errors="replace").replace("\x00", "").strip()
        if not text:
            return None
        try:
            commander_id, command_id, body = parse_legacy_command(text)
            command = Command(
                command_string=body,
                commander_id=commander_id or getattr(transport, "user_id", 0),
                command_id=command_id,
                consumer_id=self.name,
                actor=self,
                transport=transport,
            )
        except CommandError:
            self.fail_line(transport, text, f"Could not parse command {text[:200]!r}.")
            return None
        ids = f"commander_id={commander_id!r}, command_id={command_id!r}"
        self.log.info(f"New command received: {body!r} ({ids})")
        return self.parse_command(command)

    def parse_command(self, command: Any) -> Any:
        """Parses and runs a command; one that cannot be split fails instead of raising.

        The click context CLU pushes for the command is popped once the command has been
        started (`CONTEXT_LEAK`).
        """

        if COMMAND_LINES.active:
            try:
                shlex.split(command.body)
            except ValueError as err:
                command.set_status(command.status.RUNNING, internal=True)
                return command.fail(error=f"Cannot split command {command.body[:200]!r}: {err}.")
        outer = click.get_current_context(silent=True)
        try:
            return super().parse_command(command)
        finally:
            if CONTEXT_LEAK.active:
                _pop_contexts_above(outer)

    def line_too_long(self, transport: Any, head: bytes, size: int) -> None:
        """Fails a line that was too long to be read (with its command id if it has one)."""

        limit = self._server.line_limit
        text = head.decode(errors="replace")
        self.fail_line(transport, text, f"Command line too long ({size} bytes; limit {limit}).")

    def fail_line(self, transport: Any, text: str, error: str) -> None:
        """Writes ``f`` for a line that is not a command, to its user only."""

        user_id = getattr(transport, "user_id", None)
        if user_id is None or self.transports.get(user_id) is not transport:
            return
        match = _LINE_IDS.match(text)
        command = Command(
            command_string="",
            commander_id=user_id,
            command_id=int(match.group(1)) if match else 0,
            consumer_id=self.name,
            actor=self,
            transport=transport,
        )
        command.fail(error=error)


# ----------------------------------------------------------------------------- click


class CluGroupOnce(CluGroup):
    """CLU's `~clu.parsers.click.CluGroup` without the metadata lookup at every command
    (`VERSION_LOOKUP`).

    CLU's ``parse_args`` exits quietly when there are no arguments, then does what click's
    own `click.Group.parse_args` does, choosing between click's attribute names by reading
    click's version from the package metadata. Click's own method, called after the same
    quiet exit, does the same with no lookup.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not VERSION_LOOKUP.active:
            return super().parse_args(ctx, args)
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            ctx.exit()  # As CLU: no usage printed.
        return click.Group.parse_args(self, ctx, args)


def _pop_contexts_above(outer: click.Context | None) -> None:
    """Pops click's global contexts until ``outer`` (the one before the command) is on top."""

    while (ctx := click.get_current_context(silent=True)) is not None and ctx is not outer:
        click.globals.pop_context()


def _group_context(command: Any) -> click.Context:
    """The parser's (root) context of a running command, which CLU's ``pass_context``
    built-ins expect: `HardenedLegacyActor.parse_command` pops it from click's stack before
    their coroutine runs, so they get it explicitly here."""

    return command.context.find_root()


def _command_path(group: click.Command, words: list[str]) -> list[str]:
    """The leading words that name a command or sub-command of ``group``."""

    kept: list[str] = []
    current = group
    for word in words:
        commands = getattr(current, "commands", None)
        if not commands or word not in commands:
            break
        kept.append(word)
        current = commands[word]
    return kept or words[:1]


@click.command(name="help", cls=CluCommand)
@click.argument("PARSER-COMMAND", type=str, required=False)
def help_command(*args: Any, parser_command: str | None) -> Any:
    """Shows the help."""

    ctx = _group_context(args[0])
    words = (parser_command or "").strip('"').split()
    if BUILTIN_COMMANDS.active:  # Only the command path: CLU walks every word.
        words = _command_path(ctx.command, words)
    callback = inspect.unwrap(help_.callback)  # Under click.pass_context (and CLU's wrapper).
    return callback(ctx, *args, parser_command=f'"{" ".join(words)}"')


@click.command(name="get-command-model", cls=CluCommand, internal=True)
@click.argument("COMMAND-NAME", type=str, required=False)
def command_model(command: Any, *args: Any, command_name: str | None = None) -> Any:
    """Returns a dictionary representation of the command using ``unclick``."""

    from unclick.core import command_to_json

    click_command: click.Command | None = _group_context(command).command
    if command_name is not None:
        click_command = getattr(click_command, "commands", {}).get(command_name)
        if click_command is None:
            return command.fail(error=f"Cannot find command {command_name}.")
    model = command_to_json(click_command)
    # Not validated: command_model is not one of the actor's keywords (BUILTIN_COMMANDS).
    validate = not BUILTIN_COMMANDS.active
    return command.finish(command_model=model, write_to_log=False, validate=validate)
