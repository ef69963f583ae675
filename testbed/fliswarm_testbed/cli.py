"""``fliswarm testbed``: bring the Docker test bed up and down, inject faults, print its config."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

import click
import yaml

from .bed import Testbed


__all__ = ["testbed"]


def _bed(ctx: click.Context, n_nodes: int | None = None) -> Testbed:
    return Testbed(instance=ctx.obj["instance"], n_nodes=n_nodes)


def _instance_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--instance`` accepted after the sub-command too (``testbed up --instance 2``)."""

    def store(ctx: click.Context, _param: click.Parameter, value: int | None) -> None:
        if value is not None:
            ctx.ensure_object(dict)["instance"] = value

    return click.option(
        "--instance",
        "-i",
        type=int,
        default=None,
        expose_value=False,
        callback=store,
        help="Test-bed instance (default $FLISWARM_TESTBED_ID or 0).",
    )(func)


@click.group(name="testbed")
@_instance_option
@click.pass_context
def testbed(ctx: click.Context) -> None:
    """A multi-node Docker test bed on this machine (needs root)."""

    ctx.ensure_object(dict).setdefault("instance", None)


@testbed.command()
@click.option("-n", "--nodes", "n_nodes", type=int, default=None, help="Number of nodes (3).")
@_instance_option
@click.pass_context
def up(ctx: click.Context, n_nodes: int | None) -> None:
    """Brings the test bed up (repairs it if it is already up)."""

    try:
        bed = _bed(ctx, n_nodes)
        start = time.monotonic()
        bed.up()
    except (ValueError, RuntimeError) as err:
        raise click.ClickException(str(err)) from err
    names = " ".join(n.name for n in bed.nodes)
    click.echo(f"test bed {bed.instance} up in {time.monotonic() - start:.1f} s: {names}")


@testbed.command()
@_instance_option
@click.pass_context
def down(ctx: click.Context) -> None:
    """Tears the test bed down."""

    bed = _bed(ctx)
    start = time.monotonic()
    bed.down()
    click.echo(f"test bed {bed.instance} down in {time.monotonic() - start:.1f} s")


@testbed.command()
@_instance_option
@click.pass_context
def status(ctx: click.Context) -> None:
    """Prints each node's state (exit status 1 if the bed is not up)."""

    bed = _bed(ctx)
    if not bed.is_up():
        click.echo(f"test bed {bed.instance} is down.")
        sys.exit(1)
    click.echo(f"test bed {bed.instance}: registry {bed.registry}, data {bed.data_dir}")
    for name, info in bed.status().items():
        flags = " ".join(
            f"{key}={'yes' if info[key] else 'no'}"
            for key in ("powered", "plugged", "engine", "answering", "reachable")
        )
        click.echo(f"{name:8s} {info['addr']:15s} {flags}")


@testbed.command()
@_instance_option
@click.pass_context
def env(ctx: click.Context) -> None:
    """Prints shell ``export`` lines describing the bed."""

    for key, value in _bed(ctx).env().items():
        click.echo(f"export {key}={shlex.quote(value)}")


@testbed.command()
@click.option(
    "--image", default=None, help="flicamera image (default <registry>/flicamera:latest)."
)
@click.option("--port", type=int, default=None, help="Actor port (default: a free one).")
@_instance_option
@click.pass_context
def config(ctx: click.Context, image: str | None, port: int | None) -> None:
    """Prints the fliswarm YAML configuration for the bed."""

    bed = _bed(ctx)
    image = image or f"{bed.registry}/flicamera:latest"
    click.echo(yaml.safe_dump(bed.fliswarm_config(image, port=port), sort_keys=False), nl=False)


def _fault(name: str, method: str, help_text: str) -> None:
    @testbed.command(name=name, help=help_text)
    @click.argument("node")
    @_instance_option
    @click.pass_context
    def command(ctx: click.Context, node: str) -> None:
        bed = _bed(ctx)
        try:
            getattr(bed, method)(node)
        except (KeyError, RuntimeError) as err:
            raise click.ClickException(str(err)) from err
        click.echo(f"{name} {node}: done")


_fault("power-off", "power_off", "Pulls a node's power (processes killed, netns deleted).")
_fault("power-on", "power_on", "Powers a node back on (same address, images and volumes).")
_fault("unplug", "unplug", "Unplugs a node's network cable (its engine keeps running).")
_fault("plug", "plug", "Plugs a node's network cable back in.")
_fault(
    "camera-unplug",
    "camera_unplug",
    "Unplugs a node's simulated camera (flicamera runs on, with no camera).",
)
_fault("camera-plug", "camera_plug", "Plugs a node's simulated camera back in.")
_fault("stop-engine", "stop_engine", "Stops a node's dockerd (the node stays up).")
_fault("start-engine", "start_engine", "Starts a node's dockerd again.")


if __name__ == "__main__":
    testbed()
