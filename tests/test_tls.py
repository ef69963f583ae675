"""Docker engines that only accept TLS clients, on the real test bed.

Node gfa1's dockerd is restarted listening ONLY on ``tcp://0.0.0.0:2376`` with
``--tlsverify`` (certificates made by the test: a CA, a server certificate with the node's
IP in its subjectAltName, a client certificate). fliswarm's `Node` works with the right
files (connect, run a container, report_status) and fails fast and clearly, naming the node
and the file or the side that refused, with wrong ones; plain TCP is refused, and fliswarm
never falls back to it.

An engine that refuses fliswarm's client certificate is said to do so every time, by ``status``,
``reconnect`` and the supervisor's ``nodeState``: over the engine itself, and through a relay
that makes the engine's alert get lost as it can with TLS 1.3 (`AlertDroppingRelay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers_actor import ActorClient, ActorLine

from fliswarm.config import load_config
from fliswarm.docker.node import Node
from fliswarm.docker.tls import REFUSED_CLIENT
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
    # The engine's certificate also names loopback, where AlertDroppingRelay listens.
    certs.issue(good.ca, tmp / "good", "server-cert", server=True, addresses=(addr, "127.0.0.1"))
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


# --------------------------------------------------- a refused client certificate, every time


class AlertDroppingRelay:
    """A relay on loopback to the TLS engine that makes a refused client certificate's alert
    get lost, every time the client has sent its request.

    With TLS 1.3 the client ends its side of the handshake (its Certificate,
    CertificateVerify and Finished: `HANDSHAKE_RECORDS` encrypted records) before the engine
    has checked the certificate, and sends its request at once; the engine then sends its
    alert and closes with the request unread, which resets the connection and can drop the
    alert (seen on a loaded machine). Here, once the client has sent more than the
    handshake, whatever the engine sends is held back, and the engine's close resets the
    client's connection without it: the client sees only "reset" or "disconnected". A
    connection that sends nothing after the handshake gets the alert, as from the engine.
    Only for an engine that refuses the client (it holds back any answer).
    """

    HANDSHAKE_RECORDS = 3
    #: TLS record type of encrypted records (``application_data``).
    ENCRYPTED = 23

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.dropped = 0  # Alerts held back, the client's connection reset instead.
        self.forwarded = 0  # Alerts forwarded (nothing sent after the handshake).
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _relay(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            sreader, swriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.transport.abort()
            return
        sent = [0]  # Encrypted records from the client.

        async def upstream() -> None:
            pending = b""
            while data := await creader.read(65536):
                swriter.write(data)
                pending += data
                while len(pending) >= 5 and len(pending) >= 5 + int.from_bytes(pending[3:5]):
                    if pending[0] == self.ENCRYPTED:
                        sent[0] += 1
                    pending = pending[5 + int.from_bytes(pending[3:5]) :]
            with contextlib.suppress(OSError):
                swriter.write_eof()

        async def downstream() -> None:
            held = bytearray()
            while data := await sreader.read(65536):
                if sent[0] >= self.HANDSHAKE_RECORDS:
                    held += data
                else:
                    cwriter.write(data)
            if sent[0] > self.HANDSHAKE_RECORDS:  # The client sent its request: reset.
                self.dropped += 1
                sock = cwriter.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                cwriter.transport.abort()
            else:
                self.forwarded += 1
                cwriter.write(bytes(held))
                cwriter.close()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await tasks[1]
        except OSError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            swriter.transport.abort()
            cwriter.transport.abort()


@pytest.fixture()
async def relay(tls_bed) -> AsyncIterator[AlertDroppingRelay]:
    bed, _ = tls_bed
    relay = AlertDroppingRelay(bed.node(NODE).addr, 2376)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


def refused_client(files: Certificates) -> dict[str, str]:
    """fliswarm's files with a client certificate the engine refuses (another CA's)."""

    return files.client(cert=str(files.other.client.cert), key=str(files.other.client.key))


def engine_url(bed: Testbed, relay: AlertDroppingRelay, path: str) -> str:
    if path == "engine":
        return f"tcp://{bed.node(NODE).addr}:2376"
    return f"tcp://127.0.0.1:{relay.port}"


RUNS = 5


@pytest.mark.parametrize("path", ["engine", "relay"])
async def test_refused_client_certificate_status_says_so_every_time(tls_bed, relay, path: str):
    """`Node.report_status` (status) and `Node.connect` (reconnect), several times in a row:
    each says the engine refused fliswarm's client certificate, never only "cannot connect"."""

    bed, files = tls_bed
    url = engine_url(bed, relay, path)
    expected = f"{NODE}: Docker engine at {url}: {REFUSED_CLIENT} ("
    for run in range(RUNS):
        node = tls_node(bed, refused_client(files))
        node.daemon_addr = node.engine.url = url
        try:
            command = Recorder()
            result = await node.report_status(command, volumes=False)
            texts = [kw["text"] for _, kw in command.messages if "text" in kw]
            assert result["docker_alive"] is False
            assert any(text.startswith(expected) for text in texts), (run, texts)
            with pytest.raises(NodeTLSError) as info:
                await node.connect()
            assert str(info.value).startswith(expected), (run, str(info.value))
        finally:
            await node.close()
    if path == "relay":  # The alert was really lost on the way (and found again).
        assert relay.dropped >= RUNS and relay.forwarded >= 1, vars(relay)


@pytest.mark.parametrize("path", ["engine", "relay"])
async def test_refused_client_certificate_actor_says_so(tls_bed, relay, tmp_path: Path, path: str):
    """Through the actor: the supervisor's nodeState, status (several times), reconnect."""

    from fliswarm.actor import FLISwarmActor

    bed, files = tls_bed
    url = engine_url(bed, relay, path)
    config = bed.fliswarm_config("sdss/flicamera:latest")
    config["nodes"][NODE]["docker-client"] = url
    config["nodes"][NODE]["docker-tls"] = refused_client(files)
    config["enabled_nodes"] = [NODE]
    config["timeouts"] = {"docker_connect": 1.0, "docker_request": 5, "device_connect": 1.0}
    config_path = tmp_path / "fliswarm.yaml"
    config_path.write_text(yaml.safe_dump(config))

    actor = FLISwarmActor.from_config(load_config(config_path))
    await actor.start()
    client = await ActorClient.connect("127.0.0.1", actor.port)
    try:

        def refused(line: ActorLine) -> bool:
            values = line.values("nodeState")
            return len(values) == 4 and values[0] == NODE and REFUSED_CLIENT in values[3]

        if REFUSED_CLIENT not in actor.supervisor.state(NODE).reason:
            await client.wait_for(refused, 30)  # Broadcast when the supervisor finds out.
        assert actor.supervisor.state(NODE).state.value == "offline"
        for run in range(RUNS):
            reply = await client.command("status", 30)
            assert reply.code == ":", str(reply)
            assert [line for line in reply.lines if refused(line)], (run, str(reply))
            assert any(REFUSED_CLIENT in text for text in reply.texts()), (run, str(reply))
        reply = await client.command(f"reconnect -n {NODE}", 30)
        assert reply.code == "f", str(reply)
        assert any(
            text.startswith(f"{NODE}: Docker engine at {url}: {REFUSED_CLIENT}")
            for text in reply.texts()
        ), str(reply)
    finally:
        await client.close()
        await actor.stop()
    if path == "relay":
        assert relay.dropped >= 1, vars(relay)
