"""``reboot``: restart node computers over ssh, or power-cycle them through a power actor."""

from __future__ import annotations

import asyncio
import contextlib
import math
import shlex
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from fliswarm.commands import parser
from fliswarm.commands._common import choose_nodes, report_nodes
from fliswarm.tools import subprocess_run_async


if TYPE_CHECKING:
    from fliswarm.commands import FLISwarmCommand, NodesType


__all__ = [
    "reboot",
    "ssh_argv",
    "ssh_reboot",
    "ssh_outcome",
    "power_command",
]

#: Seconds a node stays off during a hard reboot, by default.
DEFAULT_OFF_TIME = 3.0
_CLOSED_BY_REMOTE = ("closed by remote host", "connection reset by peer")


def ssh_argv(
    host: str,
    command: str | Sequence[str],
    user: str | None = None,
    connect_timeout: float = 10.0,
    known_hosts: str | None = None,
    ssh: str = "ssh",
) -> list[str]:
    """The argv that runs ``command`` on ``host`` over ssh (never through a local shell).

    Parameters
    ----------
    host
        The node's host name or address.
    command
        The remote command: a string (split like a shell would) or an argv list.
    user
        The remote user; ssh's default when `None`.
    connect_timeout
        ssh's ``ConnectTimeout`` (rounded up to whole seconds, at least 1).
    known_hosts
        A known_hosts file: host keys are then checked strictly against it.
    ssh
        The ssh program.

    Raises
    ------
    ValueError
        If the command is empty or cannot be split, or the host or user could be taken
        for an option.
    """

    words = shlex.split(command) if isinstance(command, str) else list(command)
    if not words:
        raise ValueError("empty reboot command.")
    if not host or host.startswith("-") or (user is not None and (not user or "@" in user)):
        raise ValueError(f"invalid ssh destination {user!r}@{host!r}.")
    if user is not None and user.startswith("-"):
        raise ValueError(f"invalid ssh user {user!r}.")
    seconds = max(1, math.ceil(connect_timeout))
    argv = [ssh, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={seconds}"]
    if known_hosts:
        argv += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}"]
    argv += ["--", f"{user}@{host}" if user else host, *words]
    return argv


def ssh_outcome(returncode: int, stderr: bytes | str) -> str | None:
    """Whether a reboot over ssh worked: `None`, or why it failed.

    Exit code 0 is success; 255 with the connection closed by the remote end is taken as
    the node going down. Anything else fails with the exit code and the end of stderr.
    """

    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if returncode == 0:
        return None
    if returncode == 255 and any(m in line.lower() for line in lines for m in _CLOSED_BY_REMOTE):
        return None
    tail = " | ".join(lines[-3:])[-300:] or "no error output"
    return f"ssh failed with exit code {returncode}: {tail}"


async def ssh_reboot(argv: list[str], timeout: float) -> str | None:
    """Runs the ssh argv with a time limit; returns why it failed, or `None`."""

    if shutil.which(argv[0]) is None:
        return f"cannot run {argv[0]}: it is not installed on the manager (openssh-client)."
    try:
        proc = await subprocess_run_async(*argv, timeout=timeout)
    except asyncio.TimeoutError:
        return f"ssh did not finish within {timeout:g} s (the node may be rebooting)."
    except OSError as err:
        return f"cannot run ssh: {(err.strerror or str(err)).lower()}."
    return ssh_outcome(proc.returncode or 0, getattr(proc, "stderr_data", b""))


def _reply_error(cmd: Any) -> str:
    for reply in reversed(getattr(cmd, "replies", [])):
        message = getattr(reply, "message", {}) or {}
        for key in ("error", "text"):
            if key in message:
                value = message[key]
                if isinstance(value, (list, tuple)):
                    value = " ".join(str(v) for v in value)
                return str(value)
    return "no reason given"


async def power_command(
    command: FLISwarmCommand, target: str, command_string: str, timeout: float
) -> str | None:
    """Sends a command to the power actor through tron and waits for it.

    Returns why it failed, or `None`.
    """

    try:
        cmd = command.actor.send_command(target, command_string)
    except Exception as err:
        text = str(err).rstrip(".") or "see fliswarm's log"
        return f"cannot send '{target} {command_string}' through tron: {text}."
    try:
        await asyncio.wait_for(asyncio.shield(cmd), timeout)
    except asyncio.TimeoutError:
        return f"'{target} {command_string}' did not finish within {timeout:g} s."
    if cmd.status.did_fail:
        return f"'{target} {command_string}' failed: {_reply_error(cmd)}"
    return None


