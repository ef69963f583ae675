"""Root file systems made from the host Python, for images that cannot pull a base image.

`copy_python` copies the interpreter and its standard library at their host paths,
`copy_libraries` the ``ldd`` closure of every binary, `add_files` busybox as ``/bin/sh``, the
flicamera launcher and a minimal ``/etc``. The flicamera image (`.image`) is built from these
steps, and so is `build_python_base`, a stand-in for a ``python:3.X-slim`` base image, whose
``/bin/sh`` is the host's dash (`use_dash`) and whose ``apt-get`` (`add_stand_in_apt`) installs
the host's ``ping`` and ``ssh`` as the Debian packages.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fliswarm_testbed.oci import write_layer


__all__ = [
    "LAUNCHER",
    "LAUNCHER_IN_IMAGE",
    "PACKAGES_DIR",
    "DEFAULT_CACHE_DIR",
    "MANYLINUX_LIBRARIES",
    "BASE_APPLETS",
    "STAND_IN_PACKAGES",
    "STAND_IN_APT_DIR",
    "PythonBase",
    "build_python_base",
    "locked",
    "copy_python",
    "pip_install",
    "add_files",
    "compile_bytecode",
    "copy_libraries",
    "copy_system_libraries",
    "add_stand_in_apt",
    "use_dash",
]


#: The launcher script that runs flicamera with one simulated camera.
LAUNCHER = Path(__file__).parent / "files" / "flicamera_launcher.py"

#: Where builds are cached; ``$FLISWARM_IMAGE_CACHE`` overrides it.
DEFAULT_CACHE_DIR = Path(
    os.environ.get("FLISWARM_IMAGE_CACHE", "/var/cache/fliswarm-testbed/images")
)

PACKAGES_DIR = "/opt/python-packages"
LAUNCHER_IN_IMAGE = "/opt/fliswarm/flicamera_launcher.py"

#: Standard library folders the image leaves out.
STDLIB_SKIP = {"site-packages", "test", "tests", "idlelib", "tkinter", "turtledemo"}
STDLIB_SKIP |= {"__pycache__", "ensurepip", "lib2to3"}


log = logging.getLogger(__name__)


@contextmanager
def locked(path: Path, timeout: float) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (a build cache lock file), polling up to ``timeout``."""

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


