"""A real tron hub on loopback, started from project code, and an async client for it.

`TronHub` runs the installed sdss-tron (``runhub.py``) in a subprocess through a small generated
wrapper that binds every tron listener to one loopback address and moves the commander ("client",
normally 6093) port to a free port. `TronClient` talks to that port the way a user does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, NamedTuple

from fliswarm_testbed.tron_client import (
    TronClient,
    TronError,
    TronLine,
    TronReply,
    TronTimeoutError,
    check_host,
    parse_keywords,
)
from fliswarm_testbed.tron_wrapper import WRAPPER_SOURCE, tron_package_dir


__all__ = [
    "TronHub",
    "TronCommand",
    "TronClient",
    "TronReply",
    "TronLine",
    "TronError",
    "TronTimeoutError",
    "parse_keywords",
    "check_host",
    "free_port",
    "tron_package_dir",
]

_hub_ids = itertools.count(1)

# How tron's hub log records each command it receives (tron.hub.addCommand, Command.__str__).
_COMMAND_LOG = re.compile(
    r"hub\.addCommand new cmd=Command\(xid=\d+, cmdr=\S+, cmdrCid=(?P<cid>\S+), "
    r"cmdrMid=(?P<mid>\S+), actor=(?P<actor>\S+), cmd=(?P<command>.*)\)$"
)


class TronCommand(NamedTuple):
    """A command tron received, as its hub log records it."""

    cid: str
    mid: str
    actor: str
    command: str


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port that is free on ``host`` right now."""

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class TronHub:
    """A real tron hub in a subprocess, listening on one loopback address only.

    Use `TronHub.start`. By default only the ``client`` nub is started at launch; actor nubs are
    started by clients with ``hub startNubs <name>`` (`TronClient.start_nubs`). Actors named in
    ``nubs`` are connected by tron itself at every launch (and `restart`), as the observatories'
    configurations do for their actors.

    Parameters
    ----------
    actors
        Mapping of actor name to ``(host, port)``. Hosts must be loopback or test-bed addresses.
        Actors for which tron ships no nub (``tron/Nubs/<name>.py``) get a generic socket nub
        that sends ``init_cmds`` on connection, like tron's own ``fliswarm`` nub.
    log_dir
        Folder for the generated configuration, tron's logs and its output (``tron.out``). If
        `None`, a temporary folder is created and removed by `stop`.
    host
        Loopback address that all of tron's listeners bind.
    port
        Commander port; a free port if `None`. Kept across `restart`.
    fast_accept
        Remove tron's 1 s (hub-blocking) sleep when a client connects.
    nodelay
        Set ``TCP_NODELAY`` on tron's client and actor sockets (saves ~40 ms per command).
    init_cmds
        Commands the generic nubs send to an actor on connection.
    nubs
        Actors (keys of ``actors``) that tron connects to by itself when it starts: its
        configuration's ``nubs`` list after ``client``. An actor not listening then is only
        reported in tron's output (``FAILED to start nub <name>``).
    """

    def __init__(
        self,
        actors: Mapping[str, tuple[str, int]] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        fast_accept: bool = True,
        nodelay: bool = True,
        init_cmds: tuple[str, ...] = ("ping", "status"),
        nubs: Sequence[str] = (),
    ):
        check_host(host, loopback_only=True)
        self.actors = dict(actors or {})
        unknown = set(nubs) - set(self.actors)
        if unknown:
            raise ValueError(f"nubs {sorted(unknown)} are not among the actors.")
        self.nubs = tuple(nubs)
        for name, (actor_host, actor_port) in self.actors.items():
            if not name.isidentifier():
                raise ValueError(f"invalid actor name {name!r}.")
            check_host(actor_host)
            if not 0 < int(actor_port) < 65536:
                raise ValueError(f"invalid port {actor_port!r} for actor {name!r}.")

        self._own_dir = log_dir is None
        self._log_dir = None if log_dir is None else Path(log_dir)
        self._host = host
        self._port = port or free_port(host)
        self.fast_accept = fast_accept
        self.nodelay = nodelay
        self.init_cmds = tuple(init_cmds)
        self.id = next(_hub_ids)

        self._proc: asyncio.subprocess.Process | None = None
        self._out: IO[bytes] | None = None

    @classmethod
    async def start(
        cls,
        actors: Mapping[str, tuple[str, int]] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        **kwargs,
    ) -> TronHub:
        """Writes the configuration, launches tron and waits until it answers a command.

        Extra keyword arguments go to `TronHub`. On failure the process is stopped and
        `TronError` (with the tail of tron's output) is raised.
        """

        hub = cls(actors, log_dir, **kwargs)
        try:
            await hub._launch()
            await hub.wait_ready(timeout)
        except BaseException:
            await hub.stop()
            raise
        return hub

    @property
    def log_dir(self) -> Path:
        """Folder with ``config/``, tron's ``logs/`` and its output ``tron.out``."""

        if self._log_dir is None:  # Created lazily, removed by stop().
            self._log_dir = Path(tempfile.mkdtemp(prefix="fliswarm-tron-"))
        return self._log_dir

    @property
    def config_dir(self) -> Path:
        return self.log_dir / "config"

    @property
    def log_file(self) -> Path:
        """tron's captured stdout and stderr."""

        return self.log_dir / "tron.out"

    @property
    def host(self) -> str:
        """The loopback address tron listens on."""

        return self._host

    @property
    def commander_port(self) -> int:
        """The commander (``client`` nub, 6093 in production) port."""

        return self._port

    @property
    def pid(self) -> int | None:
        """Process id of the running hub, or `None`."""

        return self._proc.pid if self.running and self._proc else None

    @property
    def running(self) -> bool:
        """Whether the hub process is alive."""

        return self._proc is not None and self._proc.returncode is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of tron's captured stdout/stderr."""

        if self._log_dir is None:
            return "<no tron output>"
        try:
            text = (self._log_dir / "tron.out").read_text(errors="replace")
        except OSError:
            return "<no tron output>"
        return "\n".join(text.splitlines()[-lines:])

    def hub_log(self) -> str:
        """tron's own log (``logs/hub/``) since it last started; ``""`` before the first start.

        tron names each log file after its start time (to the second) and writes it line by
        line, so the newest file is that of the running (or last) hub.
        """

        if self._log_dir is None:
            return ""
        files = sorted((self._log_dir / "logs" / "hub").glob("????-??-??T*.log"))
        return files[-1].read_text(errors="replace") if files else ""

    def received_commands(self) -> list[TronCommand]:
        """The commands tron received since it last started (from `hub_log`), oldest first."""

        commands = []
        for line in self.hub_log().splitlines():
            match = _COMMAND_LOG.search(line)
            if match:
                text = match["command"]
                if len(text) >= 2 and text[0] == text[-1] == '"':  # tron's Misc.qstr.
                    text = re.sub(r"\\(.)", r"\1", text[1:-1])
                commands.append(TronCommand(match["cid"], match["mid"], match["actor"], text))
        return commands

    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "logs").mkdir(parents=True, exist_ok=True)
        hub_cfg = {"logDir": "$TRON_LOG_DIR", "vocabulary": ["perms", "hub", "keys", "msg"]}
        actors = {
            name: {"host": host, "port": int(port), "actorName": name}
            for name, (host, port) in self.actors.items()
        }
        local = {
            "nubs": ["client", *self.nubs],
            "actors": actors,
            "httpHost": "localhost",
            "httpRoot": "/",
        }
        (self.config_dir / "hub.json").write_text(json.dumps(hub_cfg, indent=2))
        (self.config_dir / "local.json").write_text(json.dumps(local, indent=2))
        (self.config_dir / "tron_wrapper.py").write_text(WRAPPER_SOURCE)

    async def _launch(self) -> None:
        if self.running:
            raise TronError("tron is already running.")
        self._write_config()
        tron_dir = tron_package_dir()
        shipped = {p.stem for p in (tron_dir / "Nubs").glob("*.py")}
        settings = {
            "tron_dir": str(tron_dir),
            "host": self._host,
            "port": self._port,
            "fast_accept": self.fast_accept,
            "nodelay": self.nodelay,
            "generic_nubs": sorted(set(self.actors) - shipped),
            "init_cmds": list(self.init_cmds),
            "parent_pid": os.getpid(),
        }
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("TRON_", "ACTORCORE_"))
        }
        env.update(
            OBSERVATORY="LOCAL",
            TRON_LOG_DIR=str(self.log_dir / "logs"),
            CONFIG_DIR=str(self.config_dir),
            FLISWARM_TRON_SETTINGS=json.dumps(settings),
            PYTHONUNBUFFERED="1",
        )
        self._out = self.log_file.open("ab")  # Closed in stop().
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(self.config_dir / "tron_wrapper.py"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=str(self.log_dir),
            env=env,
        )

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Waits until the hub accepts a client and answers ``hub version`` with ``:``."""

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_error: BaseException | None = None
        while loop.time() < deadline:
            if not self.running:
                raise TronError(f"tron exited early.\n--- tron output ---\n{self.log_tail()}")
            if "FAILED to start nub client" in self.log_tail():
                raise TronError(
                    f"tron could not listen on {self._host}:{self._port} ({last_error!r})."
                    f"\n--- tron output ---\n{self.log_tail()}"
                )
            try:
                client = await TronClient.connect(self._host, self._port, timeout=2.0)
            except (OSError, asyncio.TimeoutError, TronError) as err:
                last_error = err
                await asyncio.sleep(0.05)
                continue
            try:
                attempt = min(2.0, max(0.5, deadline - loop.time()))
                reply = await client.send("version", actor="hub", timeout=attempt)
                if reply.ok:
                    return
                last_error = TronError(f"hub version failed: {reply.lines}")
            except (OSError, TronError) as err:
                last_error = err
            finally:
                await client.close()
        raise TronError(
            f"tron not ready on {self._host}:{self._port} after {timeout} s ({last_error!r})."
            f"\n--- tron output ---\n{self.log_tail()}"
        )

    async def stop(self, timeout: float = 5.0) -> int | None:
        """Stops tron: SIGTERM, wait ``timeout``, then SIGKILL (tron can hang on SIGTERM).

        Returns the exit code, or `None` if it was not running. Removes the log folder if it
        was created by us.
        """

        code: int | None = None
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), timeout)
                except asyncio.TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await asyncio.wait_for(proc.wait(), 10.0)
            code = proc.returncode
        if self._out is not None:
            self._out.close()
            self._out = None
        if self._own_dir and self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None
        return code

    async def restart(self, timeout: float = 30.0) -> None:
        """Stops and starts tron again on the same ports.

        tron connects by itself only to the actors in ``nubs``; others must be started again.
        """

        own_dir, self._own_dir = self._own_dir, False
        try:
            await self.stop()
        finally:
            self._own_dir = own_dir
        try:
            await self._launch()
            await self.wait_ready(timeout)
        except BaseException:
            await self.stop()
            raise

    async def client(self, timeout: float = 10.0, program: str = "fstest") -> TronClient:
        """Connects a new `TronClient` to this hub's commander port."""

        return await TronClient.connect(self._host, self._port, timeout=timeout, program=program)

    async def __aenter__(self) -> TronHub:
        if not self.running:
            await self._launch()
            await self.wait_ready()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<TronHub {self._host}:{self._port} {state} actors={sorted(self.actors)}>"
