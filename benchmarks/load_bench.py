"""Load on the real fliswarm actor: many concurrent clients, real flicamera actors.

``N`` clients connect to the actor at once and each sends ``M`` commands, one after the other,
cycling through ``status``, ``talk status`` (every camera), ``ping`` and ``talk -n <one>
status``. Every command must end (``:`` or ``f``), every line of a command must reach the
client that sent it with its command id, and no client may see another's command ids. The
run is repeated: between the rounds, the actor's bookkeeping must return to where it was
(device command ids in use, pending sub-commands, users and server transports, CLU command
objects alive) and its memory must stay flat.

The flicamera actors are real (simulated cameras) and run on the host, on loopback; the
nodes have no Docker engine, so supervision is off and ``status`` reports the engines down.

Run: ``python3 benchmarks/load_bench.py [--clients 20] [--commands 200] [--cameras 3]``.
Prints one line per round and a summary; ``tests/test_load.py`` runs a bounded version.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from clu.command import Command

from fliswarm.actor import FLISwarmActor
from fliswarm.config import load_config
from fliswarm.testbed.image import start_flicamera_on_host, wait_flicamera_ready
from fliswarm.testbed.procs import stop_subprocesses


__all__ = ["run_load", "LoadResult", "Round"]

FINAL = frozenset(":f!")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib() -> float:
    """Resident memory of this process, in MiB."""

    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Round:
    """What one round of load did and left behind."""

    commands: int = 0
    ok: int = 0
    failed: int = 0
    misrouted: int = 0
    unfinished: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    counts: dict[str, float] = field(default_factory=dict)

    def line(self, index: int) -> str:
        lat = sorted(self.latencies) or [0.0]
        p50 = statistics.median(lat) * 1e3
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3
        c = self.counts
        return (
            f"round {index}: {self.commands} commands in {self.seconds:.1f} s "
            f"({self.commands / max(self.seconds, 1e-9):.0f}/s), ok {self.ok}, failed "
            f"{self.failed}, unfinished {self.unfinished}, misrouted {self.misrouted}; latency "
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {lat[-1] * 1e3:.0f} ms; RSS "
            f"{c['rss_mib']:.1f} MiB, ids in use {c['ids_in_use']:.0f}, pending "
            f"{c['running']:.0f}, users {c['users']:.0f}, transports "
            f"{c['server_transports']:.0f}, Command objects {c['commands_alive']:.0f}, "
            f"tasks {c['tasks']:.0f}"
        )


@dataclass
class LoadResult:
    clients: int
    commands: int
    cameras: int
    baseline: dict[str, float]
    rounds: list[Round]


class _Client:
    """A LegacyActor client that owns the command ids ``base + k``."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.next = base
        self.user_id = -1
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.foreign = 0

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, limit=1 << 22), 10
        )
        while self.user_id < 0:
            parts = (await self._line()).split(" ", 3)
            if len(parts) == 4 and parts[3].startswith("yourUserID="):
                self.user_id = int(parts[3].split("=")[1].split(";")[0])

    async def _line(self) -> str:
        assert self.reader is not None
        data = await self.reader.readline()
        if not data:
            raise ConnectionError("the actor closed the connection.")
        return data.decode(errors="replace").rstrip("\n")

    async def command(self, body: str, timeout: float) -> tuple[str | None, bool]:
        """Sends a command; returns its final code (None if it did not end) and whether
        every line of it came with this client's user id."""

        assert self.writer is not None
        mid = self.next
        self.next += 1
        self.writer.write(f"{mid} {body}\n".encode())
        routed = True
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, routed
            try:
                line = await asyncio.wait_for(self._line(), left)
            except asyncio.TimeoutError:
                return None, routed
            parts = line.split(" ", 3)
            if len(parts) < 3 or not parts[0].isdigit() or not parts[1].isdigit():
                continue
            uid, cid, code = int(parts[0]), int(parts[1]), parts[2]
            if cid == mid:
                routed = routed and uid == self.user_id
                if code in FINAL:
                    return code, routed
            elif cid != 0 and not self.base <= cid < self.base + 100_000:
                self.foreign += 1  # Another client's command id: misrouted.

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 2)


def _counts(actor: FLISwarmActor) -> dict[str, float]:
    gc.collect()
    return {
        "rss_mib": rss_mib(),
        "ids_in_use": sum(d.id_pool.in_use for d in actor.flicameras.values()),
        "running": sum(len(d.running) for d in actor.flicameras.values()),
        "users": len(actor.transports),
        "server_transports": len(actor._server.transports),
        "commands_alive": sum(isinstance(o, Command) for o in gc.get_objects()),
        "tasks": len(asyncio.all_tasks()),
    }