def run(args: list[str], timeout: float, **kwargs: Any) -> str:
    """Runs a command; raises with its output if it fails."""

    done = subprocess.run(args, timeout=timeout, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{args[:4]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def inside(rootfs: Path, path: str) -> Path:
    return rootfs / path.lstrip("/")


def copy_python(rootfs: Path) -> None:
    """Copies the interpreter binary and the standard library, at their host paths."""

    python = os.path.realpath(sys.executable)
    target = inside(rootfs, python)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(python, target)
    stdlib = sysconfig.get_paths()["stdlib"]

    def ignore(_: str, names: list[str]) -> set[str]:
        return {n for n in names if n in STDLIB_SKIP or n.startswith(("config-", "_tkinter"))}

    shutil.copytree(stdlib, inside(rootfs, stdlib), symlinks=True, ignore=ignore)
    strip = shutil.which("strip")
    if strip:  # the interpreter and libpython may carry debug symbols (libpython: 23 -> 6 MB)
        dynload = inside(rootfs, stdlib) / "lib-dynload"
        run([strip, "--strip-unneeded", str(target), *map(str, dynload.glob("*.so"))], 120)
    local_python = rootfs / "usr/local/bin/python3"
    if not local_python.exists():
        local_python.parent.mkdir(parents=True, exist_ok=True)
        local_python.symlink_to(python)


def pip_install(target: Path, requirements: tuple[str, ...]) -> None:
    """Installs ``requirements`` with the host interpreter, then drops nested test suites."""

    env = dict(os.environ, PIP_ROOT_USER_ACTION="ignore", PIP_DISABLE_PIP_VERSION_CHECK="1")
    args = [sys.executable, "-m", "pip", "install", "--no-input", "--quiet", "--no-compile"]
    args += ["--prefer-binary", "--no-warn-script-location", "--no-warn-conflicts"]
    run([*args, "--target", str(target), *requirements], timeout=900, env=env)
    # Test suites of sub-packages (scipy/*/tests...) are ~20% of the size and never imported;
    # top-level ones (astropy/tests) may be imported by the package itself, so they stay.
    for tests in list(target.glob("*/*/**/tests")) + list(target.glob("*/*/**/test")):
        shutil.rmtree(tests, ignore_errors=True)
    shutil.rmtree(target / "bin", ignore_errors=True)  # scripts with the host's shebang


def add_files(rootfs: Path, applets: tuple[str, ...] = ()) -> None:
    """Adds the launcher, busybox as ``/bin/sh`` and a minimal ``/etc``."""

    launcher = inside(rootfs, LAUNCHER_IN_IMAGE)
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


def compile_bytecode(rootfs: Path) -> None:
    """Precompiles all bytecode (container start-up is ~3x faster with it)."""

    dirs = [sysconfig.get_paths()["stdlib"], PACKAGES_DIR, os.path.dirname(LAUNCHER_IN_IMAGE)]
    args = [sys.executable, "-m", "compileall", "-q", "-j", "0"]
    args += ["--invalidation-mode", "unchecked-hash", "-s", str(rootfs), "-p", "/"]
    # Some packages ship files that do not compile (templates, py2 data): not fatal.
    done = subprocess.run(
        [*args, *(str(inside(rootfs, d)) for d in dirs)],
        timeout=900,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        log.debug("compileall could not compile some files.")


def copy_libraries(rootfs: Path) -> None:
    """Copies the ``ldd`` closure of the interpreter and of every shared object."""

    elves = [str(inside(rootfs, os.path.realpath(sys.executable)))]
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
        target = inside(rootfs, lib)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib, target)
            if lib.startswith(sys.base_prefix + "/") and shutil.which("strip"):
                run(["strip", "--strip-unneeded", str(target)], 120)  # libpython


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
    Like the real base its ``/bin/sh`` is dash (`use_dash`) and it has no ``ping`` and no
    ``ssh`` but an ``apt-get`` that installs them (`add_stand_in_apt`).
    Cached in ``cache_dir`` (default `DEFAULT_CACHE_DIR`) by a hash of its inputs.
    """

    import importlib.metadata

    versions = [f"{p}=={importlib.metadata.version(p)}" for p in packages]
    inputs = {"python": sys.version, "executable": os.path.realpath(sys.executable)}
    inputs |= {"recipe": "5", "packages": " ".join(versions), "applets": " ".join(BASE_APPLETS)}
    inputs |= {"apt": json.dumps(_stand_in_programs()), "sh": json.dumps(_host_program("dash"))}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
    entry = cache_dir / f"python-base-{digest}"
    bindir = os.path.dirname(os.path.realpath(sys.executable))
    env = [f"PATH={bindir}:/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=/root"]
    with locked(cache_dir / ".lock", lock_timeout):
        built = not (entry / "rootfs.tar.gz").exists()
        if built:
            work = entry.with_name(entry.name + ".tmp")
            shutil.rmtree(work, ignore_errors=True)
            rootfs = work / "rootfs"
            copy_python(rootfs)
            # The site-packages of the interpreter itself (not of a virtual environment we
            # may run in: the image has no venv).
            base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
            purelib = inside(rootfs, sysconfig.get_paths(vars=base)["purelib"])
            for dist in packages:
                found = importlib.metadata.distribution(dist)
                for top in {f.parts[0] for f in found.files or [] if ".." not in f.parts}:
                    source = Path(str(found.locate_file(top)))
                    if source.is_dir():
                        shutil.copytree(source, purelib / top, symlinks=True)
            add_files(rootfs, BASE_APPLETS)
            use_dash(rootfs)
            shutil.rmtree(inside(rootfs, os.path.dirname(LAUNCHER_IN_IMAGE)))
            copy_libraries(rootfs)
            copy_system_libraries(rootfs)
            add_stand_in_apt(rootfs)
            write_layer(rootfs, work / "rootfs.tar.gz")
            shutil.rmtree(rootfs)
            shutil.rmtree(entry, ignore_errors=True)
            work.rename(entry)
            for old in cache_dir.glob("python-base-*"):
                if old != entry and old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
    return PythonBase(entry / "rootfs.tar.gz", env, ["python3"], digest, built)


def copy_system_libraries(rootfs: Path) -> None:
    """Adds the system libraries that manylinux wheels may link to, as a Debian base has them."""

    libc = next((p for p in rootfs.rglob("libc.so.6") if p.is_file()), None)
    if libc is None:
        return
    host_dir = Path("/") / libc.parent.relative_to(rootfs)
    for name in MANYLINUX_LIBRARIES:
        source = host_dir / name
        if source.exists() and not (libc.parent / name).exists():
            shutil.copy2(source.resolve(), libc.parent / name)


#: The Debian packages the stand-in base's ``apt-get`` knows, and the host programs it installs
#: for each (at ``/usr/bin``, as Debian does).
STAND_IN_PACKAGES: dict[str, tuple[str, ...]] = {
    "iputils-ping": ("ping",),
    "openssh-client": ("ssh",),
}
#: Where the stand-in base keeps what its ``apt-get`` installs: ``<package>/root/`` (copied to
#: ``/``) and ``<package>/postinst`` (run after).
STAND_IN_APT_DIR = "/usr/share/fliswarm-testbed/apt"

#: Run after installing a package, as its Debian maintainer script does in a slim base (no
#: ``setcap``): iputils-ping makes ``ping`` setuid root, so that any user can ping.
_POSTINST = {"iputils-ping": "chmod u+s /usr/bin/ping\n"}

_APT_GET = f"""#!/bin/sh
# apt-get of the fliswarm test bed's stand-in python base (fliswarm_testbed.rootfs): no network,
# no .deb files. "install" copies the host's programs of a known package from
# {STAND_IN_APT_DIR}/<package>/ and runs its postinst, as Debian's package would.
set -e
case "$1" in
    update) echo "stand-in apt-get: nothing to update (offline)." ;;
    install)
        shift
        for package in "$@"; do
            case "$package" in -*) continue ;; esac
            if [ ! -d "{STAND_IN_APT_DIR}/$package" ]; then
                echo "E: Unable to locate package $package (stand-in apt-get)" >&2
                exit 100
            fi
            cp -a "{STAND_IN_APT_DIR}/$package/root/." /
            if [ -f "{STAND_IN_APT_DIR}/$package/postinst" ]; then
                sh "{STAND_IN_APT_DIR}/$package/postinst"
            fi
            echo "Setting up $package (stand-in: the test host's program) ..."
        done
        ;;
    *) echo "E: stand-in apt-get: '$1' is not supported" >&2; exit 100 ;;
