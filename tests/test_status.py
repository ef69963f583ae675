"""`fliswarm.docker.report`: the nodes of one engine reported together (the ``status`` command and
`.Node.report_status`).

Unit tests of the grouping and call-sharing logic with counting stand-in engines (no network);
the real engine path is covered by ``test_actor_bed.py``, ``test_tls.py`` and the benchmarks.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from fliswarm.docker.containers import LABEL_MANAGED, LABEL_NODE
from fliswarm.docker.node import Node
from fliswarm.docker.report import by_engine, report_engine
from fliswarm.exceptions import NodeError, NodeTLSError, NodeUnreachableError


class CountingEngine:
    """Answers like an engine with one running container per logical node; counts calls."""

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes
        self.calls: dict[str, int] = {"ping": 0, "containers": 0, "volumes": 0}
        self.filters: list[dict[str, list[str]]] = []
        self.last_error: str | None = None
        self.last_failure: NodeError | None = None  # As `Engine`: why the last call failed.

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


class DeadEngine(CountingEngine):
    """An engine that cannot be reached: the lists fail, so the node is probed."""

    async def ping(self, timeout: float | None = None) -> bool:
        self.calls["ping"] += 1
        return False

    async def list_containers(self, filters: dict[str, list[str]], all: bool = True) -> list[Any]:
        self.calls["containers"] += 1
        raise NodeUnreachableError("a", "cannot connect")


class Recorder:
    """Records the keywords written (as a CLU command would receive them)."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.actor = SimpleNamespace(config=config or {})

    def _add(self, code: str, keywords: dict[str, Any]) -> None:
        keywords.pop("validate", None)
        self.messages.append((code, keywords))

    def debug(self, **keywords: Any) -> None:
        self._add("d", keywords)

    def info(self, **keywords: Any) -> None:
        self._add("i", keywords)

    def warning(self, **keywords: Any) -> None:
        self._add("w", keywords)


def _nodes(names: list[str], engine: Any, addr: str = "tcp://127.0.0.1:2375") -> list[Node]:
    nodes = []
    for name in names:
        node = Node(name, "127.0.0.1", daemon_addr=addr)
        node.engine = engine

        async def no_icmp(timeout: float | None = None) -> bool:
            return True

        node.ping = no_icmp  # type: ignore[method-assign]  # No ICMP from a unit test.
        nodes.append(node)
    return nodes


async def test_the_nodes_of_one_engine_share_its_calls():
    names = [f"s{i:02d}" for i in range(10)]
    engine = CountingEngine(names[:-1])  # The last one has no container.
    nodes = _nodes(names, engine)
    command = Recorder()
    containers = [f"flicamera-{name}" for name in names]
    results = await report_engine(command, nodes, containers, ["data", "gone"], 0.5)

    # The lists answering prove the engine alive: no /_ping at all, one list of each.
    assert engine.calls == {"ping": 0, "containers": 1, "volumes": 1}
    assert engine.filters == [{"label": [f"{LABEL_MANAGED}=true"], "status": ["running"]}]
    # Each node still gets its own container (the one labelled with its name) and volumes.
    assert [r["container"] for r in results[:-1]] == [f"{i:02d}" * 6 for i in range(9)]
    assert results[-1]["container"] is None
    assert all(r["volumes"] == {"data": "/data", "gone": None} for r in results)
    # Per node, in order: node, container, volumes; the warnings name the node.
    first = [(code, next(iter(m))) for code, m in command.messages if _about(m, "s00")]
    assert first == [
        ("i", "node"),
        ("d", "container"),
        ("d", "volume"),  # data
        ("w", "text"),  # gone is missing
        ("d", "volume"),
    ]
    warnings = [m["text"] for code, m in command.messages if code == "w"]
    assert "No containers running on 127.0.0.1." in warnings
    assert warnings.count("Volume gone not present in s00.") == 1


def _about(message: dict[str, Any], node: str) -> bool:
    value = next(iter(message.values()))
    return value[0] == node if isinstance(value, list) else f" {node}." in value


async def test_a_dead_engine_reports_every_node_dead_with_one_probe():
    engine = DeadEngine(["a", "b"])
    nodes = _nodes(["a", "b"], engine)
    command = Recorder()
    results = await report_engine(command, nodes, [None, None], [], 0.5)
    assert engine.calls["ping"] == 1
    assert [(r["node_alive"], r["docker_alive"]) for r in results] == [(True, False)] * 2
    infos = [m["node"] for code, m in command.messages if code == "i"]
    assert infos == [
        ["a", "127.0.0.1", "tcp://127.0.0.1:2375", True, False],
        ["b", "127.0.0.1", "tcp://127.0.0.1:2375", True, False],
    ]
    assert not [m for code, m in command.messages if code == "d"]