async def _round(
    actor: FLISwarmActor, names: list[str], n_clients: int, n_commands: int, offset: int
) -> Round:
    result = Round()
    clients = [_Client((offset + index + 1) * 100_000) for index in range(n_clients)]
    await asyncio.gather(*[client.connect(actor.port) for client in clients])
    bodies = ["status", "talk status", "ping"] + [f"talk -n {name} status" for name in names]

    async def drive(index: int, client: _Client) -> None:
        for k in range(n_commands):
            body = bodies[(index + k) % len(bodies)]
            t0 = time.monotonic()
            code, routed = await client.command(body, timeout=30)
            result.latencies.append(time.monotonic() - t0)
            result.commands += 1
            if code is None:
                result.unfinished += 1
            elif code == ":":
                result.ok += 1
            else:
                result.failed += 1
            if not routed:
                result.misrouted += 1

    t0 = time.monotonic()
    await asyncio.gather(*[drive(index, client) for index, client in enumerate(clients)])
    result.seconds = time.monotonic() - t0
    result.misrouted += sum(client.foreign for client in clients)
    await asyncio.gather(*[client.close() for client in clients])
    for _ in range(500):  # Up to 10 s for the actor to notice the closed connections.
        if not actor.transports:
            break
        await asyncio.sleep(0.02)
    result.counts = _counts(actor)
    return result


async def run_load(
    n_clients: int = 20,
    n_commands: int = 200,
    n_cameras: int = 3,
    rounds: int = 2,
    work_dir: str | os.PathLike[str] | None = None,
    report: Any = print,
    propagate_logs: bool = True,
) -> LoadResult:
    """Runs a warm-up round then ``rounds`` rounds of load; returns the figures.

    With ``propagate_logs=False`` the actor's log records stay out of the root logger (whose
    handlers, e.g. pytest's capture, would keep them all in memory); its log file is kept.
    """

    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fsw-load-"))
        work = Path(work_dir)
        names = [f"gfa{index + 1}" for index in range(n_cameras)]
        ports = {name: _free_port() for name in names}
        procs = [await start_flicamera_on_host(n, p, work / "data") for n, p in ports.items()]
        actor: FLISwarmActor | None = None
        try:
            for port in ports.values():
                await wait_flicamera_ready("127.0.0.1", port, 60)
            closed = _free_port()
            config = {
                "actor": {"name": "fliswarm", "host": "127.0.0.1", "port": _free_port()},
                "image": "sdss/flicamera:latest",
                "status_interval": 3600,
                "timeouts": {"talk": 20, "docker_connect": 0.5, "docker_request": 1},
                "ping_timeout": 0.5,
                "nodes": {
                    name: {
                        "host": "127.0.0.1",
                        "port": port,
                        "category": "gfa",
                        "docker-client": f"tcp://127.0.0.1:{closed}",
                    }
                    for name, port in ports.items()
                },
                "enabled_nodes": names,
            }
            config_path = work / "fliswarm.yaml"
            config_path.write_text(yaml.safe_dump(config))
            actor = FLISwarmActor.from_config(load_config(config_path), log_dir=work / "logs")
            actor.log.propagate = propagate_logs
            await actor.start()
            await actor.supervisor.stop()  # No Docker engines here (see the module).
            warm = await _round(actor, names, n_clients, max(5, n_commands // 10), 0)
            report(warm.line(0) + "  (warm-up)")
            baseline = warm.counts
            done = []
            for index in range(1, rounds + 1):
                one = await _round(actor, names, n_clients, n_commands, index * 1000)
                report(one.line(index))
                done.append(one)
            return LoadResult(n_clients, n_commands, n_cameras, baseline, done)
        finally:
            if actor is not None:
                await actor.stop()
                for handler in list(actor.log.handlers):
                    if isinstance(handler, logging.FileHandler):
                        handler.close()
            await stop_subprocesses(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--commands", type=int, default=200, help="Per client and round.")
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    result = asyncio.run(run_load(args.clients, args.commands, args.cameras, args.rounds))
    first, last = result.rounds[0], result.rounds[-1]
    total = sum(r.commands for r in result.rounds)
    bad = sum(r.unfinished + r.misrouted for r in result.rounds)
    growth = last.counts["rss_mib"] - first.counts["rss_mib"]
    print(
        f"summary: {args.clients} clients x {args.commands} commands x {args.rounds} rounds = "
        f"{total} commands, {bad} unfinished or misrouted; RSS {result.baseline['rss_mib']:.1f}"
        f" -> {first.counts['rss_mib']:.1f} -> {last.counts['rss_mib']:.1f} MiB "
        f"({growth:+.1f} MiB over the last rounds); Command objects "
        f"{result.baseline['commands_alive']:.0f} -> {last.counts['commands_alive']:.0f}"
    )


if __name__ == "__main__":
    main()
