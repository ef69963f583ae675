"""A site upgraded in place: the real ``sdss-fliswarm`` 0.7.0, then ``pip install`` of this tree.

What an operator upgrading a site does, with real processes against the real test bed:

1. A fresh virtual environment with ``pip install sdss-fliswarm==0.7.0`` from the package index
   (the module fixture `venv_07`, bounded by its own subprocess time limits).
2. 0.7's ``fliswarm -c CONFIG start`` (its daemon, its per-site configuration layout,
   ``$OBSERVATORY=APO``); 0.7's ``reconnect`` starts the flicamera containers on the nodes and
   its ``talk status`` gets every camera's answer.
3. In the same environment, with 0.7 still running: ``pip install`` of this tree (a copy of
   the working tree, see `source_copy`). It must replace 0.7 in place: one distribution,
   ``sdss-fliswarm`` 1.0.0, owns the ``fliswarm`` import package, and 0.7's files are gone.
4. The environment's ``fliswarm stop`` (now this version) finds the 0.7 daemon through 0.7's
   pid file, ``/var/tmp/actor.pid``, and stops it; ``fliswarm -c CONFIG start`` (the same file)
   starts this version; the cameras answer through it (a raw client and ``fliswarm send``);
   ``fliswarm stop`` stops it.

Every process runs in a private mount namespace whose ``/var/tmp`` is a directory of the test
(``unshare``, as in ``test_daemon.py``), so the machine's ``/var/tmp`` is never touched. Each
carries a marker in its environment: whatever happens, every marked process still alive at the
end is killed. 0.7 bind-mounts ``/dev/bus/usb`` into its containers and the bed's engines have
none: each node's engine gets one in its own mount namespace (``provide_usb_bus`` of the
benchmarks' harness) and is restarted at the end, so later tests see the bed as it was.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from helpers_actor import ActorClient, ActorReply
from helpers_net import free_port, port_open

from fliswarm_testbed import Testbed, engine
from fliswarm_testbed.image import ensure_flicamera_image


ROOT = Path(__file__).resolve().parent.parent
ORIG_VERSION = "0.7.0"
NEW_VERSION = "1.0.0"
#: Time limits of the slow steps (they download from the package index on a cold cache).
VENV_TIMEOUT = 300.0
PIP_TIMEOUT = 900.0
#: Time limit of one ``fliswarm`` command (start, stop, status, send).
CLI_TIMEOUT = 120.0
#: Time limit of the cameras answering (0.7's ``reconnect`` waits 5 s, then connects).
CAMERAS_TIMEOUT = 180.0
#: Name of the environment variable that marks every process this module starts.
MARKER = "FLISWARM_UPGRADE_TEST"

pytestmark = [
    pytest.mark.root,
    pytest.mark.testbed,
    # The test function only: the venv fixture has its own time limits (VENV_TIMEOUT,
    # PIP_TIMEOUT). The function pip-installs this tree (PIP_TIMEOUT) and waits for cameras.
    pytest.mark.timeout(PIP_TIMEOUT + 2 * CAMERAS_TIMEOUT + 8 * CLI_TIMEOUT, func_only=True),
]


def load_harness() -> ModuleType:
    """The benchmarks' harness (``benchmarks/harness.py``, not a package), for its
    ``orig_config`` and ``provide_usb_bus``."""

    path = ROOT / "benchmarks" / "harness.py"
    spec = importlib.util.spec_from_file_location("fliswarm_bench_harness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Its dataclasses look their module up there.
    spec.loader.exec_module(module)
    return module


harness = load_harness()


def clean_env(marker: str) -> dict[str, str]:
    """The environment of the virtual environment's processes.

    Nothing of this interpreter's set-up leaks in (``PYTHONPATH``, an active venv, fliswarm's
    own variables), ``$OBSERVATORY`` is 0.7's site, and ``marker`` tags the processes.

    Parameters
    ----------
    marker
        The value of `MARKER` in the environment.

    Returns
    -------
    dict
        The environment.
    """

    env = dict(os.environ)
    for name in (
        "PYTHONPATH",
        "PYTHONHOME",
        "VIRTUAL_ENV",
        "FLISWARM_CONFIG",
        "FLISWARM_PID_FILE",
    ):
        env.pop(name, None)
    env["OBSERVATORY"] = "APO"
    env[MARKER] = marker
    return env


def marked_pids(marker: str) -> list[int]:
    """The live processes whose environment carries ``MARKER=marker``."""

    needle = f"{MARKER}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and alive(int(entry)):
            pids.append(int(entry))
    return pids


def alive(pid: int) -> bool:
    """Whether the process exists and has not exited (zombies have)."""

    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(predicate: Any, timeout: float, what: str) -> float:
    """Waits until ``predicate()`` is true; returns the seconds it took.

    Raises
    ------
    AssertionError
        If it is still false after ``timeout`` seconds.
    """

    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


def kill_marked(marker: str) -> list[int]:
    """SIGKILLs every live process marked with ``marker`` and waits for them to be gone.

    Returns
    -------
    list
        The pids that were still alive.
    """

    killed: list[int] = []
    for _ in range(20):  # Again while a dying process had started another one.
        found = marked_pids(marker)
        if not found:
            return killed
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
        for pid in found:
            wait_until(lambda pid=pid: not alive(pid), 30, f"pid {pid} to die")
        killed += found
    raise AssertionError(f"marked processes keep appearing: {marked_pids(marker)}")


def run(
    argv: list[str], env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess:
    """Runs a command to its end (output captured, no standard input)."""

    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def show(result: subprocess.CompletedProcess) -> str:
    """A command's exit status and output, for assertion messages."""

    return f"{result.args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def pip_list(python: Path, env: dict[str, str], cwd: Path) -> dict[str, str]:
    """``pip list`` of the environment, as ``{name: version}``."""

    result = run([str(python), "-m", "pip", "list", "--format=json"], env, cwd, 120)
    assert result.returncode == 0, show(result)
    return {item["name"].lower(): item["version"] for item in json.loads(result.stdout)}


