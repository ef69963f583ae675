"""The Dockerfile, built and run for real on a test-bed node's engine.

The node has no network, so the Dockerfile's offline mode is used: fliswarm's wheel and its
dependencies' (built on the host with ``pip wheel``, cached) go in the build context as
``wheelhouse/``.

The base is the real ``python:3.11-slim`` when one is available offline: in the node's engine,
in the test bed's registry (``<registry>/library/python:3.11-slim`` or ``.../python:...``) or in
the host's Docker engine (``$DOCKER_HOST`` when a unix socket, else ``/var/run/docker.sock``;
copied to the node). The real base has no ``ping`` and no ``ssh``, and the node cannot reach
Debian's mirror: their ``.deb`` files (see the Dockerfile) must be in ``$FLISWARM_TEST_DEBS``
or ``<image cache>/debs``. Otherwise the test builds on a stand-in made from the host Python
(`fliswarm_testbed.rootfs.build_python_base`, whose ``apt-get`` installs the host's ``ping``
and ``ssh``) and says so loudly (a warning and a banner): it never skips.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.parse
import warnings
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from fliswarm.compat import HEALTH_CHECK_ADDRESS
from fliswarm_testbed import engine
from fliswarm_testbed.bed import Testbed
from fliswarm_testbed.image import DEFAULT_CACHE_DIR, build_python_base


try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


pytestmark = [pytest.mark.root, pytest.mark.testbed, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[1]
BASE = "python:3.11-slim"
BASE_LABEL = "org.sdss.fliswarm.test-base"
#: Where the stand-in is imported: never under the real base's name, which it would hide.
STAND_IN = "fliswarm-test/python-stand-in:3.11-slim"
TAG = "fliswarm-test/fliswarm:dockerfile"
UID = 10001
PORT = 29996
#: The Debian packages the Dockerfile installs for ping and ssh.
DEBS = ("iputils-ping", "openssh-client")
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
)


class StandInBaseWarning(UserWarning):
    """The image was built on the test bed's stand-in, not on the real python:3.11-slim."""


def cache_dir(tmp_path: Path) -> Path:
    """The shared image cache when writable (wheels and base built once), else a temp dir."""

    try:
        DEFAULT_CACHE_DIR.mkdir(parents=True, exist_ok=True)
        if os.access(DEFAULT_CACHE_DIR, os.W_OK):
            return DEFAULT_CACHE_DIR
    except OSError:
        pass
    return tmp_path / "cache"


def pip(*args: str, timeout: float) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore")
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def context_files() -> list[Path]:
    """The files of this tree that ``.dockerignore`` lets into the context (but wheelhouse/)."""

    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*") + 1 :], "the .dockerignore is no longer an allow-list"
    found: list[Path] = []
    for line in lines:
        if line.startswith("!") and line.rstrip("/") != "!wheelhouse":
            matched = sorted(ROOT.glob(line[1:].rstrip("/")))
            assert matched, f".dockerignore lets in {line[1:]!r}, which is not in the tree"
            found += matched
    names = {p.name for p in found}
    assert {"pyproject.toml", "README.md", "LICENSE", "fliswarm"} <= names, names
    return found


def wheelhouse(cache: Path, target: Path) -> list[str]:
    """fliswarm's wheel (from this tree) and its dependencies' wheels (cached) in ``target``."""

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = sorted(project["dependencies"])
    key = hashlib.sha256(json.dumps([sys.version, deps]).encode()).hexdigest()[:16]
    wheels = cache / f"wheels-{key}"
    if not wheels.is_dir():
        work = wheels.with_name(wheels.name + ".tmp")
        shutil.rmtree(work, ignore_errors=True)
        pip("wheel", "--quiet", "--prefer-binary", "-w", str(work), *deps, timeout=600)
        work.rename(wheels)
    shutil.copytree(wheels, target)
    # Build fliswarm's wheel from a copy of what the context has (an in-tree build would leave
    # build/ in the tree); pyproject.toml's license-files needs LICENSE.
    source = target.parent / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for path in context_files():
        if path.is_dir():
            shutil.copytree(path, source / path.name, ignore=ignore)
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(path, source / path.name)
    args = ["--quiet", "--no-deps", "-w", str(target), str(source)]
    pip("wheel", *args, timeout=300)
    return sorted(p.name for p in target.iterdir())


