"""`report_engine` (the ``status`` command: the nodes of one engine at once) and the
status writer's model update.

Unit tests with a counting stand-in engine (no network); the real engine path is covered by
``test_actor_bed.py`` and the benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clu.command import Command
from test_status_share import CountingEngine, DeadEngine, Recorder, Transport

from fliswarm.actor import FLISwarmActor
from fliswarm.node import Node
from fliswarm.status import EngineShare, StatusWriter
from fliswarm.status_engine import by_engine, report_engine


def _nodes(names: list[str], engine: Any, addr: str = "tcp://127.0.0.1:2375") -> list[Node]:
    nodes = []
    for name in names:
        node = Node(name, "127.0.0.1", daemon_addr=addr)
        node.engine = engine
        nodes.append(node)
    return nodes


def _by_node(messages: list[tuple[str, dict[str, Any]]]) -> dict[str, list[Any]]:
    """Each node's lines in order (warnings by the node they name)."""

    out: dict[str, list[Any]] = {}
    for code, message in messages:
        key, value = next(iter(message.items()))
        owner = value[0] if isinstance(value, list) else value.split(":")[0]
        out.setdefault(owner, []).append((code, key, value))
    return out


async def test_one_engine_call_set_and_the_lines_of_report_status():
    names = ["s01", "s02", "s03"]
    engine = CountingEngine(names[:2] + ["other"])  # s03 has no container.
    nodes = _nodes(names, engine)
    containers = [f"flicamera-{n}" for n in names]

    command = Recorder()
    results = await report_engine(command, nodes, containers, volume_names=["data", "gone"])
    assert engine.calls == {"ping": 0, "containers": 1, "volumes": 1}
    assert engine.filters == [{"label": ["org.sdss.fliswarm.managed=true"], "status": ["running"]}]

    # Each node: exactly the lines (and results) that report_status gives it alone.
    alone = Recorder()
    single = []
    for node, name in zip(nodes, containers, strict=True):
        share = EngineShare()
        single.append(
            await node.report_status(
                alone, container_name=name, volume_names=["data", "gone"], share=share
            )
        )
        share.close()
    assert results == single
    assert _by_node(command.messages) == _by_node(alone.messages)
    assert results[2]["container"] is None and results[0]["volumes"] == {
        "data": "/data",
        "gone": None,
    }


async def test_a_dead_engine_reports_every_node_dead():
    engine = DeadEngine(["a", "b"])
    nodes = _nodes(["a", "b"], engine)

    async def no_ping(timeout: float | None = None) -> bool:
        return False

    for node in nodes:
        node.ping = no_ping  # type: ignore[method-assign]  # No ICMP from a unit test.
    command = Recorder()
    results = await report_engine(command, nodes, [None, None], volume_names=[])
    assert engine.calls["ping"] == 1
    assert [r["docker_alive"] for r in results] == [False, False]
    infos = [m["node"] for code, m in command.messages if code == "i"]
    assert [i[0] for i in infos] == ["a", "b"] and all(i[3:] == [False, False] for i in infos)


def test_by_engine_keeps_the_order():
    engine = CountingEngine([])
    a = _nodes(["a1", "a2"], engine, "tcp://10.0.0.1:2375")
    b = _nodes(["b1"], engine, "tcp://10.0.0.2:2375")
    assert by_engine([a[0], b[0], a[1]]) == [[a[0], a[1]], [b[0]]]


def test_status_writer_model_with_and_without_callbacks(tmp_path: Path):
    """The model takes every value; callbacks, when there are any, still see each update."""

    config = {"actor": {"name": "fliswarm", "host": "127.0.0.1", "port": 0}, "status_interval": 0}
    actor = FLISwarmActor.from_config(config, log_dir=tmp_path)
    try:
        actor.transports = {1: Transport(1)}
        command = Command("status", commander_id=1, command_id=7, actor=actor)
        command.transport = actor.transports[1]
        model = actor.model
        assert model is not None
        writer = StatusWriter(command)
        before = model["node"].last_seen
        writer.info(node=["gfa1", "10.0.0.1", "tcp://10.0.0.1:2375", True, True])
        assert model["node"].value == ["gfa1", "10.0.0.1", "tcp://10.0.0.1:2375", True, True]
        assert model["node"].last_seen is not None and model["node"].last_seen != before
        assert model.last_seen == model["node"].last_seen

        seen: list[Any] = []
        model.register_callback(lambda flat, prop: seen.append(prop.value))
        writer.debug(container=["gfa1", "NA"])
        writer.debug(container=["gfa2", "0123456789ab"])
        assert seen == [["gfa1", "NA"], ["gfa2", "0123456789ab"]]
        assert model["container"].value == ["gfa2", "0123456789ab"]
    finally:
        for handler in list(actor.log.handlers):
            handler.close()
