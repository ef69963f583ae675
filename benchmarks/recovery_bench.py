"""Recovery times of fliswarm's self-healing supervision on the real test bed.

Prints (targets in brackets):

- container killed -> ``talk status`` relaying again, median of N kills [<= 5 s];
- node powered on (its engine answering) -> relaying again [<= 10 s];
- network cut (packets dropped, engine running) -> ``nodeState`` offline [< 5 s], and
  plugged again -> online [<= 3 s], median of ``--unplug`` cuts;
- the longest time any command sent to fliswarm took during the faults (a client sends
  ``status`` and ``talk status`` every second throughout) [below its timeout];
- idle CPU of the actor with the bed's nodes, over ``--idle`` seconds [< 1 %].

Run as root: ``FLISWARM_TESTBED_ID=5 python3 benchmarks/recovery_bench.py``. It brings the bed
up (and down again if it was not up), builds/pushes the simulated flicamera image, and
removes the containers it created.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiodocker
import yaml

from fliswarm.actor import FLISwarmActor
from fliswarm.config import load_config
from fliswarm.supervision import NodeState
from fliswarm_testbed.bed import Testbed
from fliswarm_testbed.fixtures import cleanup_node
from fliswarm_testbed.image import ensure_flicamera_image


class Client:
    """A minimal LegacyActor client: one command at a time per instance."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.mid = reader, writer, 0

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5))

    async def command(self, text: str, timeout: float) -> tuple[str, float]:
        """Sends a command; returns its final code and how long it took."""

        self.mid += 1
        start = time.monotonic()
        self.writer.write(f"{self.mid} {text}\n".encode())
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.reader.readline()).decode()
                if not line:
                    raise ConnectionError("actor closed the connection.")
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] == str(self.mid) and parts[2] in (":", "f", "!"):
                    return parts[2], time.monotonic() - start

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


async def wait_state(
    actor: FLISwarmActor, name: str, timeout: float, state: NodeState = NodeState.ONLINE
) -> float:
    """Waits for the node's state (polls the in-process state every 20 ms); returns when."""

    deadline = time.monotonic() + timeout
    while actor.supervisor.state(name).state is not state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not {state.value}: {actor.supervisor.state(name)}")
        await asyncio.sleep(0.02)
    return time.monotonic()


async def wait_online(actor: FLISwarmActor, name: str, timeout: float) -> None:
    """Waits for the node's state to be online."""

    await wait_state(actor, name, timeout)


async def relaying(client: Client, name: str, timeout: float = 60.0) -> float:
    """Sends ``talk -n NAME status`` until it succeeds; returns when it did."""

    deadline = time.monotonic() + timeout
    while True:
        code, _ = await client.command(f"talk -n {name} status", 30)
        if code == ":":
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: talk still failing after {timeout} s.")
        await asyncio.sleep(0.05)


async def background_load(
    port: int, names: list[str], longest: list[Any], stop: asyncio.Event
) -> None:
    """Sends status and talk commands every second; records the slowest."""

    client = await Client.connect(port)
    try:
        while not stop.is_set():
            for text in ["status", *(f"talk -n {name} status" for name in names)]:
                _, took = await client.command(text, 60)
                if took > longest[0]:
                    longest[:] = [took, text]
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        await client.close()


async def kill(addr: str, container: str) -> None:
    async with aiodocker.Docker(url=f"http://{addr}:2375") as docker:
        target = await asyncio.wait_for(docker.containers.get(container), 10)
        await asyncio.wait_for(target.kill(), 10)


