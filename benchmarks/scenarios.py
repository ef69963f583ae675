"""The benchmark scenarios, each run for one actor (``orig`` or ``ours``) at a time.

A *session* starts one actor process, runs several scenarios against it and stops it;
`run.py` alternates the two actors session by session. Every sample is recorded in a
`Results` under a metric key (see `METRICS` in ``report.py``).

- `session_a`: from clean nodes with no image: ``reconnect --force`` with cold pulls, then
  again with the image cached; ``talk``; ``status`` with all nodes up; relay latency,
  throughput, CPU per relayed line and memory after N ``talk`` commands. fliswarm runs with
  ``self_healing: false`` here, or its supervisor would pull and start the containers by
  itself before the operator's ``reconnect`` (the original has no supervisor).
- `session_b`: default configuration, containers running: recovery after a container is
  killed (the original needs an operator ``reconnect``: the harness sends it at once),
  ``status`` with 1 and with 3 nodes powered off, timed for both actors from the moment of
  the power-off (what an operator sees), then again once fliswarm's supervisor has marked
  the nodes offline (its cached answer; the original has no such state).
  Then ``status`` with a node whose network is cut while its engine runs (packets dropped,
  not refused), for both actors `CUT_DELAY` seconds after the cut.
- `session_start`: from nodes with the image but no container: the actor started with its
  default configuration (fliswarm's supervisor starts creating the containers at once) and
  ``reconnect --force`` sent right away; timed until every camera answers.
- `session_idle`: idle CPU and RSS over one or more windows.
- `session_scale`: ``status`` and ``talk status`` with many logical nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import ActorProcess, Client

from fliswarm_testbed.bed import Testbed


__all__ = [
    "Bench",
    "Results",
    "session_a",
    "session_b",
    "session_start",
    "session_idle",
    "session_scale",
    "CUT_DELAY",
]

#: Seconds after a node's network is cut at which both actors are asked for their status
#: ("seconds after such a cut", as an operator would see it).
CUT_DELAY = 6.0


@dataclass
class Results:
    """Samples by metric key and actor kind, plus free-form notes."""

    samples: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    notes: list[str] = field(default_factory=list)
    #: The measurement floor of a metric (its resolution, in sample units) and its name,
    #: e.g. one clock tick of CPU time over the window: a value at or below it is no figure
    #: to divide by.
    floors: dict[str, tuple[float, str]] = field(default_factory=dict)

    def add(self, key: str, kind: str, value: float) -> None:
        self.samples[key][kind].append(value)

    def floor(self, key: str, value: float, name: str) -> None:
        """Records the floor of ``key`` (the largest one seen, if recorded several times)."""

        if key not in self.floors or value > self.floors[key][0]:
            self.floors[key] = (value, name)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


@dataclass
class Bench:
    """What every session needs."""

    bed: Testbed
    image: str
    names: list[str]
    workdir: Path
    results: Results
    smoke: bool = False
    say: Any = print

    @property
    def gfa(self) -> list[str]:
        return [n for n in self.names if n.startswith("gfa")]

    def config(self, kind: str, port: int, **extra: Any) -> dict[str, Any]:
        if kind == "orig":
            return harness.orig_config(self.bed, self.image, port, self.names)
        return harness.ours_config(self.bed, self.image, port, self.names, **extra)


@contextlib.asynccontextmanager
async def actor_session(
    bench: Bench, kind: str, config: dict[str, Any] | None = None, **extra: Any
) -> AsyncIterator[tuple[ActorProcess, Client]]:
    port = harness.free_port()
    config = config or bench.config(kind, port, **extra)
    config["actor"]["port"] = port
    actor = ActorProcess(kind, config, bench.workdir / kind)
    client: Client | None = None
    try:
        await actor.start()
        client = await Client.connect(port)
        yield actor, client
    finally:
        if client is not None:
            await client.close()
        await actor.stop()


async def wait_talking(
    client: Client, names: list[str], timeout: float = 120.0, command: str = "talk status"
) -> float:
    """Sends ``talk status`` until every node answers; returns the monotonic time it did."""

    deadline = time.monotonic() + timeout
    while True:
        reply = await client.command(command, 60)
        if set(names) <= reply.nodes_with("status"):
            return time.monotonic()
        if time.monotonic() > deadline:
            missing = sorted(set(names) - reply.nodes_with("status"))
            raise TimeoutError(f"cameras not answering after {timeout} s: {missing}")
        await asyncio.sleep(0.1)


async def timed(client: Client, command: str, timeout: float = 120.0) -> float:
    reply = await client.command(command, timeout)
    if reply.code != ":":
        raise RuntimeError(f"{command!r} ended with {reply.code}: {reply.lines[-3:]}")
    return reply.seconds


def _repeat(bench: Bench, full: int, smoke: int) -> int:
    return smoke if bench.smoke else full


# ---------------------------------------------------------------------- session A


async def _reconnect(bench: Bench, kind: str, client: Client, key: str) -> None:
    start = time.monotonic()
    reply = await client.command("reconnect --force", 900)
    if reply.code != ":":
        # A failure is a result too: noted (not timed), then the cameras are brought up.
        error = next((kw.get("error") for _, kw in reversed(reply.lines) if "error" in kw), "?")
        bench.results.note(f"{kind}: `reconnect --force` ({key}) failed: {str(error)[:300]}")
        bench.say(f"  {kind} {key}: FAILED ({str(error)[:200]})")
        # Bring the cameras up for the next scenarios: the image pulled by the harness (the
        # original's docker client gives up on a pull that stalls 3 s), then a few more tries.
        await asyncio.to_thread(harness.pull_image, bench.bed, bench.image)
        for attempt in range(5):
            retry = await client.command("reconnect --force", 900)
            if retry.code != ":":
                bench.say(f"  {kind} {key}: retry {attempt + 1} failed: {retry.lines[-1:]}")
                await asyncio.sleep(2.0)
                continue
            try:
                await wait_talking(client, bench.names, 120)
                return
            except TimeoutError as err:
                bench.say(f"  {kind} {key}: retry {attempt + 1}: {err}")
        raise RuntimeError(f"{kind}: the cameras never answered after `reconnect --force`.")
    bench.results.add(f"{key}.cmd", kind, reply.seconds)
    ready = await wait_talking(client, bench.names, 180)
    bench.results.add(f"{key}.ready", kind, ready - start)
    bench.say(f"  {kind} {key}: command {reply.seconds:.2f} s, talking {ready - start:.2f} s")


async def session_a(bench: Bench, kind: str) -> None:
    """Cold and cached reconnect, talk, status all up, relay (see the module docstring)."""

    r = bench.results
    await asyncio.to_thread(harness.clean_nodes, bench.bed)
    await asyncio.to_thread(harness.remove_image, bench.bed, bench.image)
    async with actor_session(bench, kind, self_healing=False) as (actor, client):
        await _reconnect(bench, kind, client, "reconnect_cold")
        await _reconnect(bench, kind, client, "reconnect_cached")

        n = _repeat(bench, 5, 3)
        first = bench.names[0]
        for _ in range(n):
            r.add("talk_one", kind, await timed(client, f"talk -n {first} status"))
            reply = await client.command("talk status", 60)
            if reply.nodes_with("status") != set(bench.names):
                raise RuntimeError(f"{kind}: talk status missed nodes: {reply.lines}")
            r.add("talk_all", kind, reply.seconds)
        for _ in range(_repeat(bench, 3, 1)):
            reply = await client.command("talk -c gfa expose 0.1", 120)
            bundle = reply.values("filename_bundle")
            files = len(bundle[-1]) if bundle else 0
            if reply.code != ":" or files != len(bench.gfa):
                raise RuntimeError(f"{kind}: expose gave {files} files: {reply.lines[-4:]}")
            r.add("talk_expose", kind, reply.seconds)
        for _ in range(n):
            r.add("status_up", kind, await timed(client, "status"))

        await relay(bench, kind, actor, client)


async def relay(bench: Bench, kind: str, actor: ActorProcess, client: Client) -> None:
    """Relay latency vs flicamera directly, throughput, CPU per line, memory growth."""

    r = bench.results
    node = bench.bed.node(bench.names[0])
    n = _repeat(bench, 300, 30)
    # Interleaved: one round trip straight to flicamera, one through the actor, one through
    # the least relay there is (the floor, `relay_floor.py`).
    direct, relayed, least = [], [], []
    async with harness.relay_floor(node.addr) as floor_client:
        for _ in range(n):
            direct += await harness.json_roundtrip(node.addr, 19995, "status", 1)
            relayed.append(await timed(client, f"talk -n {node.name} status"))
            least.append(await timed(floor_client, f"talk -n {node.name} status"))
    added = (statistics.median(relayed) - statistics.median(direct)) * 1000
    r.add("relay_added_ms", kind, added)
    r.add("relay_floor_ms", "bare", (statistics.median(least) - statistics.median(direct)) * 1000)

    # Throughput and CPU per relayed line: concurrent ``talk status`` (every node).
    async def run(total: int, text: Any) -> int:
        counter = iter(range(total))
        lines = [0]

        async def worker() -> None:
            for i in counter:
                reply = await client.command(text(i), 120)
                lines[0] += len(reply.values("status"))

        await asyncio.gather(*[worker() for _ in range(20)])
        return lines[0]

    cpu0, t0 = actor.cpu_seconds(), time.monotonic()
    lines = await run(_repeat(bench, 700, 60), lambda i: "talk status")
    took, cpu = time.monotonic() - t0, actor.cpu_seconds() - cpu0
    lines = max(lines, 1)
    r.add("relay_lines_per_s", kind, lines / took)
    r.add("relay_cpu_us_per_line", kind, cpu / lines * 1e6)

    # Memory: RSS before and after many single-node talk commands.
    total = _repeat(bench, 5000, 300)
    names = bench.names
    rss0 = actor.rss_mb()
    await run(total, lambda i: f"talk -n {names[i % len(names)]} status")
    r.add("rss_growth_mb", kind, actor.rss_mb() - rss0)
    r.floor("rss_growth_mb", harness.PAGE_SIZE / 2**20, "1 page")
    bench.say(
        f"  {kind} relay: +{added:.2f} ms/round trip, {lines / took:.0f} lines/s, "
        f"{cpu / lines * 1e6:.0f} us CPU/line, RSS {rss0:.1f} -> {actor.rss_mb():.1f} MB "
        f"after {total} talk"
    )


# ---------------------------------------------------------------------- session B


async def _kill(bench: Bench, name: str) -> None:
    addr = bench.bed.node(name).addr
    await asyncio.to_thread(
        harness.engine.http_request, addr, f"/containers/flicamera-{name}/kill", "POST", 10.0
    )


async def _node_states(
    client: Client, names: list[str], wanted: set[str], timeout: float = 60.0
) -> float:
    """Waits until fliswarm's status reports every node in ``names`` in one of the
    ``wanted`` states (``nodeState``); returns the seconds waited."""

    start = time.monotonic()
    while True:
        reply = await client.command("status", 60)
        states = {v[0]: v[1] for v in reply.values("nodeState") if len(v) > 1}
        if all(states.get(n) in wanted for n in names):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not {'/'.join(sorted(wanted))} after {timeout} s: {states}")
        await asyncio.sleep(0.2)


async def _power_off(bed: Testbed, names: list[str]) -> float:
    """Powers the nodes off at once; returns `time.perf_counter` when all of them are off."""

    def off() -> None:
        with bed._locked():
            bed._parallel(lambda node: bed.power_off(node.name), [bed.node(n) for n in names])

    await asyncio.to_thread(off)
    return time.perf_counter()


async def _status_since(client: Client, t0: float) -> float:
    """Sends ``status`` at once; seconds from ``t0`` until its final line."""

    reply = await client.command("status", 120)
    if reply.code != ":":
        raise RuntimeError(f"'status' ended with {reply.code}: {reply.lines[-3:]}")
    return time.perf_counter() - t0


async def _nodes_off(bench: Bench, kind: str, client: Client, off: list[str], key: str) -> None:
    """``status`` with the nodes ``off`` powered off: one sample from the power-off (for
    both actors), then ``key_known``: fliswarm's once its supervisor has marked them offline,
    the original's (no such state) right after the first."""

    r = bench.results
    t0 = await _power_off(bench.bed, off)
    first = await _status_since(client, t0)
    r.add(key, kind, first)
    if kind == "ours":
        took = await _node_states(client, off, {"offline"})
        bench.say(f"  ours: {len(off)} node(s) reported offline {took:.1f} s after the status")
    known = [await timed(client, "status", 120) for _ in range(_repeat(bench, 5, 3))]
    for value in known:
        r.add(f"{key}_known", kind, value)
    bench.say(
        f"  {kind} status, {len(off)} off: {first * 1e3:.0f} ms from the power-off, then "
        f"{statistics.median(known) * 1e3:.0f} ms"
    )


