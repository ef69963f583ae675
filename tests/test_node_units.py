"""Unit tests (pure logic, no Docker) for Node's building blocks."""

from __future__ import annotations

import pytest

from fliswarm.docker.containers import (
    LABEL_CONFIG_HASH,
    LABEL_IMAGE,
    LABEL_MANAGED,
    LABEL_NODE,
    canonical_config,
    config_hash,
    container_body,
    image_reference,
    mount_target,
    normalize_ports,
    port_bindings,
    short_id,
)
from fliswarm.docker.images import PullProgress
from fliswarm.docker.launch import _repository
from fliswarm.docker.node import Node
from fliswarm.docker.ping import PingProgram, format_wait, parse_iputils_version, ping_argv
from fliswarm.exceptions import (
    DockerAPIError,
    FliswarmError,
    NodeError,
    NodeTimeoutError,
    NodeUnreachableError,
)


def _config(**kw):
    args = dict(
        name="flicamera-gfa1",
        image="hub:5000/sdss/flicamera:latest",
        mounts={"data": "/data", "home": "/home/sdss5"},
        privileged=True,
        envs={"ACTOR_NAME": "gfa1", "OBSERVATORY": "APO"},
        ports=normalize_ports([19995]),
        network="host",
        user="2005:3005",
    )
    args.update(kw)
    return canonical_config(**args)


# Configuration hash


def test_hash_is_stable_and_order_independent():
    a = _config(envs={"A": "1", "B": "2"}, mounts={"x": "/x", "y": "/y"})
    b = _config(envs={"B": "2", "A": "1"}, mounts={"y": "/y", "x": "/x"})
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 64
    int(config_hash(a), 16)


@pytest.mark.parametrize(
    "change",
    [
        {"image": "hub:5000/sdss/flicamera:1.0"},
        {"privileged": False},
        {"user": "1000:1000"},
        {"envs": {"ACTOR_NAME": "gfa2", "OBSERVATORY": "APO"}},
        {"mounts": {"data": "/data"}},
        {"network": "bridge"},
        {"cmd": ["sleep", "1"]},
        {"name": "other"},
    ],
)
def test_hash_changes_with_every_setting(change):
    assert config_hash(_config()) != config_hash(_config(**change))


def test_hash_ignores_ports_on_host_network_only():
    host1 = _config(ports=normalize_ports([1]), network="host")
    host2 = _config(ports=normalize_ports([2]), network="host")
    assert config_hash(host1) == config_hash(host2)
    br1 = _config(ports=normalize_ports([1]), network="bridge")
    br2 = _config(ports=normalize_ports([2]), network="bridge")
    assert config_hash(br1) != config_hash(br2)


def test_env_values_are_strings_in_hash():
    assert config_hash(_config(envs={"N": 1})) == config_hash(_config(envs={"N": "1"}))


# Ports


def test_ports_list_of_ints():
    assert normalize_ports([19995, 80]) == {
        "80/tcp": ("0.0.0.0", 80),
        "19995/tcp": ("0.0.0.0", 19995),
    }


def test_ports_mapping_forms():
    assert normalize_ports({"2222/tcp": 3333}) == {"2222/tcp": ("0.0.0.0", 3333)}
    assert normalize_ports({2222: 3333}) == {"2222/tcp": ("0.0.0.0", 3333)}
    assert normalize_ports({"53/UDP": ("127.0.0.1", 5353)}) == {"53/udp": ("127.0.0.1", 5353)}
    assert normalize_ports(None) == {} and normalize_ports([]) == {}


@pytest.mark.parametrize(
    "bad",
    [[0], [70000], ["x"], {"22/icmp": 22}, {"22/tcp": ("a", 1, 2)}, "19995", [True]],
)
def test_ports_rejected(bad):
    with pytest.raises(ValueError):
        normalize_ports(bad)


def test_port_bindings():
    exposed, bindings = port_bindings(normalize_ports({"2222/tcp": 3333}))
    assert exposed == {"2222/tcp": {}}
    assert bindings == {"2222/tcp": [{"HostIp": "0.0.0.0", "HostPort": "3333"}]}


