"""``fliswarm send``: a command-line client of the running actor, directly or through tron.

One command (``fliswarm send status``) is sent to the actor's TCP port (``<id> <command>``), or
to a tron hub's commander port (``<program>.<user> <id> <actor> <command>``, ``--tron``), and its
replies are printed as they come: one line per keyword, after the reply's code
(``i nodeState=gfa1,online,...``), or the lines as written (``--raw``). The exit status says how
the command ended: 0 for ``:``, 1 for ``f``, 2 when the actor cannot be reached or the command
does not end within ``--timeout`` seconds (with one line saying why, on stderr). Without a
command, commands are read from the standard input, with a prompt and a history (readline)
on a terminal.

The client is synchronous (plain sockets): every connection and read is bounded by the time
left until the command's deadline.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shlex
import socket
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click


__all__ = [
    "EXIT_DONE",
    "EXIT_FAILED",
    "EXIT_UNREACHABLE",
    "DirectLink",
    "Link",
    "CommandTimeout",
    "SendError",
    "TronLink",
    "history_file",
    "parse_keywords",
    "render",
    "send",
]

#: Exit status: the command finished (``:``).
EXIT_DONE = 0
#: Exit status: the command failed (``f``).
EXIT_FAILED = 1
#: Exit status: the actor (or tron) cannot be reached, or the command did not end in time.
EXIT_UNREACHABLE = 2

#: Codes that end a command, and whether the command succeeded.
FINISH = {":": True, "f": False, "F": False, "!": False}

#: The longest line read, in bytes: a longer one means the peer is not fliswarm nor tron.
MAX_LINE = 4 * 1024 * 1024

#: The default port of a tron hub's commander (client) nub.
TRON_PORT = 6093

#: How long the actor's greeting may take after ``yourUserID``, in seconds (CLU writes it
#: all at once, ending with ``version``).
GREETING_REST = 1.0


class SendError(Exception):
    """The command could not be sent or did not end: one line, exit status 2."""


class CommandTimeout(SendError):
    """The command did not end in time (the connection is still good)."""


# ------------------------------------------------------------------------------ keywords


def _split(text: str, separator: str) -> list[str]:
    """Splits at ``separator`` outside double quotes (a backslash escapes the next character)."""

    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    """A value as written (``"a \\"b\\""``, ``gfa1``) as text (``a "b"``, ``gfa1``)."""

    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        with contextlib.suppress(ValueError):
            decoded = json.loads(value)
            if isinstance(decoded, str):
                return decoded
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_keywords(body: str) -> list[tuple[str, list[str] | None]]:
    """The keywords of a reply, in order: ``(name, values)``, values `None` without ``=``.

    ``k1=v1; k2="a; b",2; flag`` gives ``[("k1", ["v1"]), ("k2", ["a; b", "2"]),
    ("flag", None)]``.
    """

    keywords: list[tuple[str, list[str] | None]] = []
    for part in _split(body, ";"):
        if not part.strip():
            continue
        name, equals, rest = part.partition("=")
        values = [_unquote(value) for value in _split(rest, ",")] if equals else None
        keywords.append((name.strip(), values))
    return keywords


def _shown(value: str, alone: bool) -> str:
    """A value for a person: as it is, quoted only where a list would be ambiguous."""

    if value == "":
        return '""'
    if alone:
        return value
    if "," in value or '"' in value or value != value.strip():
        return json.dumps(value, ensure_ascii=False)
    return value


def render(code: str, body: str) -> list[str]:
    """A reply line for a person: one line per keyword, after the code.

    A final line without keywords says ``done`` (``:``) or ``failed``; a ``>`` line without
    keywords gives nothing.
    """

    keywords = parse_keywords(body)
    if not keywords:
        if code in FINISH:
            return [f"{code} {'done' if FINISH[code] else 'failed'}"]
        return [] if code == ">" else [code]
    lines = []
    for name, values in keywords:
        if values is None:
            lines.append(f"{code} {name}")
        else:
            alone = len(values) == 1
            lines.append(f"{code} {name}=" + ",".join(_shown(v, alone) for v in values))
    return lines


# ------------------------------------------------------------------------------ links


def _reason(err: OSError) -> str:
    """A connection error in plain words."""

    if isinstance(err, socket.gaierror):
        return "unknown host"
    if isinstance(err, TimeoutError):
        return "no answer"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    words = err.strerror or str(err) or type(err).__name__
    return words[0].lower() + words[1:]


class Link:
    """A connection to an actor, directly or through tron, that tells its lines apart.

    Parameters
    ----------
    host, port
        Where to connect.
    """

    #: What is connected to, for messages (``fliswarm at 127.0.0.1:19996``).
    what = ""
    #: The actor's name.
    actor = "fliswarm"
    #: What to check when the connection cannot be made.
    hint = ""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.mid = 0
        self._sock: socket.socket | None = None
        self._buffer = b""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self, deadline: float) -> None:
        """Connects (and reads the greeting, if any) before ``deadline`` (`time.monotonic`)."""

        left = max(0.01, deadline - time.monotonic())
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=left)
        except OSError as err:
            words = _reason(err)
            if words == "no answer":
                words = f"no answer within {left:.3g} s"
            raise SendError(f"cannot reach {self.what}: {words} ({self.hint}).") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def readline(self, deadline: float) -> str | None:
        """The next line, or `None` at ``deadline``.

        Raises
        ------
        SendError
            If the peer closed the connection.
        """

        assert self._sock is not None
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as err:
                raise SendError(f"the connection to {self.what} broke: {_reason(err)}.") from None
            if not data:
                raise SendError(f"{self.what} closed the connection.")
            self._buffer += data
            if len(self._buffer) > MAX_LINE and b"\n" not in self._buffer:
                raise SendError(f"{self.what} sent a line over {MAX_LINE} bytes.")
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("utf-8", errors="replace").rstrip("\r")

    def drain(self) -> None:
        """Drops the lines received so far (between two commands)."""

        assert self._sock is not None
        self._sock.settimeout(0)
        with contextlib.suppress(OSError):
            while data := self._sock.recv(65536):
                self._buffer += data
        self._buffer = self._buffer.rsplit(b"\n", 1)[-1] if b"\n" in self._buffer else self._buffer

    def send(self, command: str) -> int:
        """Sends a command; returns its id."""

        assert self._sock is not None
        self.mid += 1
        self._sock.settimeout(5.0)
        try:
            self._sock.sendall((self.line(command) + "\n").encode())
        except OSError as err:
            raise SendError(f"cannot send to {self.what}: {_reason(err)}.") from None
        return self.mid

    def line(self, command: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def classify(self, raw: str) -> tuple[str, str, str]:  # pragma: no cover - abstract
        """``(kind, code, body)``: kind is ``ours`` (a reply to the current command),
        ``unsolicited`` (the actor's broadcast) or ``other``."""

        raise NotImplementedError

    def unreachable(self, code: str, raw: str, body: str) -> str | None:
        """Why the actor cannot be reached, if a final line of ours says so."""

        return None


class DirectLink(Link):
    """The actor's own TCP port: ``<id> <command>``; replies ``<user> <id> <code> ...``."""

    hint = 'is fliswarm running? "fliswarm status" on its machine tells'

    def __init__(self, host: str, port: int, actor: str = "fliswarm") -> None:
        super().__init__(host, port)
        self.actor = actor
        self.what = f"{actor} at {self.address}"
        self.user_id: str | None = None

    def connect(self, deadline: float) -> None:
        super().connect(deadline)
        # The actor's first line to a new user: "<user> 0 i yourUserID=<user>; ...".
        left = deadline - time.monotonic()
        while self.user_id is None:
            raw = self.readline(deadline)
            if raw is None:
                raise SendError(
                    f"{self.address} does not answer as a fliswarm actor would (no "
                    f"yourUserID line within {max(left, 0):.3g} s): is it the actor's port "
                    "(actor.port), and is the actor not hung?"
                )
            match = re.search(r"\byourUserID=(\d+)", raw)
            if match:
                self.user_id = match.group(1)
        # The rest of the greeting (the users list, broadcast, then "<user> 0 i version=..."),
        # not to be taken for lines of the command's moment.
        end = min(deadline, time.monotonic() + GREETING_REST)
        while (raw := self.readline(end)) is not None:
            if raw.startswith(f"{self.user_id} 0 ") and "version=" in raw:
                break

    def line(self, command: str) -> str:
        return f"{self.mid} {command}"

    def classify(self, raw: str) -> tuple[str, str, str]:
        parts = raw.split(" ", 3)
        if len(parts) < 3:
            return "other", "", raw
        user, mid, code = parts[:3]
        body = parts[3] if len(parts) > 3 else ""
        if user == self.user_id and mid == str(self.mid):
            return "ours", code, body
        if user == "0":
            return "unsolicited", code, body
        return "other", code, body


def _commander(program: str) -> str:
    """A tron commander name, ``<program>.<user>_p<pid>`` (letters, digits and ``_``)."""

    try:
        user = getpass.getuser()
    except Exception:
        user = "user"
    user = re.sub(r"[^A-Za-z0-9_]", "_", user) or "user"
    if not re.match(r"[A-Za-z_]", user):
        user = "u" + user
    return f"{program}.{user}_p{os.getpid()}"


class TronLink(Link):
    """A tron hub's commander port: ``<program>.<user> <id> <actor> <command>``.

    tron sends every line of every actor to every client: the replies to the command are those
    with this client's commander name and the command's id.
    """

    hint = "is tron running there, and is it its commander port?"

    def __init__(self, host: str, port: int, actor: str, program: str = "fliswarm") -> None:
        super().__init__(host, port)
        self.actor = actor
        self.what = f"tron at {self.address}"
        self.cid = _commander(program)

    def line(self, command: str) -> str:
        return f"{self.cid} {self.mid} {self.actor} {command}"

    def classify(self, raw: str) -> tuple[str, str, str]:
        parts = raw.split(None, 4)
        if len(parts) < 4:
            return "other", "", raw
        cid, mid, actor, code = parts[:4]
        body = parts[4] if len(parts) > 4 else ""
        if cid.lower() == self.cid.lower() and mid == str(self.mid):
            return "ours", code, body
        if actor == self.actor and mid == "0":
            return "unsolicited", code, body
        return "other", code, body

    def unreachable(self, code: str, raw: str, body: str) -> str | None:
        parts = raw.split(None, 4)
        if code in FINISH and len(parts) > 2 and parts[2] == "hub":
            for name, values in parse_keywords(body):
                if name == "NoTarget":
                    why = " ".join(values or []) or f"{self.actor} is not connected"
                    return f"tron at {self.address} cannot reach {self.actor}: {why}"
        return None


# ------------------------------------------------------------------------------ running


class Printer:
    """Prints reply lines: rendered for a person, or raw; unsolicited ones marked ``*``."""

    def __init__(self, raw: bool, write: Callable[[str], None]) -> None:
        self.raw = raw
        self.write = write

    def __call__(self, line: str, code: str, body: str, unsolicited: bool = False) -> None:
        if self.raw:
            self.write(line)
            return
        for text in render(code, body):
            self.write(f"* {text}" if unsolicited else text)


def run_command(link: Link, command: str, timeout: float, printer: Printer, show_all: bool) -> int:
    """Sends one command and prints its replies until it ends; returns the exit status.

    Raises
    ------
    SendError
        If the command does not end within ``timeout`` seconds, the connection drops, or
        tron cannot reach the actor.
    """

    deadline = time.monotonic() + timeout
    link.send(command)
    while True:
        raw = link.readline(deadline)
        if raw is None:
            raise CommandTimeout(
                f"{command!r} did not end within {timeout:g} s ({link.what}); it may still "
                "be running (--timeout gives it longer)."
            )
        kind, code, body = link.classify(raw)
        if kind == "ours":
            why = link.unreachable(code, raw, body)
            if why is not None:
                if printer.raw:
                    printer(raw, code, body)
                raise SendError(why + ".")
            printer(raw, code, body)
            if code in FINISH:
                return EXIT_DONE if FINISH[code] else EXIT_FAILED
        elif kind == "unsolicited" and show_all:
            printer(raw, code, body, unsolicited=True)


def history_file() -> Path:
    """The interactive prompt's history: ``$XDG_STATE_HOME/fliswarm/send_history``."""

    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "fliswarm" / "send_history"


def _interactive(
    link: Link,
    timeout: float,
    printer: Printer,
    show_all: bool,
    write: Callable[[str], None],
) -> int:
    """Reads commands from the standard input until its end (a prompt and a history on a
    terminal); returns the exit status of the last command."""

    tty = sys.stdin.isatty()
    readline: Any = None
    history = history_file()
    if tty:
        with contextlib.suppress(ImportError):
            import readline  # Line editing and history for input().
        if readline is not None:
            with contextlib.suppress(OSError):
                readline.read_history_file(history)
            readline.set_history_length(1000)
        write(f"Connected to {link.what}. Commands as in tron (status, talk -n gfa1 status);")
        write("Ctrl-D or 'exit' to quit.")
    status = EXIT_DONE
    try:
        while True:
            try:
                text = input(f"{link.actor}> ") if tty else input()
            except EOFError:
                if tty:
                    write("")
                return status
            except KeyboardInterrupt:
                write("")
                continue
            text = text.strip()
            if not text or text.startswith("#"):
                continue
            if text in ("exit", "quit"):
                return status
            link.drain()
            try:
                status = run_command(link, text, timeout, printer, show_all)
            except KeyboardInterrupt:
                write("(interrupted; the command may still be running)")
                status = EXIT_FAILED
            except CommandTimeout as err:
                click.echo(f"ERROR: {err}", err=True)
                status = EXIT_UNREACHABLE
    finally:
        if readline is not None:
            with contextlib.suppress(OSError):
                history.parent.mkdir(parents=True, exist_ok=True)
                readline.write_history_file(history)


def _tron_address(value: str) -> tuple[str, int]:
    host, colon, port = value.rpartition(":")
    if not colon:
        host, port = value, str(TRON_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SendError(f"--tron {value!r}: expected HOST:PORT (tron's commander port).")
    return host, int(port)


def _actor_config(ctx: click.Context) -> dict[str, Any]:
    """The ``actor`` section of the configuration given to fliswarm (or the internal one)."""

    from fliswarm.config import ConfigError, ConfigWarning, load_config

    obj = ctx.find_root().ensure_object(dict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)  # About the nodes: not used here.
        try:
            config = load_config(obj.get("config"))
        except ConfigError as err:
            raise SendError(str(err)) from None
    return dict(config.get("actor") or {})


def _link(
    ctx: click.Context, host: str | None, port: int | None, tron: str | None, program: str
) -> Link:
    if tron is not None:
        tron_host, tron_port = _tron_address(tron)
        given = ctx.find_root().ensure_object(dict).get("config") is not None
        name = (_actor_config(ctx).get("name") if given else None) or "fliswarm"
        return TronLink(tron_host, tron_port, name, program)
    actor: dict[str, Any] = {}
    if host is None or port is None:
        actor = _actor_config(ctx)
    if host is None:
        host = str(actor.get("host") or "127.0.0.1")
        if host in ("0.0.0.0", ""):  # Listening on every interface: this machine's loopback.
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
    if port is None:
        port = int(actor.get("port") or 0)
        if not port:
            raise SendError("the configuration has no actor.port: give --port.")
    return DirectLink(host, port, str(actor.get("name") or "fliswarm"))


def _fail(message: str) -> NoReturn:
    click.echo(f"ERROR: {message}", err=True)
    sys.exit(EXIT_UNREACHABLE)


@click.command(context_settings={"allow_interspersed_args": False})
@click.option(
    "--host",
    type=str,
    help="Host of the actor. Default: actor.host of the configuration (127.0.0.1 when it "
    "listens on every interface).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="Port of the actor. Default: actor.port of the configuration.",
)
@click.option(
    "--tron",
    metavar="HOST:PORT",
    help="Send through the tron hub at HOST:PORT (its commander port; 6093 if only HOST is "
    "given), as <program>.<user> <id> <actor> COMMAND; the actor's name is actor.name of "
    "the configuration given with -c, else fliswarm.",
)
@click.option(
    "--program",
    default="fliswarm",
    show_default=True,
    help="With --tron: the program part of the commander name (tron's permissions are per "
    "program).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds for the connection and the command to end (raise it for long exposures "
    "or a reconnect that pulls the image); exit status 2 after that.",
)
@click.option("--raw", is_flag=True, help="Print the lines as the actor (or tron) writes them.")
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help="Also print the unsolicited lines (the actor's broadcasts) that come while the "
    "command runs, marked with '*'.",
)
@click.argument("COMMAND", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def send(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    tron: str | None,
    program: str,
    timeout: float,
    raw: bool,
    show_all: bool,
    command: tuple[str, ...],
):
    """Send COMMAND to the running actor and print its replies as they come.

    Options go before the command: everything from the command on is sent as is
    (fliswarm send talk -c gfa expose 1). Each reply line is printed as one line per
    keyword after its code (i nodeState=gfa1,online,...); the command's end is ':' or 'f'.
    Exit status: 0 when the command finishes (:), 1 when it fails (f), 2 when the actor
    cannot be reached or the command does not end within --timeout seconds (one line on
    stderr says why). Without COMMAND, commands are read from the standard input, one per
    line, on one connection (the exit status is then the last command's): on a terminal,
    with a prompt and a history ($XDG_STATE_HOME/fliswarm/send_history).
    """

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", program):
        _fail(f"--program {program!r}: letters, digits and '_' only (tron's rule).")
    text = shlex.join(command)
    if "\n" in text or "\r" in text:
        _fail("the command must be one line.")

    def write(line: str) -> None:
        click.echo(line)
        with contextlib.suppress(Exception):
            sys.stdout.flush()

    printer = Printer(raw, write)
    try:
        link = _link(ctx, host, port, tron, program)
        link.connect(time.monotonic() + timeout)
        try:
            if command:
                status = run_command(link, text, timeout, printer, show_all)
            else:
                status = _interactive(link, timeout, printer, show_all, write)
        finally:
            link.close()
    except SendError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        click.echo("ERROR: interrupted; the command may still be running.", err=True)
        sys.exit(130)
    except BrokenPipeError:  # The reader went away (| head): no traceback, no more output.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    sys.exit(status)
