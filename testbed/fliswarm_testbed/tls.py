"""Certificates for Docker engines that only accept TLS clients (``dockerd --tlsverify``).

Made with the ``cryptography`` package (a dev dependency; fliswarm itself only reads PEM
files): a CA, server certificates whose subjectAltName holds the node's address, and client
certificates (``extendedKeyUsage = clientAuth``), valid or deliberately broken (expired,
another CA, another address) for the tests. Layout of `make_engine_tls`, as the Docker
documentation names the files::

    <dir>/ca.pem  ca-key.pem              the CA
    <dir>/server-cert.pem server-key.pem  for the engine (tlscacert = ca.pem)
    <dir>/cert.pem key.pem                for fliswarm (docker-tls: {ca, cert, key})
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


__all__ = ["Issued", "EngineTLS", "make_ca", "issue", "make_engine_tls"]

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class EngineTLS:
    """Everything for one TLS engine and its client."""

    ca: Issued
    server: Issued
    client: Issued

    def client_config(self) -> dict[str, str]:
        """fliswarm's ``docker-tls`` section for this engine."""

        client = self.client
        return {"ca": str(self.ca.cert), "cert": str(client.cert), "key": str(client.key)}

    def daemon_options(self) -> dict[str, object]:
        """The ``daemon.json`` TLS keys of the engine (verify clients with the CA)."""

        return {
            "tls": True,
            "tlsverify": True,
            "tlscacert": str(self.ca.cert),
            "tlscert": str(self.server.cert),
            "tlskey": str(self.server.key),
        }


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, pem, private=True)
    return key


def _load(issued: Issued) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    key = serialization.load_pem_private_key(issued.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def make_ca(directory: str | os.PathLike[str], name: str = "ca", days: int = 30) -> Issued:
    """Creates a self-signed CA as ``<name>.pem`` and ``<name>-key.pem``."""

    directory = Path(directory)
    key = _key(directory / f"{name}-key.pem")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fliswarm test {name}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + days * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = _write(directory / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    return Issued(path, directory / f"{name}-key.pem")


def issue(
    ca: Issued,
    directory: str | os.PathLike[str],
    name: str,
    *,
    server: bool,
    addresses: tuple[str, ...] = (),
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Issued:
    """Issues a server or client certificate signed by ``ca``.

    Parameters
    ----------
    ca
        The CA that signs it.
    directory
        Where ``<name>.pem`` and its key go: ``key.pem`` for ``cert``, ``server-key.pem`` for
        ``server-cert``, otherwise ``<name>-key.pem``.
    name
        The file name stem.
    server
        A server certificate (``serverAuth``, subjectAltName ``addresses``) or a client one.
    addresses
        IP addresses or DNS names for the subjectAltName of a server certificate.
    not_before, not_after
        Validity; by default from yesterday to 30 days from now. Pass a past ``not_after``
        for an expired certificate (it then starts 10 days before).
    """

    directory = Path(directory)
    if name == "cert":
        key_path = directory / "key.pem"
    elif name.endswith("-cert"):
        key_path = directory / f"{name[: -len('-cert')]}-key.pem"
    else:
        key_path = directory / f"{name}-key.pem"
    key = _key(key_path)
    ca_cert, ca_key = _load(ca)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = not_after or now + 30 * _DAY
    not_before = not_before or min(now - _DAY, not_after - 10 * _DAY)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        names: list[x509.GeneralName] = []
        for address in addresses:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(address)))
            except ValueError:
                names.append(x509.DNSName(address))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    path = _write(directory / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    return Issued(path, key_path)


def make_engine_tls(directory: str | os.PathLike[str], address: str) -> EngineTLS:
    """A CA, a server certificate for ``address`` and a client certificate, in ``directory``."""

    ca = make_ca(directory)
    server = issue(ca, directory, "server-cert", server=True, addresses=(address,))
    client = issue(ca, directory, "cert", server=False)
    return EngineTLS(ca, server, client)
