"""``deploy`` and ``rollback``: a new flicamera image, node by node, and back.

``deploy IMAGE`` looks IMAGE up in the registry (its digest: what every node will run, even
if the tag moves), then goes through the selected nodes in batches. For each batch: wait
until its cameras are idle (unless ``--now``), pull the image, replace each container with
one pinned to the digest through the one provisioning path (`.Provisioner.provision`, the
node's desired image being the new one), and wait until each camera answers its liveness
command (``liveness.command``, ``ping`` by default). A node
that fails puts its whole batch back on the image it ran before, and the command stops
there: later nodes are not touched. Each node deployed keeps its new image as its desired
image (the supervisor's repairs and ``reconnect --force`` use it), across restarts of
fliswarm (the runtime-state file, `fliswarm.config.state.DeployedImage`), with the image it
ran before, which ``rollback`` returns to the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import click

from fliswarm.commands import parser
from fliswarm.commands._common import choose_nodes
from fliswarm.config.state import DeployedImage, StateFileError
from fliswarm.docker.containers import image_reference, short_id
from fliswarm.docker.images import ensure_image
from fliswarm.docker.registry import RegistryError, pinned, repository_of, resolve_digest
from fliswarm.docker.report import running_image
from fliswarm.exceptions import NodeError
from fliswarm.provision import ProvisionError, Request


if TYPE_CHECKING:
    from fliswarm.actor import FLISwarmActor
    from fliswarm.commands._common import FLISwarmCommand, NodesType


__all__ = ["deploy", "rollback", "IDLE_TIMEOUT", "ANSWER_TIMEOUT"]

T = TypeVar("T")

#: How long a batch waits for its cameras to finish what they run, in seconds.
IDLE_TIMEOUT = 300.0

#: How long a camera gets to answer its liveness command once its new container accepts
#: connections.
ANSWER_TIMEOUT = 20.0


class _NodeFailed(Exception):
    def __init__(self, node: str, why: str) -> None:
        self.node = node
        self.why = why
        super().__init__(f"{node}: {why}")


@dataclass
class _Before:
    """What a node ran before its batch: to put it back, and for ``rollback``."""

    #: The node's entry in the deployed images before (`None`: the configuration's image).
    entry: DeployedImage | None
    #: Its desired image before (in memory).
    desired: str | None
    #: What it ran, pinned to its digest when the engine knew it (else as configured).
    running: str | None


def target_reference(image: str, configured: str, registry: str | None) -> str:
    """The full reference of ``deploy``'s IMAGE: a bare tag (``1.1``, ``:1.1``) or digest
    (``@sha256:...``) is one of the configured image's repository; anything else is an image
    as in the configuration (relative to the registry)."""

    image = image.strip()
    repository = repository_of(image_reference(configured, registry))
    if image.startswith((":", "@")):
        return repository + image
    if "/" not in image and ":" not in image and "@" not in image:
        return f"{repository}:{image}"
    return image_reference(image, registry)


def _desired_images(actor: FLISwarmActor) -> dict[str, str]:
    return dict(actor.settings.deployed_images)


def _set_desired(actor: FLISwarmActor, updates: dict[str, str | None]) -> None:
    images = _desired_images(actor)
    for name, image in updates.items():
        if image is None:
            images.pop(name, None)
        else:
            images[name] = image
    actor.set_deployed_images(images)


def _entries(command: FLISwarmCommand) -> dict[str, DeployedImage]:
    try:
        return command.actor.runtime_state.deployed_images()
    except StateFileError:
        return {}


async def _before(command: FLISwarmCommand, name: str) -> _Before:
    """What the node runs now (its container inspected, one image inspect)."""

    actor = command.actor
    settings = actor.settings
    node = actor.nodes[name]
    desired = settings.deployed_images.get(name)
    configured = image_reference(settings.node_image(name), settings.registry)
    running: str | None = configured
    try:
        info = await node.engine.inspect_container(settings.container(name))
        if info is not None:
            reference, digest = await running_image(node.engine, info)
            running = pinned(reference, digest) if digest else (reference or configured)
    except NodeError as err:
        raise _NodeFailed(name, f"cannot inspect its container ({err.message})") from None
    return _Before(_entries(command).get(name), desired, running)


async def _wait_idle(command: FLISwarmCommand, batch: Sequence[str]) -> None:
    """Waits until no command through fliswarm runs on the batch's cameras."""

    devices = command.actor.flicameras
    busy = [name for name in batch if devices[name].busy]
    if not busy:
        return
    command.info(
        text=f"{', '.join(busy)}: waiting up to {IDLE_TIMEOUT:g} s for the camera to finish "
        "what it runs (deploy --now does not wait)."
    )
    start = time.monotonic()
    while any(devices[name].busy for name in batch):
        if time.monotonic() - start > IDLE_TIMEOUT:
            still = [name for name in batch if devices[name].busy]
            raise _NodeFailed(
                still[0],
                f"its camera is still busy after {IDLE_TIMEOUT:g} s: nothing was changed on "
                f"{', '.join(batch)} (deploy --now replaces the container anyway)",
            )
        await asyncio.sleep(0.1)
    command.info(text=f"{', '.join(busy)}: camera idle after {time.monotonic() - start:.1f} s.")


