"""Scale: many logical nodes (flicamera containers, one port each) spread over the bed's engines.

Logical node ``sNN`` runs in container ``flicamera-sNN`` on engine ``NN % engines`` and listens
on its own port (``FLICAMERA_PORT``, set with fliswarm's per-node ``environment``). fliswarm
creates every container once (its supervisor, from nothing); then, for each node count, both
actors are started with the first N nodes enabled and time ``status`` and ``talk status``.
The original cannot give each node its own container environment, but it can talk to
containers that fliswarm started: its configuration just lists the same hosts and ports.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import harness
import scenarios
from scenarios import Bench


__all__ = ["scale_nodes", "ours_scale_config", "orig_scale_config", "run_scale"]

BASE_PORT = 19995


def scale_nodes(bench: Bench, count: int) -> dict[str, dict[str, Any]]:
    """``{name: {host, port, docker-client}}`` of ``count`` logical nodes."""

    engines = bench.bed.nodes
    out = {}
    for i in range(count):
        node = engines[i % len(engines)]
        out[f"s{i + 1:02d}"] = {
            "host": node.addr,
            "port": BASE_PORT + i // len(engines),
            "docker-client": node.docker_url,
            "category": "gfa",
        }
    return out


def ours_scale_config(bench: Bench, nodes: dict[str, dict[str, Any]], enabled: list[str]):
    config = harness.ours_config(bench.bed, bench.image, 0, [])
    config["nodes"] = {
        name: {**spec, "environment": {"FLICAMERA_PORT": str(spec["port"])}}
        for name, spec in nodes.items()
    }
    config["enabled_nodes"] = list(enabled)
    config["timeouts"] = {"container_ready": 300.0}
    return config


def orig_scale_config(bench: Bench, nodes: dict[str, dict[str, Any]], enabled: list[str]):
    config = harness.orig_config(bench.bed, bench.image, 0, [])
    config["nodes"] = {"APO": {name: nodes[name] for name in enabled}}
    config["enabled_nodes"] = {"APO": list(enabled)}
    return config


async def run_scale(bench: Bench, counts: list[int]) -> list[int]:
    """Starts ``max(counts)`` containers with fliswarm, then measures each count."""

    counts = sorted(set(counts))
    nodes = scale_nodes(bench, counts[-1])
    names = list(nodes)
    await asyncio.to_thread(harness.clean_nodes, bench.bed)
    print(f"scale: starting {len(names)} flicamera containers with fliswarm ...", flush=True)
    start = time.monotonic()
    config = ours_scale_config(bench, nodes, names)
    async with scenarios.actor_session(bench, "ours", config=config) as (_, client):
        await scenarios.wait_talking(client, names, 900)
    took = time.monotonic() - start
    print(f"scale: {len(names)} cameras talking after {took:.0f} s", flush=True)

    for index, count in enumerate(counts):
        enabled = names[:count]
        order = ["orig", "ours"] if index % 2 == 0 else ["ours", "orig"]
        for kind in order:
            if kind == "ours":
                config = ours_scale_config(bench, nodes, enabled)
            else:
                config = orig_scale_config(bench, nodes, enabled)
            await scenarios.session_scale(bench, kind, config, enabled, count)
        print(f"scale: {count} nodes measured", flush=True)
    await asyncio.to_thread(harness.clean_nodes, bench.bed)
    return counts
