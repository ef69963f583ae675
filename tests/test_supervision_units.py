"""Pure logic of the supervisor: states, back-off, restart policy, desired state, drift."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fliswarm.config.settings import Settings
from fliswarm.docker.containers import (
    LABEL_CONFIG_HASH,
    LABEL_MANAGED,
    canonical_config,
    config_hash,
    container_body,
    image_reference,
    made_by_0_7,
    made_by_fliswarm,
)
from fliswarm.docker.events import EventWatcher
from fliswarm.docker.launch import check_managed
from fliswarm.exceptions import ContainerConflictError, NodeTimeoutError, NodeUnreachableError
from fliswarm.provision import Provisioner
from fliswarm.provision.desired import (
    container_drift,
    container_spec,
    desired_node,
    engine_restart_policy,
)
from fliswarm.supervision import Supervisor
from fliswarm.supervision.reconciler import NodeReconciler, Outcome
from fliswarm.supervision.state import (
    NodeState,
    NodeStatus,
    iso_time,
    should_restart,
)
from fliswarm.tools import Backoff


def make_actor(**overrides: Any) -> SimpleNamespace:
    config: dict[str, Any] = {
        "registry": "10.250.82.1:5000",
        "image": "sdss/flicamera:sim",
        "container_name": "flicamera",
        "status_interval": 300,
        "restart_policy": "always",
        "self_healing": True,
        "replace_drifted": False,
        "environment": {"FLICAMERA_DATA_DIR": "/data"},
        "nodes": {
            "gfa1": {
                "host": "10.250.82.11",
                "port": 19995,
                "docker-uid": 2005,
                "docker-gid": 3005,
            },
            "fvc": {"host": "10.250.82.12", "port": 19995},
        },
        "volumes": {
            "data": {
                "driver": "local",
                "opts": {"type": "none", "o": "bind", "device": "/srv/data"},
            }
        },
    }
    config.update(overrides)
    return SimpleNamespace(
        config=config,
        settings=Settings.from_config(dict(config, observatory="APO")),
        nodes={},
    )


# ------------------------------------------------------------------------ states


def test_status_changes_only_on_new_state() -> None:
    status = NodeStatus()
    assert status.state is NodeState.DISABLED
    assert status.set(NodeState.ONLINE, "ok", now=100.0)
    assert status.since == 100.0
    assert not status.set(NodeState.ONLINE, "still ok", now=200.0)
    assert status.since == 100.0 and status.reason == "still ok"
    assert status.set(NodeState.OFFLINE, "gone", now=300.0)
    assert status.keyword("gfa1") == ["gfa1", "offline", iso_time(300.0), "gone"]
    # Never an empty reason: tron's keyword parsers drop a line with an empty list item.
    status.set(NodeState.DEGRADED, "", now=400.0)
    assert status.keyword("gfa1")[-1] == "degraded"


def test_iso_time() -> None:
    assert iso_time(0.25) == "1970-01-01T00:00:00.250Z"


def test_state_values_are_the_keyword_values() -> None:
    assert {s.value for s in NodeState} == {
        "online",
        "offline",
        "degraded",
        "recovering",
        "disabled",
        "drifted",
    }
    assert str(NodeState.DRIFTED) == "drifted"


# ---------------------------------------------------------------------- back-off


def test_backoff_grows_to_its_maximum_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, 2.0, 0.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next() == 0.5


@given(
    initial=st.floats(0.01, 5),
    ratio=st.floats(1, 100),
    factor=st.floats(1, 4),
    jitter=st.floats(0, 1),
    n=st.integers(0, 200),
)
def test_backoff_stays_within_bounds(
    initial: float, ratio: float, factor: float, jitter: float, n: int
) -> None:
    maximum = initial * ratio
    backoff = Backoff(initial, maximum, factor, jitter, rng=random.Random(n))
    for _ in range(n):
        backoff.next()
    bound = backoff.peek()
    delay = backoff.next()
    assert bound * (1 - jitter) - 1e-9 <= delay <= bound + 1e-9
    assert initial * (1 - jitter) - 1e-9 <= delay <= maximum + 1e-9


def test_backoff_jitter_spreads_nodes_apart() -> None:
    delays = {Backoff(1.0, 10.0, 2.0, 0.5, rng=random.Random(seed)).next() for seed in range(20)}
    assert len(delays) == 20
    assert all(0.5 <= d <= 1.0 for d in delays)


@pytest.mark.parametrize(
    "args", [(0, 1, 2, 0), (1, 0.5, 2, 0), (1, 2, 0.5, 0), (1, 2, 2, 1.5), (1, 2, 2, -0.1)]
)
def test_backoff_rejects_bad_parameters(args: tuple[float, float, float, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(*args)


# ----------------------------------------------------------------- restart policy


@pytest.mark.parametrize(
    "policy, code, oom, expected",
    [
        ("always", 0, False, True),
        ("always", 137, False, True),
        ("on-failure", 0, False, False),
        ("on-failure", 1, False, True),
        ("on-failure", 137, False, True),
        ("on-failure", 0, True, True),
        ("on-failure", None, False, False),
        ("never", 137, True, False),
    ],
)
def test_should_restart(policy: str, code: int | None, oom: bool, expected: bool) -> None:
    assert should_restart(policy, code, oom) is expected


def test_unknown_restart_policy() -> None:
    with pytest.raises(ValueError, match="unknown restart policy"):
        should_restart("sometimes", 1)
    with pytest.raises(ValueError):
        engine_restart_policy("sometimes")


def test_engine_restart_policy() -> None:
    assert engine_restart_policy("always")["Name"] == "unless-stopped"
    assert engine_restart_policy("on-failure")["Name"] == "on-failure"
    assert engine_restart_policy("never")["Name"] == "no"
    assert engine_restart_policy("always", self_healing=False)["Name"] == "no"


# ----------------------------------------------------------------- desired state


def test_desired_node_from_config() -> None:
    actor = make_actor(restart_policy="on-failure", replace_drifted=True)
    desired = desired_node(actor.settings, "gfa1")
    assert desired.container == "flicamera-gfa1"
    assert desired.spec["user"] == "2005:3005"
    assert desired.spec["envs"] == {
        "ACTOR_NAME": "gfa1",
        "OBSERVATORY": "APO",
        "FLICAMERA_DATA_DIR": "/data",
    }
    assert desired.spec["privileged"] is True
    assert desired.volumes == {
        "data": {"driver": "local", "opts": {"type": "none", "o": "bind", "device": "/srv/data"}}
    }
    assert desired.restart_policy == "on-failure" and desired.replace_drifted
    assert desired.engine_restart["Name"] == "on-failure"
    assert desired_node(actor.settings, "fvc").spec["user"] is None


def test_desired_hash_is_the_label_node_gives() -> None:
    """The hash must equal the label `Node.run_container` puts on the container."""

    actor = make_actor()
    desired = desired_node(actor.settings, "gfa1")
    spec = container_spec(actor.settings, "gfa1")
    ref = image_reference(spec["image"], spec["registry"])
    canonical = canonical_config(
        spec["name"], ref, {"data": "/srv/data"}, True, spec["envs"], {}, "host", spec["user"]
    )
    body = container_body("gfa1", canonical)
    assert body["Labels"][LABEL_CONFIG_HASH] == desired.config_hash == config_hash(canonical)


@pytest.mark.parametrize(
    "change",
    [
        {"image": "sdss/flicamera:other"},
        {"environment": {"FLICAMERA_DATA_DIR": "/elsewhere"}},
        {"registry": "10.250.82.1:5001"},
        {"volumes": {"data": {"driver": "local", "opts": {"device": "/srv/other"}}}},
    ],
)
def test_every_setting_changes_the_hash(change: dict[str, Any]) -> None:
    assert desired_node(make_actor().settings, "gfa1").config_hash != (
        desired_node(make_actor(**change).settings, "gfa1").config_hash
    )


def test_volume_without_device_gives_no_hash() -> None:
    actor = make_actor(volumes={"scratch": {"driver": "local", "opts": {"type": "tmpfs"}}})
    assert desired_node(actor.settings, "gfa1").config_hash is None


def test_drift_detection() -> None:
    desired = desired_node(make_actor().settings, "gfa1")

    def info(labels: dict[str, str]) -> dict[str, Any]:
        return {"Id": "abc", "Config": {"Labels": labels}}

    assert (
        container_drift(
            info({LABEL_MANAGED: "true", LABEL_CONFIG_HASH: desired.config_hash or ""}), desired
        )
        is None
    )
    why = container_drift(info({LABEL_MANAGED: "true", LABEL_CONFIG_HASH: "0" * 64}), desired)
    assert why is not None and "000000000000" in why
    assert "no config hash" in (container_drift(info({LABEL_MANAGED: "true"}), desired) or "")
    assert container_drift(info({}), desired) is None  # not ours: never called drifted


def test_containers_of_0_7_are_fliswarm_s_and_drifted() -> None:
    """After an upgrade in place, 0.7's containers (no labels; privileged, ``--rm``,
    ``ACTOR_NAME=<node>``) are fliswarm's, drifted; a look-alike without them is not."""

    desired = desired_node(make_actor().settings, "gfa1")
    of_07 = {
        "Id": "abc",
        "Config": {"Labels": {}, "Env": ["ACTOR_NAME=gfa1", "OBSERVATORY=APO"]},
        "HostConfig": {"Privileged": True, "AutoRemove": True},
    }
    assert made_by_0_7(of_07, "gfa1") and made_by_fliswarm(of_07, "gfa1")
    assert "sdss-fliswarm 0.7 made it" in (container_drift(of_07, desired) or "")
    check_managed("gfa1", of_07, "flicamera-gfa1")  # no ContainerConflictError
    assert not made_by_0_7(of_07, "gfa2")  # another node's
    for change in (
        {"HostConfig": {"Privileged": True, "AutoRemove": False}},
        {"HostConfig": {"Privileged": False, "AutoRemove": True}},
        {"Config": {"Labels": {}, "Env": []}},
        {"Config": {"Labels": {LABEL_MANAGED: "false"}, "Env": ["ACTOR_NAME=gfa1"]}},
    ):
        other = of_07 | change
        assert not made_by_fliswarm(other, "gfa1"), change
        assert container_drift(other, desired) is None
        with pytest.raises(ContainerConflictError, match="not created by fliswarm"):
            check_managed("gfa1", other, "flicamera-gfa1")


