"""Processes and cgroups of the test bed: spawning, liveness, killing, clean-up."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator


__all__ = [
    "CGROUP2_ROOT",
    "spawn",
    "stop_subprocesses",
    "reap_children",
    "process_alive",
    "cgroup_pids",
    "kill_cgroup",
    "cgroups_with_prefix",
    "remove_cgroups",
    "note_host_dirs",
    "remove_host_dirs",
    "HOST_DIRS",
    "sweep_processes",
    "unmount_under",
]


CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP2_ROOT = (
    "/sys/fs/cgroup/unified"
    if os.path.exists("/sys/fs/cgroup/unified/cgroup.procs")
    else "/sys/fs/cgroup"
)
_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn(argv: list[str], log_path: str) -> int:
    """Starts a background program in a new session, output to ``log_path``; returns its PID.

    The program is remembered so that `reap_children` can collect it once it dies.
    """

    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _children[proc.pid] = proc
    return proc.pid


async def stop_subprocesses(
    procs: Iterable[asyncio.subprocess.Process], grace: float = 10.0
) -> None:
    """Terminates asyncio subprocesses, waits ``grace`` seconds for each, then kills."""

    procs = list(procs)
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def reap_children() -> None:
    """Collects the exit status of engines we started that have died (no zombies)."""

    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            _children.pop(pid, None)


def process_alive(pid: int | None, marker: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process whose command line contains ``marker``.

    A process in the middle of an ``exec`` briefly shows an empty command line: that is
    read again a few times before concluding.
    """

    if not pid:
        return False
    reap_children()
    for _ in range(50):
        if not _exists(pid):
            return False
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            return False
        if cmdline:
            return marker in cmdline
        time.sleep(0.005)
    return False


def _walk(cgroup: str) -> Iterator[str]:
    for root, _dirs, _files in os.walk(cgroup, topdown=False):
        yield root


def cgroup_pids(cgroup: str) -> set[int]:
    """PIDs of every process in a cgroup-v2 directory and below."""

    pids: set[int] = set()
    for path in _walk(cgroup):
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids.update(int(line) for line in f if line.strip())
        except OSError:
            pass
    return pids


def kill_cgroup(
    cgroup: str, extra: tuple[tuple[int, str], ...] = (), timeout: float = 10.0
) -> None:
    """SIGKILLs every process of a cgroup and waits until none is left.

    Parameters
    ----------
    cgroup
        The cgroup-v2 directory.
    extra
        ``(pid, marker)`` pairs of processes to kill too, if `process_alive` (e.g. an
        engine that had no time to join its cgroup).
    timeout
        Seconds to wait for the processes to die.
    """

    deadline = time.monotonic() + timeout
    while True:
        pids = cgroup_pids(cgroup) if os.path.isdir(cgroup) else set()
        pids |= {pid for pid, marker in extra if process_alive(pid, marker)}
        pids = {pid for pid in pids if _exists(pid)}
        if not pids:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {sorted(pids)} of {cgroup} survive SIGKILL.")
        if os.path.isdir(cgroup):
            try:
                with open(os.path.join(cgroup, "cgroup.kill"), "w") as f:
                    f.write("1")
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
        reap_children()


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _cgroup_roots() -> list[str]:
    roots = [CGROUP2_ROOT]
    if CGROUP2_ROOT != CGROUP_ROOT:
        for entry in os.listdir(CGROUP_ROOT):
            path = os.path.join(CGROUP_ROOT, entry)
            if os.path.isdir(path) and not os.path.islink(path) and path != CGROUP2_ROOT:
                roots.append(path)
    return roots


def cgroups_with_prefix(prefix: str) -> list[str]:
    """Top cgroup-v2 directories whose name starts with ``prefix`` (a bed's nodes)."""

    try:
        return [
            os.path.join(CGROUP2_ROOT, d) for d in os.listdir(CGROUP2_ROOT) if d.startswith(prefix)
        ]
    except OSError:
        return []


def remove_cgroups(prefix: str) -> None:
    """Removes the (empty) cgroup directories named ``prefix*`` in every hierarchy."""

    for root in _cgroup_roots():
        try:
            tops = [os.path.join(root, d) for d in os.listdir(root) if d.startswith(prefix)]
        except OSError:
            continue
        for top in tops:
            for path in _walk(top):
                with contextlib.suppress(OSError):
                    os.rmdir(path)


#: Directories every dockerd or shim creates whatever its configuration says.
HOST_DIRS = ["/run/docker", "/run/docker/plugins", "/run/containerd", "/run/containerd/s"]


@contextlib.contextmanager
def _flock(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def note_host_dirs(run_root: str) -> None:
    """Remembers which of `HOST_DIRS` do not exist yet (call before starting engines)."""

    record = os.path.join(run_root, ".host-dirs")
    with _flock(record + ".lock"):
        missing = [d for d in HOST_DIRS if not os.path.exists(d)]
        try:
            with open(record) as f:
                known = json.load(f)
        except (OSError, ValueError):
            known = []
        with open(record, "w") as f:
            json.dump(sorted(set(known) | set(missing)), f)


def remove_host_dirs(run_root: str) -> None:
    """Removes the remembered `HOST_DIRS` that are still empty, if no bed is up any more."""

    record = os.path.join(run_root, ".host-dirs")
    with _flock(record + ".lock"):
        if any(entry.isdigit() for entry in os.listdir(run_root)):
            return
        try:
            with open(record) as f:
                dirs = json.load(f)
        except (OSError, ValueError):
            return
        for path in sorted(dirs, key=len, reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(path)
        os.unlink(record)


#: Programs of a bed that `sweep_processes` may kill.
SWEEP_PROGRAMS = {
    "dockerd",
    "containerd",
    "containerd-shim-runc-v2",
    "docker-registry",
    "sh",
    "nsenter",
    "unshare",
}


def sweep_processes(marker: str) -> None:
    """SIGKILLs leftover bed daemons: `SWEEP_PROGRAMS` with ``marker`` in an argument."""

    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0].decode(errors="replace")) not in SWEEP_PROGRAMS:
            continue
        if any(needle in arg for arg in argv[1:]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)
    reap_children()


def unmount_under(prefixes: tuple[str, ...]) -> None:
    """Lazily unmounts every mount point (of our mount namespace) under ``prefixes``."""

    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted(points, key=len, reverse=True):
        if point.startswith(prefixes):
            subprocess.run(
                ["umount", "-l", point], capture_output=True, timeout=10, stdin=subprocess.DEVNULL
            )
