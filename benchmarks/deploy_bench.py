"""How long ``deploy`` takes on the real test bed, per node, against the floor.

Prints, for ``deploy -c gfa <new tag>`` of the gfa nodes one at a time (``--batch 1``):

- per node: seconds from the deploy's start to that node's camera answering ``ping`` through
  fliswarm, and from the node's turn starting (its batch line) to its camera answering;
- the floor, measured in the same run on the first gfa node, before and after the deploys
  (fliswarm stopped): a container of the same image created and started directly through
  the node's engine (no fliswarm), until flicamera accepts a connection (what no manager can
  beat for one node);
- the whole deploy, the registry lookup included.

Run as root: ``FLISWARM_TESTBED_ID=5 python3 benchmarks/deploy_bench.py [--runs N]``. It
brings the bed up (and down again if it was not up), builds/pushes the simulated flicamera
image and two tags of it (``bench-a``, ``bench-b``: the same layer under another label), and
removes the containers it created. Each run deploys the other tag, so every run replaces
every gfa container.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiodocker
import yaml

from fliswarm.actor import FLISwarmActor
from fliswarm.config import load_config
from fliswarm_testbed.bed import Testbed
from fliswarm_testbed.fixtures import cleanup_node
from fliswarm_testbed.image import IMAGE_INPUTS_HASH, build_flicamera_image
from fliswarm_testbed.oci import check_registry, push_image, write_image
from fliswarm_testbed.rootfs import DEFAULT_CACHE_DIR


REPOSITORY = "sdss/flicamera"
PORT = 19995


def push_tag(registry: str, tag: str, work: Path) -> str:
    """Pushes the cached image under ``tag`` with a label of its own; returns its digest."""

    entry = DEFAULT_CACHE_DIR / IMAGE_INPUTS_HASH
    meta = json.loads((entry / "build.json").read_text())
    config = json.loads((entry / "config.json").read_text())
    config["config"]["Labels"] = {**config["config"].get("Labels", {}), "org.sdss.bench": tag}
    out = work / tag
    out.mkdir(parents=True, exist_ok=True)
    digests = write_image(
        out, config, {"size": meta["layer_size"], "digest": meta["layer_digest"]}
    )
    shutil.copyfile(entry / "layer.tar.gz", out / "layer.tar.gz")
    push_image(check_registry(registry), REPOSITORY, tag, out, {**meta, **digests}, print)
    return digests["digest"]


class Client:
    """Sends one command at a time and keeps every line with its arrival time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.mid = reader, writer, 0

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5))

    async def command(self, text: str, timeout: float) -> tuple[str, list[tuple[float, str]]]:
        """The final code and the command's lines (monotonic time, raw line)."""

        self.mid += 1
        lines: list[tuple[float, str]] = []
        self.writer.write(f"{self.mid} {text}\n".encode())
        async with asyncio.timeout(timeout):
            while True:
                raw = (await self.reader.readline()).decode()
                if not raw:
                    raise ConnectionError("the actor closed the connection.")
                parts = raw.split(" ", 3)
                if len(parts) >= 3 and parts[1] == str(self.mid):
                    lines.append((time.monotonic(), raw.rstrip("\n")))
                    if parts[2] in (":", "f", "!"):
                        return parts[2], lines

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


async def _listening(host: str, port: int, deadline: float) -> float:
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1)
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.02)
            continue
        ready = time.monotonic()
        writer.close()
        return ready
    raise TimeoutError(f"flicamera on {host}:{port} did not listen in time.")


async def floor(bed: Testbed, name: str, image: str) -> float:
    """Seconds from creating a container of ``image`` on the node (image present, no
    container) to flicamera accepting a connection, without fliswarm."""

    node = bed.node(name)
    async with aiodocker.Docker(url=f"http://{node.addr}:2375") as docker:
        with contextlib.suppress(aiodocker.DockerError):
            old = await docker.containers.get(f"flicamera-{name}")
            await old.delete(force=True)
        config = {
            "Image": image,
            "Env": [f"ACTOR_NAME={name}", f"FLICAMERA_DATA_DIR={bed.data_dir}"],
            "HostConfig": {
                "NetworkMode": "host",
                "Privileged": True,
                "Binds": [f"{bed.data_dir}:{bed.data_dir}"],
            },
        }
        start = time.monotonic()
        container = await docker.containers.run(config, name="flicamera-floor")
        try:
            ready = await _listening(node.addr, PORT, start + 60)
        finally:
            await container.delete(force=True)
    return ready - start


