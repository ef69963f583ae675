"""The processes and files of ``fliswarm demo``: its state folder, the tron keeper, clean-up.

Each demo instance records what it started under ``STATE_ROOT/<instance>`` (`DemoPaths`).
`start_tron` launches the tron keeper (``python3 -m fliswarm_testbed.demo _tron ...``, its own
session), which runs `keep_tron`; `stop_processes` and `stop_demo` stop everything again,
checking each pid against its command line so a reused pid is never signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any


__all__ = [
    "STATE_ROOT",
    "DemoError",
    "DemoPaths",
    "alive",
    "end",
    "sweep",
    "fliswarm_cli",
    "stop_processes",
    "remove_containers",
    "stop_demo",
    "keep_tron",
    "start_tron",
]

#: Where each demo instance keeps its configuration, pid files and logs.
STATE_ROOT = Path("/var/lib/fliswarm-demo")


class DemoError(Exception):
    """A demo step that failed; the message names the step."""


class DemoPaths:
    """The files of one demo instance, under ``STATE_ROOT/<instance>``."""

    def __init__(self, instance: int) -> None:
        self.instance = instance
        self.root = STATE_ROOT / str(instance)
        self.config = self.root / "fliswarm.yaml"
        self.pid_file = self.root / "fliswarm.pid"
        self.log_file = self.root / "fliswarm.log"
        self.tron_dir = self.root / "tron"
        self.state_file = self.root / "state.json"

    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def save(self, **values: Any) -> None:
        state = self.state() | values
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=1))


def alive(pid: int | None, marker: str) -> bool:
    """Whether ``pid`` runs and its command line contains ``marker`` (not a reused pid)."""

    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(marker.encode() + end in cmdline for end in (b"/", b"\0"))


def end(pid: int, marker: str, timeout: float) -> None:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL (only if the pid is still ours)."""

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not alive(pid, marker):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while alive(pid, marker) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # when we are its parent
            time.sleep(0.05)


def sweep(marker: str) -> list[int]:
    """SIGKILLs the Python processes whose command line mentions the directory ``marker``."""

    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid() or not alive(int(entry), marker):
            continue
        with contextlib.suppress(OSError):
            program = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
            if os.path.basename(program).startswith(b"python"):  # not a user's tail -f
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
    return killed


def fliswarm_cli(paths: DemoPaths, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Runs the real ``fliswarm`` CLI on the demo's configuration and pid file."""

    argv = [sys.executable, "-m", "fliswarm", "-c", str(paths.config)]
    argv += ["--pid-file", str(paths.pid_file), *args]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def stop_processes(paths: DemoPaths, say: Callable[[str], None] = print) -> None:
    """Stops the fliswarm daemon and the tron keeper of a demo instance (bed untouched)."""

    from fliswarm.daemon import read_pid

    marker = str(paths.root)
    pid = read_pid(paths.pid_file)
    if pid is not None and paths.config.exists():
        t0 = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            done = fliswarm_cli(paths, "stop", timeout=40)
            output = " ".join((done.stdout + done.stderr).split())
            say(f"fliswarm daemon (pid {pid}) stopped in {time.monotonic() - t0:.1f} s: {output}")
    keeper = paths.state().get("tron_keeper_pid")
    if keeper and alive(keeper, marker):
        t0 = time.monotonic()
        end(int(keeper), marker, timeout=15)
        say(f"tron hub (keeper pid {keeper}) stopped in {time.monotonic() - t0:.1f} s.")
    killed = sweep(marker)
    if killed:
        say(f"killed leftover demo processes: {killed}")
    paths.pid_file.unlink(missing_ok=True)


def remove_containers(addr: str) -> list[str]:
    """Force-removes fliswarm's containers on a live bed node (engine restarts avoided)."""

    from fliswarm.docker.containers import LABEL_MANAGED
    from fliswarm_testbed.engine import http_request

    query = urllib.parse.quote(json.dumps({"label": [f"{LABEL_MANAGED}=true"]}))
    try:
        status, body = http_request(addr, f"/containers/json?all=1&filters={query}", timeout=5)
        names = [c["Names"][0].lstrip("/") for c in json.loads(body)] if status == 200 else []
        for name in names:
            http_request(addr, f"/containers/{name}?force=1", "DELETE", timeout=10)
    except (OSError, ValueError, KeyError, IndexError):
        return []  # a node that does not answer: bed.down() kills it anyway
    return names


def stop_demo(instance: int, say: Callable[[str], None] = print) -> None:
    """``fliswarm demo down``: daemon, tron, test bed and the demo's files, all gone."""

    from fliswarm_testbed.bed import Testbed

    paths = DemoPaths(instance)
    start = time.monotonic()
    stop_processes(paths, say)
    t0 = time.monotonic()
    bed = Testbed(instance)  # the bed's own state says which nodes it has
    if bed.is_up():
        removed: list[str] = []
        bed._parallel(lambda node: removed.extend(remove_containers(node.addr)))
        took = time.monotonic() - t0
        say(f"removed the flicamera containers {sorted(removed)} in {took:.1f} s.")
    t0 = time.monotonic()
    bed.down()
    say(f"test bed {instance} down in {time.monotonic() - t0:.1f} s.")
    shutil.rmtree(paths.root, ignore_errors=True)
    with contextlib.suppress(OSError):
        STATE_ROOT.rmdir()  # when no other instance is left
    say(f"demo {instance} cleaned up in {time.monotonic() - start:.1f} s.")


async def keep_tron(root: Path, actor_port: int, tron_port: int) -> None:
    """Runs a tron hub for the demo's actor until SIGTERM/SIGINT/SIGHUP or until tron dies."""

    from fliswarm_testbed.tron import TronHub

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    hub = await TronHub.start(
        {"fliswarm": ("127.0.0.1", actor_port)}, log_dir=root / "tron", port=tron_port
    )
    print(f"tron pid {hub.pid} on 127.0.0.1:{tron_port}", flush=True)
    try:
        while hub.running and not stop.is_set():  # tron dying ends the keeper too
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        await hub.stop()


def start_tron(paths: DemoPaths, actor_port: int, tron_port: int) -> int:
    """Starts the detached tron keeper; returns its pid (tron is ready when it answers)."""

    paths.tron_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "fliswarm_testbed.demo", "_tron", str(paths.root)]
    with open(paths.tron_dir / "keeper.log", "ab") as out:
        proc = subprocess.Popen(
            [*argv, str(actor_port), str(tron_port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    paths.save(tron_keeper_pid=proc.pid, tron_port=tron_port)
    return proc.pid
