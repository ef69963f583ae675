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

import functools
import importlib
import importlib.metadata
import pkgutil
from typing import TYPE_CHECKING, Any

import click
from clu.legacy.actor import tron_reconnect
from clu.parsers.click import (
    CluCommand,
    CluGroup,
    get_schema,
    help_,
    keyword,
    ping,
    version,
)


if TYPE_CHECKING:
    from clu.command import Command

    from fliswarm.actor import FLISwarmActor
    from fliswarm.node import Node

    FLISwarmCommand = Command[FLISwarmActor]
    NodesType = dict[str, Node]
else:
    FLISwarmCommand = Any
    NodesType = dict


__all__ = ["parser", "command_parser", "FLISwarmCommand", "NodesType", "FliswarmGroup"]


@functools.cache
def _click_8_2() -> bool:
    major, minor, *_ = (int(part) for part in importlib.metadata.version("click").split("."))
    return (major, minor) >= (8, 2)


class FliswarmGroup(CluGroup):
    """`~clu.parsers.click.CluGroup` that looks up click's version once.

    CLU 2.6's ``parse_args`` reads click's package metadata (``importlib.metadata.version``,
    an e-mail header parse) for every command; that was about half of the actor's CPU time
    for a ``talk`` round trip. Same logic otherwise.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            ctx.exit()
        rest = click.Command.parse_args(self, ctx, args)
        attr = "_protected_args" if _click_8_2() else "protected_args"
        if self.chain:
            setattr(ctx, attr, rest)
            ctx.args = []
        elif rest:
            setattr(ctx, attr, rest[:1])
            ctx.args = rest[1:]
        return ctx.args

    def invoke(self, ctx: click.Context) -> Any:
        """Invokes the command, then drops the context CLU pushed for it.

        CLU 2.6's ``parse_command`` pushes every command's context on click's global stack
        and never pops it: each command (and its replies) stayed in memory for good. A
        context entered with ``with`` (click's own ``main``) is left to its owner.
        """

        try:
            return super().invoke(ctx)
        finally:
            if ctx._depth == 0 and click.get_current_context(silent=True) is ctx:
                click.globals.pop_context()


@click.group(cls=FliswarmGroup)
def parser(*args: Any) -> None:
    """The fliswarm command parser (not CLU's global ``command_parser``)."""


#: Alias, under the name CLU and the original fliswarm use.
command_parser = parser


def _command_path(group: click.Command, words: list[str]) -> list[str]:
    """The leading words that name a command or sub-command of ``group``."""

    kept: list[str] = []
    current = group
    for word in words:
        commands = getattr(current, "commands", None)
        if not commands or word not in commands:
            break
        kept.append(word)
        current = commands[word]
    return kept or words[:1]


def _group_context(command: Any) -> click.Context:
    """The parser's (root) context of a running command, which CLU's ``pass_context``
    built-ins expect: `FliswarmGroup.invoke` pops it from click's stack before their
    coroutine runs, so they get it explicitly here."""

    return command.context.find_root()


def _clu_callback(builtin: click.Command) -> Any:
    callback = getattr(builtin.callback, "__wrapped__", None)  # Under click.pass_context.
    assert callback is not None
    return callback


@click.command(name="help", cls=CluCommand)
@click.argument("PARSER-COMMAND", type=str, required=False)
def help_command(*args: Any, parser_command: str | None) -> Any:
    """Shows the help."""

    ctx = _group_context(args[0])
    # CLU's help walks every word as a sub-command: "talk -n gfa1 status --help" (sent to
    # help as "talk -n gfa1 status") raised AttributeError. Keep only the command path.
    words = (parser_command or "").strip('"').split()
    path = " ".join(_command_path(ctx.command, words))
    return _clu_callback(help_)(ctx, *args, parser_command=f'"{path}"')


@click.command(name="get-command-model", cls=CluCommand, internal=True)
@click.argument("COMMAND-NAME", type=str, required=False)
def command_model(command: Any, *args: Any, command_name: str | None = None) -> Any:
    """Returns a dictionary representation of the command using ``unclick``."""

    from unclick.core import command_to_json

    # As CLU's get-command-model, with the parser's context passed explicitly, and without
    # validation: command_model is not one of fliswarm's keywords, and a final reply that
    # fails validation is replaced by an "e" line, leaving the command running for ever.
    click_command: click.Command | None = _group_context(command).command
    if command_name is not None:
        click_command = getattr(click_command, "commands", {}).get(command_name)
        if click_command is None:
            return command.fail(error=f"Cannot find command {command_name}.")
    model = command_to_json(click_command)
    return command.finish(command_model=model, write_to_log=False, validate=False)


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