#: Prints, per installed distribution whose files include the ``fliswarm`` import package,
#: its name, version and those files (isolated mode: no cwd, no user site).
OWNERS_CODE = """
import importlib.metadata as md, json
owners = {}
for dist in md.distributions():
    files = [str(f) for f in dist.files or [] if str(f).split("/")[0] == "fliswarm"]
    top = (dist.read_text("top_level.txt") or "").split()
    if files or "fliswarm" in top:
        owners[dist.metadata["Name"]] = [dist.version, sorted(files)]
print(json.dumps(owners))
"""


#: Prints the file of the ``fliswarm`` package the environment imports.
IMPORTED_FROM = "import fliswarm; print(fliswarm.__file__)"


def fliswarm_owners(python: Path, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """The distributions of the environment that own files of the ``fliswarm`` package."""

    result = run([str(python), "-I", "-c", OWNERS_CODE], env, cwd, 120)
    assert result.returncode == 0, show(result)
    return json.loads(result.stdout)


def source_copy(dest: Path) -> Path:
    """A copy of this working tree without what a build leaves behind or reads by mistake.

    ``pip install`` of a source tree builds in the tree: setuptools writes ``build/`` there and
    puts in the wheel whatever it finds in ``build/lib``, including modules deleted from the
    tree since an earlier build. A copy without ``build/``, ``*.egg-info`` and caches installs
    exactly the working tree and leaves the repository untouched.
    """

    ignore = shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", ".*_cache", ".hypothesis"
    )
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    return dest


def talked(reply: ActorReply) -> set[str]:
    """The nodes whose camera answered in a ``talk status`` reply (the relayed ``status``
    keyword starts with the camera's name, as in 0.7)."""

    return {
        line.values("status")[0] for line in reply.with_keyword("status") if line.values("status")
    }


async def wait_cameras(client: ActorClient, names: list[str], timeout: float) -> ActorReply:
    """Sends ``talk status`` until it finishes with ``:`` and every camera answered.

    Raises
    ------
    AssertionError
        If that does not happen within ``timeout`` seconds (with the last reply).
    """

    deadline = time.monotonic() + timeout
    while True:
        reply = await client.command("talk status", min(60.0, timeout))
        if reply.code == ":" and set(names) <= talked(reply):
            return reply
        if time.monotonic() > deadline:
            raise AssertionError(f"cameras {names} not all answering; last reply:\n{reply}")
        await asyncio.sleep(0.2)  # The poll interval of a bounded wait.


