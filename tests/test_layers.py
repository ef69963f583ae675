"""The package's layers import downward only; the original's API is where it was; the runtime
package needs neither the test bed nor the test tools.

Layers, lowest first (``docs/architecture.md``): the base helpers, ``config``, ``docker``,
``camera``, ``provision``, ``supervision``, ``commands``, the actor, the command line. A
module may import its own layer and those below, at run time; a reference to a higher layer
is only allowed for type checking (``if TYPE_CHECKING:``).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fliswarm"

LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["fliswarm", "fliswarm.exceptions", "fliswarm.tools", "fliswarm.compat"]),
    ("config", ["fliswarm.config"]),
    ("docker", ["fliswarm.docker", "fliswarm.node"]),
    ("camera", ["fliswarm.camera"]),
    ("provision", ["fliswarm.provision"]),
    ("supervision", ["fliswarm.supervision"]),
    ("commands", ["fliswarm.commands"]),
    ("actor", ["fliswarm.actor"]),
    ("cli", ["fliswarm.daemon", "fliswarm.__main__", "fliswarm.client"]),
]


def layer_of(module: str) -> int:
    """The index in `LAYERS` of the longest prefix that names ``module``."""

    found = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert found, f"{module} is in no layer: add it to LAYERS (and to the architecture page)"
    return max(found)[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> list[tuple[str, int]]:
    """The fliswarm modules ``path`` imports outside ``if TYPE_CHECKING:`` blocks."""

    tree = ast.parse(path.read_text())
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(child) for child in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found.append((name, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] == "fliswarm"]


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(ROOT))
)
def test_imports_go_downward(path: Path):
    module = module_name(path)
    mine = layer_of(module)
    upward = [
        f"{module}:{line} imports {name} ({LAYERS[layer_of(name)][0]})"
        for name, line in runtime_imports(path)
        if layer_of(name) > mine
    ]
    assert not upward, f"{LAYERS[mine][0]} layer importing upward: {upward}"


def test_the_original_api_is_importable_where_it_was():
    from fliswarm.actor import FLISwarmActor
    from fliswarm.docker.node import Node as DockerNode
    from fliswarm.node import Node
    from fliswarm.tools import FakeCommand, IDPool, select_nodes, subprocess_run_async

    assert Node is DockerNode
    for method in ("connect", "client_alive", "connected", "is_container_running", "ping"):
        assert callable(getattr(Node, method))
    for method in ("get_volume", "report_status", "stop_container", "run_container"):
        assert callable(getattr(Node, method))
    assert callable(Node.create_volume)
    assert callable(FLISwarmActor.get_container_name) and callable(FLISwarmActor.connect_nodes)
    assert all(callable(x) for x in (FakeCommand, IDPool, select_nodes, subprocess_run_async))


def test_the_actor_needs_no_test_bed_nor_test_tools():
    """The runtime package imports neither the test bed nor pytest nor cryptography."""

    code = (
        "import sys, fliswarm.actor, fliswarm.daemon, fliswarm.config\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fliswarm_testbed', 'pytest', '_pytest', 'cryptography', 'hypothesis'))\n"
        "print(bad)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_the_wheel_holds_the_runtime_package_only(tmp_path: Path):
    """`pip install .` gives the actor: the test bed is another distribution (testbed/)."""

    source = tmp_path / "source"  # A copy: an in-tree build would leave build/ behind.
    shutil.copytree(ROOT / "fliswarm", source / "fliswarm", ignore=shutil.ignore_patterns("*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    wheel_dir = tmp_path / "wheel"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir)]
    done = subprocess.run(
        [*pip, str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [wheel] = wheel_dir.glob("sdss_fliswarm-*.whl")  # The distribution of 0.7: sdss-fliswarm.
    names = zipfile.ZipFile(wheel).namelist()
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names), names
    assert "fliswarm/actor.py" in names and "fliswarm/etc/config.schema.json" in names
    assert not [name for name in names if "testbed" in name or "demo" in name], names
