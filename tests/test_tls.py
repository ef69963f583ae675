"""Docker engines that only accept TLS clients, on the real test bed.

Node gfa1's dockerd is restarted listening ONLY on ``tcp://0.0.0.0:2376`` with
``--tlsverify`` (certificates made by the test: a CA, a server certificate with the node's
IP in its subjectAltName, a client certificate). fliswarm's `Node` works with the right
files (connect, run a container, report_status) and fails fast and clearly, naming the node
and the file or the side that refused, with wrong ones; plain TCP is refused, and fliswarm
never falls back to it.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fliswarm.config import load_config
from fliswarm.docker.node import Node
from fliswarm.exceptions import DockerAPIError, NodeTLSError, NodeUnreachableError
from fliswarm_testbed import tls as certs
from fliswarm_testbed.bed import Testbed
from fliswarm_testbed.engine import http_request


pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

NODE = "gfa1"
DAY = datetime.timedelta(days=1)


@dataclasses.dataclass
class Certificates:
    good: certs.EngineTLS
    other: certs.EngineTLS  # Another CA, with its own server and client certificates.
    expired_client: certs.Issued
    wrong_ip_server: certs.Issued
    expired_server: certs.Issued

    def client(self, **override: str) -> dict[str, str]:
        return {**self.good.client_config(), **override}


@pytest.fixture(scope="module")
def tls_bed(
    testbed: Testbed, testbed_busybox: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """gfa1 with a TLS-only engine; the plain engine is back afterwards. (The busybox image
    is published over the plain engines first.)"""

    tmp = tmp_path_factory.mktemp("tls")
    addr = testbed.node(NODE).addr
    now = datetime.datetime.now(datetime.timezone.utc)
    good = certs.make_engine_tls(tmp / "good", addr)
    files = Certificates(
        good=good,
        other=certs.make_engine_tls(tmp / "other", addr),
        expired_client=certs.issue(
            good.ca, tmp / "expired", "cert", server=False, not_after=now - DAY
        ),
        wrong_ip_server=certs.issue(
            good.ca, tmp / "wrong-ip", "server-cert", server=True, addresses=("10.250.99.99",)
        ),
        expired_server=certs.issue(
            good.ca, tmp / "expired", "server-cert", server=True, addresses=(addr,),
            not_after=now - DAY,
        ),
    )  # fmt: skip
    testbed.stop_engine(NODE)
    try:
        testbed.start_engine(NODE, tls=good.daemon_options())
        yield testbed, files
    finally:
        testbed.stop_engine(NODE)
        testbed.start_engine(NODE)


def restart_with_server_cert(bed: Testbed, files: Certificates, server: certs.Issued) -> None:
    options = {**files.good.daemon_options(), "tlscert": str(server.cert)}
    options["tlskey"] = str(server.key)
    bed.stop_engine(NODE)
    bed.start_engine(NODE, tls=options)


def tls_node(
    bed: Testbed,
    tls: dict[str, str] | None,
    port: int | None = None,
    connect_timeout: float = 2,
    request_timeout: float = 10,
) -> Node:
    addr = bed.node(NODE).addr
    daemon = f"tcp://{addr}:{port}" if port else None
    return Node(
        NODE,
        addr,
        daemon_addr=daemon,
        tls=tls,
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
    )


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda **kwargs: self.messages.append((level, kwargs))


async def test_engine_listens_only_with_tlsverify(tls_bed):
    bed, files = tls_bed
    addr = bed.node(NODE).addr
    config = files.good.daemon_options()
    assert config["tlsverify"] is True
    with pytest.raises(ConnectionRefusedError):  # No plain TCP listener any more.
        http_request(addr, "/_ping", timeout=2, port=2375)
    status, body = http_request(addr, "/_ping", timeout=2, port=2376)
    assert status == 400 and b"HTTPS server" in body  # Plain HTTP on the TLS port.


async def test_right_certificates_connect_run_and_report(tls_bed, testbed_busybox):
    bed, files = tls_bed
    node = tls_node(bed, files.good.client_config())
    assert node.daemon_addr.endswith(":2376")  # TLS: Docker's TLS port by default.
    name = "fliswarm-test-tls"
    try:
        await node.connect()
        info = await node.run_container(name, testbed_busybox, cmd=["sleep", "600"])
        assert info["State"]["Running"]
        assert await node.is_container_running(name)
        command = Recorder()
        result = await node.report_status(command, volumes=False)
        assert result["docker_alive"] is True and result["container"]
        [(_, values)] = [(lvl, kw["node"]) for lvl, kw in command.messages if "node" in kw]
        assert values[:3] == [NODE, node.addr, node.daemon_addr] and values[4] is True
        assert await node.stop_container(name, testbed_busybox, force=True)
    finally:
        await node.close()


def _wrong(files: Certificates) -> dict[str, tuple[dict[str, str], str]]:
    good = files.good
    return {
        "other CA": (files.other.client_config(), "engine's certificate was rejected"),
        "client cert of another CA": (
            files.client(cert=str(files.other.client.cert), key=str(files.other.client.key)),
            "engine refused fliswarm's client certificate",
        ),
        "expired client cert": (
            files.client(cert=str(files.expired_client.cert), key=str(files.expired_client.key)),
            f"client certificate {files.expired_client.cert} expired on",
        ),
        "key of another cert": (
            files.client(key=str(files.other.client.key)),
            "(or they do not match)",
        ),
        "missing CA": (files.client(ca="/nonexistent/ca.pem"), "CA certificate /nonexistent"),
        "missing cert": (files.client(cert="/nonexistent/c.pem"), "client certificate /nonex"),
        "missing key": (files.client(key="/nonexistent/k.pem"), "client key /nonexistent/k.pem"),
        "server cert as client cert": (
            files.client(cert=str(good.server.cert), key=str(good.server.key)),
            "engine refused fliswarm's client certificate",
        ),
    }


WRONG = [
    "other CA",
    "client cert of another CA",
    "expired client cert",
    "key of another cert",
    "missing CA",
    "missing cert",
    "missing key",
    "server cert as client cert",
]


@pytest.mark.parametrize("case", WRONG)
async def test_wrong_certificates_fail_clearly(tls_bed, case: str):
    bed, files = tls_bed
    tls, expected = _wrong(files)[case]
    # Long timeouts: failing at once and failing at a timeout are far apart.
    node = tls_node(bed, tls, connect_timeout=20, request_timeout=20)
    t0 = time.monotonic()
    try:
        with pytest.raises(NodeTLSError) as info:
            await node.connect()
        with pytest.raises(NodeTLSError):  # Every call, not only connect.
            await node.engine.list_containers({})
    finally:
        await node.close()
    message = str(info.value)
    assert message.startswith(f"{NODE}: ") and expected in message, message
    assert "\n" not in message
    assert time.monotonic() - t0 < 10  # At once: not at a 20 s timeout.


@pytest.mark.parametrize(
    "server, expected",
    [("wrong_ip_server", "IP address mismatch"), ("expired_server", "certificate has expired")],
)
async def test_bad_server_certificate_rejected(tls_bed, server: str, expected: str):
    bed, files = tls_bed
    restart_with_server_cert(bed, files, getattr(files, server))
    node = tls_node(bed, files.good.client_config())
    try:
        with pytest.raises(NodeTLSError, match=expected) as info:
            await node.connect()
        assert "engine's certificate was rejected" in str(info.value)
    finally:
        await node.close()
        bed.stop_engine(NODE)
        bed.start_engine(NODE, tls=files.good.daemon_options())


async def test_plain_tcp_is_refused(tls_bed):
    bed, _ = tls_bed
    for port, error in ((2376, DockerAPIError), (2375, NodeUnreachableError)):
        node = tls_node(bed, None, port)
        try:
            with pytest.raises(NodeUnreachableError):
                await node.connect()
            with pytest.raises(error) as info:
                await node.engine.info()
        finally:
            await node.close()
        if port == 2376:
            assert "requires TLS: configure docker-tls" in str(info.value)


async def test_tls_never_falls_back_to_plain(tls_bed):
    """TLS configured for an engine that speaks plain HTTP (gfa2): refused, not downgraded."""

    bed, files = tls_bed
    other = bed.node("gfa2")
    node = Node("gfa2", other.addr, daemon_addr=f"tcp://{other.addr}:2375", tls=files.client())
    try:
        with pytest.raises(NodeTLSError, match="answered without TLS") as info:
            await node.engine.info()
        assert "never falls back to plain TCP" in str(info.value)
    finally:
        await node.close()


async def test_configuration_to_node(tls_bed, tmp_path: Path):
    """docker-tls in the configuration reaches the node: works, or one clear line."""

    import yaml

    from fliswarm.actor import FLISwarmActor

    bed, files = tls_bed
    config = bed.fliswarm_config("sdss/flicamera:latest")
    node_config = config["nodes"][NODE]
    del node_config["docker-client"]  # Defaults to tcp://<host>:2376 with docker-tls.
    node_config["docker-tls"] = files.good.client_config()
    config["nodes"]["gfa2"]["docker-tls"] = files.client(key=str(tmp_path / "missing.pem"))
    config["enabled_nodes"] = [NODE, "gfa2"]
    path = tmp_path / "fliswarm.yaml"
    path.write_text(yaml.safe_dump(config))
    resolved = load_config(path)
    assert resolved["nodes"][NODE]["docker-client"] == f"tcp://{bed.node(NODE).addr}:2376"

    actor = FLISwarmActor.from_config(resolved)  # Never raises for a bad TLS file.
    try:
        results = await actor.connect_nodes()
        assert results == {NODE: True, "gfa2": False}
        with pytest.raises(
            NodeTLSError, match=f"gfa2: TLS: cannot read the client key {tmp_path}"
        ):
            await actor.nodes["gfa2"].connect()
        command = Recorder()  # status says why.
        await actor.nodes["gfa2"].report_status(command, volumes=False)
        texts = [kw["text"] for _, kw in command.messages if "text" in kw]
        assert any(text.startswith("gfa2: TLS: cannot read the client key") for text in texts)
    finally:
        await actor._close_connections()
