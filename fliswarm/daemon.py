"""Running the actor as a daemon: pid file, logging, start/stop/status checks."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import daemonocle


__all__ = ["DaemonError", "DaemonSpec", "default_pid_file", "read_pid", "run_actor"]


log = logging.getLogger("fliswarm")


class DaemonError(Exception):
    """A daemon operation that cannot be done; the message is one line for the user."""


def default_pid_file() -> Path:
    """Where the pid file goes when none is given: per user, under the XDG state dir."""

    env = os.environ.get("FLISWARM_PID_FILE")
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state) / "fliswarm" / "fliswarm.pid"


def read_pid(pid_file: Path) -> int | None:
    """Returns the pid of the running daemon, or `None` (a stale pid file is ignored)."""

    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # A reused pid that is not a Python process is not ours.
    return pid if b"python" in cmdline or b"fliswarm" in cmdline else None


def _check_writable(path: Path, what: str) -> None:
    """Raises `DaemonError` if ``path`` (a file) cannot be created or appended to."""

    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DaemonError(f"cannot create the {what} directory {parent}: {err.strerror}.") from err
    if path.is_dir():
        raise DaemonError(f"the {what} {path} is a directory.")
    if not os.access(parent, os.W_OK | os.X_OK) or (
        path.exists() and not os.access(path, os.W_OK)
    ):
        raise DaemonError(f"the {what} {path} is not writable.")


def _setup_logging(log_file: Path | None, debug: bool) -> None:
    """Sends fliswarm's and CLU's logs to ``log_file`` and, with ``debug``, to stderr."""

    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s")
    handlers: list[logging.Handler] = []
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    if debug:
        handlers.append(logging.StreamHandler(sys.stderr))
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


async def run_actor(config: dict[str, Any]) -> None:
    """Runs the fliswarm actor until SIGTERM or SIGINT, then stops it cleanly."""

    from fliswarm.actor import FLISwarmActor

    actor = FLISwarmActor.from_config(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await actor.start()
    log.info("fliswarm actor started.")
    try:
        await stop.wait()
    finally:
        log.info("stopping the fliswarm actor.")
        await asyncio.wait_for(actor.stop(), 20)


def _wait_listening(host: str, port: int, pid: int | None, timeout: float) -> bool:
    """Waits until something accepts TCP connections on ``host:port``."""

    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not Path(f"/proc/{pid}").exists():
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


@dataclass
class DaemonSpec:
    """What the daemon runs and where it keeps its pid file and log."""

    config: dict[str, Any]
    pid_file: Path
    log_file: Path | None = None
    stop_timeout: float = 20.0
    start_timeout: float = 30.0
    _is_worker: bool = False

    def _daemon(self) -> daemonocle.Daemon:
        return daemonocle.Daemon(
            name="fliswarm",
            worker=self._worker,
            pid_file=str(self.pid_file),
            work_dir=os.getcwd(),
            stderr_file=str(self.log_file) if self.log_file else None,
            stop_timeout=self.stop_timeout,
        )

    def _worker(self, debug: bool = False) -> None:
        # Only true in the worker process: its own exit must not be taken for a detach.
        self._is_worker = True
        _setup_logging(self.log_file, debug)
        asyncio.run(run_actor(self.config))

    def status(self) -> int | None:
        """Returns the daemon's pid, or `None` if it is not running."""

        return read_pid(self.pid_file)

    def start(self, debug: bool = False) -> None:
        """Starts the daemon (detached unless ``debug``); raises `DaemonError` if it can't."""

        pid = read_pid(self.pid_file)
        if pid is not None:
            raise DaemonError(
                f"fliswarm is already running (pid {pid}, pid file {self.pid_file})."
            )
        _check_writable(self.pid_file, "pid file")
        if self.log_file is not None:
            _check_writable(self.log_file, "log file")
        if self.pid_file.exists():
            self.pid_file.unlink()  # stale

        origin = os.getpid()
        try:
            self._daemon().start(debug=debug)
        except SystemExit as exc:
            # daemonocle exits from the original process (with the first child's status)
            # and from the first child once the worker is detached.
            if debug or self._is_worker or os.getpid() == origin or exc.code not in (0, None):
                raise
            self._confirm_started()
            raise SystemExit(0) from None

    def _confirm_started(self) -> None:
        actor = self.config["actor"]
        deadline = time.monotonic() + 5
        pid = read_pid(self.pid_file)
        while pid is None and time.monotonic() < deadline:
            time.sleep(0.05)
            pid = read_pid(self.pid_file)
        if _wait_listening(actor["host"], actor["port"], pid, self.start_timeout):
            print(f"fliswarm is running (pid {pid}), actor on {actor['host']}:{actor['port']}.")
            return
        where = f"; see {self.log_file}" if self.log_file else ""
        print(
            f"ERROR: fliswarm did not start listening on port {actor['port']}{where}.",
            file=sys.stderr,
        )
        raise SystemExit(1)

    def stop(self) -> None:
        """Stops the daemon gracefully; raises `DaemonError` if it is not running."""

        pid = read_pid(self.pid_file)
        if pid is None:
            raise DaemonError(f"fliswarm is not running (no live pid in {self.pid_file}).")
        try:
            self._daemon().stop(force=True)
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise DaemonError(f"could not stop fliswarm (pid {pid}).") from None
        if self.pid_file.exists() and read_pid(self.pid_file) is None:
            self.pid_file.unlink()
