"""What a Docker registry says an image reference is: its manifest digest.

`resolve_digest` asks the registry (HTTP API v2: ``HEAD /v2/<repository>/manifests/<tag>``)
for the ``Docker-Content-Digest`` of a reference, as the node engines would pull it, within a
time limit. A registry is tried over HTTPS first and, when it does not speak TLS, over plain
HTTP (what a Docker engine does for a registry in its ``insecure-registries``). Pure helpers
split and pin references (`split_reference`, `pinned`, `repository_of`).
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from dataclasses import dataclass

import aiohttp

from fliswarm.exceptions import FliswarmError


__all__ = [
    "MANIFEST_TYPES",
    "ImageReference",
    "RegistryError",
    "pinned",
    "repository_of",
    "resolve_digest",
    "split_reference",
]

#: The manifest types asked for, in the order a Docker engine accepts them.
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class RegistryError(FliswarmError):
    """The registry cannot say what an image is; the message names the image and why."""


@dataclass(frozen=True)
class ImageReference:
    """An image reference split in its parts."""

    #: ``host[:port]`` (``docker.io`` when the reference names none).
    registry: str
    #: ``sdss/flicamera``.
    repository: str
    #: The tag (``latest`` when there is neither tag nor digest), or `None`.
    tag: str | None
    #: ``sha256:...``, or `None`.
    digest: str | None

    @property
    def name(self) -> str:
        """``registry/repository`` (what a digest pins)."""

        return f"{self.registry}/{self.repository}"


def split_reference(ref: str) -> ImageReference:
    """Splits ``[registry/]repository[:tag][@sha256:digest]`` (`ValueError` if malformed)."""

    ref = ref.strip()
    digest: str | None = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
        if not _DIGEST.match(digest):
            raise ValueError(f"malformed digest {digest!r}")
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = "docker.io", ref
    tag: str | None = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
    if not path or not re.fullmatch(r"[a-z0-9]+(?:[._/-][a-z0-9]+)*", path):
        raise ValueError(f"malformed repository {path!r}")
    if registry == "docker.io" and "/" not in path:
        path = f"library/{path}"
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(registry, path, tag, digest)


def repository_of(ref: str) -> str:
    """A reference without its tag or digest, as written (``hub:5000/sdss/flicamera``)."""

    name = ref.strip().split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    return name


def pinned(ref: str, digest: str) -> str:
    """The reference pinned to a digest: ``registry/repository@sha256:...``."""

    return f"{repository_of(ref)}@{digest}"


async def _head(
    session: aiohttp.ClientSession, url: str, timeout: float
) -> tuple[int, str | None]:
    async with session.head(
        url,
        headers={"Accept": ", ".join(MANIFEST_TYPES)},
        timeout=aiohttp.ClientTimeout(total=timeout),
        allow_redirects=True,
    ) as response:
        return response.status, response.headers.get("Docker-Content-Digest")


async def resolve_digest(ref: str, timeout: float = 10.0) -> str:
    """The manifest digest (``sha256:...``) the registry gives for a full image reference.

    A reference pinned to a digest is checked in the registry too (the digest must be there).

    Raises
    ------
    RegistryError
        The reference is malformed, the registry does not answer within ``timeout`` (each
        scheme tried gets it), refuses the request, or does not have the image.
    """

    try:
        parts = split_reference(ref)
    except ValueError as err:
        raise RegistryError(f"{ref} is not an image reference ({err}).") from None
    host = "registry-1.docker.io" if parts.registry == "docker.io" else parts.registry
    path = f"/v2/{parts.repository}/manifests/{parts.digest or parts.tag}"
    problem = "no answer"
    async with aiohttp.ClientSession() as session:
        for scheme in ("https", "http"):
            try:
                status, digest = await asyncio.wait_for(
                    _head(session, f"{scheme}://{host}{path}", timeout), timeout + 1.0
                )
            except (ssl.SSLError, aiohttp.ClientSSLError, aiohttp.ServerDisconnectedError):
                problem = "it does not speak TLS"
                continue  # A plain-HTTP registry (insecure-registries): try again over HTTP.
            except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
                raise RegistryError(
                    f"registry {parts.registry} did not answer within {timeout:g} s about {ref}."
                ) from None
            except aiohttp.ClientConnectorError as err:
                code = err.os_error.errno
                reason = os.strerror(code).lower() if code else "no connection"
                raise RegistryError(
                    f"cannot reach registry {parts.registry} ({reason}) to look up {ref}."
                ) from None
            except aiohttp.ClientError as err:
                if isinstance(err.__cause__, ssl.SSLError) or "SSL" in str(err):
                    problem = "it does not speak TLS"
                    continue
                raise RegistryError(
                    f"registry {parts.registry} failed to answer about {ref} ({err})."
                ) from None
            if status == 404:
                raise RegistryError(f"registry {parts.registry} has no image {ref}.")
            if status in (401, 403):
                raise RegistryError(
                    f"registry {parts.registry} refuses to say what {ref} is (HTTP {status})."
                )
            if status != 200:
                raise RegistryError(
                    f"registry {parts.registry} answered HTTP {status} about {ref}."
                )
            if not digest or not _DIGEST.match(digest):
                raise RegistryError(
                    f"registry {parts.registry} gave no digest for {ref} "
                    "(no Docker-Content-Digest header)."
                )
            if parts.digest and digest != parts.digest:
                raise RegistryError(
                    f"registry {parts.registry} has {digest} for {ref}, not the digest asked."
                )
            return digest
    raise RegistryError(f"cannot reach registry {parts.registry} to look up {ref} ({problem}).")
