"""The simulated flicamera image: the real flicamera actor, built offline, pushed to a registry.

No base image can be pulled here, so the image is made from the host Python: the interpreter,
its shared libraries (the ``ldd`` closure) and its standard library, plus
``pip install --target /opt/python-packages sdss-flicamera`` run by the same interpreter (so the
wheels match), precompiled bytecode, busybox as ``/bin/sh`` and our launcher
(``files/flicamera_launcher.py``). The single layer, the image config and a Docker schema 2
manifest are written by hand and cached by a hash of the inputs; pushing uses the registry HTTP
API directly, so no Docker engine is needed. `start_flicamera_on_host` runs the same launcher
with the host Python, for fast tests.

Run ``python3 -m fliswarm.testbed.image --registry 127.0.0.1:5000`` to build and push.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import gzip
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast


__all__ = [
    "LAUNCHER",
    "FLICAMERA_VERSION",
    "REQUIREMENTS",
    "IMAGE_INPUTS_HASH",
    "DEFAULT_CACHE_DIR",
    "ImageBuild",
    "PythonBase",
    "build_python_base",
    "image_inputs",
    "build_flicamera_image",
    "ensure_flicamera_image",
    "ensure_flicamera_image_async",
    "start_flicamera_on_host",
    "wait_flicamera_ready",
]


#: The launcher script that runs flicamera with one simulated camera.
LAUNCHER = Path(__file__).parent / "files" / "flicamera_launcher.py"

FLICAMERA_VERSION = "0.7.2"
#: What ``pip install --target`` puts in the image.
REQUIREMENTS: tuple[str, ...] = (f"sdss-flicamera=={FLICAMERA_VERSION}",)
#: Bump when the recipe below changes, to invalidate cached builds.
RECIPE_VERSION = 2
#: Where builds are cached; ``$FLISWARM_IMAGE_CACHE`` overrides it.
DEFAULT_CACHE_DIR = Path(
    os.environ.get("FLISWARM_IMAGE_CACHE", "/var/cache/fliswarm-testbed/images")
)

PACKAGES_DIR = "/opt/python-packages"
LAUNCHER_IN_IMAGE = "/opt/fliswarm/flicamera_launcher.py"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"

_STDLIB_SKIP = {"site-packages", "test", "tests", "idlelib", "tkinter", "turtledemo"}
_STDLIB_SKIP |= {"__pycache__", "ensurepip", "lib2to3"}

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def image_inputs() -> dict[str, str]:
    """Returns what the image is built from; any change means a rebuild."""

    return {
        "recipe": str(RECIPE_VERSION),
        "python": sys.version,
        "python_executable": os.path.realpath(sys.executable),
        "requirements": " ".join(REQUIREMENTS),
        "launcher_sha256": hashlib.sha256(LAUNCHER.read_bytes()).hexdigest(),
    }


def _inputs_hash() -> str:
    blob = json.dumps(image_inputs(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


#: Hash of `image_inputs`: names the cache entry and labels the image.
IMAGE_INPUTS_HASH = _inputs_hash()


@dataclass
class ImageBuild:
    """The result of `build_flicamera_image`."""

    #: ``<registry>/<repository>:<tag>``, ready for ``docker pull``.
    reference: str
    #: The digest of the pushed manifest.
    digest: str
    inputs_hash: str
    #: Bytes of the compressed layer and of the uncompressed root file system tar.
    layer_size: int
    rootfs_size: int
    #: Whether this call built the image (`False`: it came from the cache).
    built: bool
    #: How many blobs this call uploaded (0 when the registry already had them).
    uploaded: int
    seconds: float


def build_flicamera_image(
    registry: str,
    repository: str = "sdss/flicamera",
    tag: str = "sim",
    cache_dir: Path | None = None,
    rebuild: bool = False,
    progress: Progress | None = None,
    lock_timeout: float = 900.0,
) -> ImageBuild:
    """Builds the image if its inputs changed, and makes sure the registry has it.

    Parameters
    ----------
    registry
        ``HOST:PORT`` of a plain-HTTP registry on loopback or on the test bed (10.250.x.y).
    repository, tag
        Where to push in the registry.
    cache_dir
        Where builds are cached (default `DEFAULT_CACHE_DIR`). A file lock there keeps
        concurrent callers from building twice.
    rebuild
        Build even when the cache has this build.
    progress
        Called with a line of text for each step (default: log at INFO).

    Returns
    -------
    build
        The reference, digest, sizes and whether anything was built or uploaded.
    """

    start = time.monotonic()
    say = progress or log.info
    host = _check_registry(registry)
    cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
    entry = cache_dir / IMAGE_INPUTS_HASH
    with _locked(cache_dir / ".lock", lock_timeout):
        built = rebuild or not (entry / "build.json").exists()
        if built:
            _build(entry, say)
        meta = json.loads((entry / "build.json").read_text())
        uploaded = _push(host, repository, tag, entry, meta, say)
    seconds = time.monotonic() - start
    reference = f"{registry}/{repository}:{tag}"
    say(f"{reference} {meta['digest']} ready in {seconds:.2f} s (built={built}).")
    return ImageBuild(
        reference,
        meta["digest"],
        IMAGE_INPUTS_HASH,
        meta["layer_size"],
        meta["rootfs_size"],
        built,
        uploaded,
        seconds,
    )


def ensure_flicamera_image(
    registry: str,
    repository: str = "sdss/flicamera",
    tag: str = "sim",
    cache_dir: Path | None = None,
) -> str:
    """Makes sure ``<registry>/<repository>:<tag>`` exists (see `build_flicamera_image`).

    Returns
    -------
    reference
        ``<registry>/<repository>:<tag>``.
    """

    return build_flicamera_image(registry, repository, tag, cache_dir).reference


async def ensure_flicamera_image_async(
    registry: str,
    repository: str = "sdss/flicamera",
    tag: str = "sim",
    cache_dir: Path | None = None,
) -> str:
    """`ensure_flicamera_image` in a worker thread."""

    return await asyncio.to_thread(ensure_flicamera_image, registry, repository, tag, cache_dir)


def _check_registry(registry: str) -> str:
    """Refuses registries that are not on loopback or on the test bed network."""

    host = urllib.parse.urlsplit(f"//{registry}").hostname or ""
    try:
        addr = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        raise ValueError(f"registry {registry!r}: give an IP address and port.") from None
    if not (addr.is_loopback or addr in ipaddress.ip_network("10.250.0.0/16")):
        raise ValueError(f"registry {registry!r} is neither on loopback nor on 10.250.0.0/16.")
    return registry


@contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} still locked after {timeout} s.") from None
                time.sleep(0.2)  # another process is building; poll the lock
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(args: list[str], timeout: float, **kwargs: Any) -> str:
    """Runs a command; raises with its output if it fails."""

    done = subprocess.run(args, timeout=timeout, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{args[:4]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def _build(entry: Path, say: Progress) -> None:
    """Builds the root file system, the layer, the config and the manifest into ``entry``."""

    work = entry.with_name(entry.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    rootfs = work / "rootfs"
    times: dict[str, float] = {}

    def step(name: str, func: Callable[[], object]) -> None:
        t0 = time.monotonic()
        func()
        times[name] = round(time.monotonic() - t0, 2)
        say(f"  {name}: {times[name]:.1f} s")

    say(f"Building the flicamera image {IMAGE_INPUTS_HASH} in {work}")
    step("copy python", lambda: _copy_python(rootfs))
    step("pip install", lambda: _pip_install(rootfs / PACKAGES_DIR.lstrip("/")))
    step("add launcher and busybox", lambda: _add_files(rootfs))
    step("compile bytecode", lambda: _compile(rootfs))
    step("copy shared libraries", lambda: _copy_libraries(rootfs))
    layer = work / "layer.tar.gz"
    sizes: dict[str, Any] = {}
    step("write layer", lambda: sizes.update(_write_layer(rootfs, layer)))
    packages = sorted(p.name for p in (rootfs / PACKAGES_DIR.lstrip("/")).glob("*.dist-info"))
    shutil.rmtree(rootfs)

    python = os.path.realpath(sys.executable)
    config = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "amd64"),
        "os": "linux",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {
            "Env": [
                "PATH=/usr/local/bin:/usr/bin:/bin",
                f"PYTHONPATH={PACKAGES_DIR}",
                "PYTHONDONTWRITEBYTECODE=1",
                "PYTHONUNBUFFERED=1",
                "HOME=/root",
                "LANG=C.UTF-8",
                "FLICAMERA_DATA_DIR=/data",
            ],
            "Cmd": [python, LAUNCHER_IN_IMAGE],
            "WorkingDir": "/",
            "Labels": {"org.sdss.fliswarm.inputs": IMAGE_INPUTS_HASH},
        },
        "rootfs": {"type": "layers", "diff_ids": [sizes["diff_id"]]},
        "history": [{"created_by": "fliswarm.testbed.image (offline build)"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    (work / "config.json").write_bytes(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": CONFIG_TYPE,
            "size": len(config_bytes),
            "digest": _sha(config_bytes),
        },
        "layers": [{"mediaType": LAYER_TYPE, "size": sizes["size"], "digest": sizes["digest"]}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    (work / "manifest.json").write_bytes(manifest_bytes)
    meta = {
        "digest": _sha(manifest_bytes),
        "layer_digest": sizes["digest"],
        "config_digest": _sha(config_bytes),
        "layer_size": sizes["size"],
        "rootfs_size": sizes["rootfs_size"],
        "inputs": image_inputs(),
        "step_seconds": times,
        "packages": packages,
    }
    (work / "build.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(entry, ignore_errors=True)
    work.rename(entry)
    for old in entry.parent.iterdir():  # drop builds of other inputs (and nothing else)
        if old != entry and re.fullmatch(r"[0-9a-f]{16}(\.tmp)?", old.name) and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    mib = 1024 * 1024
    say(
        f"Built: rootfs {sizes['rootfs_size'] / mib:.0f} MiB, "
        f"layer {sizes['size'] / mib:.0f} MiB (gzip), {len(packages)} packages."
    )


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _inside(rootfs: Path, path: str) -> Path:
    return rootfs / path.lstrip("/")


def _copy_python(rootfs: Path) -> None:
    """Copies the interpreter binary and the standard library, at their host paths."""

    python = os.path.realpath(sys.executable)
    target = _inside(rootfs, python)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(python, target)
    stdlib = sysconfig.get_paths()["stdlib"]

    def ignore(_: str, names: list[str]) -> set[str]:
        return {n for n in names if n in _STDLIB_SKIP or n.startswith(("config-", "_tkinter"))}

    shutil.copytree(stdlib, _inside(rootfs, stdlib), symlinks=True, ignore=ignore)
    strip = shutil.which("strip")
    if strip:  # the interpreter and libpython may carry debug symbols (libpython: 23 -> 6 MB)
        dynload = _inside(rootfs, stdlib) / "lib-dynload"
        _run([strip, "--strip-unneeded", str(target), *map(str, dynload.glob("*.so"))], 120)
    local_python = rootfs / "usr/local/bin/python3"
    if not local_python.exists():
        local_python.parent.mkdir(parents=True, exist_ok=True)
        local_python.symlink_to(python)


def _pip_install(target: Path) -> None:
    """Installs `REQUIREMENTS` with the host interpreter, then drops nested test suites."""

    env = dict(os.environ, PIP_ROOT_USER_ACTION="ignore", PIP_DISABLE_PIP_VERSION_CHECK="1")
    args = [sys.executable, "-m", "pip", "install", "--no-input", "--quiet", "--no-compile"]
    args += ["--prefer-binary", "--no-warn-script-location", "--no-warn-conflicts"]
    _run([*args, "--target", str(target), *REQUIREMENTS], timeout=900, env=env)
    # Test suites of sub-packages (scipy/*/tests...) are ~20% of the size and never imported;
    # top-level ones (astropy/tests) may be imported by the package itself, so they stay.
    for tests in list(target.glob("*/*/**/tests")) + list(target.glob("*/*/**/test")):
        shutil.rmtree(tests, ignore_errors=True)
    shutil.rmtree(target / "bin", ignore_errors=True)  # scripts with the host's shebang


def _add_files(rootfs: Path, applets: tuple[str, ...] = ()) -> None:
    """Adds the launcher, busybox as ``/bin/sh`` and a minimal ``/etc``."""

    launcher = _inside(rootfs, LAUNCHER_IN_IMAGE)
    launcher.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(LAUNCHER, launcher)
    busybox = shutil.which("busybox") or "/bin/busybox"
    (rootfs / "bin").mkdir(exist_ok=True)
    shutil.copy2(busybox, rootfs / "bin/busybox")
    for applet in dict.fromkeys(
        ("sh", "ls", "cat", "ps", "env", "sleep", "mkdir", "rm", *applets)
    ):
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc").mkdir(exist_ok=True)
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\n")
    for name in ("root", "data", "tmp", "proc", "sys", "dev"):
        (rootfs / name).mkdir(exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)


def _compile(rootfs: Path) -> None:
    """Precompiles all bytecode (container start-up is ~3x faster with it)."""

    dirs = [sysconfig.get_paths()["stdlib"], PACKAGES_DIR, os.path.dirname(LAUNCHER_IN_IMAGE)]
    args = [sys.executable, "-m", "compileall", "-q", "-j", "0"]
    args += ["--invalidation-mode", "unchecked-hash", "-s", str(rootfs), "-p", "/"]
    # Some packages ship files that do not compile (templates, py2 data): not fatal.
    done = subprocess.run(
        [*args, *(str(_inside(rootfs, d)) for d in dirs)],
        timeout=900,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        log.debug("compileall could not compile some files.")


def _copy_libraries(rootfs: Path) -> None:
    """Copies the ``ldd`` closure of the interpreter and of every shared object."""

    elves = [str(_inside(rootfs, os.path.realpath(sys.executable)))]
    elves += [str(p) for p in rootfs.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    libs: set[str] = set()
    for i in range(0, len(elves), 200):
        out = subprocess.run(
            ["ldd", *elves[i : i + 200]], timeout=120, capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) > parts.index("=>") + 1:
                libs.add(parts[parts.index("=>") + 1])
            elif parts and parts[0].startswith("/") and "(0x" in line:
                libs.add(parts[0])  # the dynamic loader
    libc = next((lib for lib in libs if os.path.basename(lib) == "libc.so.6"), None)
    if libc:  # glibc dlopens libgcc_s for thread cancellation
        libs.add(os.path.join(os.path.dirname(libc), "libgcc_s.so.1"))
    for lib in sorted(libs):
        if not lib.startswith("/") or lib.startswith(str(rootfs)) or not os.path.exists(lib):
            continue
        target = _inside(rootfs, lib)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib, target)
            if lib.startswith(sys.base_prefix + "/") and shutil.which("strip"):
                _run(["strip", "--strip-unneeded", str(target)], 120)  # libpython


#: System libraries manylinux wheels may use without bundling them (PEP 600 policies), + zlib.
MANYLINUX_LIBRARIES = (
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libutil.so.1",
    "libresolv.so.2", "libnsl.so.1", "libcrypt.so.1", "libgcc_s.so.1", "libstdc++.so.6",
    "libz.so.1",
)  # fmt: skip
#: Busybox applets the Python base image has besides those of the flicamera image.
BASE_APPLETS = ("chown", "chmod", "cp", "mv", "ln", "id", "echo", "test", "[", "touch", "tar")


@dataclass
class PythonBase:
    """The result of `build_python_base`: a root file system to import as a base image."""

    #: Gzipped tar of the root file system (``docker import`` / ``POST /images/create``).
    layer: Path
    #: ``ENV`` and ``CMD`` to give the imported image.
    env: list[str]
    cmd: list[str]
    inputs_hash: str
    #: Whether this call built it (`False`: from the cache).
    built: bool


def build_python_base(
    cache_dir: Path | None = None, packages: tuple[str, ...] = ("pip",), lock_timeout: float = 900
) -> PythonBase:
    """A local stand-in for a ``python:3.X-slim`` base image, made from the host Python.

    The interpreter, its standard library and shared libraries (as for the flicamera image),
    busybox as ``/bin/sh`` with common applets, and ``packages`` (e.g. ``pip``) copied from the
    host's site-packages, so that ``RUN pip install ...`` works in a Dockerfile built on it.
    Cached in ``cache_dir`` (default `DEFAULT_CACHE_DIR`) by a hash of its inputs.
    """

    import importlib.metadata

    versions = [f"{p}=={importlib.metadata.version(p)}" for p in packages]
    inputs = {"python": sys.version, "executable": os.path.realpath(sys.executable)}
    inputs |= {"recipe": "2", "packages": " ".join(versions), "applets": " ".join(BASE_APPLETS)}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
    entry = cache_dir / f"python-base-{digest}"
    bindir = os.path.dirname(os.path.realpath(sys.executable))
    env = [f"PATH={bindir}:/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=/root"]
    with _locked(cache_dir / ".lock", lock_timeout):
        built = not (entry / "rootfs.tar.gz").exists()
        if built:
            work = entry.with_name(entry.name + ".tmp")
            shutil.rmtree(work, ignore_errors=True)
            rootfs = work / "rootfs"
            _copy_python(rootfs)
            purelib = _inside(rootfs, sysconfig.get_paths()["purelib"])
            for dist in packages:
                files = importlib.metadata.distribution(dist).files or []
                for top in {f.parts[0] for f in files if ".." not in f.parts}:
                    source = Path(sysconfig.get_paths()["purelib"]) / top
                    if source.is_dir():
                        shutil.copytree(source, purelib / top, symlinks=True)
            _add_files(rootfs, BASE_APPLETS)
            shutil.rmtree(_inside(rootfs, os.path.dirname(LAUNCHER_IN_IMAGE)))
            _copy_libraries(rootfs)
            _copy_system_libraries(rootfs)
            _write_layer(rootfs, work / "rootfs.tar.gz")
            shutil.rmtree(rootfs)
            shutil.rmtree(entry, ignore_errors=True)
            work.rename(entry)
            for old in cache_dir.glob("python-base-*"):
                if old != entry and old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
    return PythonBase(entry / "rootfs.tar.gz", env, ["python3"], digest, built)


def _copy_system_libraries(rootfs: Path) -> None:
    """Adds the system libraries that manylinux wheels may link to, as a Debian base has them."""

    libc = next((p for p in rootfs.rglob("libc.so.6") if p.is_file()), None)
    if libc is None:
        return
    host_dir = Path("/") / libc.parent.relative_to(rootfs)
    for name in MANYLINUX_LIBRARIES:
        source = host_dir / name
        if source.exists() and not (libc.parent / name).exists():
            shutil.copy2(source.resolve(), libc.parent / name)


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


def _write_layer(rootfs: Path, path: Path) -> dict[str, Any]:
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


def _http(
    method: str,
    url: str,
    body: bytes | BinaryIO | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, http.client.HTTPMessage]:
    """One plain-HTTP request to the registry; returns the status and headers."""

    parts = urllib.parse.urlsplit(url)
    _check_registry(parts.netloc)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status, response.headers
    finally:
        conn.close()


def _push(
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


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")


async def start_flicamera_on_host(
    name: str,
    port: int,
    data_dir: Path,
    host: str = "127.0.0.1",
    observatory: str = "APO",
) -> asyncio.subprocess.Process:
    """Starts the real flicamera actor with one simulated camera, on the host.

    Parameters
    ----------
    name
        The actor name, which is also the camera name.
    port
        The TCP port to listen on.
    data_dir
        Where images (``<data_dir>/<n>cam/<sjd>/<n>img-<name>-NNNN.fits``) and logs go. The
        launcher's output goes to ``<data_dir>/logs/flicamera-launcher-<name>.log``.
    host
        The address to listen on; keep it on loopback.
    observatory
        ``APO`` or ``LCO``.

    Returns
    -------
    process
        The running process. The caller must terminate and wait for it. Use
        `wait_flicamera_ready` to know when it listens.
    """

    env = dict(os.environ)
    env.update(
        ACTOR_NAME=name,
        OBSERVATORY=observatory,
        FLICAMERA_HOST=host,
        FLICAMERA_PORT=str(port),
        FLICAMERA_DATA_DIR=str(data_dir),
    )
    with _open_log(Path(data_dir) / "logs" / f"flicamera-launcher-{name}.log") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            str(LAUNCHER),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )


async def wait_flicamera_ready(host: str, port: int, timeout: float = 30.0) -> float:
    """Waits until a flicamera actor accepts TCP connections.

    Returns
    -------
    elapsed
        The seconds waited.

    Raises
    ------
    TimeoutError
        If nothing listens on ``host:port`` after ``timeout`` seconds.
    """

    start = time.monotonic()
    while True:
        left = timeout - (time.monotonic() - start)
        if left <= 0:
            raise TimeoutError(f"flicamera on {host}:{port} not ready after {timeout} s.")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=min(left, 2.0)
            )
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.1)
            continue
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), timeout=2.0)
        except (OSError, asyncio.TimeoutError):
            pass
        return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    """``python3 -m fliswarm.testbed.image --registry HOST:PORT``: build and push."""

    parser = argparse.ArgumentParser(
        prog="python3 -m fliswarm.testbed.image",
        description="Build the simulated flicamera image offline and push it to a registry.",
    )
    parser.add_argument("--registry", required=True, help="HOST:PORT of the registry.")
    parser.add_argument("--repository", default="sdss/flicamera")
    parser.add_argument("--tag", default="sim")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--rebuild", action="store_true", help="ignore the cache")
    args = parser.parse_args(argv)
    start = time.monotonic()

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {line}", flush=True)

    build = build_flicamera_image(
        args.registry, args.repository, args.tag, args.cache_dir, args.rebuild, progress
    )
    print(json.dumps(asdict(build), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