async def cameras_up_07(client: ActorClient, names: list[str], timeout: float) -> ActorReply:
    """0.7's ``reconnect`` (volumes, containers, devices) until every camera answers ``talk``.

    0.7's Docker client gives up on any engine request that takes over 3 s (creating and
    starting a privileged container on a loaded machine can): the command then fails, or
    finishes with a container not running, and an operator runs it again. So does this, until
    ``timeout``; each failed try is printed.

    Returns
    -------
    ActorReply
        The ``talk status`` reply in which every camera answered.

    Raises
    ------
    AssertionError
        If the cameras do not all answer within ``timeout`` seconds.
    """

    deadline = time.monotonic() + timeout
    while True:
        left = max(deadline - time.monotonic(), 1.0)
        reply = await client.command("reconnect", left)
        if reply.code == ":":
            try:
                return await wait_cameras(client, names, min(30.0, left))
            except AssertionError as err:
                why = str(err).splitlines()[0]
        else:
            why = reply.lines[-1].raw
        print(f"\n0.7's reconnect, tried again: {why}")
        if time.monotonic() > deadline:
            raise AssertionError(f"0.7's cameras never all answered; last try: {why}")


def version_of(reply: ActorReply) -> str:
    """The ``version`` keyword of the actor's ``version`` command."""

    assert reply.code == ":", str(reply)
    values = [line.values("version") for line in reply.with_keyword("version")]
    assert values, str(reply)
    return values[-1][0]


def engine_json(addr: str, path: str, method: str = "GET") -> tuple[int, Any]:
    """A request to a node's Docker engine; the status and the decoded body."""

    status, body = engine.http_request(addr, path, method, timeout=15)
    return status, (json.loads(body) if body.strip() else None)