async def _answers(command: FLISwarmCommand, name: str) -> float:
    """Waits until the node's camera answers its liveness command (``liveness.command``);
    returns the seconds it took."""

    device = command.actor.flicameras[name]
    check = command.actor.settings.liveness.command
    start = time.monotonic()
    deadline = start + ANSWER_TIMEOUT
    why = "no answer"
    while (left := deadline - time.monotonic()) > 0:
        sub = await device.run(check, None, timeout=min(left, 5.0))
        if sub.ok:
            return time.monotonic() - start
        why = (sub.error or "it failed").rstrip(".")
        await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    raise _NodeFailed(
        name, f"the camera did not answer '{check}' within {ANSWER_TIMEOUT:g} s ({why})"
    )


async def _pull(command: FLISwarmCommand, name: str, image: str) -> None:
    node = command.actor.nodes[name]
    timeout = command.actor.settings.timeouts.docker_pull
    try:
        await ensure_image(node.engine, image, command, timeout=timeout)
    except NodeError as err:
        raise _NodeFailed(name, err.message.removeprefix(f"{name}: ")) from None


async def _replace(command: FLISwarmCommand, name: str, image: str) -> None:
    """The node's container replaced by one of ``image`` (its desired image by then)."""

    actor = command.actor
    try:
        result = await actor.provisioner.provision(name, Request(replace_drifted=True), command)
    except ProvisionError as err:
        raise _NodeFailed(name, err.reason) from None
    took = await _answers(command, name)
    command.info(
        text=f"{name}: runs {image} (container {short_id(result.container_id)}, "
        f"{result.action.value}); the camera answers "
        f"'{actor.settings.liveness.command}' ({took:.2f} s)."
    )


async def _roll_out(
    command: FLISwarmCommand,
    targets: dict[str, str],
    batch_size: int,
    now: bool,
    requested: dict[str, str],
    verb: str,
) -> list[str]:
    """Puts each node on its target image, batch by batch (see the module). Returns the
    nodes done; raises `_NodeFailed` for the first node that failed (its batch put back)."""

    actor = command.actor
    names = list(targets)
    done: list[str] = []
    for first in range(0, len(names), batch_size):
        batch = names[first : first + batch_size]
        command.info(
            text=f"{verb}: {', '.join(batch)} ({first + 1}-{first + len(batch)} of {len(names)})."
        )
        if not now:
            await _wait_idle(command, batch)
        befores = dict(
            zip(batch, await _gather([_before(command, name) for name in batch]), strict=True)
        )
        await _gather([_pull(command, name, targets[name]) for name in batch])

        _set_desired(actor, {name: targets[name] for name in batch})
        results = await asyncio.gather(
            *[_replace_or_undo(command, name, targets[name], befores[name]) for name in batch],
            return_exceptions=True,
        )
        failures = [err for err in results if isinstance(err, BaseException)]
        if failures:
            await _put_back(command, batch, befores)
            raise failures[0]
        _remember(command, batch, targets, befores, requested)
        done.extend(batch)
    return done


async def _replace_or_undo(
    command: FLISwarmCommand, name: str, image: str, before: _Before
) -> None:
    try:
        await _replace(command, name, image)
    except _NodeFailed:
        # The previous image is desired again before the supervisor looks at the node.
        _set_desired(command.actor, {name: before.desired})
        raise


async def _gather(aws: Sequence[Awaitable[T]]) -> list[T]:
    """`asyncio.gather` that raises the first failure once all have ended."""

    results = await asyncio.gather(*aws, return_exceptions=True)
    out: list[T] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        out.append(result)
    return out


async def _put_back(
    command: FLISwarmCommand, batch: Sequence[str], befores: dict[str, _Before]
) -> None:
    """Puts the batch back on the images it ran before."""

    actor = command.actor
    _set_desired(actor, {name: befores[name].desired for name in batch})
    command.warning(text=f"{', '.join(batch)}: going back to the image it ran before.")

    async def back(name: str) -> None:
        image = actor.settings.node_image(name)
        try:
            await _replace(command, name, image)
        except _NodeFailed as err:
            command.warning(text=f"{name}: could not be put back on {image}: {err.why}.")

    await asyncio.gather(*[back(name) for name in batch])


