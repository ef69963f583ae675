"""The floor under ``reconnect --force``: flicamera actors started at once with no Docker and
no actor, on the manager itself.

``reconnect --force`` of N nodes on the bed starts N flicamera containers at once on the same
few cores; each flicamera imports astropy, photutils and CLU before it listens. Starting the
same N flicamera processes directly on the host (loopback ports, the bed's launcher, the host
Python, which is the image's) and timing until every one accepts a connection gives the time
no manager can beat on this machine. It is recorded under ``floor_*`` (not in the table: it
is neither actor) and printed as a note with the run's figures.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import harness
from scenarios import Bench

from fliswarm_testbed.image import start_flicamera_on_host
from fliswarm_testbed.procs import stop_subprocesses


__all__ = ["session_floor", "floor_note", "relay_floor_note"]


async def _listening(port: int, deadline: float) -> float:
    """Monotonic time at which 127.0.0.1:port accepted a connection (probed every 20 ms)."""

    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.02)
            continue
        ready = time.monotonic()
        writer.close()
        return ready
    raise TimeoutError(f"flicamera on 127.0.0.1:{port} did not listen in time.")


async def start_all(count: int, timeout: float = 120.0) -> float:
    """Starts ``count`` flicamera processes at once; seconds until all listen."""

    ports = [harness.free_port() for _ in range(count)]
    with tempfile.TemporaryDirectory(prefix="fliswarm-floor-") as tmp:
        start = time.monotonic()
        procs = [
            await start_flicamera_on_host(f"gfa{i + 1}", port, Path(tmp) / str(i))
            for i, port in enumerate(ports)
        ]
        try:
            deadline = start + timeout
            ready = await asyncio.gather(*[_listening(port, deadline) for port in ports])
            return max(ready) - start
        finally:
            await stop_subprocesses(procs)


async def session_floor(bench: Bench) -> None:
    """One sample each: one flicamera alone, then as many as the bed has nodes at once."""

    bench.results.add("floor_one", "bare", await start_all(1))
    bench.results.add("floor_all", "bare", await start_all(len(bench.names)))


def relay_floor_note(bench: Bench) -> str | None:
    """The note on the floor under a ``talk`` round trip, `None` if it was not measured."""

    least = bench.results.samples.get("relay_floor_ms", {}).get("bare")
    if not least:
        return None
    return (
        "Floor under a `talk` round trip on this machine: the least relay there is "
        "(`benchmarks/relay_floor.py`: the command line in, JSON to flicamera, each reply line "
        f"out; no command parser, no log, no framework) adds {statistics.median(least):.2f} ms "
        f"(median of {len(least)}, measured interleaved with both actors)."
    )


def floor_note(bench: Bench) -> str | None:
    """The note that goes with the table, or `None` if the floor was not measured."""

    samples = bench.results.samples
    one, every = samples.get("floor_one", {}).get("bare"), samples.get("floor_all", {}).get("bare")
    if not one or not every:
        return None
    return (
        f"Floor under `reconnect --force` on this machine: {len(bench.names)} flicamera "
        f"processes started at once on the host, with no Docker and no actor, listen after "
        f"{statistics.median(every):.2f} s (median of {len(every)}; one alone: "
        f"{statistics.median(one):.2f} s)."
    )
