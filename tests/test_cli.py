"""The fliswarm command line, run as real processes (daemon start/status/stop and errors)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers_net import ask, free_port, port_open

import fliswarm


def run(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fliswarm", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict]:
    """A configuration with one node on loopback whose Docker engine does not exist."""

    port = free_port()
    config = {
        # tron unreachable (a closed port) is not an error.
        "actor": {
            "name": "fliswarm",
            "host": "127.0.0.1",
            "port": port,
            "tron_host": "127.0.0.1",
            "tron_port": free_port(),
        },
        "registry": None,
        "image": "sdss/flicamera:latest",
        "container_name": "flicamera",
        "timeouts": {"docker_connect": 0.5, "docker_request": 1},
        "ping_timeout": 0.5,
        "enabled_nodes": ["gfa1"],
        "nodes": {
            "gfa1": {
                "host": "127.0.0.1",
                "port": free_port(),
                "docker-client": f"tcp://127.0.0.1:{free_port()}",
                "category": "gfa",
            }
        },
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(config))
    pid_file = tmp_path / "state" / "fliswarm.pid"
    env = dict(os.environ, FLISWARM_PID_FILE=str(pid_file))
    info = {"config": path, "port": port, "pid_file": pid_file, "env": env, "tmp": tmp_path}
    yield info
    # Never leave a daemon behind, whatever the test did.
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ValueError, OSError):
            pass


def test_version():
    result = run("--version", env=dict(os.environ))
    assert result.returncode == 0
    assert fliswarm.__version__ in result.stdout


def test_config_check_prints_resolved(site):
    result = run("config", "check", "-c", str(site["config"]), env=site["env"])
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["enabled_nodes"] == ["gfa1"]
    assert resolved["nodes"]["gfa1"]["category"] == "gfa"
    assert resolved["status_interval"] == 300  # a default filled in


def test_config_check_bad_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("actor: [1, 2\n")
    result = run("config", "check", "-c", str(bad), env=dict(os.environ))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert str(bad) in result.stderr and "line" in result.stderr


def test_start_status_stop_cycle(site):
    config, env, pid_file, port = site["config"], site["env"], site["pid_file"], site["port"]
    log_file = site["tmp"] / "logs" / "fliswarm.log"

    started = run("-c", str(config), "start", "--log", str(log_file), env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert pid_file.exists()
    pid = int(pid_file.read_text())
    assert f"pid {pid}" in started.stdout
    assert port_open(port)

    status = run("-c", str(config), "status", env=env)
    assert status.returncode == 0
    assert f"running (pid {pid})" in status.stdout

    # The daemon is a working actor.
    reply = ask(port, "ping")
    assert reply[-1].split(" ")[2] == ":"
    assert log_file.exists()

    again = run("-c", str(config), "start", env=env)
    assert again.returncode == 1
    assert f"already running (pid {pid}" in again.stderr

    stopped = run("-c", str(config), "stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert not pid_file.exists()
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10, "the daemon to exit")
    assert not port_open(port)

    status = run("-c", str(config), "status", env=env)
    assert status.returncode == 1
    assert "not running" in status.stdout


def test_stop_when_not_running(site):
    """As 0.7: a warning and exit status 0 (stageManager stop of a stopped actor is fine)."""

    result = run("-c", str(site["config"]), "stop", env=site["env"])
    assert result.returncode == 0
    assert result.stdout == ""
    assert result.stderr.strip().startswith("WARNING: fliswarm is not running")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("which", ["pid", "log"])
def test_unwritable_locations(site, which):
    blocker = site["tmp"] / "a-file"
    blocker.write_text("not a directory")
    env = dict(site["env"])
    args = ["-c", str(site["config"])]
    if which == "pid":
        env["FLISWARM_PID_FILE"] = str(blocker / "fliswarm.pid")
        args += ["start"]
    else:
        args += ["start", "--log", str(blocker / "fliswarm.log")]
    result = run(*args, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: cannot create the")
    assert str(blocker) in lines[0]
    assert not port_open(site["port"])


def test_debug_stays_in_foreground(site):
    proc = subprocess.Popen(
        [sys.executable, "-m", "fliswarm", "-c", str(site["config"]), "start", "--debug"],
        env=site["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_for(lambda: port_open(site["port"]) or proc.poll() is not None, 30, "the actor")
        assert proc.poll() is None, proc.communicate()
        assert site["pid_file"].exists()
        # The foreground process is the actor itself (what systemd supervises).
        assert int(site["pid_file"].read_text()) == proc.pid
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0  # Stopped on request: a clean exit.
        # The log went to stderr, e.g. the warning about the node's missing engine.
        assert "cannot connect to the Docker engine" in stderr
        assert not site["pid_file"].exists()
    finally:
        if proc.poll() is None:
            proc.kill()
