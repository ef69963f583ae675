"""Harness of the side-by-side benchmarks: both actors, the test bed, clients and probes.

- `ensure_orig_venv`: the original ``sdss-fliswarm==0.7.0`` in its own virtual environment,
  created with ``python3 -m venv`` + ``pip install`` and cached under
  ``/var/cache/fliswarm-bench`` (``$FLISWARM_BENCH_CACHE``).
- `provide_usb_bus`: the original bind-mounts ``/dev/bus/usb`` into every container and the
  engine refuses a missing bind source. The test bed machines have no USB, so each node's
  dockerd gets a private ``/dev`` (a tmpfs copy of the host's device nodes, with ``pts``,
  ``shm``, ... bound back, plus an empty ``bus/usb``) inside its own mount namespace. The
  host's ``/dev`` is untouched; the namespace (and the copy) goes with the node's dockerd.
- `ActorProcess`: one actor (``orig`` or ``ours``) as a separate process on loopback, with
  its CPU time (children included: the original runs ``ping`` in a shell) and RSS.
- `Client`: a raw LegacyActor client that can run many commands concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fliswarm_testbed import engine
from fliswarm_testbed.bed import Testbed
from fliswarm_testbed.tron_client import parse_keywords


__all__ = [
    "ORIG_VERSION",
    "CACHE_DIR",
    "ensure_orig_venv",
    "provide_usb_bus",
    "ActorProcess",
    "Client",
    "Reply",
    "orig_config",
    "ours_config",
    "machine_info",
    "clean_nodes",
    "remove_image",
    "free_port",
]

ORIG_VERSION = "0.7.0"
CACHE_DIR = Path(os.environ.get("FLISWARM_BENCH_CACHE", "/var/cache/fliswarm-bench"))
FINAL = frozenset(":f!")
CLK_TCK = os.sysconf("SC_CLK_TCK")  # CPU times in /proc are counted in these ticks.
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")  # RSS moves by whole pages.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------- the original


def _orig_installed(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    try:
        out = subprocess.run(
            [
                str(python),
                "-I",  # Isolated: not the metadata of this tree's sdss_fliswarm.egg-info in cwd.
                "-c",
                "import importlib.metadata as m; print(m.version('sdss-fliswarm'))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def ensure_orig_venv(cache: Path = CACHE_DIR, say: Any = print) -> Path:
    """The virtual environment of the original ``sdss-fliswarm==0.7.0`` (created once)."""

    venv = cache / "venv-orig"
    with _flock(cache / ".venv.lock"):
        if _orig_installed(venv) == ORIG_VERSION:
            return venv
        say(f"installing sdss-fliswarm=={ORIG_VERSION} into {venv} ...")
        tmp = cache / "venv-orig.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, timeout=300)
        subprocess.run(
            [str(tmp / "bin" / "pip"), "install", "-q", f"sdss-fliswarm=={ORIG_VERSION}"],
            check=True,
            timeout=1200,
        )
        shutil.rmtree(venv, ignore_errors=True)
        tmp.rename(venv)
        # The scripts have the temporary path in their shebang: rewrite it.
        for script in (venv / "bin").iterdir():
            if script.is_file() and not script.is_symlink():
                with contextlib.suppress(UnicodeDecodeError, OSError):
                    text = script.read_text()
                    if str(tmp) in text:
                        script.write_text(text.replace(str(tmp), str(venv)))
        if _orig_installed(venv) != ORIG_VERSION:
            raise RuntimeError(f"could not install sdss-fliswarm=={ORIG_VERSION} in {venv}.")
        return venv


# ---------------------------------------------------------------- /dev/bus/usb on nodes

_USB_SCRIPT = r"""
import os, stat, subprocess, sys
if os.path.isdir("/dev/bus/usb"):
    sys.exit(0)
os.umask(0)
tmp = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755,size=4m", "fsw-dev", tmp], check=True)
with open("/proc/self/mountinfo") as f:
    mounts = sorted({l.split()[4] for l in f if l.split()[4].startswith("/dev/")})
