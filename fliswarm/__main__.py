"""The ``fliswarm`` command line: run the actor as a daemon, check configurations.

Other packages may add sub-commands through the ``fliswarm.cli`` entry points (the test bed
package, ``fliswarm-testbed``, adds ``testbed`` and ``demo``).
"""

from __future__ import annotations

import importlib.metadata
import sys
import warnings
from pathlib import Path
from typing import Any

import click
import yaml

from fliswarm import __version__


__all__ = ["main", "fliswarm"]


def _load(ctx: click.Context) -> dict[str, Any]:
    """Loads and validates the configuration; exits with status 2 and one line if it is bad."""

    from fliswarm.config import ConfigError, ConfigWarning, load_config

    obj = ctx.ensure_object(dict)
    if "loaded" in obj:
        return obj["loaded"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        try:
            config = load_config(obj.get("config"), nodes=obj.get("nodes"))
        except ConfigError as err:
            click.echo(f"ERROR: {err}", err=True)
            ctx.exit(2)
    for warning in caught:
        click.echo(f"WARNING: {warning.message}", err=True)
    obj["loaded"] = config
    return config


def _spec(ctx: click.Context, log_file: Path | None = None):
    from fliswarm.daemon import DaemonSpec, default_pid_file

    obj = ctx.ensure_object(dict)
    pid_file = obj.get("pid_file") or default_pid_file()
    return DaemonSpec(config=_load(ctx), pid_file=Path(pid_file).absolute(), log_file=log_file)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"ERROR: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="fliswarm")
@click.option(
    "-c",
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FLISWARM_CONFIG",
    help="Configuration file (YAML). Default: $FLISWARM_CONFIG, or the internal configuration "
    "of the real sites.",
)
@click.option(
    "--nodes", type=str, help="Comma-separated nodes to enable, instead of the configured ones."
)
@click.option(
    "--pid-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FLISWARM_PID_FILE",
    help="Pid file of the daemon. Default: $XDG_STATE_HOME/fliswarm/fliswarm.pid.",
)
@click.pass_context
def fliswarm(ctx: click.Context, config: Path | None, nodes: str | None, pid_file: Path | None):
    """fliswarm: run FLI cameras in Docker containers on a swarm of nodes, as a CLU actor."""

    obj = ctx.ensure_object(dict)
    obj.update(config=config, nodes=nodes, pid_file=pid_file)


def _daemon_commands(group: click.Group) -> None:
    """Adds start/stop/restart/status to ``group``."""

    log_option = click.option(
        "--log",
        "log_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write the log to this file.",
    )
    debug_option = click.option(
        "--debug", is_flag=True, help="Stay in the foreground and log to stderr."
    )

    @group.command()
    @debug_option
    @log_option
    @click.pass_context
    def start(ctx: click.Context, debug: bool, log_file: Path | None):
        """Start the actor as a daemon."""

        from fliswarm.daemon import DaemonError

        spec = _spec(ctx, log_file.absolute() if log_file else None)
        try:
            spec.start(debug=debug)
        except DaemonError as err:
            _fail(str(err))

    @group.command()
    @click.pass_context
    def stop(ctx: click.Context):
        """Stop the daemon gracefully."""

        from fliswarm.daemon import DaemonError

        try:
            _spec(ctx).stop()
        except DaemonError as err:
            _fail(str(err))

    @group.command()
    @debug_option
    @log_option
    @click.pass_context
    def restart(ctx: click.Context, debug: bool, log_file: Path | None):
        """Stop the daemon if it runs, then start it."""

        from fliswarm.daemon import DaemonError

        spec = _spec(ctx, log_file.absolute() if log_file else None)
        try:
            if spec.status() is not None:
                spec.stop()
            spec.start(debug=debug)
        except DaemonError as err:
            _fail(str(err))

    @group.command()
    @click.pass_context
    def status(ctx: click.Context):
        """Say whether the daemon is running."""

        from fliswarm.daemon import default_pid_file, read_pid

        obj = ctx.ensure_object(dict)
        pid_file = Path(obj.get("pid_file") or default_pid_file())
        pid = read_pid(pid_file)
        if pid is None:
            click.echo("fliswarm is not running.")
            sys.exit(1)
        click.echo(f"fliswarm is running (pid {pid}).")


_daemon_commands(fliswarm)


@fliswarm.group(hidden=True)
def actor():
    """Daemon commands under their old name (``fliswarm actor start``)."""


_daemon_commands(actor)


@fliswarm.group()
def config():
    """Configuration tools."""


@config.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Configuration file to check (default: the one given to fliswarm, or the internal one).",
)
@click.pass_context
def check(ctx: click.Context, config_path: Path | None):
    """Validate a configuration and print it resolved (site chosen, defaults filled)."""

    obj = ctx.ensure_object(dict)
    if config_path is not None:
        obj["config"] = config_path
    resolved = _load(ctx)
    click.echo(yaml.safe_dump(resolved, sort_keys=False), nl=False)


#: Entry-point group of the sub-commands other packages add to ``fliswarm`` (the test bed
#: package adds ``testbed`` and ``demo``).
PLUGINS = "fliswarm.cli"


def _add_plugins() -> None:
    """Adds the sub-commands that installed packages declare under `PLUGINS`."""

    for entry in importlib.metadata.entry_points(group=PLUGINS):
        try:
            command = entry.load()
        except Exception as err:  # A broken plug-in must not break the actor's own CLI.
            click.echo(f"WARNING: cannot load 'fliswarm {entry.name}': {err}", err=True)
            continue
        fliswarm.add_command(command, entry.name)


_add_plugins()


def main() -> None:
    """Entry point of the ``fliswarm`` console script."""

    fliswarm(obj={})


if __name__ == "__main__":
    main()
