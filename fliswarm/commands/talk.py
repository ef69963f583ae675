"""``talk``: send a command to the flicamera actors of several nodes at once."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from fliswarm.camera.device import SubCommand
from fliswarm.camera.subcommand import expected_duration, wait_all
from fliswarm.commands import parser
from fliswarm.tools import select_nodes, split_names


if TYPE_CHECKING:
    from fliswarm.commands import FLISwarmCommand, NodesType
    from fliswarm.config.settings import Timeouts


__all__ = ["talk", "default_timeout"]


def default_timeout(timeouts: Timeouts, args: Sequence[str]) -> float:
    """The time limit of a camera command when ``talk`` is given none: ``timeouts.talk`` plus
    the exposure time for ``expose``, ``timeouts.command`` for any other command (a hung
    camera then fails it in seconds)."""

    if args and args[0] == "expose":
        return timeouts.talk + expected_duration(args)
    return timeouts.command


#: Connection attempt to the flicamera of a node known to be offline (s): a live host on the
#: local network answers a TCP connection in milliseconds.
OFFLINE_CONNECT_TIMEOUT = 0.5


async def _run_on_node(
    command: FLISwarmCommand, name: str, camera_command: str, timeout: float
) -> SubCommand:
    """Runs the camera command on one node, connecting its device first if needed."""

    actor = command.actor
    device = actor.flicameras.get(name)
    if device is None:
        sub = SubCommand(name, 0, camera_command, command)
        sub._finish(False, f"{name}: no flicamera device is configured.")
        return sub

    # On a node the supervisor knows is offline (its engine does not answer), flicamera may
    # still run; one short attempt tells, without waiting out the full connect timeout.
    offline = actor.supervisor.is_offline(name)
    if not device.is_connected() and device.auto_connect:
        connect_timeout = actor.settings.timeouts.device_connect
        if offline:
            connect_timeout = min(connect_timeout, OFFLINE_CONNECT_TIMEOUT)
        try:
            await device.start(connect_timeout)
        except ConnectionError:
            pass
    if not device.is_connected():
        if offline:
            reason = " (the node is offline)"
        else:
            reason = f" ({device.last_error.rstrip('.')})" if device.last_error else ""
        command.warning(text=f"{name}: flicamera is not connected{reason}.")
        sub = SubCommand(name, 0, camera_command, command)
        sub._finish(False, f"{name}: flicamera is not connected.")
        return sub

    return await device.run(camera_command, command, timeout=timeout)


async def _run_on_nodes(
    command: FLISwarmCommand, names: list[str], camera_command: str, timeout: float
) -> list[SubCommand]:
    """Runs the camera command on every node at once; the results in the order of ``names``.

    Connected cameras get the command at once, without a task each; the others are
    connected first (`_run_on_node`), concurrently.
    """

    flicameras = command.actor.flicameras
    sent: list[SubCommand] = []
    connecting: dict[str, asyncio.Task[SubCommand]] = {}
    for name in names:
        device = flicameras.get(name)
        if device is not None and device.is_connected():
            if device.camera_missing is not None:
                command.warning(text=f"{name}: {device.camera_missing}; sending it anyway.")
            sent.append(device.submit(camera_command, command))
        else:
            coro = _run_on_node(command, name, camera_command, timeout)
            connecting[name] = asyncio.ensure_future(coro)
    try:
        await wait_all(sent, timeout)
        if connecting:
            await asyncio.gather(*connecting.values())
    finally:  # Cancelled: no connection attempt outlives the command.
        for task in connecting.values():
            task.cancel()
    by_node = {sub.node: sub for sub in sent}
    by_node.update((name, task.result()) for name, task in connecting.items())
    return [by_node[name] for name in names]


@parser.command(context_settings={"allow_interspersed_args": False})
@click.argument("CAMERA_COMMAND", nargs=-1, type=str, required=True)
@click.option("-n", "--names", type=str, help="Comma-separated cameras (nodes) to command.")
@click.option("-c", "--category", type=str, help="Category of cameras to command (gfa, fvc).")
@click.option(
    "-t",
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds to wait for each camera. Default: for expose, timeouts.talk plus the exposure "
    "time (times count and stack); for any other command, timeouts.command.",
)
async def talk(
    command: FLISwarmCommand,
    nodes: NodesType,
    camera_command: tuple[str, ...],
    names: str | None,
    category: str | None,
    timeout: float | None,
):
    """Sends a command to the selected (default: all) cameras and relays their replies.

    Options go before the camera command: everything after it is sent to flicamera as is.
    """

    actor = command.actor
    camera_string = shlex.join(camera_command)

    for name in split_names(names):
        if name not in nodes:
            command.warning(text=f"{name}: no such node.")
        elif not nodes[name].enabled:
            command.warning(text=f"{name}: node is disabled.")

    selected = sorted(node.name for node in select_nodes(nodes, category, names))
    if not selected:
        return command.fail(error="No enabled camera matches the selection.")

    if timeout is None:
        timeout = default_timeout(actor.settings.timeouts, camera_command)

    results = await _run_on_nodes(command, selected, camera_string, timeout)

    filenames = [filename for sub in results for filename in sub.filenames]
    if filenames:
        command.info(filename_bundle=filenames)

    failed = [sub for sub in results if not sub.ok]
    if failed:
        for sub in failed:
            if sub.error and sub.command_id != 0:  # Unsent ones were reported already.
                command.warning(text=sub.error)
        command.warning(failedNodes=[sub.node for sub in failed])

    if len(failed) == len(results):
        return command.fail(error=f"Failed on {', '.join(selected)}: {camera_string}")

    return command.finish()
