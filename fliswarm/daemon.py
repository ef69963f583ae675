"""Running the actor as a daemon: pid file, start-up checks and reports, logging, stop.

One pid file is shared by every way of running fliswarm on a machine (`default_pid_file`):
``/var/tmp/actor.pid``, the file of ``sdss-fliswarm`` 0.7, so that the two versions find each
other. A pid file names a running fliswarm when its process is alive, is not a zombie and
runs ``fliswarm``; a pid reused by another program since the file was written is stale.

``start`` forks the daemon and waits for its report through a pipe: it returns once the actor
listens, or prints the reason it could not (one line) and exits non-zero. ``start --debug``
runs the actor in the foreground process itself, so that its exit status is the actor's. The
daemon's output (and every start-up failure, with its details) goes to the ``--log`` file, or
else to the *daemon log* next to the pid file (``/var/tmp/actor.log``).

Why not daemonocle (which 0.7 used, through sdsstools): its ``start`` returns once the child
has survived a fixed delay, not once the actor listens, and reports a failure only as
``FAILED`` / ``Child exited immediately with exit code 1``, the reason lost unless rerun with
``--debug``; in the foreground (``--debug``) it exits 0 when the actor dies, so systemd and
Docker restart policies never act; and its ``stop`` polls the process with sleeps (1.6-1.9 s for
an idle actor here). Each of these is what operators met with 0.7; the fork, the report pipe
and the pid file handling they need are what this module is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pwd
import select
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn


__all__ = [
    "DEFAULT_PID_FILE",
    "DaemonError",
    "DaemonSpec",
    "PidHolder",
    "StartError",
    "daemon_log_file",
    "default_pid_file",
    "pid_file_holder",
    "read_pid",
    "run_actor",
]


log = logging.getLogger("fliswarm")

#: The pid file of every recipe (the default, the modulefile, systemd, Docker): the one
#: ``sdss-fliswarm`` 0.7 used (sdsstools' ``/var/tmp/{prog}.pid`` with prog ``actor``).
DEFAULT_PID_FILE = Path("/var/tmp/actor.pid")

#: The default daemon log is moved aside (to ``.1``) at start when it is larger than this.
DAEMON_LOG_MAX_BYTES = 5 * 1024 * 1024

#: How long ``stop`` waits after SIGKILL, in seconds.
KILL_WAIT = 5.0


class DaemonError(Exception):
    """A daemon operation that cannot be done; the message is one line for the operator."""


class StartError(DaemonError):
    """The actor could not start; ``code`` is the exit status (2: configuration error)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(" ".join(message.split()))  # One line, whatever it quotes.
        self.code = code


class _Terminated(BaseException):
    """SIGTERM or SIGINT before the event loop handles them."""


def default_pid_file() -> Path:
    """The pid file when none is given: ``$FLISWARM_PID_FILE``, else `DEFAULT_PID_FILE`."""

    env = os.environ.get("FLISWARM_PID_FILE")
    return Path(env) if env else DEFAULT_PID_FILE


def daemon_log_file(pid_file: Path) -> Path:
    """The daemon log when no ``--log`` is given: the pid file's name with ``.log``."""

    return pid_file.with_suffix(".log")