def test_by_engine_keeps_the_order():
    engine = CountingEngine([])
    a = _nodes(["a1", "a2"], engine, "tcp://10.0.0.1:2375")
    b = _nodes(["b1"], engine, "tcp://10.0.0.2:2375")
    assert by_engine([a[0], b[0], a[1]]) == [[a[0], a[1]], [b[0]]]


async def test_node_report_status_is_the_same_report():
    """The original's `Node.report_status` (volumes from the command's actor) gives the lines
    `report_engine` gives that node, and honours ``volumes`` and ``containers``."""

    engine = CountingEngine(["a"])
    [node] = _nodes(["a"], engine)
    config = {"volumes": {"data": {}, "home": {}}, "ping_timeout": 0.5}
    alone, together = Recorder(config), Recorder()
    result = await node.report_status(alone)
    [expected] = await report_engine(together, [node], [None], ["data", "home"], 0.5)
    assert result == expected and alone.messages == together.messages

    bare = Recorder(config)
    await node.report_status(bare, volumes=False, containers=False)
    assert [next(iter(m)) for _, m in bare.messages] == ["node"]


class SilentEngine(CountingEngine):
    """An engine whose packets vanish (a node powered off): no call ever answers."""

    async def ping(self, timeout: float | None = None) -> bool:
        self.calls["ping"] += 1
        await asyncio.Event().wait()
        return False

    async def list_containers(self, filters: dict[str, list[str]], all: bool = True) -> list[Any]:
        await asyncio.Event().wait()
        return []


async def test_a_node_that_does_not_answer_ping_is_down_without_waiting_for_its_engine():
    """As the original's status: no ICMP echo, the node is down, at once, whatever its
    engine's time-out (here the engine never answers)."""

    engine = SilentEngine(["a"])
    [node] = _nodes(["a"], engine)

    async def dead(timeout: float | None = None) -> bool:
        return False

    node.ping = dead  # type: ignore[method-assign]
    command = Recorder()
    [result] = await asyncio.wait_for(report_engine(command, [node], [None], [], 0.5), 10)
    assert (result["node_alive"], result["docker_alive"]) == (False, False)
    warnings = [m["text"] for code, m in command.messages if code == "w"]
    assert "Node 127.0.0.1 is not pinging back." in warnings


class ClosedUnderTheListsEngine(CountingEngine):
    """The interleaving of a status sent right after start (a TLS engine of another CA): the
    lists fail at once with an error of fliswarm's own client ("Session is closed": the
    client was closed under them), while a ``/_ping`` on a fresh client answers."""

    async def list_containers(self, filters: dict[str, list[str]], all: bool = True) -> list[Any]:
        self.calls["containers"] += 1
        raise RuntimeError("Session is closed")


class PingOnlyEngine(CountingEngine):
    """``/_ping`` answers, the lists fail once the probe has answered (the engine went away,
    or refused the client's certificate, in between)."""

    def __init__(self, nodes: list[str]) -> None:
        super().__init__(nodes)
        self.pinged = asyncio.Event()

    async def ping(self, timeout: float | None = None) -> bool:
        self.pinged.set()
        return await super().ping(timeout)

    async def list_containers(self, filters: dict[str, list[str]], all: bool = True) -> list[Any]:
        self.calls["containers"] += 1
        await self.pinged.wait()
        raise NodeTLSError(
            "a", "Docker engine at tcp://127.0.0.1:2376: the engine's certificate was rejected."
        )


async def test_status_never_says_an_engine_alive_that_its_lists_did_not_reach():
    """Issue 17: ``node=gfa6,...,T,T`` with ``cannot get the status: Session is closed``.
    Whatever the lists fail with, the node row says the engine was not reached, and the
    report ends normally (before: T,T, then the error escaped the report)."""

    for engine in (ClosedUnderTheListsEngine(["a"]), PingOnlyEngine(["a"])):
        [node] = _nodes(["a"], engine)
        command = Recorder()
        [result] = await asyncio.wait_for(report_engine(command, [node], [None], [], 0.5), 10)
        rows = [m["node"] for code, m in command.messages if code == "i" and "node" in m]
        assert rows == [["a", "127.0.0.1", "tcp://127.0.0.1:2375", True, False]], rows
        assert result["docker_alive"] is False
        warnings = [m["text"] for code, m in command.messages if code == "w"]
        assert "Docker client on node 127.0.0.1 is not connected." in warnings
        assert any(w.startswith("a: ") and "Docker engine at" in w for w in warnings), warnings