def copy(src, dst):
    for entry in os.scandir(src):
        path, out = entry.path, os.path.join(dst, entry.name)
        st = os.lstat(path)
        if path in mounts:
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(out, stat.S_IMODE(st.st_mode))
            else:
                open(out, "w").close()
            continue
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(path), out)
        elif stat.S_ISDIR(st.st_mode):
            os.mkdir(out, stat.S_IMODE(st.st_mode))
            copy(path, out)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            os.mknod(out, st.st_mode, st.st_rdev)
        else:
            continue
        os.lchown(out, st.st_uid, st.st_gid)
copy("/dev", tmp)
for point in mounts:
    if os.path.dirname(point) == "/dev" or not any(
        point.startswith(m + "/") for m in mounts
    ):
        subprocess.run(["mount", "--rbind", point, tmp + point[4:]], check=True)
os.mkdir(tmp + "/bus", 0o755)
os.mkdir(tmp + "/bus/usb", 0o755)
subprocess.run(["mount", "--move", tmp, "/dev"], check=True)
"""


def provide_usb_bus(bed: Testbed, name: str) -> None:
    """Gives the node's dockerd a private ``/dev`` that has an empty ``/dev/bus/usb``.

    Done in the dockerd's own mount namespace (the test bed starts each engine with
    ``unshare --mount --propagation slave``), so the host's ``/dev`` never changes; the
    copy goes away with the namespace. Call it again after a node is powered on.
    """

    state = bed._state()["nodes"][name]
    pid = state.get("pid")
    if not pid or not engine.process_alive(pid, bed.engine_spec(name).config_path):
        raise RuntimeError(f"{name}: its engine is not running.")
    tmp = os.path.join(bed.engine_spec(name).run_dir, "bench-dev")
    os.makedirs(tmp, exist_ok=True)
    subprocess.run(
        ["nsenter", f"--target={pid}", "--mount", "--", sys.executable, "-c", _USB_SCRIPT, tmp],
        check=True,
        timeout=60,
        capture_output=True,
    )


# --------------------------------------------------------------------- node helpers


def _http(addr: str, path: str, method: str = "GET", timeout: float = 30.0) -> tuple[int, bytes]:
    return engine.http_request(addr, path, method, timeout=timeout)


def clean_nodes(bed: Testbed, names: list[str] | None = None, volumes: bool = True) -> None:
    """Removes every ``flicamera*`` container (and the ``data`` volume) of the live nodes."""

    state = bed._state()

    def one(node: Any) -> None:
        if names is not None and node.name not in names:
            return
        if not state["nodes"][node.name].get("powered"):
            return
        _, body = _http(node.addr, "/containers/json?all=1")
        for container in json.loads(body):
            cname = (container.get("Names") or ["/"])[0].lstrip("/")
            if cname.startswith("flicamera"):
                _http(node.addr, f"/containers/{container['Id']}?force=1&v=1", "DELETE")
        if volumes:
            _http(node.addr, "/volumes/data?force=1", "DELETE")

    bed._parallel(one)


def remove_image(bed: Testbed, reference: str) -> None:
    """Removes the image from every live node (containers using it must be gone)."""

    import urllib.parse

    def one(node: Any) -> None:
        status, body = _http(
            node.addr, f"/images/{urllib.parse.quote(reference, safe='')}?force=1", "DELETE"
        )
        if status not in (200, 404):
            raise RuntimeError(f"{node.name}: cannot remove {reference}: {status} {body[:200]!r}")

    bed._parallel(one)


def pull_image(bed: Testbed, reference: str, timeout: float = 600.0) -> None:
    """Pulls the image on every live node through the engine API (whoever's pull failed)."""

    import urllib.parse

    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:  # No tag (the colon was the registry's port).
        name, tag = reference, "latest"
    query = urllib.parse.urlencode({"fromImage": name, "tag": tag})

    def one(node: Any) -> None:
        status, body = _http(node.addr, f"/images/create?{query}", "POST", timeout=timeout)
        if status != 200 or b'"error"' in body:
            raise RuntimeError(f"{node.name}: cannot pull {reference}: {status} {body[-300:]!r}")

    bed._parallel(one)


def running_flicameras(bed: Testbed, node_name: str) -> list[str]:
    addr = bed.node(node_name).addr
    _, body = _http(addr, "/containers/json")
    return [(c.get("Names") or ["/"])[0].lstrip("/") for c in json.loads(body)]


# ------------------------------------------------------------------------ configs


def ours_config(
    bed: Testbed, image: str, port: int, names: list[str], **extra: Any
) -> dict[str, Any]:
    """fliswarm's flat configuration for the bed (its defaults otherwise)."""

    config = bed.fliswarm_config(image, port=port)
    config["nodes"] = {n: v for n, v in config["nodes"].items() if n in names}
    config["enabled_nodes"] = list(names)
    config["actor"]["log_dir"] = str(CACHE_DIR / "logs" / "ours")
    config.update(extra)
    return config


def orig_config(bed: Testbed, image: str, port: int, names: list[str]) -> dict[str, Any]:
    """The original's per-site configuration for the bed (site APO, no tron)."""

    ref_registry = bed.registry + "/"
    assert image.startswith(ref_registry)
    nodes = {
        node.name: {
            "host": node.addr,
            "port": 19995,
            "docker-client": node.docker_url,
            "category": node.category,
        }
        for node in bed.nodes
        if node.name in names
    }
    return {
        "actor": {
            "name": "fliswarm",
            "host": "127.0.0.1",
            "port": port,
            "log_dir": str(CACHE_DIR / "logs" / "orig"),
            "additional_properties": True,
        },
        "registry": bed.registry,
        "image": image[len(ref_registry) :],
        "container_name": "flicamera",
        "ping_timeout": 0.6,
        "reboot_command": "true",
        "enabled_nodes": {"APO": list(names)},
        "nodes": {"APO": nodes},
        "volumes": {
            "data": {
                "driver": "local",
                "opts": {"type": "none", "o": "bind", "device": bed.data_dir},
            }
        },
    }


# ------------------------------------------------------------------------- actors


class ActorProcess:
    """One actor process on 127.0.0.1 (``kind`` is ``orig`` or ``ours``)."""

    def __init__(self, kind: str, config: dict[str, Any], workdir: Path) -> None:
        self.kind = kind
        self.config = config
        self.port = int(config["actor"]["port"])
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    def argv(self, path: Path) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        env.pop("FLISWARM_CONFIG", None)
        if self.kind == "orig":
            venv = CACHE_DIR / "venv-orig"
            env["OBSERVATORY"] = "APO"
            argv = [str(venv / "bin" / "python"), "-m", "fliswarm", "-c", str(path)]
            argv += ["actor", "start", "--debug"]
            return argv, env
        env.pop("OBSERVATORY", None)
        pid_file = self.workdir / f"{self.kind}.pid"
        argv = [sys.executable, "-m", "fliswarm", "-c", str(path), "--pid-file", str(pid_file)]
        return argv + ["start", "--debug"], env

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        Path(self.config["actor"]["log_dir"]).mkdir(parents=True, exist_ok=True)
        path = self.workdir / f"{self.kind}.yaml"
        path.write_text(yaml.safe_dump(self.config))
        argv, env = self.argv(path)
        with open(self.workdir / f"{self.kind}.log", "ab") as log:
            return subprocess.Popen(
                argv,
                env=env,
                cwd=str(self.workdir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    async def start(self, timeout: float = 120.0) -> ActorProcess:
        """Starts the actor and waits until it listens."""

        self.proc = await asyncio.to_thread(self._spawn)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} actor exited; see {self.workdir}.")
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 1
                )
                writer.close()
                return self
            except (OSError, asyncio.TimeoutError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.kind} actor not listening.") from None
                await asyncio.sleep(0.05)

    @property
    def pid(self) -> int:
        """The process that listens on the actor port (the original's daemon may run the actor
        in a child process even in debug mode)."""

        assert self.proc is not None
        if self._pid is None:
            self._pid = _listener_pid(self.port, self.proc.pid) or self.proc.pid
        return self._pid

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its waited-for children."""

        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(v) for v in fields[11:15]) / CLK_TCK

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        for _ in range(200):
            if self.proc.poll() is not None:
                return
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait, 10)


def _listener_pid(port: int, session: int) -> int | None:
    """The pid, in the session ``session``, that has the socket listening on ``port``."""

    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[3]) != session:
                    continue
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    return int(entry)
        except (OSError, ValueError):
            continue
    return None


# ------------------------------------------------------------------------- client


@dataclass
class Reply:
    """The lines of one command and how long it took."""

    mid: int
    lines: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    code: str | None = None
    seconds: float = 0.0

    def values(self, key: str) -> list[list[str]]:
        out = []
        for _, keywords in self.lines:
            if key in keywords:
                value = keywords[key]
                out.append(value if isinstance(value, list) else [value])
        return out

    def nodes_with(self, key: str) -> set[str]:
        """First values (node names) of a keyword."""

        return {value[0] for value in self.values(key) if value}


class Client:
    """A LegacyActor client: ``"<mid> <command>"`` out, replies matched by command id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._mids = itertools.count(1)
        self._pending: dict[int, tuple[Reply, asyncio.Future[Reply], float]] = {}
        self.lines = 0
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port: int, timeout: float = 10.0) -> Client:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, limit=2**22), timeout
        )
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.readline()
                if not data:
                    break
                self.lines += 1
                parts = data.decode(errors="replace").rstrip("\n").split(" ", 3)
                if len(parts) < 3 or not parts[1].isdigit():
                    continue
                entry = self._pending.get(int(parts[1]))
                if entry is None:
                    continue
                reply, future, start = entry
                keywords = parse_keywords(parts[3]) if len(parts) == 4 else {}
                reply.lines.append((parts[2], keywords))
                if parts[2] in FINAL:
                    reply.code = parts[2]
                    reply.seconds = time.perf_counter() - start
                    del self._pending[reply.mid]
                    if not future.done():
                        future.set_result(reply)
        finally:
            for _, future, _ in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("actor closed the connection."))

    async def command(self, text: str, timeout: float = 60.0) -> Reply:
        """Sends a command and waits for its final line."""

        mid = next(self._mids)
        reply = Reply(mid)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[mid] = (reply, future, time.perf_counter())
        self.writer.write(f"{mid} {text}\n".encode())
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            self._pending.pop(mid, None)
            raise TimeoutError(f"{text!r}: no final reply within {timeout} s.") from None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


