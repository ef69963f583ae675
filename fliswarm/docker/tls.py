"""TLS to the nodes' Docker engines: the client SSL context and plain error messages.

fliswarm reads ``docker-tls: {ca, cert, key}`` (per node or global) and talks to the engine
over HTTPS only (never plain TCP). Problems are reported in one line naming the node and the
file or the side that refused: a missing or unreadable file, a key that does not match its
certificate, an expired certificate, an engine certificate from another CA or for another
address, an engine that refuses fliswarm's certificate, a port that does not speak TLS.

With TLS 1.3 the client's side of the handshake ends before the engine has checked
fliswarm's certificate: the engine's refusal (an alert) comes after, while the client already
sends its request, and an engine that closes a connection with a request unread resets it,
which can drop the alert. The request then fails with only "disconnected". `refusal_reason`
asks the engine again, on a connection that sends nothing after the handshake, where the
alert always arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
import urllib.parse
from collections.abc import Mapping

from fliswarm.exceptions import NodeTLSError


__all__ = ["make_ssl_context", "tls_reason", "refusal_reason", "ssl_text", "REFUSED_CLIENT"]

log = logging.getLogger("fliswarm.docker.tls")

#: What fliswarm says when the engine refuses its client certificate (documented, matched).
REFUSED_CLIENT = "the engine refused fliswarm's client certificate"

#: OpenSSL's "[LIBRARY: REASON] " prefix and " (_ssl.c:1234)" suffix of an `ssl.SSLError`.
_SSL_DECORATION = re.compile(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$")

_TLS_FILES = {"ca": "CA certificate", "cert": "client certificate", "key": "client key"}


def make_ssl_context(tls: Mapping[str, str], node: str = "?") -> ssl.SSLContext:
    """Creates a client SSL context from ``{ca, cert, key}`` file paths.

    The engine's certificate is verified against ``ca`` (and its host name or IP address
    against the URL); ``cert`` and ``key`` authenticate fliswarm to the engine.

    Raises
    ------
    NodeTLSError
        Naming the node and the file, if a file is missing, unreadable or invalid, or if
        the key does not match the certificate.
    """

    for item, what in _TLS_FILES.items():
        path = tls.get(item)
        if item != "key" and not path:
            raise NodeTLSError(node, f"TLS: no {what} file configured (docker-tls.{item}).")
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as err:
                reason = err.strerror or str(err)
                raise NodeTLSError(
                    node, f"TLS: cannot read the {what} {path}: {reason}."
                ) from None
    for item in ("ca", "cert"):
        _check_dates(node, _TLS_FILES[item], tls[item])
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls["ca"])
    except (ssl.SSLError, ValueError) as err:
        log.info("%s: CA certificate %s: %r", node, tls["ca"], err)
        raise NodeTLSError(
            node, f"TLS: invalid CA certificate {tls['ca']} ({ssl_text(err)}): is it a PEM file?"
        ) from None
    try:
        context.load_cert_chain(tls["cert"], tls.get("key") or None)
    except (ssl.SSLError, ValueError) as err:
        log.info("%s: client certificate %s, key %s: %r", node, tls["cert"], tls.get("key"), err)
        raise NodeTLSError(
            node,
            f"TLS: invalid client certificate {tls['cert']} or key {tls.get('key')} "
            f"(or they do not match): {ssl_text(err)}.",
        ) from None
    return context


def ssl_text(err: BaseException) -> str:
    """OpenSSL's words for an error, without its library tag and source line."""

    text = _SSL_DECORATION.sub("", str(err)).strip()
    return text or str(getattr(err, "reason", None) or "") or "unknown TLS error"


def _check_dates(node: str, what: str, path: str) -> None:
    """Raises `.NodeTLSError` if the (first) certificate in ``path`` is expired or not yet
    valid: the engine would only answer "bad certificate"."""

    try:  # CPython's PEM decoder (private, but there since 3.4): skipped if it goes.
        decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
        not_before = ssl.cert_time_to_seconds(decoded["notBefore"])
        not_after = ssl.cert_time_to_seconds(decoded["notAfter"])
    except Exception:
        return
    now = time.time()
    if now > not_after:
        raise NodeTLSError(node, f"TLS: the {what} {path} expired on {decoded['notAfter']}.")
    if now < not_before:
        raise NodeTLSError(
            node, f"TLS: the {what} {path} is not valid before {decoded['notBefore']}."
        )


def _ssl_error(err: BaseException) -> ssl.SSLError | None:
    """The `ssl.SSLError` behind an aiodocker/aiohttp error, if any."""

    seen: set[int] = set()
    todo: list[BaseException] = [err]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLError):
            return item
        for name in ("certificate_error", "os_error", "__cause__", "__context__"):
            inner = getattr(item, name, None)
            if isinstance(inner, BaseException):
                todo.append(inner)
    return None


def tls_reason(err: BaseException, url: str) -> str | None:
    """A plain description of a TLS failure behind an error, if it is one."""

    cause = _ssl_error(err)
    if cause is None:
        return None
    inner = getattr(cause, "certificate_error", None)  # aiohttp's wrapper of the ssl error.
    if isinstance(inner, ssl.SSLError):
        cause = inner
    if isinstance(cause, ssl.SSLCertVerificationError):
        message = getattr(cause, "verify_message", None) or ssl_text(cause)
        return (
            f"the engine's certificate was rejected ({message}): is docker-tls.ca "
            f"the CA that signed it, is it valid now, and does it name the host of {url}?"
        )
    reason = str(getattr(cause, "reason", None) or ssl_text(cause))
    if "WRONG_VERSION_NUMBER" in reason or "HTTP_REQUEST" in reason:
        return (
            "the engine answered without TLS (is this its TLS port, usually 2376?); "
            "fliswarm never falls back to plain TCP when docker-tls is set"
        )
    if "ALERT" in reason and any(w in reason for w in ("CERTIFICATE", "UNKNOWN_CA", "DENIED")):
        return (
            f"{REFUSED_CLIENT} ({reason}): is it signed by the engine's CA (tlscacert), "
            "still valid, and a client certificate?"
        )
    if "ALERT" in reason:
        return (
            f"the engine ended the TLS handshake ({reason}): do its TLS settings (version, "
            "ciphers) accept fliswarm's?"
        )
    return (
        f"the TLS handshake with the engine failed ({reason}): are docker-tls and the "
        "engine's TLS files (tlscacert, tlscert, tlskey) a matching set?"
    )


async def refusal_reason(
    url: str, context: ssl.SSLContext, timeout: float, node: str = "?"
) -> str | None:
    """Whether a TLS engine refuses fliswarm's certificate: `tls_reason`'s words, or `None`.

    Called when a request to the engine ended with the connection dropped and no TLS error
    (see the module): one connection that makes the handshake and then only listens, for
    at most ``timeout`` seconds. An engine that refuses the certificate says so at once (its
    alert); one that accepts it waits for a request, which this connection never sends.
    Never raises (but cancellation).
    """

    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or not port:
        return None
    streams: list[asyncio.StreamWriter] = []

    async def listen() -> None:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=host
        )
        streams.append(writer)
        await reader.read(1)  # The alert, or (accepted) nothing until the time limit.

    try:
        await asyncio.wait_for(listen(), timeout)
    except asyncio.TimeoutError:
        return None  # Accepted (waiting for a request), or no answer at all.
    except (ssl.SSLError, OSError) as err:
        log.info("%s: TLS check of %s: %r", node, url, err)
        return tls_reason(err, url)
    finally:
        for writer in streams:
            writer.transport.abort()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    return None
