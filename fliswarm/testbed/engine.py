"""One node's Docker engine: its ``dockerd`` inside the node's namespace, and the runtime wrapper.

Every process of a node (dockerd, its containerd, the shims and the containers) lives
under the cgroup-v2 directory `EngineSpec.cgroup` (``cgroup.kill`` ends them all at
once); containers also get ``cgroup-parent: /<netns>`` in the v1 hierarchies.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


__all__ = [
    "EngineSpec",
    "CGROUP2_ROOT",
    "needs_runtime_wrapper",
    "write_runtime_wrapper",
    "start_engine",
    "spawn",
    "wait_ready",
    "ping",
    "kill_cgroup",
    "cgroup_pids",
    "remove_cgroup",
    "terminate_engine",
    "process_alive",
    "http_request",
    "kill_containers",
    "reap_children",
]


CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP2_ROOT = (
    "/sys/fs/cgroup/unified"
    if os.path.exists("/sys/fs/cgroup/unified/cgroup.procs")
    else "/sys/fs/cgroup"
)
RUNTIME_NAME = "fsw-runc"

_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class EngineSpec:
    """Where a node's engine keeps its files and how it is reached."""

    name: str
    netns: str
    addr: str
    registry: str
    dns: str
    run_dir: str
    data_dir: str
    runtime_wrapper: str | None

    @property
    def config_path(self) -> str:
        return os.path.join(self.run_dir, "daemon.json")

    @property
    def exec_root(self) -> str:
        return os.path.join(self.run_dir, "x")

    @property
    def socket_path(self) -> str:
        return os.path.join(self.run_dir, "docker.sock")

    @property
    def log_path(self) -> str:
        return os.path.join(self.run_dir, "dockerd.log")

    @property
    def cgroup(self) -> str:
        """The node's cgroup-v2 directory."""
        return os.path.join(CGROUP2_ROOT, self.netns)

    @property
    def cgroup_parent(self) -> str:
        return "/" + self.netns

    def daemon_config(self) -> dict[str, Any]:
        """The ``daemon.json`` of this engine."""

        config: dict[str, Any] = {
            "hosts": ["tcp://0.0.0.0:2375", "unix://" + self.socket_path],
            "tls": False,
            "data-root": os.path.join(self.data_dir, "docker"),
            "exec-root": self.exec_root,
            "pidfile": os.path.join(self.run_dir, "docker.pid"),
            "deprecated-key-path": os.path.join(self.data_dir, "key.json"),
            "cgroup-parent": self.cgroup_parent,
            "containerd-namespace": self.netns,
            "containerd-plugins-namespace": self.netns + "-plugins",
            "insecure-registries": [self.registry],
            "dns": [self.dns],
            "log-level": "warn",
        }
        if self.runtime_wrapper:
            config["runtimes"] = {RUNTIME_NAME: {"path": self.runtime_wrapper}}
            config["default-runtime"] = RUNTIME_NAME
        return config


def needs_runtime_wrapper() -> bool:
    """Whether ``CAP_SYS_RESOURCE`` (bit 24) is missing from our capability bounding set."""

    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapBnd:"):
                return not (int(line.split()[1], 16) >> 24) & 1
    return False


_WRAPPER = """#!{python} -IS
# fliswarm test bed: drops CAP_SYS_RESOURCE (missing from this machine's bounding set) from
# the OCI bundle so that privileged containers can start, then runs runc.
import json, os, sys

args = sys.argv[1:]
if "--bundle" in args and args.index("--bundle") + 1 < len(args):
    path = os.path.join(args[args.index("--bundle") + 1], "config.json")
    with open(path) as f:
        spec = json.load(f)
    caps = (spec.get("process") or {{}}).get("capabilities") or {{}}
    for key, value in caps.items():
        if isinstance(value, list):
            caps[key] = [c for c in value if c != "CAP_SYS_RESOURCE"]
    with open(path + ".tmp", "w") as f:
        json.dump(spec, f)
    os.replace(path + ".tmp", path)
os.execv({runc!r}, [{runc!r}] + args)
"""


def write_runtime_wrapper(path: str) -> None:
    """Writes the runc wrapper to ``path`` (executable)."""

    runc = shutil.which("runc") or "/usr/sbin/runc"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(_WRAPPER.format(python=sys.executable, runc=runc))
    os.chmod(path + ".tmp", 0o755)
    os.replace(path + ".tmp", path)


