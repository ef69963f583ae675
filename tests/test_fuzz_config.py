"""Hostile configuration values and fuzzed YAML documents: a `ConfigError`, never a traceback.

Values that reach an argv (ping, ssh), a Docker request (names, image references) or a
tron command (power devices) are validated with strict patterns. JSON Schema patterns have
ECMA-262 semantics (``$`` is the very end): a trailing newline used to pass them all.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fliswarm.commands.reboot import ssh_argv
from fliswarm.config import ConfigError, ConfigWarning, load_config
from fliswarm.docker.ping import PingProgram, ping_argv


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

BASE: dict[str, Any] = {
    "actor": {"name": "fliswarm", "host": "127.0.0.1", "port": 19996},
    "image": "sdss/flicamera:latest",
    "nodes": {"gfa1": {"host": "sdss-gfa1", "port": 19995, "category": "gfa"}},
    "enabled_nodes": ["gfa1"],
}

NASTY_STRINGS = [
    "gfa1; rm -rf /",
    "$(id)",
    "`id`",
    "-oProxyCommand=sh -c id",
    "--help",
    "../../etc/passwd",
    "gfa1\n",
    "gfa1\nrm -rf /",
    "a b",
    "",
    "\x00",
    "gfa1\r",
    "é",
    "x" * 300,
]


def load(tmp_path: Path, data: Any) -> dict[str, Any]:
    path = tmp_path / "fliswarm.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        return load_config(path)


def with_value(where: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    if where == "node name":
        data["nodes"] = {value: data["nodes"]["gfa1"]}
        data["enabled_nodes"] = [value]
    elif where == "volume name":
        data["volumes"] = {value: {"driver": "local"}}
    elif where == "environment name":
        data["environment"] = {value: "1"}
    elif where == "node environment name":
        data["nodes"]["gfa1"]["environment"] = {value: "1"}
    elif where == "power device":
        data["nodes"]["gfa1"]["power"] = {"device": value}
    elif where.startswith("node "):
        data["nodes"]["gfa1"][where[5:]] = value
    elif where.startswith("ssh "):
        data["ssh"] = {where[4:]: value}
    elif where.startswith("actor "):
        data["actor"][where[6:]] = value
    else:
        data[where] = value
    return data


WHERE = [
    "node host",
    "node user",
    "node category",
    "node docker-client",
    "node name",
    "volume name",
    "environment name",
    "node environment name",
    "power device",
    "ssh user",
    "ssh known_hosts",
    "image",
    "registry",
    "container_name",
    "actor host",
    "actor name",
]


LONG = "x" * 300
# Paths are free text (never given to a shell): these are fine for a known_hosts file.
LEGITIMATE_PATHS = {"../../etc/passwd", "é", LONG, "$(id)", "`id`"}
# Only host and node names have a length limit; URLs and addresses have a format.
LENGTH_LIMITED = {"node host", "node name", "actor host"}
FORMAT_CHECKED = {"node docker-client", "registry"}


def _harmless(where: str, value: str) -> bool:
    if where == "ssh known_hosts" and value in LEGITIMATE_PATHS:
        return True
    return value == LONG and where not in LENGTH_LIMITED | FORMAT_CHECKED


REJECTED = [(w, v) for w in WHERE for v in NASTY_STRINGS if not _harmless(w, v)]
ACCEPTED = [(w, v) for w in WHERE for v in NASTY_STRINGS if _harmless(w, v)]


@pytest.mark.parametrize(("where", "value"), REJECTED)
def test_nasty_values_are_rejected(tmp_path: Path, where: str, value: str):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, with_value(where, value))
    message = str(info.value)
    assert message.count("\n") == 0, "one line"
    assert str(tmp_path / "fliswarm.yaml") in message


@pytest.mark.parametrize(("where", "value"), ACCEPTED)
def test_harmless_values_are_accepted(tmp_path: Path, where: str, value: str):
    load(tmp_path, with_value(where, value))


def test_good_values_still_accepted(tmp_path: Path):
    data = copy.deepcopy(BASE)
    node = data["nodes"]["gfa1"]
    node.update(user="sdss_5.x-1", category="fvc-2", power={"device": "nuc1:a"})
    node["environment"] = {"FLICAMERA_PORT": "19995"}
    data.update(ssh={"known_hosts": "~/.ssh/known_hosts", "user": "sdss"})
    data["environment"] = {"_X1": "a b; $(id)"}  # Values are not restricted: no shell.
    config = load(tmp_path, data)
    assert config["nodes"]["gfa1"]["user"] == "sdss_5.x-1"


@pytest.mark.parametrize("host", ["-oProxyCommand=sh", "-v", "", "--"])
def test_argv_builders_refuse_option_like_hosts(host: str):
    with pytest.raises(ValueError):
        ssh_argv(host, "sudo reboot")
    with pytest.raises(ValueError):
        ping_argv(host, 1.0, PingProgram("/bin/ping", "iputils", True))


def test_ssh_argv_is_checked_and_bounded():
    argv = ssh_argv("sdss-gfa1", "sudo reboot", user="sdss", known_hosts="/k", connect_timeout=2.5)
    assert argv[:5] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3"]
    assert "StrictHostKeyChecking=yes" in argv and "UserKnownHostsFile=/k" in argv
    separator = argv.index("--")
    assert argv[separator + 1 :] == ["sdss@sdss-gfa1", "sudo", "reboot"]
    with pytest.raises(ValueError):
        ssh_argv("sdss-gfa1", "reboot", user="-oProxyCommand=sh")


yaml_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(NASTY_STRINGS)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10) | st.sampled_from(list(BASE)), children, max_size=4)
    ),
    max_leaves=15,
)


def _outcome(tmp_path: Path, data: Any) -> None:
    try:
        config = load(tmp_path, data)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err)
    else:
        assert isinstance(config["nodes"], dict) and config["actor"]["name"]


@FUZZ
@given(doc=yaml_values)
def test_random_documents(tmp_path: Path, doc: Any):
    _outcome(tmp_path, doc)


@FUZZ
@given(text=st.text(max_size=300))
def test_random_text_files(tmp_path: Path, text: str):
    _outcome(tmp_path, text)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            out += _paths(value, prefix + (index,))
    return out


FULL = {
    **BASE,
    "registry": "10.0.0.1:5000",
    "volumes": {"data": {"driver": "local", "opts": {"type": "nfs", "device": ":/data"}}},
    "ssh": {"user": "sdss", "known_hosts": "/etc/ssh/known_hosts"},
    "timeouts": {"talk": 30},
    "docker-tls": {"ca": "/tls/ca.pem", "cert": "/tls/cert.pem", "key": "/tls/key.pem"},
    "power": {"actor": "jaeger", "command": {"poweron": "on", "poweroff": "off"}},
}


@FUZZ
@given(data=st.data())
def test_one_value_of_a_valid_file_replaced(tmp_path: Path, data: st.DataObject):
    """A valid file with one value (anywhere) replaced by a random one."""

    doc = copy.deepcopy(FULL)
    path = data.draw(st.sampled_from(_paths(doc)))
    value = data.draw(yaml_values)
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    _outcome(tmp_path, doc)


def test_no_shell_anywhere_in_fliswarm():
    """Audit: subprocesses are argv lists; the only shell is the documented compat parameter
    of `fliswarm.tools.subprocess_run_async`, which fliswarm itself never sets."""

    import ast

    import fliswarm

    root = Path(fliswarm.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            where = f"{path.relative_to(root)} {name}"
            if name.endswith(("os.system", "os.popen", "create_subprocess_shell")):
                found.append(where)
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                ):
                    found.append(f"{where} shell={ast.unparse(keyword.value)}")
    assert found == ["tools.py asyncio.create_subprocess_shell"], found