async def _power_on(bench: Bench, kind: str, client: Client, names: list[str]) -> None:
    """Powers the nodes back on and waits until their cameras answer again (the original
    needs an operator ``reconnect -n``; fliswarm's supervisor brings them back online)."""

    for name in names:
        await asyncio.to_thread(bench.bed.power_on, name)
        await asyncio.to_thread(harness.provide_usb_bus, bench.bed, name)
    if kind == "orig":
        reply = await client.command(f"reconnect -n {','.join(names)}", 300)
        if reply.code != ":":
            raise RuntimeError(f"orig: reconnect after power-on failed: {reply.lines[-3:]}")
    await wait_talking(client, bench.names, 180)
    if kind == "ours":
        await _node_states(client, bench.names, {"online"}, 180)


async def session_b(bench: Bench, kind: str) -> None:
    """Recovery after a container kill; status with nodes powered off."""

    r = bench.results
    async with actor_session(bench, kind) as (actor, client):
        # The containers of session A (same actor) run: both connect to them at start.
        await wait_talking(client, bench.names, 180)

        for i in range(_repeat(bench, 5, 1)):
            name = bench.names[i % len(bench.names)]
            start = time.monotonic()
            await _kill(bench, name)
            if kind == "orig":
                await asyncio.sleep(0.2)  # The operator notices...
                await client.command(f"reconnect -n {name}", 120)
            else:
                await asyncio.sleep(0.2)  # Let the kill reach fliswarm, not the old socket.
            await wait_talking(client, [name], 120, f"talk -n {name} status")
            r.add("recovery", kind, time.monotonic() - start)
            bench.say(f"  {kind} recovery {name}: {time.monotonic() - start:.2f} s")

        # Every node up and known to be (fliswarm: online) before each power-off.
        if kind == "ours":
            await _node_states(client, bench.names, {"online"}, 180)
        one, three = bench.names[-1:], bench.names[-3:]
        await _nodes_off(bench, kind, client, one, "status_1off")
        await _power_on(bench, kind, client, one)
        await _nodes_off(bench, kind, client, three, "status_3off")
        await asyncio.to_thread(bench.bed.restore)
        for name in three:
            await asyncio.to_thread(harness.provide_usb_bus, bench.bed, name)
        if kind == "orig":
            await client.command(f"reconnect -n {','.join(three)}", 300)
        await wait_talking(client, bench.names, 180)
        await _network_cut(bench, kind, client, bench.names[0])