# ------------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` from the state on (field 3), or `None` if gone."""

    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _alive(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie has exited)."""

    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())


def _started_at(pid: int) -> float | None:
    """When the process started (seconds since the epoch, to about a second), or `None`."""

    fields = _proc_stat(pid)
    if fields is None:
        return None
    try:
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _owner(path: Path | int) -> str:
    """The user name owning a file (a path) or a process (a pid)."""

    try:
        uid = os.stat(path if isinstance(path, Path) else f"/proc/{path}").st_uid
    except OSError:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _short(cmdline: str, limit: int = 100) -> str:
    return cmdline if len(cmdline) <= limit else cmdline[: limit - 3] + "..."


@dataclass(frozen=True)
class PidHolder:
    """The live process a pid file names."""

    pid: int
    cmdline: str

    @property
    def is_fliswarm(self) -> bool:
        """Whether it runs fliswarm (this version or ``sdss-fliswarm`` 0.7)."""

        return "fliswarm" in self.cmdline


def pid_file_holder(pid_file: Path) -> PidHolder | None:
    """The live process ``pid_file`` names, or `None` if the file is missing or stale.

    Stale: no number, no such process, a zombie, a process of another user than the file's,
    or a process that started after the file was written (its pid was reused). A pid file is
    written by the process it names (fliswarm's and 0.7's daemons, as any other).
    """

    try:
        text = pid_file.read_text().strip()
        info = pid_file.stat()
    except OSError:
        return None
    if not text.isdigit() or not _alive(int(text)):
        return None
    pid = int(text)
    cmdline = _cmdline(pid)
    started = _started_at(pid)
    try:
        same_user = os.stat(f"/proc/{pid}").st_uid == info.st_uid
    except OSError:
        return None
    if cmdline is None or not same_user or (started is not None and started > info.st_mtime + 2):
        return None
    return PidHolder(pid, cmdline)


def read_pid(pid_file: Path) -> int | None:
    """The pid of the fliswarm daemon of ``pid_file``, or `None` if none runs."""

    holder = pid_file_holder(pid_file)
    return holder.pid if holder is not None and holder.is_fliswarm else None


def _wait_exit(pid: int, timeout: float) -> bool:
    """Waits until the process has exited (zombie or gone); returns whether it has."""

    deadline = time.monotonic() + timeout
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while _alive(pid):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if pidfd is not None:  # Readable once the process has exited.
                select.select([pidfd], [], [], min(left, 0.5))
            else:
                time.sleep(min(left, 0.01))
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)


# ----------------------------------------------------------------------------- start checks


def _describe(err: OSError) -> str:
    return err.strerror or str(err)


def _prepare_file(path: Path, what: str, follow: bool = True) -> None:
    """Makes sure ``path`` can be created or appended to; raises `StartError` if not."""

    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StartError(
            f"cannot create the {what} directory {parent}: {_describe(err)}."
        ) from None
    if path.is_dir():
        raise StartError(f"the {what} {path} is a directory.")
    try:
        if path.exists() or path.is_symlink():
            os.close(_open_append(path, follow))
        else:
            with tempfile.TemporaryFile(dir=parent):
                pass
    except OSError as err:
        who = f" (owned by {_owner(path)})" if path.exists() else ""
        raise StartError(f"cannot write the {what} {path}{who}: {_describe(err)}.") from None


def _remove_stale(pid_file: Path) -> None:
    if not pid_file.is_file():
        return
    try:
        pid_file.unlink(missing_ok=True)
    except OSError as err:
        raise StartError(
            f"cannot remove the stale pid file {pid_file} (owned by {_owner(pid_file)}): "
            f"{_describe(err)}; remove it as that user or root."
        ) from None


def check_log_dir(log_dir: str | os.PathLike[str] | None, name: str) -> None:
    """Raises `StartError` if the actor cannot write its log in ``log_dir`` (as CLU names it)."""

    if not log_dir:
        return
    path = Path(log_dir).expanduser()
    where = f"the actor's log directory (actor.log_dir) {path}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        target = path / f"{name}.log"
        if target.is_dir():
            raise StartError(f"{where}: {target} is a directory.")
        if target.exists():
            with open(target, "a"):
                pass
    except OSError as err:
        raise StartError(f"cannot write in {where}: {_describe(err)}.") from None


def _port_owner(port: int) -> tuple[int, str] | None:
    """The process listening on TCP ``port`` (from ``/proc``), if it can be seen."""

    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A":  # LISTEN
                    if int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                        return int(entry), _cmdline(int(entry)) or "?"
    return None


def listen_error(host: str, port: int, err: OSError) -> str:
    """One line for the operator about a failure to listen on ``host:port``."""

    if err.errno == errno.EADDRINUSE:
        owner = _port_owner(port)
        by = f" by pid {owner[0]} ({_short(owner[1])})" if owner else ""
        return f"port {port} (actor.port) is already in use on {host}{by}."
    if err.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}:{port}: {host} is not an address of this machine."
    if err.errno == errno.EACCES and port < 1024:
        return f"cannot listen on {host}:{port}: ports below 1024 need root."
    return f"cannot listen on {host}:{port}: {_describe(err)}."


def check_port(host: str | None, port: int) -> None:
    """Raises `StartError` if ``host:port`` cannot be bound (in use, not an address, ...)."""

    host = host or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise StartError(f"cannot listen on {host}:{port}: {err.strerror}.") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            # As asyncio's server does, so that a just-closed port is not taken as used.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as err:
                raise StartError(listen_error(host, port, err)) from None


# ----------------------------------------------------------------------------- the actor


async def run_actor(config: dict[str, Any], ready: Callable[[], None] | None = None) -> None:
    """Runs the fliswarm actor until SIGTERM or SIGINT, then stops it cleanly.

    ``ready`` is called once the actor listens. Raises `StartError` (one line) if the actor
    cannot start: configuration, ``actor.log_dir``, the port.
    """

    from fliswarm.actor import FLISwarmActor
    from fliswarm.config import ConfigError

    stop = asyncio.Event()
    stopping_since: list[float] = []

    def on_signal() -> None:
        stopping_since.append(time.monotonic())
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)

    actor_config = config.get("actor") or {}
    host, port = actor_config.get("host") or "0.0.0.0", int(actor_config.get("port") or 0)
    check_log_dir(actor_config.get("log_dir"), actor_config.get("name") or "fliswarm")
    if port:
        check_port(host, port)
    try:
        actor = FLISwarmActor.from_config(config)
    except ConfigError as err:
        raise StartError(f"configuration error: {err}", code=2) from None
    if actor_config.get("log_dir") and getattr(actor.log, "fh", None) is None:
        raise StartError(
            f"cannot open the actor's log in actor.log_dir {actor_config['log_dir']}."
        )
    # The daemon's own handlers (`_setup_logging`) write CLU's records; its terminal handler
    # would write each warning a second time, with colour codes.
    with contextlib.suppress(AttributeError):
        actor.log.sh.setLevel(logging.CRITICAL + 1)

    starting = asyncio.ensure_future(actor.start())
    signalled = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # Stopped while connecting to the nodes.
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
            await asyncio.wait_for(actor.stop(), 20)
            return
        try:
            starting.result()
        except OSError as err:
            raise StartError(listen_error(host, port, err)) from None
        log.info(f"fliswarm actor started (pid {os.getpid()}), listening on {host}:{port}.")
        if ready is not None:
            ready()
        await signalled
    finally:
        signalled.cancel()
    log.info("stopping the fliswarm actor.")
    await asyncio.wait_for(actor.stop(), 20)
    if stopping_since:
        log.info(f"fliswarm actor stopped in {time.monotonic() - stopping_since[0]:.3f} s.")


def _setup_logging(log_file: Path | None, debug: bool, output: Path | None = None) -> None:
    """Sends fliswarm's and CLU's logs to ``log_file`` (INFO) and, with ``debug``, to stderr
    (DEBUG); else warnings and errors to ``output`` (the daemon log)."""

    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s")
    handlers: list[logging.Handler] = []
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    if debug:
        handlers.append(logging.StreamHandler(sys.stderr))
    elif log_file is None and output is not None:
        quiet = logging.StreamHandler(sys.stderr)  # stderr is the daemon log
        quiet.setLevel(logging.WARNING)
        handlers.append(quiet)
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def _open_append(path: Path, follow: bool = True) -> int:
    """Opens ``path`` to append to (created if needed); ``follow=False``: not a symlink."""

    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if follow else os.O_NOFOLLOW)
    return os.open(path, flags, 0o644)


def _record(path: Path, text: str, details: str = "", follow: bool = True) -> None:
    """Appends a start-up failure to the daemon log; never raises."""

    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with contextlib.suppress(OSError):
        with os.fdopen(_open_append(path, follow), "a") as file:
            file.write(f"{stamp} fliswarm (pid {os.getpid()}) {text}\n{details}")


# ---------------------------------------------------------------------------- the daemon


@dataclass
class DaemonSpec:
    """What the daemon runs and where it keeps its pid file and log.

    ``log_file`` is the ``--log`` file; without it the daemon's output goes to the daemon log
    next to the pid file (`daemon_log_file`).
    """

    config: dict[str, Any]
    pid_file: Path
    log_file: Path | None = None
    stop_timeout: float = 30.0
    start_timeout: float = 60.0

    @property
    def output(self) -> Path:
        """Where the daemon's output and its start-up failures go."""

        return self.log_file or daemon_log_file(self.pid_file)

    def _record(self, text: str, details: str = "") -> None:
        # The default daemon log is in a shared directory: never through a symlink.
        _record(self.output, text, details, follow=self.log_file is not None)

    @property
    def address(self) -> str:
        actor = self.config.get("actor") or {}
        return f"{actor.get('host') or '0.0.0.0'}:{actor.get('port')}"

    # -- status and stop

    def status(self) -> int | None:
        """Returns the daemon's pid, or `None` if it is not running."""

        return read_pid(self.pid_file)

    def stop(self) -> str | None:
        """Stops the daemon (SIGTERM, then SIGKILL after ``stop_timeout``).

        Returns what was done (one line), or `None` if no daemon runs. Raises `DaemonError`
        if it cannot be stopped.
        """

        holder = pid_file_holder(self.pid_file)
        if holder is None or not holder.is_fliswarm:
            return None
        pid = holder.pid
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return f"fliswarm (pid {pid}) had already stopped."
        except PermissionError:
            raise DaemonError(
                f"cannot stop fliswarm (pid {pid}): it runs as user {_owner(pid)}; "
                "stop it as that user or root."
            ) from None
        t0 = time.monotonic()
        if _wait_exit(pid, self.stop_timeout):
            result = f"fliswarm (pid {pid}) stopped in {time.monotonic() - t0:.3f} s."
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not _wait_exit(pid, KILL_WAIT):
                raise DaemonError(f"fliswarm (pid {pid}) survived SIGKILL.")
            result = (
                f"fliswarm (pid {pid}) did not stop within {self.stop_timeout:.0f} s "
                "and was killed."
            )
        if read_pid(self.pid_file) is None:  # Killed, or an old daemon that left it.
            with contextlib.suppress(OSError):
                if self.pid_file.read_text().strip() == str(pid):
                    self.pid_file.unlink()
        return result

    # -- start

    def start(self, debug: bool = False) -> str:
        """Starts the actor; returns a line saying it runs. Raises `StartError` if it cannot.

        Detached (the default), it returns once the actor listens. With ``debug`` it runs
        in this process, in the foreground, until stopped, and exits (`SystemExit`) with
        status 0 when stopped by a signal, 1 when the actor fails.
        """

        try:
            self._preflight()
        except StartError as err:
            self._record(f"could not start: {err}")
            raise
        if debug:
            self._run_foreground()
        return self._start_detached()

    def _preflight(self) -> None:
        holder = pid_file_holder(self.pid_file)
        if holder is not None:
            if holder.is_fliswarm:
                raise StartError(
                    f"fliswarm is already running (pid {holder.pid}, pid file "
                    f"{self.pid_file}); stop it first with 'fliswarm stop'."
                )
            raise StartError(
                f"the pid file {self.pid_file} belongs to pid {holder.pid} "
                f"({_short(holder.cmdline)}), not fliswarm; give fliswarm another with "
                "--pid-file."
            )
        _remove_stale(self.pid_file)  # Nothing runs: any pid file left is stale.
        _prepare_file(self.pid_file, "pid file")
        if self.log_file is None:
            output = self.output
            with contextlib.suppress(OSError):
                if output.stat().st_size > DAEMON_LOG_MAX_BYTES:
                    output.replace(output.with_name(output.name + ".1"))
            _prepare_file(output, "daemon log", follow=False)
        else:
            _prepare_file(self.log_file, "log file")

    def _write_pid_file(self) -> None:
        try:
            fd = os.open(self.pid_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise StartError(
                f"fliswarm is already starting (the pid file {self.pid_file} appeared)."
            ) from None
        except OSError as err:
            raise StartError(
                f"cannot write the pid file {self.pid_file}: {_describe(err)}."
            ) from None
        with os.fdopen(fd, "w") as file:
            file.write(f"{os.getpid()}\n")

    def _remove_pid_file(self) -> None:
        with contextlib.suppress(OSError):
            if self.pid_file.read_text().strip() == str(os.getpid()):
                self.pid_file.unlink()

    def _serve(self, report: Callable[[int, str], None]) -> int:
        """Runs the actor; ``report(0, "")`` once it listens, ``report(code, line)`` if it
        cannot start. Returns the exit status; failures are recorded in `output`."""

        listening = False

        def ready() -> None:
            nonlocal listening
            listening = True
            report(0, "")

        try:
            asyncio.run(run_actor(self.config, ready))
        except _Terminated:
            return 0
        except StartError as err:
            self._record(f"could not start: {err}")
            report(err.code, str(err))
            return err.code
        except Exception as err:
            what = f"{type(err).__name__}: {err}".splitlines()[0]
            stage = "died" if listening else "could not start"
            self._record(f"{stage}: {what}", traceback.format_exc())
            report(1, f"the actor {stage}: {what} (details in {self.output}).")
            return 1
        return 0

    def _run_foreground(self) -> NoReturn:
        """``start --debug``: the actor in this process; exits with its status."""

        def terminate(signum: int, frame: Any) -> None:
            raise _Terminated()

        _setup_logging(self.log_file, debug=True)
        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGINT, terminate)
        self._write_pid_file()
        failure: list[str] = []

        def report(code: int, line: str) -> None:
            if code:
                failure.append(line)
            else:
                print(
                    f"fliswarm is running (pid {os.getpid()}), actor on {self.address}.",
                    flush=True,  # A journal or a pipe: now, not at exit.
                )

        try:
            code = self._serve(report)
        except _Terminated:
            code = 0
        finally:
            self._remove_pid_file()
        if failure:
            raise StartError(failure[0], code)
        raise SystemExit(code)

    def _start_detached(self) -> str:
        """Forks the daemon and waits for its report: returns its line, or raises."""

        reader, writer = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:  # First child: a new session, then the daemon, then gone.
            code = 1
            try:
                os.close(reader)
                os.setsid()
                if os.fork() == 0:
                    code = self._daemon(writer)
                else:
                    code = 0
            finally:
                os._exit(code)
        os.close(writer)
        os.waitpid(child, 0)
        with os.fdopen(reader, "rb") as pipe:
            return self._wait_report(pipe)

    def _wait_report(self, pipe: Any) -> str:
        """Reads the daemon's report: ``PID n``, then ``OK`` or ``ERROR code line``."""

        deadline = time.monotonic() + self.start_timeout
        data = b""
        pid: int | None = None
        while True:
            lines = data.split(b"\n")
            for line in lines[:-1]:
                word, _, rest = line.decode(errors="replace").partition(" ")
                if word == "PID":
                    pid = int(rest)
                elif word == "OK":
                    return (
                        f"fliswarm is running (pid {pid}), actor on {self.address}, "
                        f"log {self.output}."
                    )
                elif word == "ERROR":
                    code, _, message = rest.partition(" ")
                    raise StartError(message, int(code))
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([pipe], [], [], left)
            if not ready:
                continue
            chunk = os.read(pipe.fileno(), 4096)
            if not chunk:
                raise StartError(
                    f"the daemon exited during start-up without saying why; see {self.output}."
                )
            data += chunk
        # Not listening in time: stop it, so that a failed start leaves nothing running.
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_exit(pid, self.stop_timeout):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        raise StartError(
            f"the actor did not listen on {self.address} within {self.start_timeout:.0f} s "
            f"(stopped); see {self.output}."
        )

    def _daemon(self, writer: int) -> int:
        """The daemon process: output to the daemon log, pid file, the actor. Never raises."""

        def send(text: str) -> None:
            with contextlib.suppress(OSError):
                os.write(writer, f"{text}\n".encode())

        def report(code: int, line: str) -> None:
            nonlocal writer
            if writer < 0:
                return
            send("OK" if code == 0 else f"ERROR {code} {' '.join(line.split())}")
            os.close(writer)
            writer = -1

        def terminate(signum: int, frame: Any) -> None:
            raise _Terminated()

        code = 1
        try:
            signal.signal(signal.SIGTERM, terminate)
            signal.signal(signal.SIGINT, terminate)
            os.umask(0o022)
            null = os.open(os.devnull, os.O_RDWR)
            out = _open_append(self.output, follow=self.log_file is not None)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.close(null)
            os.close(out)
            _setup_logging(self.log_file, debug=False, output=self.output)
            try:
                self._write_pid_file()
            except StartError as err:
                report(err.code, str(err))
                return err.code
            try:
                send(f"PID {os.getpid()}")
                code = self._serve(report)
            finally:
                self._remove_pid_file()
        except _Terminated:
            code = 0
        except BaseException as err:
            self._record(f"daemon failed: {err!r}", traceback.format_exc())
            report(1, f"the daemon failed: {err!r} (details in {self.output}).")
        finally:
            with contextlib.suppress(Exception):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
        return code