esac
"""


def _host_program(program: str, package: str | None = None) -> list[str]:
    """A host program the stand-in base copies: its real path, size and mtime (cache key)."""

    path = shutil.which(program, path="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    if path is None:
        package = package or program
        raise RuntimeError(
            f"the stand-in python base needs the host's {program!r} ({package}) to stand in "
            f"for the Debian package: install {package} on this host."
        )
    real = os.path.realpath(path)
    stat = os.stat(real)
    return [real, str(stat.st_size), str(int(stat.st_mtime))]


def _stand_in_programs() -> dict[str, list[str]]:
    """The host programs `add_stand_in_apt` copies, with their size and mtime (cache key)."""

    return {
        program: _host_program(program, package)
        for package, programs in STAND_IN_PACKAGES.items()
        for program in programs
    }


def use_dash(rootfs: Path) -> None:
    """Makes ``/bin/sh`` the host's dash, as in Debian's images, instead of busybox.

    Debian's busybox-static runs its own applets before any program on ``PATH``: with it as
    ``/bin/sh``, ``command -v ping`` finds a ping in a base that has none, and ``ping`` in a
    shell command stays busybox's once iputils' is installed. dash needs only libc.
    """

    sh = rootfs / "bin/sh"
    sh.unlink(missing_ok=True)
    shutil.copy2(_host_program("dash")[0], sh)
    sh.chmod(0o755)


def _needed_libraries(program: str) -> set[str]:
    """The shared libraries ``program`` loads (``ldd``), the dynamic loader included."""

    libs: set[str] = set()
    for line in run(["ldd", program], 60).splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1:
            libs.add(parts[parts.index("=>") + 1])
        elif parts and parts[0].startswith("/"):
            libs.add(parts[0])
    return {lib for lib in libs if lib.startswith("/") and os.path.exists(lib)}


def add_stand_in_apt(rootfs: Path) -> None:
    """Gives the stand-in base an ``apt-get`` that installs `STAND_IN_PACKAGES` offline.

    The real ``python:3.X-slim`` (Debian) has neither ``ping`` nor ``ssh``, and a Dockerfile
    installs them with ``apt-get install iputils-ping openssh-client``. Here nothing can be
    downloaded: each package is the host's program (iputils ``ping`` and OpenSSH ``ssh`` on a
    Debian host) with the shared libraries the base lacks, kept in `STAND_IN_APT_DIR` and
    copied into place only when the Dockerfile's ``apt-get install`` asks for the package.
    """

    stash = inside(rootfs, STAND_IN_APT_DIR)
    programs = _stand_in_programs()
    for package, names in STAND_IN_PACKAGES.items():
        root = stash / package / "root"
        for name in names:
            source = programs[name][0]
            target = root / "usr/bin" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            target.chmod(0o755)
            for lib in sorted(_needed_libraries(source)):
                if not inside(rootfs, lib).exists() and not inside(root, lib).exists():
                    inside(root, lib).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(lib, inside(root, lib))
        if package in _POSTINST:
            (stash / package / "postinst").write_text(_POSTINST[package])
    apt_get = rootfs / "usr/bin/apt-get"
    apt_get.parent.mkdir(parents=True, exist_ok=True)
    apt_get.write_text(_APT_GET)
    apt_get.chmod(0o755)