# Mounts and images


@pytest.mark.parametrize(
    "device, target",
    [(":/data", "/data"), ("sdss-hub:/data/", "/data"), ("/srv/x", "/srv/x"), ("/", "/")],
)
def test_mount_target(device, target):
    assert mount_target(device, "v") == target


@pytest.mark.parametrize("device", [None, "", "tmpfs", "host:relative"])
def test_mount_target_rejects(device):
    with pytest.raises(ValueError, match="'v'"):
        mount_target(device, "v")


def test_image_reference():
    assert image_reference("sdss/flicamera:latest", "hub:5000") == "hub:5000/sdss/flicamera:latest"
    assert image_reference("hub:5000/x:1", "hub:5000/") == "hub:5000/x:1"
    assert image_reference("x", None) == "x"
    with pytest.raises(ValueError):
        image_reference(" ", "hub")


def test_repository():
    assert _repository("hub:5000/sdss/flicamera:latest") == "hub:5000/sdss/flicamera"
    assert _repository("hub:5000/x") == "hub:5000/x"
    assert _repository("x@sha256:abc") == "x"


def test_short_id():
    assert short_id("0123456789abcdef") == "0123456789ab"


# Container body


def test_container_body_host_network():
    config = _config()
    body = container_body("gfa1", config, "/dev/bus/usb")
    assert body["Image"] == "hub:5000/sdss/flicamera:latest"
    assert body["User"] == "2005:3005"
    assert sorted(body["Env"]) == ["ACTOR_NAME=gfa1", "OBSERVATORY=APO"]
    assert body["Labels"] == {
        LABEL_MANAGED: "true",
        LABEL_NODE: "gfa1",
        LABEL_IMAGE: "hub:5000/sdss/flicamera:latest",
        LABEL_CONFIG_HASH: config_hash(config),
    }
    host = body["HostConfig"]
    assert host["NetworkMode"] == "host" and host["Privileged"] is True
    assert "PortBindings" not in host and "ExposedPorts" not in body
    assert {"Type": "volume", "Source": "data", "Target": "/data", "ReadOnly": False} in host[
        "Mounts"
    ]
    assert any(m["Type"] == "bind" and m["Target"] == "/dev/bus/usb" for m in host["Mounts"])
    assert host["Devices"][0]["PathOnHost"] == "/dev/bus/usb"
    assert "Cmd" not in body


def test_container_body_bridge_without_usb():
    config = _config(network="bridge", ports=normalize_ports({"2222/tcp": 3333}), cmd=["sh"])
    body = container_body("gfa1", config, None)
    assert body["ExposedPorts"] == {"2222/tcp": {}}
    assert body["HostConfig"]["PortBindings"]["2222/tcp"][0]["HostPort"] == "3333"
    assert "Devices" not in body["HostConfig"]
    assert all(m["Type"] == "volume" for m in body["HostConfig"]["Mounts"])
    assert body["Cmd"] == ["sh"]
    # The USB bus does not change the hash (it is a node-side decision).
    assert container_body("gfa1", config, "/dev/bus/usb")["Labels"] == body["Labels"]


# ping


IPUTILS_NEW = PingProgram("/usr/bin/ping", "iputils", True)
IPUTILS_OLD = PingProgram("/bin/ping", "iputils", False)
BUSYBOX = PingProgram("/bin/busybox-ping", "busybox", False)


def test_ping_argv_iputils_fractional():
    argv = ping_argv("10.250.77.11", 0.6, IPUTILS_NEW)
    assert argv == ["/usr/bin/ping", "-n", "-q", "-c", "1", "-W", "0.6", "10.250.77.11"]


def test_ping_argv_integer_flavours():
    assert ping_argv("h", 0.6, BUSYBOX) == ["/bin/busybox-ping", "-q", "-c", "1", "-W", "1", "h"]
    assert ping_argv("h", 2.2, IPUTILS_OLD)[-2] == "3"
    assert ping_argv("h", 2, BUSYBOX)[-2] == "2"


