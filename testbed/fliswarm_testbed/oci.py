"""A Docker image by hand: the layer, the image config, the schema 2 manifest and the push.

No Docker engine is involved: `write_layer` tars and gzips a root file system (hashing it on the
way), `write_image` writes the config and manifest next to it, and `push_image` uploads the blobs
and the manifest with the registry HTTP API (plain HTTP, only to loopback or the test bed).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import ipaddress
import json
import tarfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast


__all__ = [
    "MANIFEST_TYPE",
    "CONFIG_TYPE",
    "LAYER_TYPE",
    "Progress",
    "check_registry",
    "sha256_digest",
    "write_layer",
    "write_image",
    "push_image",
]

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"

#: Called with a line of text for each step.
Progress = Callable[[str], None]


def check_registry(registry: str) -> str:
    """Refuses registries that are not on loopback or on the test bed network."""

    host = urllib.parse.urlsplit(f"//{registry}").hostname or ""
    try:
        addr = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        raise ValueError(f"registry {registry!r}: give an IP address and port.") from None
    if not (addr.is_loopback or addr in ipaddress.ip_network("10.250.0.0/16")):
        raise ValueError(f"registry {registry!r} is neither on loopback nor on 10.250.0.0/16.")
    return registry


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _HashingWriter:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, out: BinaryIO | gzip.GzipFile) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.out.write(data)


def write_layer(rootfs: Path, path: Path) -> dict[str, Any]:
    """Writes ``rootfs`` as a gzipped tar (owned by root); returns its digests and sizes."""

    def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with open(path, "wb") as raw:
        compressed = _HashingWriter(raw)
        gz = gzip.GzipFile(fileobj=cast(BinaryIO, compressed), mode="wb", compresslevel=1, mtime=0)
        with gz:
            plain = _HashingWriter(gz)
            with tarfile.open(fileobj=cast(BinaryIO, plain), mode="w|") as tar:
                for child in sorted(rootfs.iterdir()):
                    tar.add(child, arcname=child.name, filter=owned_by_root)
    return {
        "digest": "sha256:" + compressed.sha.hexdigest(),
        "size": compressed.size,
        "diff_id": "sha256:" + plain.sha.hexdigest(),
        "rootfs_size": plain.size,
    }


def write_image(work: Path, config: dict[str, Any], layer: dict[str, Any]) -> dict[str, str]:
    """Writes ``config.json`` and ``manifest.json`` of a one-layer image into ``work``.

    Parameters
    ----------
    work
        The build folder.
    config
        The image configuration.
    layer
        What `write_layer` returned for the layer.

    Returns
    -------
    digests
        ``digest`` (of the manifest) and ``config_digest``.
    """

    config_bytes = json.dumps(config, sort_keys=True).encode()
    (work / "config.json").write_bytes(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": CONFIG_TYPE,
            "size": len(config_bytes),
            "digest": sha256_digest(config_bytes),
        },
        "layers": [{"mediaType": LAYER_TYPE, "size": layer["size"], "digest": layer["digest"]}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    (work / "manifest.json").write_bytes(manifest_bytes)
    return {"digest": sha256_digest(manifest_bytes), "config_digest": sha256_digest(config_bytes)}


def _http(
    method: str,
    url: str,
    body: bytes | BinaryIO | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, http.client.HTTPMessage]:
    """One plain-HTTP request to the registry; returns the status and headers."""

    parts = urllib.parse.urlsplit(url)
    check_registry(parts.netloc)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status, response.headers
    finally:
        conn.close()


def push_image(
    registry: str, repository: str, tag: str, entry: Path, meta: dict[str, Any], say: Progress
) -> int:
    """Pushes the cached build unless the registry has it; returns the blobs uploaded."""

    base = f"http://{registry}/v2/{repository}"
    status, headers = _http("HEAD", f"{base}/manifests/{tag}", headers={"Accept": MANIFEST_TYPE})
    if status == 200 and headers.get("Docker-Content-Digest") == meta["digest"]:
        return 0
    uploaded = 0
    for digest, name in (
        (meta["layer_digest"], "layer.tar.gz"),
        (meta["config_digest"], "config.json"),
    ):
        if _http("HEAD", f"{base}/blobs/{digest}")[0] == 200:
            continue
        status, headers = _http("POST", f"{base}/blobs/uploads/")
        if status != 202:
            raise RuntimeError(f"registry {registry}: starting an upload returned {status}.")
        location = urllib.parse.urljoin(f"http://{registry}/", headers["Location"])
        location += ("&" if "?" in location else "?") + urllib.parse.urlencode({"digest": digest})
        size = (entry / name).stat().st_size
        t0 = time.monotonic()
        with open(entry / name, "rb") as blob:
            status, _ = _http(
                "PUT",
                location,
                body=blob,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                timeout=600,
            )
        if status != 201:
            raise RuntimeError(f"registry {registry}: uploading {name} returned {status}.")
        uploaded += 1
        say(f"  pushed {name}: {size / 1024 / 1024:.1f} MiB in {time.monotonic() - t0:.1f} s")
    manifest = (entry / "manifest.json").read_bytes()
    status, _ = _http(
        "PUT", f"{base}/manifests/{tag}", body=manifest, headers={"Content-Type": MANIFEST_TYPE}
    )
    if status != 201:
        raise RuntimeError(f"registry {registry}: pushing the manifest returned {status}.")
    return uploaded