# ------------------------------------------------------------ scheduling (no hot loop)


def provisioner(actor: Any) -> Provisioner:
    """A provisioner with no node (these tests never repair one)."""

    return Provisioner({}, {}, lambda name: desired_node(actor.settings, name), 30.0, 5.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0


def make_reconciler(clock: Clock) -> NodeReconciler:
    actor = make_actor()
    actor.write = lambda *args, **kwargs: None
    supervisor = Supervisor(actor, provisioner(actor), backoff=(0.5, 30.0, 2.0, 0.0))
    reconciler = NodeReconciler(supervisor, "gfa1")
    reconciler._loop_time = lambda: clock.now  # type: ignore[method-assign]
    return reconciler


async def test_flapping_node_steps_are_spaced_exponentially() -> None:
    clock = Clock()
    reconciler = make_reconciler(clock)
    starts = []
    # The container dies every 2 s for 60 s; each wake runs a step no earlier than allowed.
    for _ in range(30):
        clock.now = max(clock.now, reconciler._not_before)
        starts.append(clock.now)
        reconciler._schedule(Outcome.REPAIRED)
        clock.now += 2.0
    assert len(starts) == 30
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps[-1] == 30.0  # capped
    # Over the first 60 s, far fewer steps than the 30 deaths.
    assert sum(1 for t in starts if t <= 60) <= 8


async def test_backoff_resets_after_a_stable_period() -> None:
    clock = Clock()
    reconciler = make_reconciler(clock)
    for _ in range(4):
        reconciler._schedule(Outcome.RETRY)
    assert reconciler.backoff.attempts == 4
    clock.now += 100.0  # healthy for a long time
    reconciler._schedule(Outcome.REPAIRED)
    assert reconciler.backoff.attempts == 1
    assert reconciler._not_before == clock.now + 0.5


async def test_ok_and_hold_do_not_grow_the_backoff() -> None:
    clock = Clock()
    reconciler = make_reconciler(clock)
    for outcome in (Outcome.OK, Outcome.HOLD, Outcome.OFFLINE):
        assert reconciler._schedule(outcome) is None
    assert reconciler.backoff.attempts == 0
    assert reconciler._schedule(Outcome.RETRY) == 0.5


async def test_events_are_filtered_and_reported() -> None:
    actor = make_actor()
    written: list[tuple[str, dict[str, Any]]] = []
    actor.write = lambda code, keywords: written.append((code, keywords))
    supervisor = Supervisor(actor, provisioner(actor))
    reconciler = NodeReconciler(supervisor, "gfa1")
    supervisor.reconcilers["gfa1"] = reconciler

    def event(action: str, name: str, **attrs: str) -> dict[str, Any]:
        return {
            "Type": "container",
            "Action": action,
            "Actor": {"ID": "f" * 64, "Attributes": {"name": name, **attrs}},
        }

    supervisor._on_event("gfa1", event("kill", "flicamera-gfa1", signal="9"))
    assert not reconciler.wake_event.is_set()  # die follows
    supervisor._on_event("gfa1", event("die", "flicamera-gfa1", exitCode="137"))
    assert reconciler.wake_event.is_set()
    supervisor._on_event("gfa1", event("die", "something-else", exitCode="1"))
    assert written == [
        ("i", {"containerEvent": ["gfa1", "kill", "ffffffffffff"]}),
        ("i", {"containerEvent": ["gfa1", "die", "ffffffffffff", 137]}),
    ]
    await asyncio.sleep(0)


# ------------------------------------------------- engine link: heartbeat and probing


class SilentStreamEngine:
    """An engine whose event stream is live but silent, and whose pings answer while
    ``answering`` (then time out: the network was cut). Subscriptions fail while
    ``reachable`` is false."""

    def __init__(self) -> None:
        self.answering = True
        self.reachable = True
        self.subscriptions = 0
        self.pings = 0
        self.pinged_thrice = asyncio.Event()

    @contextlib.asynccontextmanager
    async def events(self, filters: Any, timeout: float | None = None) -> AsyncIterator[Any]:
        self.subscriptions += 1
        if not self.reachable:
            raise NodeUnreachableError("gfa1", "Docker engine at tcp://x:2375 is not answering.")

        async def silent() -> AsyncIterator[dict[str, Any]]:
            await asyncio.Event().wait()  # Packets dropped: no event, no error, ever.
            yield {}

        yield silent()

    async def check(self, timeout: float | None = None) -> bool:
        self.pings += 1
        if self.pings >= 3:
            self.pinged_thrice.set()
        if not self.answering:
            raise NodeTimeoutError("gfa1", "Docker engine at tcp://x:2375: no answer within 1 s.")
        return True

    async def close(self) -> None:
        pass


class Link:
    """A watcher of a `SilentStreamEngine`, and what it reported."""

    def __init__(self, backoff: Backoff | None = None) -> None:
        self.lost: list[str] = []
        self.lost_event = asyncio.Event()
        self.connected = asyncio.Event()
        self.watcher = EventWatcher(
            "gfa1",
            "tcp://x:2375",
            on_event=lambda event: None,
            on_connected=self.connected.set,
            on_lost=self._lost,
            backoff=backoff,
            heartbeat=(0.02, 0.02, 2),
        )
        self.engine = SilentStreamEngine()
        self.watcher.engine = self.engine  # type: ignore[assignment]

    def _lost(self, reason: str) -> None:
        self.lost.append(reason)
        self.lost_event.set()


async def test_heartbeat_declares_a_silent_engine_lost() -> None:
    """Issue 17: a cut network leaves the event stream open and quiet; the heartbeat's
    failed pings end it (before: nothing noticed it but the TCP keep-alive)."""

    link = Link()
    link.watcher.start()
    try:
        await asyncio.wait_for(link.engine.pinged_thrice.wait(), 10)
        assert link.lost == [] and link.watcher.connected  # Answered pings keep the stream.
        link.engine.answering = False
        await asyncio.wait_for(link.lost_event.wait(), 10)
        assert link.lost == ["Docker engine at tcp://x:2375: no answer within 1 s."]
        assert link.watcher.missed_beats == 2
        assert not link.watcher.connected
    finally:
        await link.watcher.stop()


async def test_poke_probes_an_offline_engine_at_once() -> None:
    """A user asking for an offline node (``talk``, ``status``: `Supervisor.is_offline`)
    makes the engine be tried again now, not after the back-off."""

    link = Link(backoff=Backoff(60.0, 60.0, 1.0, 0.0))
    link.engine.reachable = False
    link.watcher.start()
    try:
        await asyncio.wait_for(link.lost_event.wait(), 10)
        assert link.engine.subscriptions == 1  # Now in a 60 s pause.
        link.engine.reachable = True

        actor = make_actor()
        actor.write = lambda *args, **kwargs: None
        supervisor = Supervisor(actor, provisioner(actor))
        reconciler = NodeReconciler(supervisor, "gfa1")
        reconciler.status.set(NodeState.OFFLINE, "the engine does not answer")
        supervisor.reconcilers["gfa1"] = reconciler
        supervisor.watchers["gfa1"] = link.watcher
        assert supervisor.is_offline("gfa1")
        await asyncio.wait_for(link.connected.wait(), 5)
        assert link.engine.subscriptions == 2
    finally:
        await link.watcher.stop()