async def main(args: argparse.Namespace) -> None:
    bed = Testbed()
    was_up = bed.is_up()
    bed.up()
    actor: FLISwarmActor | None = None
    try:
        image = ensure_flicamera_image(bed.registry)
        config = bed.fliswarm_config(image)
        config["timeouts"] = {"docker_connect": 1.0, "docker_request": 10, "talk": 10}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "fliswarm.yaml"
            path.write_text(yaml.safe_dump(config))
            resolved = load_config(path)
        names = [node.name for node in bed.nodes]
        await asyncio.to_thread(bed._parallel, lambda node: cleanup_node(bed, node))

        actor = FLISwarmActor.from_config(resolved)
        started = time.monotonic()
        await actor.start()
        await asyncio.gather(*[wait_online(actor, name, 120) for name in names])
        print(f"converged from nothing ({len(names)} nodes): {time.monotonic() - started:.2f} s")

        client = await Client.connect(actor.port)
        longest: list[Any] = [0.0, ""]
        stop = asyncio.Event()
        load = asyncio.create_task(background_load(actor.port, names, longest, stop))

        samples = []
        for i in range(args.kills):
            node = bed.nodes[i % len(bed.nodes)]
            await asyncio.sleep(args.pause)  # Let the node's back-off reset (quiet period).
            start = time.monotonic()
            await kill(node.addr, f"flicamera-{node.name}")
            await asyncio.sleep(0.2)  # The die event, not the old connection, must be seen.
            samples.append(await relaying(client, node.name) - start)
            print(f"  kill {node.name}: relaying again after {samples[-1]:.2f} s")
        if samples:
            print(
                f"container killed -> relaying again: median {statistics.median(samples):.2f} s, "
                f"max {max(samples):.2f} s over {len(samples)} kills (target <= 5 s)"
            )

        power = []
        for _ in range(args.power):
            node = bed.nodes[1]
            await asyncio.to_thread(bed.power_off, node.name)
            await asyncio.sleep(args.off)
            await asyncio.to_thread(bed.power_on, node.name)  # Returns once the engine answers.
            on = time.monotonic()
            power.append(await relaying(client, node.name) - on)
            print(
                f"  power {node.name}: relaying again {power[-1]:.2f} s after its engine answered"
            )
        if power:
            print(
                f"node powered on -> relaying again: median {statistics.median(power):.2f} s "
                "(target <= 10 s)"
            )

        cut, back = [], []
        for _ in range(args.unplug):
            node = bed.nodes[-1]
            await wait_online(actor, node.name, 60)
            await asyncio.sleep(args.pause)
            await asyncio.to_thread(bed.unplug, node.name)
            start = time.monotonic()
            cut.append(await wait_state(actor, node.name, 30, NodeState.OFFLINE) - start)
            await asyncio.to_thread(bed.plug, node.name)
            start = time.monotonic()
            back.append(await wait_state(actor, node.name, 60) - start)
            print(
                f"  unplug {node.name}: offline after {cut[-1]:.2f} s, online again "
                f"{back[-1]:.2f} s after the plug"
            )
        if cut:
            print(
                f"network cut -> offline: {statistics.median(cut):.2f} s; plugged again -> "
                f"online: {statistics.median(back):.2f} s (medians of {len(cut)}; max "
                f"{max(cut):.2f} s, {max(back):.2f} s; targets < 5 s, <= 3 s)"
            )

        stop.set()
        await load
        print(
            f"longest command during the faults: {longest[0]:.2f} s ({longest[1]}; "
            f"talk timeout {actor.settings.timeouts.talk:g} s)"
        )

        await asyncio.gather(*[wait_online(actor, name, 60) for name in names])
        await client.close()
        await asyncio.sleep(2)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(args.idle)
        cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0) * 100
        print(
            f"idle CPU of the actor with {len(names)} nodes over {args.idle:g} s: {cpu:.2f} % "
            "(target < 1 %)"
        )
    finally:
        if actor is not None:
            await actor.stop()
        with contextlib.suppress(Exception):
            bed.restore()
            await asyncio.to_thread(bed._parallel, lambda node: cleanup_node(bed, node))
        if not was_up:
            bed.down()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=6, help="containers to kill (>= 5)")
    parser.add_argument("--pause", type=float, default=4.0, help="quiet seconds before a kill")
    parser.add_argument("--power", type=int, default=2, help="power cycles")
    parser.add_argument("--off", type=float, default=5.0, help="seconds a node stays off")
    parser.add_argument("--unplug", type=int, default=3, help="network cuts")
    parser.add_argument("--idle", type=float, default=30.0, help="idle CPU window (s)")
    asyncio.run(main(parser.parse_args()))