def test_format_wait():
    assert format_wait(2, True) == "2"
    assert format_wait(0.25, True) == "0.25"
    assert format_wait(0.0001, True) == "0.001"
    assert format_wait(0.1, False) == "1"
    with pytest.raises(ValueError):
        format_wait(0, True)


def test_ping_argv_rejects_option_injection():
    with pytest.raises(ValueError):
        ping_argv("-f", 1, IPUTILS_NEW)
    with pytest.raises(ValueError):
        ping_argv("", 1, IPUTILS_NEW)


def test_parse_iputils_version():
    assert parse_iputils_version("ping from iputils 20221126\nlibcap: yes") == 20221126
    assert parse_iputils_version("ping utility, iputils-s20161105") == 20161105
    assert parse_iputils_version("BusyBox v1.35") is None


# Pull progress


def test_pull_progress_rate_limited_and_summarised():
    now = [0.0]
    progress = PullProgress("gfa1: pulling img", interval=1.0, clock=lambda: now[0])
    first = progress.update({"status": "Pulling from sdss/img", "id": "latest"})
    assert first == "gfa1: pulling img: 0/0 layers done (Pulling from sdss/img)."
    assert progress.update({"status": "Pulling fs layer", "id": "a"}) is None
    progress.update({"status": "Pulling fs layer", "id": "b"})
    progress.update(
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 1e6, "total": 4e6}}
    )
    progress.update({"status": "Already exists", "id": "b"})
    now[0] = 1.5
    line = progress.update(
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 2e6, "total": 4e6}}
    )
    assert line is not None
    assert "1/2 layers done" in line and "2.0/4.0 MB" in line
    progress.update({"status": "Pull complete", "id": "a"})
    assert "2/2 layers done" in progress.summary() and "4.0/4.0 MB" in progress.summary()


# Exceptions and Node construction


def test_exception_hierarchy():
    for cls in (NodeTimeoutError, NodeUnreachableError):
        assert issubclass(cls, NodeError) and issubclass(cls, FliswarmError)
    assert issubclass(NodeUnreachableError, ConnectionError)
    assert issubclass(NodeTimeoutError, TimeoutError)
    err = DockerAPIError("gfa1", 404, "no such image")
    assert err.status == 404 and err.node == "gfa1" and err.message == "no such image"
    assert str(err) == "gfa1: Docker engine error 404: no such image"
    assert "within 2 s" in str(NodeTimeoutError("gfa1", "ping", 2.0))


def test_node_defaults():
    node = Node("gfa1", "10.0.0.1", category="gfa", registry="hub:5000")
    assert node.daemon_addr == "tcp://10.0.0.1:2375"
    assert node.enabled is True and node.category == "gfa" and node.registry == "hub:5000"
    assert (node.connect_timeout, node.request_timeout, node.pull_timeout) == (2.0, 10.0, 600.0)
    assert node.client is node.engine
    other = Node("fvc", "h", daemon_addr="tcp://h:2376", ping_timeout=0.6, tls=None)
    assert other.daemon_addr == "tcp://h:2376" and other.ping_timeout == 0.6


async def test_tls_engine_uses_https_and_closes():
    import ssl

    from fliswarm.docker.engine import Engine

    engine = Engine("gfa1", "tcp://127.0.0.1:2376", ssl_context=ssl.create_default_context())
    assert str(engine._client().docker_host).startswith("https://127.0.0.1:2376")
    await engine.close()
    assert engine._docker is None
    # TLS files are read on first use: a missing one fails the call, naming node and file.
    node = Node("gfa1", "127.0.0.1", tls={"ca": "/nonexistent/ca.pem", "cert": "/c.pem"})
    assert node.daemon_addr == "tcp://127.0.0.1:2376"
    with pytest.raises(ConnectionError, match="gfa1: TLS: cannot read the CA certificate"):
        await node.engine.info()
    plain = Engine("gfa1", "tcp://127.0.0.1:2375")
    assert str(plain._client().docker_host).startswith("tcp://")
    await plain.close()