def start_engine(spec: EngineSpec) -> int:
    """Starts the node's dockerd in its namespace and returns its PID (does not wait).

    The exec-root is wiped first (a killed containerd leaves stale state there).
    """

    os.makedirs(spec.run_dir, exist_ok=True)
    os.makedirs(spec.data_dir, exist_ok=True)
    shutil.rmtree(spec.exec_root, ignore_errors=True)
    for stale in (spec.socket_path, os.path.join(spec.run_dir, "docker.pid")):
        if os.path.exists(stale):
            os.unlink(stale)
    with open(spec.config_path, "w") as f:
        json.dump(spec.daemon_config(), f, indent=1)
    os.makedirs(spec.cgroup, exist_ok=True)

    argv = [
        "sh",
        "-c",
        'echo $$ > "$1" && shift && exec "$@"',
        "fsw-engine",
        os.path.join(spec.cgroup, "cgroup.procs"),
        "nsenter",
        f"--net=/run/netns/{spec.netns}",
        "--",
        "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "slave",
        "--",
        "sh",
        "-c",
        'hostname "$1" && shift && exec "$@"',
        "fsw-engine",
        spec.name,
        "dockerd",
        "--config-file",
        spec.config_path,
    ]
    return spawn(argv, spec.log_path)


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


def http_request(
    host: str | None,
    path: str,
    method: str = "GET",
    timeout: float = 5.0,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    port: int = 2375,
    unix_socket: str | None = None,
) -> tuple[int, bytes]:
    """A plain HTTP/1.1 request to an engine over TCP or a unix socket.

    Returns
    -------
    tuple
        The status code and the body.
    """

    conn: http.client.HTTPConnection
    if unix_socket is not None:
        conn = _UnixHTTPConnection(unix_socket, timeout)
    else:
        assert host is not None
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._unix_path)
        self.sock = sock


def ping(addr: str, timeout: float = 1.0) -> bool:
    """Whether the engine at ``addr:2375`` answers ``GET /_ping`` with ``OK``."""

    try:
        status, body = http_request(addr, "/_ping", timeout=timeout)
    except OSError:
        return False
    return status == 200 and body.strip() == b"OK"


def wait_ready(spec: EngineSpec, pid: int, timeout: float = 30.0) -> None:
    """Polls the engine over TCP until it answers; raises `RuntimeError` on timeout or death."""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping(spec.addr, timeout=0.5):
            return
        if not process_alive(pid, spec.config_path):
            raise RuntimeError(f"dockerd of {spec.name} died; see {spec.log_path}:\n{_tail(spec)}")
        time.sleep(0.05)
    raise RuntimeError(f"dockerd of {spec.name} not ready in {timeout} s:\n{_tail(spec)}")


def _tail(spec: EngineSpec, n: int = 15) -> str:
    try:
        with open(spec.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


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


def terminate_engine(spec: EngineSpec, pid: int | None, timeout: float = 15.0) -> None:
    """Stops dockerd with SIGTERM (it stops its containers), then SIGKILLs what is left."""

    if process_alive(pid, spec.config_path):
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process_alive(pid, spec.config_path):
            time.sleep(0.05)
    kill_cgroup(spec.cgroup, ((pid, spec.config_path),) if pid else ())


def remove_cgroup(spec: EngineSpec) -> None:
    """Removes the node's (empty) cgroup directories in every hierarchy."""

    roots = [CGROUP2_ROOT]
    if CGROUP2_ROOT != CGROUP_ROOT:
        roots += [os.path.join(CGROUP_ROOT, d) for d in os.listdir(CGROUP_ROOT)]
    for root in roots:
        top = os.path.join(root, spec.netns)
        if os.path.isdir(top) and not os.path.islink(root):
            for path in _walk(top):
                try:
                    os.rmdir(path)
                except OSError:
                    pass


def kill_containers(spec: EngineSpec, timeout: float = 5.0) -> None:
    """Kills the node's running containers through the engine's unix socket (best effort)."""

    try:
        status, body = http_request(
            None, "/containers/json", timeout=timeout, unix_socket=spec.socket_path
        )
        if status != 200:
            return
        for container in json.loads(body):
            http_request(
                None,
                f"/containers/{container['Id']}/kill",
                method="POST",
                timeout=timeout,
                unix_socket=spec.socket_path,
            )
    except (OSError, ValueError):
        pass


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