async def _forget_connections(command: FLISwarmCommand, names: Sequence[str]) -> None:
    """Drops the cameras and Docker connections of nodes about to go down."""

    async def one(name: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(command.actor.flicameras[name].stop(), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(command.actor.nodes[name].close(), 5)

    await asyncio.gather(*[one(name) for name in names])


async def _soft(command: FLISwarmCommand, selected: list[str]) -> dict[str, str]:
    settings = command.actor.settings
    timeout = settings.timeouts.ssh
    connect_timeout = max(1.0, timeout * 2 / 3)

    async def one(name: str) -> str | None:
        node = settings.nodes[name]
        try:
            argv = ssh_argv(
                node.host,
                settings.reboot_command,
                user=node.user,
                connect_timeout=connect_timeout,
                known_hosts=settings.ssh.known_hosts,
            )
        except ValueError as err:
            return str(err)
        command.debug(text=f"{name}: running {shlex.join(argv)}")
        error = await ssh_reboot(argv, timeout)
        if error is None:
            command.info(text=f"{name}: rebooting.")
            await _forget_connections(command, [name])
        return error

    results = await asyncio.gather(*[one(name) for name in selected])
    return {name: why for name, why in zip(selected, results, strict=True) if why}


async def _hard(command: FLISwarmCommand, selected: list[str], off_time: float) -> dict[str, str]:
    settings = command.actor.settings
    power = settings.power
    if power is None:
        return {name: "no power section in the configuration." for name in selected}
    target = power.actor
    timeout = settings.timeouts.power

    failed: dict[str, str] = {}
    devices: dict[str, str] = {}
    for name in selected:
        device = settings.nodes[name].power_device
        if device:
            devices[name] = device
        else:
            failed[name] = "no power device configured for this node."
    if not devices:
        return failed

    async def switch(mode: str, names: list[str]) -> list[str]:
        command.info(text=f"Powering {mode} {', '.join(names)}.")
        base = power.poweron if mode == "on" else power.poweroff
        results = await asyncio.gather(
            *[power_command(command, target, f"{base} {devices[n]}", timeout) for n in names]
        )
        done = []
        for name, why in zip(names, results, strict=True):
            if why:
                failed[name] = f"power {mode}: {why}"
            else:
                done.append(name)
        return done

    await _forget_connections(command, list(devices))
    off = await switch("off", list(devices))
    if not off:
        return failed
    if off_time > 0:
        await asyncio.sleep(off_time)  # The node must really lose power.
    on = await switch("on", off)
    if on:
        await report_nodes(command, [command.actor.nodes[name] for name in on])
    return failed


@parser.command()
@click.option("-n", "--names", type=str, help="Comma-separated nodes to reboot.")
@click.option("-c", "--category", type=str, help="Category of nodes to reboot (gfa, fvc).")
@click.option(
    "--hard",
    "-f",
    is_flag=True,
    help="Power-cycle the nodes through the power actor (-f: 0.7's short form).",
)
@click.option(
    "--off-time",
    type=click.FloatRange(min=0, max=600),
    default=DEFAULT_OFF_TIME,
    show_default=True,
    help="With --hard, seconds between powering off and on.",
)
async def reboot(
    command: FLISwarmCommand,
    nodes: NodesType,
    names: str | None,
    category: str | None,
    hard: bool,
    off_time: float,
):
    """Reboots the node computers: reboot_command over ssh, or a power cycle (--hard)."""

    selected = choose_nodes(command, nodes, names, category)
    if not selected:
        return command.fail(error="No enabled node matches the selection.")

    failed = await (_hard(command, selected, off_time) if hard else _soft(command, selected))
    if failed:
        for name, why in failed.items():
            command.warning(text=f"{name}: {why}")
        command.warning(failedNodes=list(failed))
        details = "; ".join(f"{name}: {why}" for name, why in failed.items())
        return command.fail(error=f"Failed to reboot {', '.join(failed)}. {details}")
    return command.finish()
