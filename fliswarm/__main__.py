"""The ``fliswarm`` command line: run the actor as a daemon, check configurations.

Other packages may add sub-commands through the ``fliswarm.cli`` entry points (the test bed
package, ``fliswarm-testbed``, adds ``testbed`` and ``demo``).
"""

from __future__ import annotations

import importlib.metadata
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

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


def _pid_file(ctx: click.Context, pid_file: Path | None = None) -> Path:
    """The pid file: the sub-command's option, else the main group's, else the default."""

    from fliswarm.daemon import default_pid_file

    chosen = pid_file or ctx.ensure_object(dict).get("pid_file") or default_pid_file()
    return Path(chosen).absolute()


def _spec(ctx: click.Context, pid_file: Path | None, log_file: Path | None = None, load=True):
    """The daemon; the configuration is loaded (and checked) only if ``load``."""

    from fliswarm.daemon import DaemonSpec

    return DaemonSpec(
        config=_load(ctx) if load else {},
        pid_file=_pid_file(ctx, pid_file),
        log_file=log_file.absolute() if log_file else None,
    )


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"ERROR: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """The main group: sub-commands of other packages (`PLUGINS`) are loaded when used."""

    def _plugins(self) -> dict[str, importlib.metadata.EntryPoint]:
        return {
            entry.name: entry
            for entry in importlib.metadata.entry_points(group=PLUGINS)
            if entry.name not in self.commands
        }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self._plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        entry = self._plugins().get(cmd_name)
        if entry is None:
            return None
        try:
            command = entry.load()
        except Exception as err:  # A broken plug-in must not break the actor's own CLI.
            click.echo(f"WARNING: cannot load 'fliswarm {entry.name}': {err}", err=True)
            return None
        self.add_command(command, entry.name)
        return command


#: Entry-point group of the sub-commands other packages add to ``fliswarm`` (the test bed
#: package adds ``testbed`` and ``demo``).
PLUGINS = "fliswarm.cli"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    "--pid_file",
    "pid_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FLISWARM_PID_FILE",
    help="Pid file of the daemon. Default: $FLISWARM_PID_FILE, else /var/tmp/actor.pid (the "
    "file of sdss-fliswarm 0.7, shared by every way of running fliswarm on the machine). "
    "--pid_file is 0.7's spelling.",
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
        "--log-file",
        "log_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write the log to this file (appended to), with the daemon's output and its "
        "start-up errors. Default: only warnings and errors, in the pid file's name with "
        ".log (/var/tmp/actor.log). --log-file is 0.7's name.",
    )
    debug_option = click.option(
        "--debug",
        is_flag=True,
        help="Stay in the foreground (for systemd and Docker) and log to stderr at DEBUG "
        "level; exit status 1 if the actor cannot start or dies, 0 when stopped by "
        "SIGTERM or SIGINT.",
    )
    pid_option = click.option(
        "--pid-file",
        "--pid_file",
        "pid_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Pid file, instead of the main group's --pid-file (0.7 took --pid_file here).",
    )

    @group.command()
    @debug_option
    @log_option
    @pid_option
    @click.pass_context
    def start(ctx: click.Context, debug: bool, log_file: Path | None, pid_file: Path | None):
        """Start the actor as a daemon; return once it listens on its port.

        If it cannot start, say why in one line (exit status 1; 2 for a configuration
        error). The details go to the log file.
        """

        from fliswarm.daemon import StartError

        spec = _spec(ctx, pid_file, log_file)
        try:
            click.echo(spec.start(debug=debug))
        except StartError as err:
            _fail(str(err), err.code)

    @group.command()
    @pid_option
    @click.pass_context
    def stop(ctx: click.Context, pid_file: Path | None):
        """Stop the daemon and wait until it has exited.

        SIGTERM: commands in flight fail with "fliswarm is stopping"; SIGKILL if it has not
        exited after 30 s. When it is not running, say so (a warning) with exit status 0.
        """

        from fliswarm.daemon import DaemonError

        spec = _spec(ctx, pid_file, load=False)
        try:
            done = spec.stop()
        except DaemonError as err:
            _fail(str(err))
        if done is None:
            click.echo(f"WARNING: fliswarm is not running (pid file {spec.pid_file}).", err=True)
        else:
            click.echo(done)

    @group.command()
    @debug_option
    @log_option
    @pid_option
    @click.pass_context
    def restart(ctx: click.Context, debug: bool, log_file: Path | None, pid_file: Path | None):
        """Stop the daemon if it runs, then start it (the configuration is checked first)."""

        from fliswarm.daemon import DaemonError, StartError

        spec = _spec(ctx, pid_file, log_file)
        try:
            done = spec.stop()
            if done is not None:
                click.echo(done)
            click.echo(spec.start(debug=debug))
        except StartError as err:
            _fail(str(err), err.code)
        except DaemonError as err:
            _fail(str(err))

    @group.command()
    @pid_option
    @click.pass_context
    def status(ctx: click.Context, pid_file: Path | None):
        """Say whether the daemon is running (exit status 0) or not (1)."""

        from fliswarm.daemon import pid_file_holder

        path = _pid_file(ctx, pid_file)
        holder = pid_file_holder(path)
        if holder is None:
            click.echo("fliswarm is not running.")
            sys.exit(1)
        if not holder.is_fliswarm:
            click.echo(f"fliswarm is not running ({path} names pid {holder.pid}, not fliswarm).")
            sys.exit(1)
        click.echo(f"fliswarm is running (pid {holder.pid}), pid file {path}.")


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


fliswarm.add_command(importlib.import_module("fliswarm.client").send)  # The actor's client.


def main() -> None:
    """Entry point of the ``fliswarm`` console script."""

    fliswarm(obj={})


if __name__ == "__main__":
    main()