def container_of(bed: Testbed, node: str, name: str) -> dict[str, Any] | None:
    """``docker inspect`` of a container of a node (`None` if there is none)."""

    status, info = engine_json(bed.node(node).addr, f"/containers/{name}/json")
    if status == 404:
        return None
    assert status == 200, (status, info)
    return info


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def venv_07(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the real ``sdss-fliswarm`` 0.7.0 from the index.

    The test upgrades it in place: one test per environment.
    """

    base = tmp_path_factory.mktemp("upgrade-venv")
    venv = base / "venv"
    marker = uuid.uuid4().hex
    env = clean_env(marker)
    try:
        t0 = time.monotonic()
        made = run([sys.executable, "-m", "venv", str(venv)], env, base, VENV_TIMEOUT)
        assert made.returncode == 0, show(made)
        python = venv / "bin" / "python"
        installed = run(
            [str(python), "-m", "pip", "install", f"sdss-fliswarm=={ORIG_VERSION}"],
            env,
            base,
            PIP_TIMEOUT,
        )
        assert installed.returncode == 0, show(installed)
        took = time.monotonic() - t0
    finally:
        kill_marked(marker)  # pip's build processes, if it timed out.
    assert pip_list(python, env, base).get("sdss-fliswarm") == ORIG_VERSION
    print(f"\nfresh venv + pip install sdss-fliswarm=={ORIG_VERSION}: {took:.1f} s")
    return venv


@pytest.fixture(scope="module")
def image(testbed: Testbed) -> str:
    """The simulated flicamera image (the real flicamera actor) in the bed's registry."""

    return ensure_flicamera_image(testbed.registry)


@pytest.fixture()
def bed(testbed_clean: Testbed) -> Iterator[Testbed]:
    """The session's bed with a ``/dev/bus/usb`` on every node's engine, for 0.7.

    Afterwards: the ``flicamera-<node>`` containers (0.7's are not labelled as fliswarm's, so
    ``testbed_clean`` would leave them) and the ``data`` volume are removed, and the engines
    restarted, which drops their private ``/dev`` (it lives in the engine's mount namespace).
    """

    names = [node.name for node in testbed_clean.nodes]
    try:
        for name in names:
            harness.provide_usb_bus(testbed_clean, name)
        yield testbed_clean
    finally:

        def clean(node: Any) -> None:
            for path in (
                f"/containers/flicamera-{node.name}?force=1&v=1",
                "/volumes/data?force=1",
            ):
                status, body = engine_json(node.addr, path, "DELETE")
                assert status in (200, 204, 404), (node.name, path, status, body)
            testbed_clean.stop_engine(node.name)
            testbed_clean.start_engine(node.name)
            if not os.path.isdir("/dev/bus/usb"):  # The engine is back to the host's /dev.
                pid = testbed_clean._state()["nodes"][node.name]["pid"]
                probe = ["nsenter", f"--target={pid}", "--mount", "--", "test", "-e"]
                gone = subprocess.run([*probe, "/dev/bus/usb"], timeout=30)
                assert gone.returncode == 1, f"{node.name}: its engine still has /dev/bus/usb"

        with testbed_clean._locked():  # Held here: the nodes are done in parallel.
            testbed_clean._parallel(clean)


# ------------------------------------------------------------------------------------ test


async def test_site_upgraded_in_place(venv_07: Path, image: str, bed: Testbed, tmp_path: Path):
    """0.7 running with its cameras, ``pip install`` of this tree over it, this version's
    ``stop`` stops 0.7, its ``start`` with the same file, and the cameras answer."""

    names = [node.name for node in bed.nodes]
    marker = uuid.uuid4().hex
    env = clean_env(marker)
    python = venv_07 / "bin" / "python"
    fliswarm = str(venv_07 / "bin" / "fliswarm")

    # A private /var/tmp for every process: 0.7's pid file is /var/tmp/actor.pid.
    var_tmp = tmp_path / "var-tmp"
    var_tmp.mkdir()
    var_tmp.chmod(0o1777)
    pid_file = var_tmp / "actor.pid"
    prefix = [
        "unshare", "-m", "--propagation", "private", "sh", "-c",
        'mount --bind "$0" /var/tmp && exec "$@"', str(var_tmp),
    ]  # fmt: skip

    # One configuration file, in 0.7's layout (per-site nodes and enabled_nodes).
    port = free_port()
    settings = harness.orig_config(bed, image, port, names)
    settings["actor"]["log_dir"] = str(tmp_path / "logs")
    config = tmp_path / "fliswarm.yaml"
    config.write_text(yaml.safe_dump(settings))
    assert list(settings["nodes"]) == ["APO"] and settings["enabled_nodes"] == {"APO": names}

    def cli(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
        return run([*prefix, fliswarm, *args], env, tmp_path, timeout)

    async def acli(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
        return await asyncio.to_thread(cli, *args, timeout=timeout)

    timings: dict[str, float] = {}
    client: ActorClient | None = None
    try:
        # ---------------------------------------------------------------- 0.7 running
        t0 = time.monotonic()
        started = await acli("-c", str(config), "start")
        assert started.returncode == 0 and "OK" in started.stdout, show(started)
        pid_07 = int(pid_file.read_text())
        await asyncio.to_thread(wait_until, lambda: port_open(port), 60, "0.7 to listen")
        timings["0.7 start (until it listens)"] = time.monotonic() - t0

        client = await ActorClient.connect("127.0.0.1", port)
        assert version_of(await client.command("version")) == ORIG_VERSION
        t0 = time.monotonic()
        await cameras_up_07(client, names, CAMERAS_TIMEOUT)
        timings["0.7 reconnect + every camera answering"] = time.monotonic() - t0
        containers_07 = {}
        for name in names:
            info = container_of(bed, name, f"flicamera-{name}")
            assert info is not None and info["State"]["Running"], name
            containers_07[name] = info["Id"]
        await client.close()
        client = None

        # ---------------------------------------------------- pip install of this tree
        files_07 = fliswarm_owners(python, env, tmp_path)["sdss-fliswarm"][1]
        source = source_copy(tmp_path / "source")
        t0 = time.monotonic()
        installed = await asyncio.to_thread(
            run, [str(python), "-m", "pip", "install", str(source)], env, tmp_path, PIP_TIMEOUT
        )
        timings["pip install of this tree"] = time.monotonic() - t0
        assert installed.returncode == 0, show(installed)

        listed = pip_list(python, env, tmp_path)
        assert listed.get("sdss-fliswarm") == NEW_VERSION, listed
        assert "fliswarm" not in listed, listed
        owners = fliswarm_owners(python, env, tmp_path)
        assert list(owners) == ["sdss-fliswarm"] and owners["sdss-fliswarm"][0] == NEW_VERSION
        where = run([str(python), "-I", "-c", IMPORTED_FROM], env, tmp_path, 60)
        assert where.returncode == 0, show(where)
        site_packages = Path(where.stdout.strip()).parent.parent
        assert site_packages.is_relative_to(venv_07), site_packages  # Not this tree.
        left = [f for f in set(files_07) - set(owners["sdss-fliswarm"][1]) if f.endswith(".py")]
        assert left, "0.7 and this version have the same modules?"  # 0.7's commands.py, ...
        assert not [f for f in left if (site_packages / f).exists()], "0.7's modules remain"

        # The 0.7 daemon runs on, from the files it loaded before the upgrade.
        assert alive(pid_07) and port_open(port)

        # --------------------------------------------- this version's stop and start
        status = await acli("status")
        assert status.returncode == 0, show(status)
        assert f"running (pid {pid_07}), pid file /var/tmp/actor.pid" in status.stdout

        t0 = time.monotonic()
        stopped = await acli("stop")
        timings["stop of the 0.7 daemon by this version"] = time.monotonic() - t0
        assert stopped.returncode == 0, show(stopped)
        assert f"pid {pid_07}" in stopped.stdout, show(stopped)
        assert not alive(pid_07) and not pid_file.exists() and not port_open(port)

        t0 = time.monotonic()
        started = await acli("-c", str(config), "start")
        timings["start of this version (returns once it listens)"] = time.monotonic() - t0
        assert started.returncode == 0, show(started)
        pid = int(pid_file.read_text())
        assert pid != pid_07 and alive(pid) and f"pid {pid}" in started.stdout, show(started)
        assert port_open(port)

        t0 = time.monotonic()
        client = await ActorClient.connect("127.0.0.1", port)
        assert version_of(await client.command("version")) == NEW_VERSION
        talk = await wait_cameras(client, names, CAMERAS_TIMEOUT)
        timings["first answer of every camera through this version"] = time.monotonic() - t0
        print("\nthis version's talk status:\n" + str(talk))
        for name in names:
            info = container_of(bed, name, f"flicamera-{name}")
            kept = info is not None and info["Id"] == containers_07[name]
            print(f"{name}: 0.7's container {'kept' if kept else 'replaced'}")

        # 0.7's containers are recognised as fliswarm's (drifted: made by 0.7), not as
        # someone else's in the way; reconnect --force replaces them with labelled ones.
        def states(reply: ActorReply) -> dict[str, list[str]]:
            return {
                values[0]: values
                for values in (line.values("nodeState") for line in reply.lines)
                if values and values[0] in names
            }

        deadline = time.monotonic() + 60
        while True:
            status_reply = await client.command("status", 60)
            assert status_reply.code == ":", str(status_reply)
            found = states(status_reply)
            if all(found.get(n, ["", ""])[1] == "drifted" for n in names):
                break
            assert time.monotonic() < deadline, found
            await asyncio.sleep(0.5)
        for name in names:
            print(f"nodeState after the upgrade: {found[name]}")
            assert "sdss-fliswarm 0.7 made it" in found[name][-1], found[name]

        t0 = time.monotonic()
        replaced = await client.command("reconnect --force", 240)
        timings["reconnect --force replacing 0.7's containers"] = time.monotonic() - t0
        assert replaced.code == ":", str(replaced)
        for name in names:
            info = container_of(bed, name, f"flicamera-{name}")
            assert info is not None and info["Id"] != containers_07[name], name
            assert info["Config"]["Labels"].get("org.sdss.fliswarm.managed") == "true"
        await wait_cameras(client, names, CAMERAS_TIMEOUT)
        deadline = time.monotonic() + 60
        while True:
            found = states(await client.command("status", 60))
            if all(found.get(n, ["", ""])[1] == "online" for n in names):
                break
            assert time.monotonic() < deadline, found
            await asyncio.sleep(0.5)
        await client.close()
        client = None

        first = names[0]
        sent = await acli("-c", str(config), "send", "talk", "-n", first, "status")
        assert sent.returncode == 0, show(sent)
        relayed = [line for line in sent.stdout.splitlines() if "status=" in line]
        assert relayed and all(f"status={first}," in line for line in relayed), show(sent)

        t0 = time.monotonic()
        stopped = await acli("stop")
        timings["stop of this version"] = time.monotonic() - t0
        assert stopped.returncode == 0, show(stopped)
        assert not alive(pid) and not pid_file.exists() and not port_open(port)
    finally:
        if client is not None:
            await client.close()
        left_running = await asyncio.to_thread(kill_marked, marker)
        print("\ntimings of the upgrade:")
        for what, seconds in timings.items():
            print(f"  {what}: {seconds:.2f} s")
    assert not left_running, f"processes left running: {left_running}"
