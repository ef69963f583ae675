"""fliswarm's command parser: its own click group, CLU's built-ins, and its commands.

Every module of this package (except those starting with ``_``) is imported when the package
is, so a new command only needs a new module that decorates its callback with
``@parser.command()``::

    import click

    from fliswarm.commands import parser

    if TYPE_CHECKING:
        from fliswarm.commands import FLISwarmCommand, NodesType


    @parser.command()
    @click.option("-n", "--names", type=str, help="Comma-separated nodes.")
    async def hello(command: FLISwarmCommand, nodes: NodesType, names: str | None):
        actor = command.actor            # the FLISwarmActor
        device = actor.flicameras["gfa1"]  # a FlicameraDevice
        command.info(text="hello")       # keywords in fliswarm/etc/keywords.json
        command.finish()

Callbacks receive the `~clu.command.Command` first, then the actor's ``parser_args``: the
dictionary of `.Node` objects by name (``actor.nodes``, mutated in place, never replaced).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

import click
from clu.legacy.actor import tron_reconnect
from clu.parsers.click import get_schema, keyword, ping, version

from fliswarm.compat import CluGroupOnce, command_model, help_command


if TYPE_CHECKING:
    from clu.command import Command

    from fliswarm.actor import FLISwarmActor
    from fliswarm.docker.node import Node

    FLISwarmCommand = Command[FLISwarmActor]
    NodesType = dict[str, Node]
else:
    FLISwarmCommand = Any
    NodesType = dict


__all__ = ["parser", "command_parser", "FLISwarmCommand", "NodesType"]


@click.group(cls=CluGroupOnce)
def parser(*args: Any) -> None:
    """fliswarm: runs the FLI cameras of the nodes in Docker containers."""


#: Alias, under the name CLU and the original fliswarm use.
command_parser = parser


for _builtin in (
    ping,
    version,
    help_command,
    get_schema,
    keyword,
    command_model,
    tron_reconnect,
):
    parser.add_command(_builtin)


def _import_command_modules() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_command_modules()