def build_context(tmp_path: Path, cache: Path, debs: list[Path]) -> bytes:
    """The build context as ``docker build`` sends it (what .dockerignore lets through)."""

    wheels = wheelhouse(cache, tmp_path / "wheelhouse")
    ours = [name for name in wheels if name.startswith("sdss_fliswarm-")]
    assert len(ours) == 1 and not any(n.startswith("fliswarm-") for n in wheels), wheels
    with zipfile.ZipFile(tmp_path / "wheelhouse" / ours[0]) as wheel:
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel.namelist())
    if debs:
        (tmp_path / "wheelhouse" / "debs").mkdir()
        for deb in debs:
            shutil.copy(deb, tmp_path / "wheelhouse" / "debs" / deb.name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("Dockerfile", ".dockerignore"):
            tar.add(ROOT / name, arcname=name)
        for path in context_files():
            if path.is_dir():
                staged = tmp_path / "staged" / path.name
                shutil.copytree(path, staged, ignore=ignore)
                tar.add(staged, arcname=path.name)
            else:
                tar.add(path, arcname=path.name)
        tar.add(tmp_path / "wheelhouse", arcname="wheelhouse")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- the base image


@dataclass
class Base:
    """The base the image is built on."""

    ref: str
    real: bool
    #: Where the real base came from, or why the stand-in is used.
    origin: str
    debs: list[Path] = field(default_factory=list)


def stand_in_label(info: dict[str, Any]) -> str | None:
    return (info.get("Config", {}).get("Labels") or {}).get(BASE_LABEL)


def host_docker_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    return host.removeprefix("unix://") if host.startswith("unix://") else "/var/run/docker.sock"


def find_real_base(addr: str, registry: str) -> tuple[str | None, list[str]]:
    """A real ``python:3.11-slim`` the node's engine has (pulled or copied there if need be)
    and where it was found; else `None` and where it was looked for."""

    looked: list[str] = []
    status, body = engine.http_request(addr, f"/images/{BASE}/json", timeout=10)
    if status == 200 and stand_in_label(json.loads(body)) is None:
        return BASE, [f"the node's engine has {BASE}"]
    looked.append(
        f"the node's engine ({addr}): "
        + ("only the test bed's stand-in" if status == 200 else f"no {BASE}")
    )

    registry_host, registry_port = registry.rsplit(":", 1)
    for repo in ("library/python", "python"):
        status, _ = engine.http_request(
            registry_host,
            f"/v2/{repo}/manifests/3.11-slim",
            "HEAD",
            timeout=10,
            headers={"Accept": MANIFEST_TYPES},
            port=int(registry_port),
        )
        if status != 200:
            continue
        query = urllib.parse.urlencode({"fromImage": f"{registry}/{repo}", "tag": "3.11-slim"})
        status, body = engine.http_request(addr, f"/images/create?{query}", "POST", timeout=300)
        ref = f"{registry}/{repo}:3.11-slim"
        if status != 200 or b'"error"' in body:
            looked.append(
                f"the bed registry has {ref} but the node cannot pull it: {body[-300:]!r}"
            )
            continue
        _, body = engine.http_request(addr, f"/images/{ref}/json", timeout=10)
        if stand_in_label(json.loads(body)) is None:
            return ref, [f"the test bed's registry has {ref}"]
        looked.append(f"the bed registry's {ref} is the test bed's stand-in")
    looked.append(f"the test bed's registry ({registry}): no real python:3.11-slim")

    socket_path = host_docker_socket()
    try:
        status, body = engine.http_request(
            None, f"/images/{BASE}/json", timeout=10, unix_socket=socket_path
        )
    except OSError as err:
        looked.append(f"the host's Docker engine ({socket_path}): not reachable ({err})")
        return None, looked
    if status != 200 or stand_in_label(json.loads(body)) is not None:
        looked.append(f"the host's Docker engine ({socket_path}): no real {BASE}")
        return None, looked
    status, tar = engine.http_request(
        None, f"/images/{BASE}/get", timeout=300, unix_socket=socket_path
    )
    assert status == 200, tar[-500:]
    status, body = engine.http_request(
        addr,
        "/images/load",
        "POST",
        timeout=300,
        body=tar,
        headers={"Content-Type": "application/x-tar"},
    )
    assert status == 200 and b'"error"' not in body, body[-2000:]
    return BASE, [f"the host's Docker engine ({socket_path}) has {BASE}, copied to the node"]


def import_stand_in(addr: str, cache: Path) -> str:
    """Imports the local stand-in as `STAND_IN` into the engine (unless it has it)."""

    base = build_python_base(cache)
    status, body = engine.http_request(addr, f"/images/{STAND_IN}/json", timeout=10)
    if status == 200 and stand_in_label(json.loads(body)) == base.inputs_hash:
        return STAND_IN
    changes = [f"ENV {item}" for item in base.env] + [f"CMD {json.dumps(base.cmd)}"]
    changes.append(f"LABEL {BASE_LABEL}={base.inputs_hash}")
    repo, tag = STAND_IN.rsplit(":", 1)
    query = urllib.parse.urlencode(
        {"fromSrc": "-", "repo": repo, "tag": tag, "changes": changes}, doseq=True
    )
    status, body = engine.http_request(
        addr,
        f"/images/create?{query}",
        "POST",
        timeout=120,
        body=base.layer.read_bytes(),
        headers={"Content-Type": "application/x-tar"},
    )
    assert status == 200 and b'"error"' not in body, body[-2000:]
    return STAND_IN


def offline_debs(cache: Path) -> list[Path]:
    """The .deb files of ping and ssh given for the real base, if any."""

    folder = Path(os.environ.get("FLISWARM_TEST_DEBS") or cache / "debs")
    debs = sorted(folder.glob("*.deb")) if folder.is_dir() else []
    names = {deb.name.split("_")[0] for deb in debs}
    return debs if set(DEBS) <= names else []


async def run_to_end(docker: aiodocker.Docker, image: str, cmd: list[str]) -> int:
    """Exit status of ``cmd`` run in a throw-away container of ``image`` (no network)."""

    spec: dict[str, Any] = {
        "Image": image,
        "Cmd": cmd,
        "User": "0",
        "HostConfig": {"NetworkMode": "none"},
    }
    container = await docker.containers.create(spec, name="fliswarm-test-base-probe")
    try:
        await container.start()
        return int((await asyncio.wait_for(container.wait(), 30))["StatusCode"])
    finally:
        await asyncio.wait_for(container.delete(force=True), 30)


def say_loudly(message: str) -> None:
    warnings.warn(message, StandInBaseWarning, stacklevel=2)
    banner = "!" * 99
    print(f"\n{banner}\n{message}\n{banner}", flush=True)


async def choose_base(docker: aiodocker.Docker, bed: Testbed, addr: str, cache: Path) -> Base:
    """The real base when available offline (with the debs it needs), else the stand-in."""

    real, looked = await asyncio.to_thread(find_real_base, addr, bed.registry)
    if real is not None:
        debs = offline_debs(cache)
        if debs or await run_to_end(docker, real, ["sh", "-c", "command -v ping && ssh -V"]) == 0:
            return Base(real, True, "; ".join(looked), debs)
        folder = os.environ.get("FLISWARM_TEST_DEBS") or cache / "debs"
        reason = (
            f"the REAL {BASE} was found ({'; '.join(looked)}) but it has no ping/ssh and no .deb "
            f"files of {' and '.join(DEBS)} are in {folder} (see the Dockerfile for how to get "
            "them), and the node cannot reach Debian's mirror"
        )
    else:
        reason = f"NO REAL {BASE} is available offline ({'; '.join(looked)})"
    say_loudly(
        f"test_dockerfile: {reason}. The image is built on the test bed's STAND-IN base "
        f"({STAND_IN}, the host Python, whose apt-get installs the host's ping and ssh): the "
        f"Dockerfile is NOT tested on {BASE} itself."
    )
    stand_in = await asyncio.to_thread(import_stand_in, addr, cache)
    return Base(stand_in, False, reason)


# ----------------------------------------------------------------------------- helpers


def write_config(directory: Path) -> None:
    """A configuration for fliswarm inside the node: one node whose ports are all closed.

    The actor listens on every interface of the node (its container has the node's network),
    so that the test connects to it as a user would; its health check connects to 127.0.0.1.
    """

    import yaml

    config = {
        "actor": {"name": "fliswarm", "host": "0.0.0.0", "port": PORT},
        "image": "sdss/flicamera:latest",
        "timeouts": {"docker_connect": 0.5, "docker_request": 1},
        "ping_timeout": 0.5,
        "enabled_nodes": ["gfa1"],
        "nodes": {
            "gfa1": {
                "host": "127.0.0.1",
                "port": 1,
                "docker-client": "tcp://127.0.0.1:2",
                "category": "gfa",
            }
        },
    }
    directory.mkdir(parents=True)
    (directory / "fliswarm.yaml").write_text(yaml.safe_dump(config))
    directory.chmod(0o755)


def process_uids(pid: int) -> set[int]:
    """Real, effective, saved and filesystem uids of a process."""

    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return {int(uid) for uid in line.split()[1:]}
    raise AssertionError(f"no Uid line for pid {pid}")


def docker_time(text: str) -> datetime:
    """A time stamp of the Docker API (RFC 3339, nanoseconds)."""

    text = re.sub(r"(\.\d{6})\d*", r"\1", text).replace("Z", "+00:00")
    return datetime.fromisoformat(text)


async def wait_healthy(container: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = await asyncio.wait_for(container.show(), 10)
        health = info["State"].get("Health") or {}
        if health.get("Status") == "healthy":
            return info
        if time.monotonic() > deadline or not info["State"]["Running"]:
            logs = await asyncio.wait_for(container.log(stdout=True, stderr=True), 10)
            raise AssertionError(f"not healthy: {health}\n{''.join(logs)[-3000:]}")
        await asyncio.sleep(0.5)


async def build(docker: aiodocker.Docker, context: bytes, base: str) -> None:
    """Builds the image; a failed build fails the test with the end of the build's output."""

    text: list[str] = []
    try:
        async for item in docker.images.build(
            fileobj=io.BytesIO(context),
            encoding="application/x-tar",
            tag=TAG,
            buildargs={"WHEELHOUSE": "wheelhouse", "BASE": base},
            forcerm=True,
            stream=True,
        ):
            text.append(str(item.get("stream") or item.get("error") or ""))
            assert "error" not in item, "".join(text)[-3000:]
    except aiodocker.DockerError as err:
        raise AssertionError(f"{err}\n{''.join(text)[-3000:]}") from None


async def execute(container: Any, cmd: list[str]) -> tuple[int, str]:
    """Exit status and output of ``cmd`` run in the container as its user (docker exec)."""

    exec_ = await container.exec(cmd, stdout=True, stderr=True)
    output: list[str] = []
    async with exec_.start(detach=False) as stream:
        while (message := await stream.read_out()) is not None:
            output.append(message.data.decode(errors="replace"))
    for _ in range(100):  # The output ends when the process does; its state follows.
        info = await exec_.inspect()
        if not info["Running"]:
            return info["ExitCode"], "".join(output)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{cmd} still running after its output ended: {output}")


class Client:
    """A plain TCP client of the actor: every line it receives, as it comes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.lines: list[str] = []
        self.user_id = 0

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float) -> Client:
        """Connects and reads the greeting (up to its ``version`` line)."""

        client = cls(*await asyncio.wait_for(asyncio.open_connection(host, port), timeout))
        greeting = await client.read_until(lambda words: "version=" in " ".join(words), timeout)
        for line in greeting:
            if match := re.search(r"yourUserID=(\d+)", line):
                client.user_id = int(match.group(1))
        assert client.user_id, greeting
        return client

    async def read_until(self, last: Any, timeout: float) -> list[str]:
        """The lines received until one that ``last(words)`` accepts, that one included."""

        start = len(self.lines)

        async def read() -> None:
            while True:
                line = await self.reader.readline()
                assert line, f"the actor closed the connection: {self.lines[start:]}"
                self.lines.append(line.decode().rstrip("\n"))
                if last(self.lines[-1].split()):
                    return

        await asyncio.wait_for(read(), timeout)
        return self.lines[start:]

    async def others_until_pong(self, command_id: int, timeout: float) -> list[str]:
        """Sends ``ping``; the lines received before its answer that are not its own.

        The answer is a barrier: whatever the actor wrote to this client before it has
        arrived (one TCP stream), so no waiting for lines that might still come is needed.
        """

        self.writer.write(f"{command_id} ping\n".encode())
        await self.writer.drain()
        ours = [str(self.user_id), str(command_id)]
        lines = await self.read_until(lambda w: w[:2] == ours and w[2:3] == [":"], timeout)
        return [line for line in lines if line.split()[:2] != ours]

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def passed_check(entry: dict[str, Any]) -> bool:
    """A health check that got ``<user> 1 :`` (the answer to its ``1 ping``) and printed it."""

    return entry["ExitCode"] == 0 and entry["Output"].split()[1:3] == ["1", ":"]


async def wait_checks_after(container: Any, since: datetime, count: int, timeout: float) -> list:
    """Waits until ``count`` health checks started after ``since`` passed (none failed)."""

    deadline = time.monotonic() + timeout
    while True:
        info = await asyncio.wait_for(container.show(), 10)
        log = info["State"]["Health"]["Log"]
        new = [entry for entry in log if docker_time(entry["Start"]) > since]
        assert all(passed_check(entry) for entry in new), new
        if len(new) >= count:
            return new
        assert time.monotonic() < deadline, f"not {count} checks in {timeout} s: {log}"
        await asyncio.sleep(0.2)


# ----------------------------------------------------------------------------- the test


def test_health_check_connects_from_the_address_the_actor_does_not_greet() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert f'source_address=("{HEALTH_CHECK_ADDRESS}", 0)' in text


async def test_dockerfile_builds_and_runs_healthy(testbed_clean: Testbed, tmp_path: Path) -> None:
    node = testbed_clean.nodes[0]
    cache = cache_dir(tmp_path)
    config_dir, logs_dir = tmp_path / "config", tmp_path / "logs"
    write_config(config_dir)
    logs_dir.mkdir()
    logs_dir.chmod(0o777)

    async with aiodocker.Docker(url=f"http://{node.addr}:2375") as docker:
        start = time.monotonic()
        base = await choose_base(docker, testbed_clean, node.addr, cache)
        chosen = time.monotonic()
        context = await asyncio.to_thread(build_context, tmp_path, cache, base.debs)
        prepared = time.monotonic()
        print(
            f"\nbase: {base.ref} ({'REAL' if base.real else 'STAND-IN'}: {base.origin}); "
            f"base {chosen - start:.1f} s, context {prepared - chosen:.1f} s"
        )
        await asyncio.wait_for(build(docker, context, base.ref), 300)
        built = time.monotonic()
        print(f"docker build {built - prepared:.1f} s")

        image = await asyncio.wait_for(docker.images.inspect(TAG), 10)
        assert (BASE_LABEL in (image["Config"]["Labels"] or {})) is not base.real
        assert image["Config"]["User"] == "fliswarm"
        assert set(image["Config"]["Volumes"]) == {"/config", "/logs"}
        assert "ping" in " ".join(image["Config"]["Healthcheck"]["Test"])
        assert image["Config"]["Cmd"][:4] == ["fliswarm", "-c", "/config/fliswarm.yaml", "start"]

        spec: dict[str, Any] = {
            "Image": TAG,
            # The image's own check, run every second instead of every 30 s.
            "Healthcheck": {"Interval": 1_000_000_000, "Timeout": 5_000_000_000, "Retries": 3},
            "HostConfig": {
                "NetworkMode": "host",
                "Binds": [f"{config_dir}:/config:ro", f"{logs_dir}:/logs"],
            },
        }
        container = await asyncio.wait_for(
            docker.containers.run(spec, name="fliswarm-test-dockerfile"), 30
        )
        client: Client | None = None
        try:
            info = await wait_healthy(container, 90)
            healthy = time.monotonic()
            print(f"healthy {healthy - built:.1f} s after the build")
            assert info["Config"]["Healthcheck"]["Test"] == image["Config"]["Healthcheck"]["Test"]
            # The actor runs as the image's user, not root (the engine shares our pid namespace).
            assert await asyncio.to_thread(process_uids, info["State"]["Pid"]) == {UID}
            log_file = logs_dir / "fliswarm.log"
            assert (await asyncio.to_thread(log_file.stat)).st_uid == UID

            # ping and ssh (status and reboot run them) work for the image's user.
            code, out = await asyncio.wait_for(execute(container, ["id", "-u"]), 30)
            assert (code, out.strip()) == (0, str(UID)), out
            ping = ["ping", "-c", "1", "-W", "5", "127.0.0.1"]  # as fliswarm runs it: no shell
            code, out = await asyncio.wait_for(execute(container, ping), 30)
            assert code == 0 and "1 received" in out, out  # iputils' (busybox: 1 packets ...)
            code, out = await asyncio.wait_for(execute(container, ["ssh", "-V"]), 30)
            assert code == 0 and "OpenSSH" in out, out
            executed = time.monotonic()
            print(f"ping and ssh as the image's user {executed - healthy:.1f} s")

            # A connected client sees nothing of the health checks: 3 of them pass (the actor
            # answers their ping) while it is connected, and no line reaches it meanwhile.
            client = await Client.connect(node.addr, PORT, 10)
            connected = datetime.now(timezone.utc)
            checks = await wait_checks_after(container, connected, 3, 30)
            extra = await client.others_until_pong(1001, 10)
            checked = time.monotonic()
            outputs = [entry["Output"].strip() for entry in checks]
            print(f"{len(checks)} checks with a client connected {checked - executed:.1f} s: ")
            print(f"  their output {outputs}; lines the client got meanwhile: {extra}")
            assert extra == [], f"the health checks disturbed a connected client: {extra}"

            # The same check from 127.0.0.1, as a plain client: the client gets CLU's greeting
            # of that connection (what the test above would see if the actor greeted checks).
            test = image["Config"]["Healthcheck"]["Test"]
            assert test[0] == "CMD-SHELL" and test[1].count(HEALTH_CHECK_ADDRESS) == 1, test
            plain = ["sh", "-c", test[1].replace(HEALTH_CHECK_ADDRESS, "127.0.0.1")]
            code, out = await asyncio.wait_for(execute(container, plain), 30)
            assert code == 0 and out.split()[1:3] == ["1", ":"], out
            extra = await client.others_until_pong(1002, 10)
            print(f"the check from 127.0.0.1: the client got {extra}")
            joined = "\n".join(extra)
            assert all(word in joined for word in ("yourUserID", "UserInfo", "version")), extra

            await client.close()
            client = None
            stopping = time.monotonic()
            await asyncio.wait_for(container.stop(t=15), 30)
            print(f"docker stop took {time.monotonic() - stopping:.1f} s")
        finally:
            if client is not None:
                await client.close()
            await asyncio.wait_for(container.delete(force=True), 30)

        # The same check fails when no actor answers.
        spec.update(Cmd=["sleep", "120"])
        spec["Healthcheck"].update(Retries=1, StartPeriod=1_000_000)  # failures count at once
        idle = await asyncio.wait_for(docker.containers.run(spec, name="fliswarm-test-idle"), 30)
        try:
            deadline = time.monotonic() + 30
            while (info := await asyncio.wait_for(idle.show(), 10))["State"]["Health"][
                "Status"
            ] != "unhealthy":
                assert time.monotonic() < deadline, info["State"]["Health"]
                await asyncio.sleep(0.5)
            assert info["State"]["Health"]["Log"][-1]["ExitCode"] == 1
        finally:
            await asyncio.wait_for(idle.delete(force=True), 30)
