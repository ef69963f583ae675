"""Reachability check of a node address with the system ``ping`` program.

The program is run from an argv list (never through a shell). Two flavours are
supported: iputils ``ping`` (Debian, RHEL...) and BusyBox ``ping`` (Alpine...):

- both get ``-c 1 -W <secs>`` and ``-q``; iputils also ``-n`` (no reverse DNS lookup;
  BusyBox never does one);
- BusyBox and iputils older than ``20190515`` only take an integer ``-W``: the timeout is
  rounded up to whole seconds (at least 1);
- recent iputils takes a fractional ``-W`` (``0.6``).

In every case the process is killed when ``timeout`` expires, so `ping` never takes
longer than the requested timeout, whatever the flavour rounds to.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
from dataclasses import dataclass

from fliswarm.exceptions import PingError


__all__ = ["PING_GRACE", "PingProgram", "find_ping", "ping_argv", "format_wait", "ping"]

#: Seconds a Docker engine gets to answer before its node is pinged as well (a local engine
#: answers in milliseconds; the ICMP echo is a subprocess).
PING_GRACE = 0.1


#: First iputils release whose ``ping -W`` accepts a fraction of a second.
IPUTILS_FRACTIONAL_W = 20190515


@dataclass(frozen=True)
class PingProgram:
    """A ``ping`` program and what its options accept.

    Attributes
    ----------
    path
        The program to run.
    flavour
        ``"iputils"`` or ``"busybox"``.
    fractional
        Whether ``-W`` accepts a fraction of a second.
    """

    path: str
    flavour: str
    fractional: bool


_program: PingProgram | None = None


def format_wait(timeout: float, fractional: bool) -> str:
    """Formats the ``-W`` value for a timeout.

    Parameters
    ----------
    timeout
        The timeout in seconds (> 0).
    fractional
        Whether the program accepts a fraction of a second.

    Returns
    -------
    str
        ``"0.6"`` when fractional values are accepted, otherwise the timeout rounded up
        to a whole number of seconds, at least ``"1"``.
    """

    if timeout <= 0:
        raise ValueError("ping timeout must be positive.")
    if fractional:
        return f"{max(timeout, 0.001):.3f}".rstrip("0").rstrip(".")
    return str(max(1, math.ceil(timeout)))


def ping_argv(addr: str, timeout: float, program: PingProgram) -> list[str]:
    """Builds the argv list that pings ``addr`` once.

    Parameters
    ----------
    addr
        The host name or address to ping.
    timeout
        Seconds to wait for the answer.
    program
        The ``ping`` program to run (see `find_ping`).

    Returns
    -------
    list
        The argv, e.g. ``["/usr/bin/ping", "-n", "-q", "-c", "1", "-W", "0.6", "10.0.0.1"]``.
    """

    if not addr or addr.startswith("-"):
        raise ValueError(f"invalid address to ping: {addr!r}")
    wait = format_wait(timeout, program.fractional)
    argv = [program.path]
    if program.flavour == "iputils":
        argv.append("-n")
    argv += ["-q", "-c", "1", "-W", wait, addr]
    return argv


def parse_iputils_version(text: str) -> int | None:
    """Returns the release of iputils (``20221126``) from the output of ``ping -V``."""

    match = re.search(r"iputils[- ]s?(\d{8})", text)
    return int(match.group(1)) if match else None


def _locate() -> tuple[str, bool]:
    """The ``ping`` program on PATH and whether it is BusyBox."""

    path = shutil.which("ping")
    if path is None:
        raise PingError("no 'ping' program found on PATH (install iputils-ping or busybox).")
    return path, os.path.basename(os.path.realpath(path)).startswith("busybox")


async def find_ping() -> PingProgram:
    """Finds the ``ping`` program and its flavour (cached after the first call).

    The first ``ping`` on ``PATH``; its flavour is told by the program's name (``busybox``)
    or by the output of ``ping -V``.

    Raises
    ------
    PingError
        If there is no ``ping`` program.
    """

    global _program
    if _program is not None:
        return _program

    path, is_busybox = _locate()
    if is_busybox:
        _program = PingProgram(path, "busybox", False)
        return _program

    try:
        proc = await asyncio.create_subprocess_exec(
            path, "-V", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), 5)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise PingError(f"{path} -V did not answer.") from None
    except OSError as err:
        raise PingError(f"cannot run {path!r}: {err}") from err

    text = output.decode(errors="replace")
    if "busybox" in text.lower():
        _program = PingProgram(path, "busybox", False)
    else:
        version = parse_iputils_version(text)
        fractional = version is not None and version >= IPUTILS_FRACTIONAL_W
        _program = PingProgram(path, "iputils", fractional)
    return _program


async def ping(addr: str, timeout: float = 2.0) -> bool:
    """Pings an address once.

    Parameters
    ----------
    addr
        The host name or address.
    timeout
        The most seconds to wait: the program is killed when they expire.

    Returns
    -------
    bool
        `True` if the host answered within ``timeout``.

    Raises
    ------
    PingError
        If the ``ping`` program is missing.
    """

    program = await find_ping()
    argv = ping_argv(addr, timeout, program)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError as err:
        raise PingError(f"cannot run {argv[0]!r}: {err}") from err

    try:
        returncode = await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        returncode = None
    finally:
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            await proc.wait()

    return returncode == 0
