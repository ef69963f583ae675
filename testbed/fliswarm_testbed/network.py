"""Network plumbing of the test bed: namespaces, veth pairs, the switch bridge, routes.

Layout of instance ``I`` (prefix ``fswI``, subnet ``10.250.(77+I).0/24``):

- the manager is the root network namespace, with ``fswI-mgr`` = ``.1/24``;
- a switch namespace ``fswI-switch`` holds the bridge ``br0``, the manager's peer ``mgr``
  and one port ``pN`` per node (the bridge lives in its own namespace so the root
  namespace's FORWARD policy does not matter);
- node ``N`` (1-based) lives in namespace ``fswI-<name>``, whose ``eth0`` has the fixed
  MAC `Plan.node_mac` and the address ``.(10+N)/24``, and no default route.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass


__all__ = [
    "CommandError",
    "Plan",
    "run",
    "ensure_packages",
    "PACKAGES",
    "safety_route",
    "create_switch",
    "delete_switch",
    "create_node_net",
    "delete_node_net",
    "set_port",
    "pin_neighbour",
    "port_is_up",
    "netns_exists",
    "list_netns",
    "link_exists",
    "NETNS_DIR",
    "SAFETY_ROUTE",
]


NETNS_DIR = "/run/netns"
SAFETY_ROUTE = "10.250.0.0/16"
#: Debian packages the test bed needs.
PACKAGES = [
    "docker.io",
    "docker-registry",
    "busybox-static",
    "iputils-ping",
    "iproute2",
    "util-linux",
]

SWITCH_BRIDGE = "br0"
SWITCH_MANAGER_PORT = "mgr"


class CommandError(RuntimeError):
    """A test-bed helper program failed."""


def run(
    args: Sequence[str],
    timeout: float = 10.0,
    check: bool = True,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Runs a program (an argv list, never a shell string) and waits for it.

    Parameters
    ----------
    args
        The program and its arguments.
    timeout
        Seconds before the program is killed and `subprocess.TimeoutExpired` raised.
    check
        Raise `CommandError` (with the program's stderr) on a non-zero exit status.
    input
        Bytes for the program's stdin; stdin is ``/dev/null`` otherwise.

    """

    proc = subprocess.run(
        list(args),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise CommandError(f"{' '.join(args)!r} failed ({proc.returncode}): {err}")
    return proc


def ensure_packages(timeout: float = 900.0) -> list[str]:
    """Installs the Debian packages of the test bed that are missing.

    Returns
    -------
    list
        The packages that were installed (empty when all were present).
    """

    proc = run(["dpkg-query", "-W", "-f", "${Package} ${Status}\n", *PACKAGES], check=False)
    installed = {
        line.split()[0]
        for line in proc.stdout.decode().splitlines()
        if line.endswith("install ok installed")
    }
    missing = [p for p in PACKAGES if p not in installed]
    if not missing:
        return []
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = ["apt-get", "-y", "-q", "-o", "Dpkg::Options::=--force-confold"]
    args = [*apt, "install", "--no-install-recommends", *missing]
    result = subprocess.run(args, env=env, stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    if result.returncode != 0:
        subprocess.run([*apt, "update"], env=env, stdin=subprocess.DEVNULL, timeout=timeout)
        subprocess.run(args, env=env, stdin=subprocess.DEVNULL, timeout=timeout, check=True)
    return missing


@dataclass(frozen=True)
class Plan:
    """The names and addresses of one test-bed instance."""

    instance: int

    def __post_init__(self) -> None:
        if not 0 <= self.instance <= 99:
            raise ValueError("the test-bed instance must be between 0 and 99.")

    @property
    def prefix(self) -> str:
        """Prefix of every namespace and root interface of this instance (``fsw0``)."""
        return f"fsw{self.instance}"

    @property
    def subnet(self) -> str:
        return f"10.250.{77 + self.instance}.0/24"

    @property
    def manager_addr(self) -> str:
        return f"10.250.{77 + self.instance}.1"

    @property
    def manager_link(self) -> str:
        """The manager's interface in the root namespace."""
        return f"{self.prefix}-mgr"

    @property
    def switch_netns(self) -> str:
        return f"{self.prefix}-switch"

    def node_addr(self, index: int) -> str:
        """Address of the node with 1-based ``index``."""
        return f"10.250.{77 + self.instance}.{10 + index}"

    def node_mac(self, index: int) -> str:
        """Fixed, locally administered MAC of a node (stable across power cycles)."""
        return f"02:fb:{self.instance:02x}:00:00:{10 + index:02x}"

    @property
    def manager_mac(self) -> str:
        return f"02:fb:{self.instance:02x}:00:00:01"

    def node_netns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    @staticmethod
    def node_port(index: int) -> str:
        """The node's port (veth peer) on the switch bridge."""
        return f"p{index}"


def _ip(*args: str, netns: str | None = None, check: bool = True) -> None:
    cmd = ["ip"]
    if netns:
        cmd += ["-n", netns]
    run([*cmd, *args], check=check)


def _batch(lines: list[str], netns: str | None = None) -> None:
    """Runs several ``ip`` commands in one process (``ip -batch -``)."""

    cmd = ["ip"]
    if netns:
        cmd += ["-n", netns]
    run([*cmd, "-batch", "-"], input=("\n".join(lines) + "\n").encode())


def netns_exists(name: str) -> bool:
    """Whether ``/run/netns/<name>`` exists."""
    return os.path.exists(os.path.join(NETNS_DIR, name))


def list_netns(prefix: str) -> list[str]:
    """Named network namespaces whose name starts with ``prefix``."""

    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def link_exists(name: str, netns: str | None = None) -> bool:
    """Whether an interface exists (in the root namespace or in ``netns``)."""

    if netns is None:
        return os.path.exists(f"/sys/class/net/{name}")
    if not netns_exists(netns):
        return False
    cmd = ["ip", "-n", netns, "link", "show", "dev", name]
    return run(cmd, check=False).returncode == 0


def safety_route() -> None:
    """Makes every test-bed address unreachable unless a bed link is up.

    ``unreachable 10.250.0.0/16 metric 4000`` in the root namespace: the connected
    route of a live bed wins; once its link is gone, packets to its addresses are
    refused locally instead of following the default route off the machine.
    """

    _ip("route", "replace", "unreachable", SAFETY_ROUTE, "metric", "4000")


def create_switch(plan: Plan) -> None:
    """Creates the switch namespace, its bridge and the manager's link."""

    sw = plan.switch_netns
    if link_exists(plan.manager_link):
        _ip("link", "del", plan.manager_link, check=False)
    if netns_exists(sw):
        _ip("netns", "del", sw, check=False)
    _ip("netns", "add", sw)
    _batch(
        [
            "link set lo up",
            f"link add {SWITCH_BRIDGE} type bridge",
            f"link set {SWITCH_BRIDGE} type bridge forward_delay 0 stp_state 0",
            f"link set {SWITCH_BRIDGE} up",
        ],
        netns=sw,
    )
    _ip(
        "link",
        "add",
        plan.manager_link,
        "type",
        "veth",
        "peer",
        "name",
        SWITCH_MANAGER_PORT,
        "netns",
        sw,
    )
    _ip("link", "set", SWITCH_MANAGER_PORT, "master", SWITCH_BRIDGE, "up", netns=sw)
    _batch(
        [
            f"link set {plan.manager_link} address {plan.manager_mac}",
            f"addr add {plan.manager_addr}/24 dev {plan.manager_link}",
            f"link set {plan.manager_link} up",
        ]
    )


def delete_switch(plan: Plan) -> None:
    """Deletes the manager's link and the switch namespace (missing parts are fine)."""

    if link_exists(plan.manager_link):
        _ip("link", "del", plan.manager_link, check=False)
    if netns_exists(plan.switch_netns):
        _ip("netns", "del", plan.switch_netns, check=False)


def create_node_net(plan: Plan, name: str, index: int) -> None:
    """Creates a node's namespace and plugs it into the switch.

    The node gets its fixed MAC and address, no default route, and the manager
    forgets any stale neighbour entry for it.
    """

    ns = plan.node_netns(name)
    port = plan.node_port(index)
    delete_node_net(plan, name, index)
    _ip("netns", "add", ns)
    _batch(
        [
            f"link add {port} type veth peer name eth0 netns {ns}",
            f"link set {port} master {SWITCH_BRIDGE} up",
        ],
        netns=plan.switch_netns,
    )
    _batch(
        [
            "link set lo up",
            f"link set eth0 address {plan.node_mac(index)}",
            f"addr add {plan.node_addr(index)}/24 dev eth0",
            "link set eth0 up",
        ],
        netns=ns,
    )
    pin_neighbour(plan, index)


def pin_neighbour(plan: Plan, index: int) -> None:
    """Forgets stale neighbour entries of a node, then pins its fixed MAC on the manager.

    With a permanent entry the manager never ARPs for a node: when the node is powered
    off or unplugged, frames to it vanish (TCP hangs until the client's timeout, as with
    a real dead host) instead of failing fast with ``No route to host``.
    """

    addr = plan.node_addr(index)
    _ip("neigh", "flush", "dev", plan.manager_link, "to", addr, check=False)
    _ip(
        "neigh",
        "replace",
        addr,
        "lladdr",
        plan.node_mac(index),
        "dev",
        plan.manager_link,
        "nud",
        "permanent",
    )


def delete_node_net(plan: Plan, name: str, index: int) -> None:
    """Unplugs a node and deletes its namespace (the veth first: netns deletion is async)."""

    if link_exists(plan.node_port(index), plan.switch_netns):
        _ip("link", "del", plan.node_port(index), netns=plan.switch_netns, check=False)
    if netns_exists(plan.node_netns(name)):
        _ip("netns", "del", plan.node_netns(name), check=False)


def set_port(plan: Plan, index: int, up: bool) -> None:
    """Plugs (``up``) or unplugs a node's cable: its switch port goes up or down."""

    _ip(
        "link",
        "set",
        plan.node_port(index),
        "up" if up else "down",
        netns=plan.switch_netns,
    )


def port_is_up(plan: Plan, index: int) -> bool:
    """Whether the node's switch port is administratively up."""

    if not netns_exists(plan.switch_netns):
        return False
    cmd = ["ip", "-n", plan.switch_netns, "-o", "link", "show", "dev", plan.node_port(index)]
    proc = run(cmd, check=False)
    if proc.returncode != 0:
        return False
    flags = proc.stdout.decode().split("<", 1)[-1].split(">", 1)[0].split(",")
    return "UP" in flags