@contextlib.asynccontextmanager
async def relay_floor(host: str) -> AsyncIterator[Client]:
    """A client of the least relay there is (`relay_floor.py`) to the flicamera at ``host``,
    run as its own process like the actors; stopped on exit."""

    script = Path(__file__).with_name("relay_floor.py")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), host, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        port = int(await asyncio.wait_for(proc.stdout.readline(), 30))
        client = await Client.connect(port)
        try:
            yield client
        finally:
            await client.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def json_roundtrip(host: str, port: int, command: str, n: int) -> list[float]:
    """Round trips of ``command`` sent straight to a flicamera (JSON actor), in seconds."""

    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=2**22), 10)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    try:
        for i in range(1, n + 1):
            start = time.perf_counter()
            writer.write(f"{i} {command}\n".encode())
            while True:
                line = await asyncio.wait_for(reader.readline(), 30)
                if not line:
                    raise ConnectionError("flicamera closed the connection.")
                header = json.loads(line).get("header") or {}
                if header.get("command_id") == i and header.get("message_code") in FINAL:
                    break
            times.append(time.perf_counter() - start)
    finally:
        writer.close()
    return times


# ----------------------------------------------------------------------- machine


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip() or "?"


def machine_info() -> dict[str, str]:
    """Machine and versions, for the report."""

    import importlib.metadata as md

    import fliswarm

    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    venv = CACHE_DIR / "venv-orig"
    orig_clu = _version(
        [
            str(venv / "bin" / "python"),
            "-I",
            "-c",
            "import importlib.metadata as m;print(m.version('sdss-clu'), m.version('docker'))",
        ]
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "fliswarm": fliswarm.__version__,
        "original": f"sdss-fliswarm {_orig_installed(venv) or '?'} (clu, docker-py: {orig_clu})",
        "clu": md.version("sdss-clu"),
        "aiodocker": md.version("aiodocker"),
        "dockerd": _version(["dockerd", "--version"]),
        "load average at the end (1, 5, 15 min)": " ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
