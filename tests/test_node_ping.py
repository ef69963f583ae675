"""`fliswarm.docker.ping` with the real iputils and BusyBox programs, on loopback only."""

from __future__ import annotations

import os
import shutil

import pytest

from fliswarm.docker import ping as ping_module
from fliswarm.exceptions import PingError


@pytest.fixture(autouse=True)
def _fresh_program(monkeypatch):
    monkeypatch.setattr(ping_module, "_program", None)
    yield
    ping_module._program = None


async def test_iputils_ping_loopback():
    # scripts/install-deps.sh installs iputils-ping and busybox-static for these tests.
    assert shutil.which("ping") is not None, "no ping program: run scripts/install-deps.sh"
    program = await ping_module.find_ping()
    assert program.flavour in ("iputils", "busybox")
    # True: answered within the 0.5 s timeout (the program is killed at the timeout, which
    # gives False). How fast is not checked here.
    assert await ping_module.ping("127.0.0.1", 0.5) is True


async def test_busybox_ping_loopback(tmp_path, monkeypatch):
    busybox = shutil.which("busybox")
    assert busybox is not None, "no busybox: run scripts/install-deps.sh"
    os.symlink(busybox, tmp_path / "ping")  # BusyBox's ping, the only one on PATH.
    monkeypatch.setenv("PATH", str(tmp_path))
    program = await ping_module.find_ping()
    assert (program.flavour, program.fractional) == ("busybox", False)
    assert await ping_module.ping("127.0.0.1", 0.4) is True


async def test_missing_ping_program(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PingError, match="no 'ping' program"):
        await ping_module.ping("127.0.0.1", 0.5)
