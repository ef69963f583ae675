"""Node states and the restart-policy decision of the supervisor (pure logic)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from fliswarm.provision.desired import RESTART_POLICIES


__all__ = [
    "NodeState",
    "NodeStatus",
    "should_restart",
    "iso_time",
    "not_managed",
]


class NodeState(str, enum.Enum):
    """What the supervisor knows about a node.

    - ``online``: the engine answers, the container runs with the configured settings and
      the flicamera device is connected;
    - ``offline``: the node's Docker engine does not answer;
    - ``degraded``: the engine answers but the container or the device is not right, and
      it is not being repaired (self-healing off, restart policy, or repair failing);
    - ``recovering``: a repair is in progress;
    - ``disabled``: the node is not supervised;
    - ``drifted``: like ``online``, but the container was created from other settings
      than the configured ones (its config hash label differs).
    """

    ONLINE = "online"
    OFFLINE = "offline"
    DEGRADED = "degraded"
    RECOVERING = "recovering"
    DISABLED = "disabled"
    DRIFTED = "drifted"

    def __str__(self) -> str:
        return self.value


def not_managed(name: str) -> str:
    """The ``nodeState`` reason of a node fliswarm does not supervise (``disabled``)."""

    return f"fliswarm does not manage this node (fliswarm enable {name} to manage it)"


def iso_time(timestamp: float) -> str:
    """A UNIX time as ``YYYY-MM-DDTHH:MM:SS.sssZ`` (UTC)."""

    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
    return f"{seconds}.{int(timestamp % 1 * 1000):03d}Z"


@dataclass
class NodeStatus:
    """The current state of a node, since when, and why."""

    state: NodeState = NodeState.DISABLED
    since: float = field(default_factory=time.time)
    reason: str = ""

    def set(self, state: NodeState, reason: str = "", now: float | None = None) -> bool:
        """Changes the state; returns whether the state (not only the reason) changed."""

        changed = state != self.state
        if changed:
            self.since = time.time() if now is None else now
        self.state = state
        self.reason = reason
        return changed

    def keyword(self, node: str) -> list[str]:
        """The ``nodeState`` value: ``[node, state, since, reason]``.

        The reason is never empty (tron's parsers drop a line with an empty list item).
        """

        return [node, self.state.value, iso_time(self.since), self.reason or self.state.value]


def should_restart(policy: str, exit_code: int | None, oom_killed: bool = False) -> bool:
    """Whether a stopped container is started again under a ``restart_policy``.

    ``always`` restarts whatever the exit; ``on-failure`` only after a non-zero exit code or
    an OOM kill; ``never`` never does.
    """

    if policy not in RESTART_POLICIES:
        raise ValueError(f"unknown restart policy {policy!r}.")
    if policy == "always":
        return True
    if policy == "never":
        return False
    return bool(oom_killed) or (exit_code is not None and exit_code != 0)