async def _network_cut(bench: Bench, kind: str, client: Client, name: str) -> None:
    """``status`` `CUT_DELAY` s after the node's cable is pulled (its engine keeps running:
    packets to it are dropped, never refused), then the cable back."""

    if kind == "ours":
        await _node_states(client, bench.names, {"online"}, 180)
    await asyncio.to_thread(bench.bed.unplug, name)
    try:
        await asyncio.sleep(CUT_DELAY)  # The scenario: the operator asks some seconds later.
        for _ in range(_repeat(bench, 5, 2)):
            bench.results.add("status_cut", kind, await timed(client, "status", 120))
    finally:
        await asyncio.to_thread(bench.bed.plug, name)
    if kind == "orig":
        await client.command(f"reconnect -n {name}", 300)
    await wait_talking(client, bench.names, 180)
    values = bench.results.samples["status_cut"][kind]
    bench.say(f"  {kind} status, {name} cut: {statistics.median(values) * 1e3:.0f} ms")


# ------------------------------------------------------------------- start


async def session_start(bench: Bench, kind: str) -> None:
    """``reconnect --force`` sent right after the actor starts on nodes with no container
    (fliswarm's supervisor is already creating them)."""

    await asyncio.to_thread(harness.clean_nodes, bench.bed)
    async with actor_session(bench, kind) as (_, client):
        start = time.monotonic()
        reply = await client.command("reconnect --force", 600)
        if reply.code != ":":
            raise RuntimeError(f"{kind}: reconnect --force at start failed: {reply.lines[-3:]}")
        ready = await wait_talking(client, bench.names, 180)
        bench.results.add("reconnect_start.ready", kind, ready - start)
        bench.say(f"  {kind} reconnect --force at start: all talking {ready - start:.2f} s")