def _remember(
    command: FLISwarmCommand,
    batch: Sequence[str],
    targets: dict[str, str],
    befores: dict[str, _Before],
    requested: dict[str, str],
) -> None:
    """Keeps the batch's new images in the runtime-state file."""

    state = command.actor.runtime_state
    entries = _entries(command)
    for name in batch:
        before = befores[name]
        previous = before.running
        if previous == targets[name] and before.entry is not None:
            previous = before.entry.previous  # Deployed again: keep what it ran before.
        entries[name] = DeployedImage(targets[name], previous, requested.get(name))
    if not state.kept:
        command.warning(
            text=f"{', '.join(batch)}: the new image is not kept across a restart of fliswarm, "
            "and rollback cannot return from it (no actor.log_dir for the runtime-state file)."
        )
        return
    try:
        state.set_deployed_images(entries)
    except StateFileError as err:
        command.warning(text=f"{err} The new image is not kept across a restart of fliswarm.")


def _claim(command: FLISwarmCommand, what: str) -> bool:
    actor = command.actor
    if actor.deploying is not None:  # One deploy or rollback at a time.
        command.fail(error=f"{actor.deploying} is running: wait until it finishes.")
        return False
    actor.deploying = what
    return True


async def _run(
    command: FLISwarmCommand,
    targets: dict[str, str],
    batch: int,
    now: bool,
    requested: dict[str, str],
    verb: str,
    what: str,
) -> None:
    start = time.monotonic()
    try:
        done = await _roll_out(command, targets, batch, now, requested, verb)
    except _NodeFailed as err:
        command.warning(failedNodes=[err.node])
        command.fail(
            error=f"{what} stopped at {err.node}: {err.why.rstrip('.')}. Its batch runs the "
            "image it ran before; later nodes were not touched."
        )
        return
    finally:
        command.actor.deploying = None
    command.finish(text=f"{what}: {', '.join(done)} done in {time.monotonic() - start:.1f} s.")


@parser.command()
@click.option("-n", "--names", type=str, help="Comma-separated nodes to deploy to.")
@click.option("-c", "--category", type=str, help="Category of nodes to deploy to (gfa, fvc).")
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Nodes updated together.",
)
@click.option("--now", is_flag=True, help="Do not wait for the cameras to be idle.")
@click.argument("image", type=str)
async def deploy(
    command: FLISwarmCommand,
    nodes: NodesType,
    names: str | None,
    category: str | None,
    batch: int,
    now: bool,
    image: str,
):
    """Runs IMAGE on the nodes: a tag of the configured image (1.1), or an image as in the
    configuration (sdss/flicamera:1.1, repo@sha256:..., relative to the registry).

    IMAGE is looked up in the registry first and every node runs its digest. The nodes are
    updated in batches: the cameras idle (unless --now), the image pulled, the container
    replaced, the camera answering. A node that fails puts its batch back on its previous
    image and stops the deploy. The image stays each node's image across restarts;
    rollback returns to the previous one.
    """

    selected = choose_nodes(command, nodes, names, category)
    if not selected:
        return command.fail(error="No enabled node matches the selection.")
    settings = command.actor.settings
    try:
        reference = target_reference(image, settings.image, settings.registry)
    except ValueError as err:
        return command.fail(error=f"Not deploying {image!r}: {err}")
    limit = settings.timeouts.docker_connect + settings.timeouts.docker_request
    try:
        digest = await resolve_digest(reference, limit)
    except RegistryError as err:
        return command.fail(error=f"Not deploying {image}: {err} No node was touched.")
    target = pinned(reference, digest)
    command.info(text=f"Deploying {image} ({digest}) to {', '.join(selected)}.")
    if not _claim(command, "a deploy or rollback"):
        return
    targets = {name: target for name in selected}
    requested = {name: image for name in selected}
    await _run(command, targets, batch, now, requested, "deploy", f"Deploy of {image}")


@parser.command()
@click.option("-n", "--names", type=str, help="Comma-separated nodes to roll back.")
@click.option("-c", "--category", type=str, help="Category of nodes to roll back (gfa, fvc).")
@click.option("--now", is_flag=True, help="Do not wait for the cameras to be idle.")
async def rollback(
    command: FLISwarmCommand,
    nodes: NodesType,
    names: str | None,
    category: str | None,
    now: bool,
):
    """Returns the nodes to the image they ran before their last deploy, one by one.

    Rolling back again returns to the deployed image.
    """

    selected = choose_nodes(command, nodes, names, category)
    if not selected:
        return command.fail(error="No enabled node matches the selection.")
    entries = _entries(command)
    targets: dict[str, str] = {}
    for name in selected:
        entry = entries.get(name)
        if entry is None or not entry.previous:
            command.warning(text=f"{name}: no deploy to roll back.")
        else:
            targets[name] = entry.previous
    if not targets:
        return command.fail(error="Nothing to roll back: no selected node was deployed to.")
    for name, image in targets.items():
        command.info(text=f"{name}: rolling back to {image}.")
    if not _claim(command, "a deploy or rollback"):
        return
    await _run(command, targets, 1, now, {}, "rollback", "Rollback")
