"""``reconnect``: (re)create the volumes and flicamera containers, then connect the cameras."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import click

from fliswarm.commands import parser
from fliswarm.commands._common import choose_nodes
from fliswarm.provision import ProvisionError, Request


if TYPE_CHECKING:
    from fliswarm.commands._common import FLISwarmCommand, NodesType


__all__ = ["reconnect"]


@parser.command()
@click.option("-n", "--names", type=str, help="Comma-separated nodes to reconnect.")
@click.option("-c", "--category", type=str, help="Category of nodes to reconnect (gfa, fvc).")
@click.option(
    "-f",
    "--force",
    is_flag=True,
    help="Recreate the volumes and the containers even if they exist and run.",
)
async def reconnect(
    command: FLISwarmCommand,
    nodes: NodesType,
    names: str | None,
    category: str | None,
    force: bool,
):
    """Creates the volumes, starts the flicamera containers and connects the cameras.

    Without --force, existing volumes and running containers are left alone and only the
    connection to flicamera is made again. With --force, what was there before the command
    is replaced (a container being created for the node when the command comes is kept).
    """

    selected = choose_nodes(command, nodes, names, category)
    if not selected:
        return command.fail(error="No enabled node matches the selection.")

    provisioner = command.actor.provisioner
    request = Request(force=force, reconnect=True)

    async def one(name: str) -> str | None:
        try:
            await provisioner.provision(name, request, command)
        except ProvisionError as err:
            return err.reason
        return None

    results = await asyncio.gather(*[one(name) for name in selected])
    failed = {name: why for name, why in zip(selected, results, strict=True) if why}
    for name, why in failed.items():
        command.warning(text=f"{name}: {why}")
    if failed:
        command.warning(failedNodes=list(failed))
        details = "; ".join(f"{name}: {why}" for name, why in failed.items())
        return command.fail(error=f"Failed to reconnect {', '.join(failed)}. {details}")
    return command.finish(text=f"Reconnected {', '.join(selected)}.")
