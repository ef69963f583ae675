"""FITS files on the data volume survive everything fliswarm and the nodes go through.

On the real test bed, with real flicamera containers writing real FITS files to the shared
``data`` volume (a host directory bind-mounted on every node). Each fault hits while an
exposure is IN FLIGHT (the camera reported ``integrating``): ``reconnect --force`` (every
node exposing), a killed container and a node powered off (one node hit, the other two
exposing), a restart of fliswarm itself (every node exposing). After each:

- the ``talk ... expose`` ends in bounded time: ``f`` (or ``:`` if another node's exposure
  succeeded) with a warning that names the node that was hit, and never claims a file for it
  (no ``filename``, nothing in ``filename_bundle``); across the fliswarm restart its client
  is disconnected with the actor instead, without a final reply;
- the exposure that was hit leaves no file at all (flicamera names and writes the file only
  after the readout; the camera died while integrating), except across the fliswarm restart,
  where the container keeps running: flicamera finishes the exposure (its own log on the data
  volume says so) and its file is a complete FITS image;
- the exposures of the nodes that were not hit finish and their files are complete FITS;
- every FITS file on the volume before keeps its sha256, and no file appears that the test
  did not account for; the ``data`` volume keeps its options on every live node;
- the next exposures get new file names (nothing is overwritten) and are complete FITS.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import aiodocker
import pytest
import yaml
from helpers_actor import FINISH_CODES, ActorClient, ActorLine, ActorReply

from fliswarm.actor import FLISwarmActor
from fliswarm_testbed import Testbed
from fliswarm_testbed.image import LAUNCHER, ensure_flicamera_image


pytestmark = [pytest.mark.root, pytest.mark.testbed, pytest.mark.timeout(420)]

#: Exposure time of the exposures a fault hits (s): the fault is injected as soon as the
#: camera reports ``integrating``, well before the readout.
EXPTIME = 5.0
#: Wide bound for a ``talk`` hit by a fault to end (s): a powered-off node is noticed by TCP
#: keep-alive (~7 s); the talk's own timeout is ``timeouts.talk`` (20 s) + `EXPTIME`.
TALK_END = 90.0
#: Wide bound for flicamera to finish an exposure fliswarm no longer listens to (s).
CAMERA_END = 60.0


def _launcher_shape() -> int:
    spec = importlib.util.spec_from_file_location("flicamera_launcher", LAUNCHER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.SHAPE)


#: Image side of the simulated cameras; flicamera's snapshot (``-snap.fits``) is 4x smaller.
SHAPE = _launcher_shape()


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fits_on_disk(data_dir: str) -> set[str]:
    return {str(path) for path in Path(data_dir).rglob("*.fits")}


def snapshot_of(path: str) -> str:
    """flicamera writes a 4x4-binned snapshot next to each image."""

    root, ext = os.path.splitext(path)
    return f"{root}-snap{ext}"


def complete_fits(path: str) -> tuple[int, ...]:
    """The image shape of a complete FITS file; raises if it is truncated or unreadable."""

    from astropy.io import fits

    size = os.path.getsize(path)
    assert size > 0 and size % 2880 == 0, f"{path}: {size} bytes, not whole FITS blocks"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "File may have been truncated" is only a warning.
        with fits.open(path) as hdus:
            data = hdus[-1].data
            assert data is not None, f"{path}: no image data"
            return tuple(data.shape)


def assert_images(paths: set[str] | list[str]) -> None:
    """Each path is a complete image with its complete snapshot."""

    for path in paths:
        assert complete_fits(path) == (SHAPE, SHAPE), path
        assert complete_fits(snapshot_of(path)) == (SHAPE // 4, SHAPE // 4), path


def filenames_by_node(reply: ActorReply) -> dict[str, list[str]]:
    """The relayed ``filename=<node>,<camera>,<path>`` keywords, by node."""

    out: dict[str, list[str]] = {}
    for line in reply.with_keyword("filename"):
        node, *_, path = line.values("filename")
        out.setdefault(node, []).append(path)
    return out


class InFlight:
    """A ``talk ... expose EXPTIME`` sent, whose cameras all report ``integrating``."""

    def __init__(self, client: ActorClient, names: list[str], before: set[str]) -> None:
        self.client = client
        self.names = names
        self.before = before  # The FITS files on the volume before it.
        self.start = len(client.lines)
        self.mid = client.send(f"talk -n {','.join(names)} expose {EXPTIME:g}")
        self.hit_at = 0.0

    def lines(self) -> list[ActorLine]:
        return [line for line in self.client.lines[self.start :] if line.command_id == self.mid]

    async def integrating(self) -> None:
        for name in self.names:

            def started(line: ActorLine, name: str = name) -> bool:
                state = line.values("exposure_state")
                return (
                    line.command_id == self.mid and state[:1] == [name] and "integrating" in state
                )

            await self.client.wait_for(started, 60, self.start)
        for line in self.lines():  # Not a single image yet: the fault lands mid-exposure.
            assert "filename" not in line.keywords and line.code not in FINISH_CODES, line.raw

    def hit(self) -> None:
        """Marks the moment the fault has been injected."""

        self.hit_at = time.monotonic()

    async def end(self) -> tuple[ActorReply, float]:
        """The whole reply, and how long after the fault it ended."""

        def final(line: ActorLine) -> bool:
            return line.command_id == self.mid and line.code in FINISH_CODES

        await self.client.wait_for(final, TALK_END, self.start)
        return ActorReply(self.mid, self.lines()), time.monotonic() - self.hit_at


class Site:
    """The actor on the bed, a client, and every FITS file on the volume with its sha256."""

    def __init__(self, bed: Testbed, config_path: Path) -> None:
        self.bed = bed
        self.config_path = config_path
        self.actor: FLISwarmActor | None = None
        self.client: ActorClient | None = None
        self.files: dict[str, str] = {}
        self.timings: list[str] = []

    async def start(self) -> None:
        self.actor = FLISwarmActor.from_config(str(self.config_path))
        await self.actor.start()
        self.client = await ActorClient.connect("127.0.0.1", self.actor.port)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.actor is not None:
            await self.actor.stop()
        self.client = self.actor = None

    async def on_disk(self) -> set[str]:
        return await asyncio.to_thread(fits_on_disk, self.bed.data_dir)

    async def record(self, paths: set[str]) -> None:
        for path in paths:
            assert path not in self.files, f"{path} was written twice"
            self.files[path] = await asyncio.to_thread(sha256, path)

    async def command(self, body: str, timeout: float = 120) -> ActorReply:
        assert self.client is not None
        reply = await self.client.command(body, timeout)
        assert reply.code == ":", str(reply)
        return reply

    async def expose(self, names: list[str], exptime: float = 0.1) -> list[str]:
        """One exposure on each node: new files (image and snapshot), all complete."""

        before = await self.on_disk()
        reply = await self.command(f"talk -n {','.join(names)} expose {exptime:g}", 90)
        [bundle] = [
            line.values("filename_bundle") for line in reply.with_keyword("filename_bundle")
        ]
        assert len(bundle) == len(names), str(reply)
        assert sorted(filenames_by_node(reply)) == sorted(names), str(reply)
        for path in bundle:
            assert path.startswith(self.bed.data_dir + os.sep), path
            assert path not in before, f"{path} was written twice"
        new = await self.on_disk() - before
        assert new == set(bundle) | {snapshot_of(path) for path in bundle}, str(reply)
        await asyncio.to_thread(assert_images, bundle)
        await self.record(new)
        return bundle

    async def in_flight(self, names: list[str]) -> InFlight:
        """Starts an `EXPTIME` exposure on ``names``; returns once each camera integrates."""

        assert self.client is not None
        flight = InFlight(self.client, names, await self.on_disk())
        await flight.integrating()
        return flight

    async def survived(
        self, flight: InFlight, hit: list[str], fault: str, reason: str
    ) -> ActorReply:
        """The talk hit by ``fault`` ends; only the nodes not ``hit`` wrote (complete) files.

        Returns the reply; the new files are recorded.
        """

        for name in hit:  # When the actor first says so (to everyone, or in the talk).

            def warned(line: ActorLine, name: str = name) -> bool:
                return line.code == "w" and any(
                    text.startswith(f"{name}: the connection") for text in line.values("text")
                )

            await flight.client.wait_for(warned, TALK_END, flight.start)
            took = time.monotonic() - flight.hit_at
            self.timings.append(f"{fault}: {name} reported {took:.1f} s after the fault")
        reply, took = await flight.end()
        self.timings.append(f"{fault}: the talk ended {took:.1f} s after the fault")
        others = [name for name in flight.names if name not in hit]
        # f if every node was hit, : if another node's exposure succeeded.
        assert reply.code == (":" if others else "f"), str(reply)
        if not others:
            error = " ".join(reply.lines[-1].values("error"))
            assert all(name in error for name in hit), str(reply)
        [failed] = [line.values("failedNodes") for line in reply.with_keyword("failedNodes")]
        assert sorted(failed) == sorted(hit), str(reply)
        for name in hit:
            why = f"{name}: the connection to flicamera {reason}"
            assert any(text.startswith(why) for text in reply.texts()), str(reply)

        # Files are claimed for the nodes not hit only; nothing else was written.
        written = filenames_by_node(reply)
        assert sorted(written) == sorted(others), str(reply)
        claimed = [path for paths in written.values() for path in paths]
        bundles = [
            line.values("filename_bundle") for line in reply.with_keyword("filename_bundle")
        ]
        assert sorted(path for bundle in bundles for path in bundle) == sorted(claimed), str(reply)
        assert not set(claimed) & flight.before, str(reply)
        new = await self.on_disk() - flight.before
        assert new == set(claimed) | {snapshot_of(path) for path in claimed}, (
            f"after {fault}: files on the volume that no reply claims: "
            f"{sorted(new - set(claimed))}"
        )
        await asyncio.to_thread(assert_images, claimed)
        await self.record(new)
        return reply

    async def check(self, step: str, off: tuple[str, ...] = ()) -> None:
        """Every file has its checksum, no other file appeared; the data volume is on every
        node (not ``off``) with its options."""

        on_disk = await self.on_disk()
        unknown = sorted(on_disk - set(self.files))
        assert not unknown, f"after {step}: unexpected files {unknown}"
        for path, digest in self.files.items():
            assert path in on_disk, f"after {step}: {path} gone"
            assert await asyncio.to_thread(sha256, path) == digest, f"after {step}: {path}"
        for node in self.bed.nodes:
            if node.name in off:
                continue
            docker = aiodocker.Docker(url=node.docker_url)
            try:
                volume = await asyncio.wait_for(docker.volumes.get("data"), 10)
                options = (await volume.show())["Options"]
                assert options["device"] == self.bed.data_dir, f"after {step}: {node.name}"
            finally:
                await docker.close()


def camera_finished(log_path: Path, known: set[str]) -> str | None:
    """The file of the last exposure flicamera finished (``:``), per its own log, if new.

    flicamera logs every reply it writes, also those for a client that has gone.
    """

    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    written: dict[tuple[Any, Any], str] = {}
    done = None
    for line in text.splitlines():
        _, sep, payload = line.partition(" - REPLY - ")
        if not sep:
            continue
        try:
            message = json.loads(payload)
        except ValueError:
            continue
        header = message.get("header") or {}
        key = (header.get("commander_id"), header.get("command_id"))
        filename = (message.get("data") or {}).get("filename")
        if isinstance(filename, dict) and "filename" in filename:
            written[key] = filename["filename"]
        elif header.get("message_code") == ":" and key in written:
            done = written.pop(key)
    return done if done is not None and done not in known else None


async def wait_camera_finished(bed: Testbed, name: str, known: set[str]) -> str:
    log_path = Path(bed.data_dir, "logs", "actors", name, f"{name}.log")
    deadline = time.monotonic() + CAMERA_END
    while (path := await asyncio.to_thread(camera_finished, log_path, known)) is None:
        assert time.monotonic() < deadline, f"{name}: flicamera did not finish the exposure"
        await asyncio.sleep(0.1)
    return path


@pytest.fixture
async def site(testbed: Testbed, testbed_faults: Any, tmp_path: Path):
    image = await asyncio.to_thread(ensure_flicamera_image, testbed.registry)
    config = testbed.fliswarm_config(image)
    config["timeouts"] = {"docker_connect": 1, "docker_request": 15, "talk": 20}
    config["ping_timeout"] = 0.5
    config["self_healing"] = False  # Every container change is a command's or a fault's doing.
    for node in config["nodes"].values():
        node.update({"docker-uid": 0, "docker-gid": 0})
    path = tmp_path / "fliswarm.yaml"
    path.write_text(yaml.safe_dump(config))
    site = Site(testbed, path)
    await site.start()
    try:
        yield site
    finally:
        await site.stop()


async def test_fits_files_survive_every_fault(site: Site, testbed_faults: Any):
    bed = site.bed
    names = [node.name for node in bed.nodes]
    assert names == ["gfa1", "gfa2", "fvc"]
    t0 = time.monotonic()

    await site.command("reconnect --force", 180)
    site.timings.append(f"first reconnect --force: {time.monotonic() - t0:.1f} s")
    t0 = time.monotonic()
    await site.record(await site.on_disk())  # Whatever earlier runs left on the volume.
    earlier = len(site.files)
    await site.expose(names)
    await site.check("the first exposures")

    # 1. reconnect --force replaces every container (never the volume), exposures in flight.
    flight = await site.in_flight(names)
    reconnecting = asyncio.ensure_future(site.command("reconnect --force", 180))
    flight.hit()
    try:
        await site.survived(flight, names, "reconnect --force", "was closed by fliswarm")
    finally:
        await reconnecting
    await site.check("reconnect --force")
    await site.expose(names)

    # 2. A container killed (as by the OOM killer) mid-exposure, then brought back.
    assert site.actor is not None
    flight = await site.in_flight(names)
    docker = aiodocker.Docker(url=bed.node("gfa1").docker_url)
    try:
        container = await docker.containers.get(site.actor.get_container_name("gfa1"))
        await asyncio.wait_for(container.kill(), 10)
    finally:
        await docker.close()
    flight.hit()
    await site.survived(flight, ["gfa1"], "a container kill", "was closed by the remote end")
    await site.check("a container kill")
    await site.command("reconnect -n gfa1", 120)
    await site.expose(["gfa1"])

    # 3. A node powered off mid-exposure (its engine and containers die), then on again.
    flight = await site.in_flight(names)
    await testbed_faults.power_off("gfa2")
    flight.hit()
    await site.survived(flight, ["gfa2"], "a node power-off", "was lost")
    await site.check("a node power-off", off=("gfa2",))
    await testbed_faults.power_on("gfa2")
    await site.command("reconnect -n gfa2", 120)
    await site.check("a node power-on")
    await site.expose(["gfa2"])

    # 4. fliswarm itself stopped mid-exposure: the talk fails ("fliswarm is stopping") and the
    # client is disconnected; the containers run on and flicamera finishes and writes the
    # images; the new actor adopts the containers.
    flight = await site.in_flight(names)
    client, actor = site.client, site.actor
    assert client is not None and actor is not None
    try:
        await actor.stop()
        site.actor = None
        flight.hit()
        # The client's connection closes with the actor's (wait_for raises at once then).
        with pytest.raises(TimeoutError):
            await client.wait_for(lambda line: False, TALK_END)
        assert not client.connected
        # The talk in flight is failed, saying why, before the connection closes; no file
        # is claimed for it (flicamera finishes the exposures on its own, below).
        *lines, last = flight.lines()
        assert last.code == "f" and "fliswarm is stopping" in " ".join(last.values("error"))
        for line in lines:
            assert line.code not in FINISH_CODES and "filename" not in line.keywords, line.raw
            assert "filename_bundle" not in line.keywords, line.raw
    finally:
        site.client = None
        await client.close()
    written = [await wait_camera_finished(bed, name, flight.before) for name in names]
    took = time.monotonic() - flight.hit_at
    site.timings.append(f"fliswarm restart: flicamera wrote the files {took:.1f} s after")
    for name, path in zip(names, written, strict=True):
        assert os.path.basename(path).split("-")[1] == name, path
    new = await site.on_disk() - flight.before
    assert new == set(written) | {snapshot_of(path) for path in written}, sorted(new)
    await asyncio.to_thread(assert_images, written)
    await site.record(new)
    await site.check("fliswarm stopped")
    await site.start()
    await site.expose(names)
    await site.check("fliswarm restarted")

    for line in site.timings:
        print(line)
    ours, took = len(site.files) - earlier, time.monotonic() - t0
    print(f"{ours} FITS files written by this run (and {earlier} from earlier runs) intact")
    print(f"through 4 kinds of fault with exposures in flight, in {took:.0f} s after it")