def per_node(lines: list[tuple[float, str]], t0: float) -> dict[str, tuple[float, float]]:
    """Per node: (deploy start -> camera answers, node's turn -> camera answers)."""

    turns: dict[str, float] = {}
    out: dict[str, tuple[float, float]] = {}
    for when, raw in lines:
        if 'text="deploy: ' in raw:
            name = raw.split('text="deploy: ', 1)[1].split(" ", 1)[0]
            turns[name] = when
        elif "the camera answers" in raw and 'text="' in raw:
            name = raw.split('text="', 1)[1].split(":", 1)[0]
            out[name] = (when - t0, when - turns.get(name, t0))
    return out


async def bench(bed: Testbed, runs: int) -> None:
    base = await asyncio.to_thread(build_flicamera_image, bed.registry, REPOSITORY, "sim")
    work = Path(tempfile.mkdtemp(prefix="fliswarm-deploy-bench-"))
    tags = {
        tag: await asyncio.to_thread(push_tag, bed.registry, tag, work)
        for tag in ("bench-a", "bench-b")
    }
    config = bed.fliswarm_config(base.reference)
    config["actor"]["log_dir"] = str(work / "logs")
    path = work / "fliswarm.yaml"
    path.write_text(yaml.safe_dump(config))
    gfa = [node.name for node in bed.nodes if node.category == "gfa"]

    # The floor, on the first gfa node, with the image pulled (as deploy pulls before it
    # replaces the container).
    await asyncio.to_thread(bed._parallel, lambda node: cleanup_node(bed, node))
    ref = f"{bed.registry}/{REPOSITORY}@{tags['bench-a']}"
    async with aiodocker.Docker(url=f"http://{bed.node(gfa[0]).addr}:2375") as docker:
        await docker.images.pull(ref)
    floors = [await floor(bed, gfa[0], ref) for _ in range(max(1, runs))]
    floor_min = min(floors)

    actor = FLISwarmActor.from_config(load_config(path))
    await actor.start()
    client = await Client.connect(actor.port)
    totals: list[float] = []
    nodes: dict[str, list[tuple[float, float]]] = {name: [] for name in gfa}
    try:
        code, _ = await client.command("reconnect", 180)
        assert code == ":", "reconnect failed"
        for run in range(runs):
            tag = ("bench-a", "bench-b")[run % 2]
            t0 = time.monotonic()
            code, lines = await client.command(f"deploy -c gfa {tag}", 600)
            total = time.monotonic() - t0
            if code != ":":
                print("\n".join(raw for _, raw in lines), file=sys.stderr)
                raise RuntimeError(f"deploy of {tag} failed.")
            totals.append(total)
            for name, times in per_node(lines, t0).items():
                nodes[name].append(times)
    finally:
        await client.close()
        await actor.stop()
    try:
        # The floor again, fliswarm stopped, the page cache as warm as for the deploys.
        floors += [await floor(bed, gfa[0], ref) for _ in range(max(1, runs))]
    finally:
        await asyncio.to_thread(bed._parallel, lambda node: cleanup_node(bed, node))
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    print(f"\ndeploy -c gfa ({len(gfa)} nodes, --batch 1), {runs} run(s), bed {bed.instance}:")
    for name in gfa:
        since_start = [a for a, _ in nodes[name]]
        own = [b for _, b in nodes[name]]
        print(
            f"  {name}: camera answers {med(since_start):.2f} s after the deploy started; "
            f"its own turn {med(own):.2f} s (floor {med(floors):.2f} s, "
            f"x{med(own) / med(floors):.2f})"
        )
    print(f"  whole deploy: {med(totals):.2f} s (median of {len(totals)})")
    print(
        f"  floor: a container created and started directly on {gfa[0]}'s engine until "
        f"flicamera listens: {med(floors):.2f} s (median of {len(floors)}, before and after "
        f"the deploys; fastest {min(floors):.2f} s, fastest before {floor_min:.2f} s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="deploys (alternating two tags)")
    args = parser.parse_args()
    socket.setdefaulttimeout(30)
    bed = Testbed()
    was_up = bed.is_up()
    bed.up()
    try:
        asyncio.run(bench(bed, max(1, args.runs)))
    finally:
        if not was_up:
            bed.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
