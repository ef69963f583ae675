"""One node's Docker engine: its ``dockerd`` inside the node's namespace, and the runtime wrapper.

Every process of a node (dockerd, its containerd, the shims and the containers) lives
under the cgroup-v2 directory `EngineSpec.cgroup` (``cgroup.kill`` ends them all at
once); containers also get ``cgroup-parent: /<netns>`` in the v1 hierarchies.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from .procs import (
    CGROUP2_ROOT,
    kill_cgroup,
    process_alive,
    remove_cgroups,
    spawn,
)


__all__ = [
    "EngineSpec",
    "needs_runtime_wrapper",
    "write_runtime_wrapper",
    "start_engine",
    "wait_ready",
    "ping",
    "remove_cgroup",
    "terminate_engine",
    "http_request",
    "kill_containers",
]


RUNTIME_NAME = "fsw-runc"


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
    #: TLS-only engine: ``daemon.json`` TLS keys (see `fliswarm_testbed.tls.EngineTLS`);
    #: it then listens on ``tcp://0.0.0.0:2376`` with ``tlsverify`` and no plain TCP.
    tls: dict[str, Any] | None = None

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
            **(
                {"hosts": ["tcp://0.0.0.0:2376", "unix://" + self.socket_path], **self.tls}
                if self.tls
                else {}
            ),
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


_WRAPPER = """#!/bin/sh
# fliswarm test bed: drops CAP_SYS_RESOURCE (missing from this machine's bounding set) from
# the OCI bundle so that privileged containers can start, then runs runc. A shell script:
# runc is run several times per container, and a Python start each time cost CPU.
bundle=
previous=
for arg in "$@"; do
    if [ "$previous" = --bundle ]; then bundle=$arg; fi
    previous=$arg
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
    sed -e 's/"CAP_SYS_RESOURCE",//g' -e 's/,"CAP_SYS_RESOURCE"//g' \\
        -e 's/\\["CAP_SYS_RESOURCE"\\]/[]/g' "$bundle/config.json" > "$bundle/config.json.tmp" &&
        mv "$bundle/config.json.tmp" "$bundle/config.json"
fi
exec {runc} "$@"
"""


def write_runtime_wrapper(path: str) -> None:
    """Writes the runc wrapper to ``path`` (executable)."""

    runc = shutil.which("runc") or "/usr/sbin/runc"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(_WRAPPER.format(runc=shlex.quote(runc)))
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


def _ping_unix(path: str) -> bool:
    try:
        status, body = http_request(None, "/_ping", timeout=0.5, unix_socket=path)
    except OSError:
        return False
    return status == 200 and body.strip() == b"OK"


def wait_ready(spec: EngineSpec, pid: int, timeout: float = 30.0) -> None:
    """Polls the engine over TCP until it answers; raises `RuntimeError` on timeout or death."""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ping_unix(spec.socket_path) if spec.tls else ping(spec.addr, timeout=0.5):
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

    remove_cgroups(spec.netns)


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
