"""`EngineShare`: logical nodes on one Docker engine share the engine calls of a status.

A unit test of the sharing logic with a counting stand-in engine (no network); the real
engine path is covered by ``test_node.py`` and ``test_actor_commands.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from clu.command import Command
from helpers_inprocess import UserTransport as Transport

from fliswarm.actor import FLISwarmActor
from fliswarm.containers import LABEL_MANAGED, LABEL_NODE
from fliswarm.exceptions import NodeUnreachableError
from fliswarm.node import Node
from fliswarm.status import EngineShare, StatusWriter


class CountingEngine:
    """Answers like an engine with one running container per logical node; counts calls."""

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes
        self.calls: dict[str, int] = {"ping": 0, "containers": 0, "volumes": 0}
        self.filters: list[dict[str, list[str]]] = []
        self.last_error = None

    async def ping(self, timeout: float | None = None) -> bool:
        self.calls["ping"] += 1
        await asyncio.sleep(0)
        return True

    async def list_containers(self, filters: dict[str, list[str]], all: bool = True) -> list[Any]:
        self.calls["containers"] += 1
        self.filters.append(filters)
        return [
            {
                "Id": f"{i:02d}" * 32,
                "Names": [f"/flicamera-{name}"],
                "Labels": {LABEL_MANAGED: "true", LABEL_NODE: name},
            }
            for i, name in enumerate(self.nodes)
        ]

    async def list_volumes(self) -> list[dict[str, Any]]:
        self.calls["volumes"] += 1
        return [{"Name": "data", "Options": {"device": "/data"}}]


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def debug(self, **kwargs: Any) -> None:
        self.messages.append(("d", kwargs))

    def info(self, **kwargs: Any) -> None:
        self.messages.append(("i", kwargs))

    def warning(self, **kwargs: Any) -> None:
        self.messages.append(("w", kwargs))


async def test_nodes_on_one_engine_share_its_calls():
    names = [f"s{i:02d}" for i in range(10)]
    engine = CountingEngine(names)
    nodes = []
    for name in names:
        node = Node(name, "127.0.0.1", daemon_addr="tcp://127.0.0.1:2375")
        node.engine = engine  # type: ignore[assignment]
        nodes.append(node)

    command = Recorder()
    share = EngineShare()
    results = await asyncio.gather(
        *[
            n.report_status(
                command, container_name=f"flicamera-{n.name}", volume_names=["data"], share=share
            )
            for n in nodes
        ]
    )
    share.close()

    # The lists answering prove the engine alive: no /_ping at all.
    assert engine.calls == {"ping": 0, "containers": 1, "volumes": 1}
    # Each node still gets its own container (the one labelled with its name) and volume.
    assert [r["container"] for r in results] == [f"{i:02d}" * 6 for i in range(10)]
    assert all(r["volumes"] == {"data": "/data"} for r in results)
    debug = [m for code, m in command.messages if code == "d"]
    assert sorted(m["container"][0] for m in debug if "container" in m) == names
    assert not [m for code, m in command.messages if code == "w"]


async def test_without_a_share_each_node_asks_for_itself():
    engine = CountingEngine(["a", "b"])
    nodes = [Node(name, "127.0.0.1", daemon_addr="tcp://127.0.0.1:2375") for name in "ab"]
    for node in nodes:
        node.engine = engine  # type: ignore[assignment]
    await asyncio.gather(*[n.report_status(Recorder(), volume_names=[]) for n in nodes])
    assert engine.calls == {"ping": 0, "containers": 2, "volumes": 2}
    assert [f["label"][1] for f in engine.filters] == [f"{LABEL_NODE}=a", f"{LABEL_NODE}=b"]


class DeadEngine(CountingEngine):
    """An engine that cannot be reached: the lists fail, so the node is probed."""

    async def ping(self, timeout: float | None = None) -> bool:
        self.calls["ping"] += 1
        return False

    async def list_containers(self, filters: dict[str, list[str]], all: bool = True) -> list[Any]:
        self.calls["containers"] += 1
        raise NodeUnreachableError("a", "cannot connect")


async def test_lists_not_answering_fall_back_to_the_probe():
    engine = DeadEngine(["a"])
    node = Node("a", "127.0.0.1", daemon_addr="tcp://127.0.0.1:2375")
    node.engine = engine  # type: ignore[assignment]

    async def pings(timeout: float | None = None) -> bool:
        return True

    node.ping = pings  # type: ignore[method-assign]  # No ICMP from a unit test.
    command = Recorder()
    result = await node.report_status(command, volume_names=[], share=EngineShare())
    assert engine.calls["ping"] == 1
    assert result["node_alive"] is True and result["docker_alive"] is False
    infos = [m for code, m in command.messages if code == "i"]
    assert infos == [{"node": ["a", "127.0.0.1", "tcp://127.0.0.1:2375", True, False]}]
    assert not [m for code, m in command.messages if code == "d"]


def test_status_writer_same_lines_and_model_as_clu(tmp_path: Path):
    """The fast status lines are CLU's lines, and the keyword model still follows them."""

    config = {"actor": {"name": "fliswarm", "host": "127.0.0.1", "port": 0}, "status_interval": 0}
    actor = FLISwarmActor.from_config(config, log_dir=tmp_path)
    try:
        actor.transports = {1: Transport(1)}
        command = Command("status", commander_id=1, command_id=7, actor=actor)
        command.transport = actor.transports[1]
        messages = [
            ("info", {"node": ["gfa1", "10.0.0.1", "tcp://10.0.0.1:2375", True, False]}),
            ("debug", {"container": ["gfa1", "NA"]}),
            ("debug", {"volume": ["gfa1", "data", True, "/data/x y"]}),
            ("warning", {"text": "No containers running on 10.0.0.1."}),
            ("info", {"device": ["gfa1", False, "10.0.0.1", 19995]}),
        ]
        writer = StatusWriter(command)
        for method, message in messages:
            getattr(writer, method)(**message)  # First: the model is updated by the writer.
            key, value = next(iter(message.items()))
            assert actor.model is not None and actor.model[key].value == value
            fast = list(actor.transports[1].data)
            actor.transports[1].data.clear()
            getattr(command, method)(**message)
            assert fast == actor.transports[1].data and len(fast) == 1
            actor.transports[1].data.clear()
        assert [r.message_code.value for r in command.replies] == [
            c for m, _ in messages for c in [m[0]] * 2
        ]
    finally:
        for handler in list(actor.log.handlers):
            handler.close()