# ------------------------------------------------------------------------- idle


async def session_idle(bench: Bench, kind: str, window: float, windows: int) -> None:
    """CPU (% of a core) over ``windows`` windows of ``window`` seconds and RSS of the
    actor, idle with every camera connected."""

    await asyncio.to_thread(harness.clean_nodes, bench.bed)
    async with actor_session(bench, kind) as (actor, client):
        if kind == "orig":
            await timed(client, "reconnect", 300)
        await wait_talking(client, bench.names, 180)
        await asyncio.sleep(3)  # Not a race: the start-up work (logs, first probes) settles.
        rss0 = actor.rss_mb()
        for _ in range(windows):
            cpu0, t0 = actor.cpu_seconds(), time.monotonic()
            await asyncio.sleep(window)
            took = time.monotonic() - t0
            bench.results.add("idle_cpu_pct", kind, (actor.cpu_seconds() - cpu0) / took * 100)
            bench.results.floor("idle_cpu_pct", 100 / harness.CLK_TCK / took, "1 clock tick")
        bench.results.add("idle_rss_mb", kind, actor.rss_mb())
        bench.say(f"  {kind} idle: RSS {rss0:.1f} -> {actor.rss_mb():.1f} MB")


# ------------------------------------------------------------------------ scale


async def session_scale(
    bench: Bench, kind: str, config: dict[str, Any], names: list[str], count: int
) -> None:
    """``status`` and ``talk status`` with ``count`` logical nodes (containers running)."""

    async with actor_session(bench, kind, config=config) as (_, client):
        await wait_talking(client, names, 300)
        # 15 samples a session: a single `talk status` to 50 cameras varies by 2x here.
        for _ in range(_repeat(bench, 15, 3)):
            bench.results.add(f"scale_status_{count}", kind, await timed(client, "status"))
            reply = await client.command("talk status", 60)
            if reply.nodes_with("status") != set(names):
                raise RuntimeError(f"{kind}: talk status at {count} nodes missed some.")
            bench.results.add(f"scale_talk_{count}", kind, reply.seconds)
