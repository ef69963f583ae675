"""Tests for fliswarm.config: layouts, defaults, overrides and every error message."""

from __future__ import annotations

import json
import pathlib
import warnings
from typing import Any

import pytest

from fliswarm.config import ConfigError, ConfigWarning, default_config_path, load_config
from fliswarm.config.schema import get_schema, get_validator, schema_path


CONFIGS = pathlib.Path(__file__).parent / "configs"

BASE = """\
actor: {name: fliswarm, host: 127.0.0.1, port: 19996}
image: sdss/flicamera:latest
enabled_nodes: [gfa1, gfa2]
nodes:
  gfa1: {host: 10.250.77.11, port: 19995}
  gfa2: {host: 10.250.77.12, port: 19995}
"""


@pytest.fixture(autouse=True)
def no_observatory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OBSERVATORY", raising=False)


@pytest.fixture(autouse=True)
def warnings_are_errors() -> Any:
    """Any unexpected warning (e.g. an unknown key) fails the test."""

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def write(tmp_path: pathlib.Path, text: str, name: str = "bad.yaml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: pathlib.Path | str, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    return info.value


# --- The shipped files --------------------------------------------------------------------


def test_default_config_path() -> None:
    assert default_config_path().name == "fliswarm.yaml"
    assert default_config_path().is_file()


@pytest.mark.parametrize("site", ["APO", "LCO"])
def test_default_config_sites(site: str) -> None:
    config = load_config(observatory=site)

    assert config["observatory"] == site
    assert config["actor"] == {
        "name": "fliswarm",
        "host": "0.0.0.0",
        "port": 19996,
        "tron_host": "sdss5-hub",
        "tron_port": 6093,
        "log_dir": "/data/logs/actors/fliswarm",
    }
    assert config["registry"] == "sdss-hub:5000"
    assert config["image"] == "sdss/flicamera:latest"
    assert config["container_name"] == "flicamera"
    names = ["gfa1", "gfa2", "gfa3", "gfa4", "gfa5", "gfa6", "fvc"]
    assert config["enabled_nodes"] == names
    assert list(config["nodes"]) == names
    for name, node in config["nodes"].items():
        assert node["host"] == f"sdss-{name}"
        assert node["port"] == 19995
        assert node["docker-client"] == f"tcp://sdss-{name}:2375"
        assert node["category"] == ("fvc" if name == "fvc" else "gfa")
    assert config["volumes"]["data"]["opts"] == {
        "type": "nfs",
        "o": "addr=sdss-hub,rw,nolock,hard,nfsvers=4",
        "device": ":/data",
    }
    assert config["volumes"]["home"]["opts"]["device"] == ":/home/sdss5"
    assert ",ro," in config["volumes"]["home"]["opts"]["o"]
    assert config["power"]["actor"] == "jaeger"
    assert config["power"]["command"] == {
        "poweron": "ieb switch --on",
        "poweroff": "ieb switch --off",
    }
    json.dumps(config, allow_nan=False)


def test_default_config_observatory_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBSERVATORY", "lco")
    assert load_config()["observatory"] == "LCO"
    # The argument wins over the environment.
    assert load_config(observatory="APO")["observatory"] == "APO"


# async: a CLU actor takes the running loop; made outside one it creates a loop of its own
# that nothing closes (a ResourceWarning in whichever later test the garbage collector runs).
async def test_actor_section_fits_legacy_actor() -> None:
    from clu import LegacyActor

    actor = LegacyActor(**load_config(observatory="APO")["actor"])
    assert actor.name == "fliswarm"
    assert actor.port == 19996


def test_schema_is_valid_and_documented() -> None:
    from jsonschema import Draft202012Validator

    schema = get_schema()
    assert schema_path().name == "config.schema.json"
    Draft202012Validator.check_schema(schema)

    missing: list[str] = []

    def walk(sub: Any, where: str) -> None:
        # The if/then/else branches only refine properties described at the top.
        if not isinstance(sub, dict) or where in ("if", "then", "else"):
            return
        for key, prop in sub.get("properties", {}).items():
            if "description" not in prop:
                missing.append(f"{where}.properties.{key}")
        for key, value in sub.items():
            walk(value, f"{where}.{key}" if where else key)

    walk(schema, "")
    assert missing == []


# --- Layouts, defaults, overrides ----------------------------------------------------------


def test_flat_layout_every_key() -> None:
    config = load_config(CONFIGS / "flat.yaml")

    assert config["actor"]["additional_properties"] is True
    assert config["actor"]["tron_port"] == 16093
    assert config["observatory"] == "LOCAL"
    assert config["timeouts"]["docker_pull"] == 120
    assert config["restart_policy"] == "on-failure"
    assert config["self_healing"] is False
    assert config["replace_drifted"] is True
    assert config["environment"] == {"FLICAMERA_SIMULATE": "1"}
    assert config["enabled_nodes"] == ["gfa1", "gfa2", "fvc"]
    assert config["volumes"] == {
        "data": {"driver": "local", "opts": {"type": "tmpfs", "device": "tmpfs"}},
        "scratch": {"driver": "local", "opts": {}},
    }

    nodes = config["nodes"]
    assert nodes["gfa1"] == {
        "host": "10.250.77.11",
        "port": 19995,
        "docker-client": "tcp://10.250.77.11:2376",  # docker-tls: Docker's TLS port.
        "category": "gfa",
        "user": "sdss",
        "docker-uid": 2005,
        "docker-gid": 3005,
        "power": {"device": "nuc1"},
        "docker-tls": config["docker-tls"],
    }
    # Per-node TLS overrides the global one; users default to ssh.user.
    assert nodes["gfa2"]["docker-tls"]["ca"] == "/etc/fliswarm/gfa2/ca.pem"
    assert nodes["gfa2"]["docker-client"] == "unix:///run/fliswarm/gfa2/docker.sock"
    assert nodes["gfa2"]["user"] == "observer"
    assert nodes["fvc"]["docker-client"] == "tcp://10.250.77.13:2376"
    json.dumps(config, allow_nan=False)


def test_flat_layout_observatory(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, BASE, "flat.yaml")
    assert load_config(path)["observatory"] is None
    monkeypatch.setenv("OBSERVATORY", "APO")
    assert load_config(path)["observatory"] == "APO"
    assert load_config(path, observatory="LCO")["observatory"] == "LCO"


def test_defaults_filled(tmp_path: pathlib.Path) -> None:
    config = load_config(write(tmp_path, BASE, "minimal.yaml"))

    assert config["actor"] == {
        "name": "fliswarm",
        "host": "127.0.0.1",
        "port": 19996,
        "tron_host": None,
        "tron_port": 6093,
        "log_dir": None,
    }
    assert config["registry"] is None
    assert config["container_name"] == "flicamera"
    assert config["ping_timeout"] == 0.6
    assert config["status_interval"] == 300
    assert config["timeouts"] == {
        "docker_connect": 2,
        "docker_request": 10,
        "docker_pull": 600,
        "talk": 30,
        "command": 10,
        "container_ready": 30,
        "ssh": 15,
        "device_connect": 5,
        "power": 30,
    }
    assert config["liveness"] == {
        "enabled": True,
        "command": "ping",
        "interval": 5,
        "timeout": 4,
        "failures": 3,
        "readout": 5,
        "margin": 10,
    }
    assert config["restart_policy"] == "always"
    assert config["self_healing"] is True
    assert config["replace_drifted"] is False
    assert config["environment"] == {}
    assert config["docker-tls"] is None
    assert config["reboot_command"] == "sudo reboot"
    assert config["ssh"] == {"known_hosts": None, "user": None}
    assert config["power"] is None
    assert config["volumes"] == {}
    assert config["nodes"]["gfa2"] == {
        "host": "10.250.77.12",
        "port": 19995,
        "docker-client": "tcp://10.250.77.12:2375",
        "category": None,
        "user": None,
        "docker-uid": None,
        "docker-gid": None,
        "power": None,
        "docker-tls": None,
    }
    json.dumps(config, allow_nan=False)


def test_site_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    path = CONFIGS / "site.yaml"
    south = load_config(path, observatory="SOUTH")
    assert south["observatory"] == "SOUTH"
    assert south["enabled_nodes"] == ["gfa1", "gfa2"]
    assert south["nodes"]["gfa2"]["host"] == "south-gfa1"

    monkeypatch.setenv("OBSERVATORY", "north")
    north = load_config(path)
    assert north["observatory"] == "NORTH"
    assert list(north["nodes"]) == ["gfa1"]
    assert north["nodes"]["gfa1"]["docker-client"] == "tcp://north-gfa1:2375"


@pytest.mark.parametrize("override", ["gfa6, fvc", ["gfa6", "fvc"]])
def test_nodes_override(override: str | list[str]) -> None:
    config = load_config(observatory="APO", nodes=override)
    assert config["enabled_nodes"] == ["gfa6", "fvc"]
    assert len(config["nodes"]) == 7


def test_nodes_override_unknown() -> None:
    err = error_of(default_config_path(), observatory="APO", nodes="gfa1,gfa9")
    assert str(err) == (
        f"{default_config_path()}: enabled_nodes: unknown node 'gfa9' in the nodes override "
        "(nodes defined: gfa1, gfa2, gfa3, gfa4, gfa5, gfa6, fvc)"
    )
    err = error_of(default_config_path(), observatory="APO", nodes=" , ")
    assert err.reason == "no node names given to override enabled_nodes"


# --- Errors ---------------------------------------------------------------------------------


BAD_CASES = {
    "port_type": (
        BASE.replace("port: 19995}\n  gfa2", "port: abc}\n  gfa2"),
        "nodes.gfa1.port: expected an integer from 1 to 65535, got 'abc'",
    ),
    "port_range": (
        BASE.replace("port: 19996", "port: 70000"),
        "actor.port: expected an integer from 1 to 65535, got 70000",
    ),
    "port_float": (
        BASE.replace("port: 19996", "port: 19996.0"),
        "actor.port: expected an integer from 1 to 65535, got 19996.0",
    ),
    "missing_host": (
        BASE.replace("host: 10.250.77.11, ", ""),
        "nodes.gfa1: missing required key 'host'",
    ),
    "missing_actor": (
        BASE.replace("actor: {name: fliswarm, host: 127.0.0.1, port: 19996}\n", ""),
        "missing required key 'actor'",
    ),
    "wrong_type": (
        BASE.replace("name: fliswarm", "name: 3"),
        "actor.name: expected a string, got 3",
    ),
    "actor_name": (
        BASE.replace("name: fliswarm", "name: fli-swarm"),
        "actor.name: expected a name made of letters and '_' (tron rejects other characters), "
        "got 'fli-swarm'",
    ),
    "nullable": (
        BASE + "registry: 5000\n",
        "registry: expected a string or null, got 5000",
    ),
    "node_not_mapping": (
        BASE.replace("gfa2: {host: 10.250.77.12, port: 19995}", "gfa2:"),
        "nodes.gfa2: expected a mapping, got null",
    ),
    "unknown_node": (
        BASE.replace("[gfa1, gfa2]", "[gfa1, gfa2, gfa9]"),
        "enabled_nodes[2]: unknown node 'gfa9' (nodes defined: gfa1, gfa2)",
    ),
    "duplicate_enabled": (
        BASE.replace("[gfa1, gfa2]", "[gfa1, gfa1]"),
        "enabled_nodes: expected a list without duplicate names",
    ),
    "duplicate_port": (
        BASE.replace("10.250.77.12", "10.250.77.11"),
        "nodes.gfa2.port: flicamera port 19995 on host '10.250.77.11' "
        "is already used by node 'gfa1'",
    ),
    "docker_client": (
        BASE.replace("19995}\n  gfa2", "19995, docker-client: 'http://x:2375'}\n  gfa2"),
        "nodes.gfa1.docker-client: expected a Docker URL tcp://host:port or unix:///absolute/path,"
        " got 'http://x:2375'",
    ),
    "docker_client_port": (
        BASE.replace("port: 19995}\n  gfa2", "port: 19995, docker-client: 'tcp://x'}\n  gfa2"),
        "nodes.gfa1.docker-client: expected a Docker URL tcp://host:port or unix:///absolute/path,"
        " got 'tcp://x'",
    ),
    "host": (
        BASE.replace("10.250.77.12", "10.250.777.12"),
        "nodes.gfa2.host: expected a host name or an IPv4 address, got '10.250.777.12'",
    ),
    "image": (
        BASE.replace("sdss/flicamera:latest", "Sdss/Flicamera"),
        "image: expected an image reference [registry/]name[/name...][:tag][@sha256:digest] "
        "with a lowercase repository, got 'Sdss/Flicamera'",
    ),
    "node_name": (
        BASE.replace("gfa2: {", "'gfa 2': {"),
        "nodes: invalid key 'gfa 2': expected a node name: a letter, then up to 31 letters, "
        "digits, '_' or '-'",
    ),
    "timeout": (
        BASE + "timeouts: {talk: 0}\n",
        "timeouts.talk: expected a number greater than 0 and at most 86400, got 0",
    ),
    "enum": (
        BASE + "restart_policy: sometimes\n",
        "restart_policy: expected one of 'always', 'on-failure', 'never', got 'sometimes'",
    ),
    "environment": (
        BASE + "environment: {DEBUG: 1}\n",
        "environment.DEBUG: expected a string, got 1",
    ),
    "tls": (
        BASE + "docker-tls: {ca: /ca.pem, cert: /cert.pem}\n",
        "docker-tls: missing required key 'key'",
    ),
    "several": (
        BASE.replace("port: 19996", "port: 0") + "ping_timeout: fast\n",
        "ping_timeout: expected a number greater than 0 and at most 86400, got 'fast' "
        "(and 1 more problem)",
    ),
    "non_string_key": (
        BASE.replace("gfa2: {", "2: {"),
        "nodes: key 2 is not a string (quote it)",
    ),
    "reboot_command": (
        BASE + 'reboot_command: "sudo \'reboot"\n',
        "reboot_command: cannot split the command: No closing quotation",
    ),
    "yaml_syntax": (
        "actor:\n  name: fliswarm\n  port: 19996: 1\n",
        "line 3, column 14: invalid YAML: mapping values are not allowed here",
    ),
    "yaml_unclosed": (
        BASE + "volumes: {data: [\n",
        "line 8, column 1: invalid YAML: expected the node content, but found '<stream end>'",
    ),
    "empty": ("", "the file is empty (expected a mapping of settings)"),
    "comments_only": ("# nothing\n", "the file is empty (expected a mapping of settings)"),
    "not_mapping": ("- gfa1\n- gfa2\n", "expected a mapping of settings at the top, got a list"),
    "scalar": ("hello\n", "expected a mapping of settings at the top, got 'hello'"),
    "site_with_flat_nodes": (
        BASE.replace("enabled_nodes: [gfa1, gfa2]", "enabled_nodes: {APO: [gfa1]}"),
        "nodes.gfa1: 'gfa1' looks like a node, but enabled_nodes is a mapping of sites "
        "(per-site layout); put the nodes under their site or make enabled_nodes a list",
    ),
    "flat_with_site_nodes": (
        "actor: {name: fliswarm, host: 127.0.0.1, port: 19996}\nimage: sdss/flicamera\n"
        "enabled_nodes: [gfa1]\nnodes:\n  APO:\n    gfa1: {host: a, port: 1}\n",
        "nodes.APO: 'APO' looks like a site, but enabled_nodes is a list (flat layout); "
        "for the per-site layout write enabled_nodes as {APO: [...]}",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_file(tmp_path: pathlib.Path, case: str) -> None:
    text, message = BAD_CASES[case]
    path = write(tmp_path, text)
    err = error_of(path)
    assert str(err) == f"{path}: {message}"
    assert err.file == str(path)
    assert "\n" not in str(err)


def test_error_attributes(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, BASE.replace("port: 19995}\n  gfa2", "port: abc}\n  gfa2"))
    err = error_of(path)
    assert err.key_path == "nodes.gfa1.port"
    assert err.reason == "expected an integer from 1 to 65535, got 'abc'"


def test_missing_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope.yaml"
    assert str(error_of(path)) == f"{path}: cannot read the file: No such file or directory"
    assert str(error_of(tmp_path)) == f"{tmp_path}: cannot read the file: Is a directory"


def test_not_utf8(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"actor: \xff\n")
    message = "cannot read the file: not UTF-8 text (invalid start byte)"
    assert str(error_of(path)) == f"{path}: {message}"


def test_observatory_unset() -> None:
    """No APO section to fall back on (tests/test_config_habits.py has the APO case)."""

    path = CONFIGS / "site.yaml"
    assert str(error_of(path)) == (
        f"{path}: this file has one section per site and no APO section; "
        "set $OBSERVATORY to one of: NORTH, SOUTH"
    )


def test_observatory_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBSERVATORY", "EAST")
    path = CONFIGS / "site.yaml"
    assert str(error_of(path)) == (
        f"{path}: $OBSERVATORY is 'EAST', not a site of this file; set it to one of: NORTH, SOUTH"
    )
    monkeypatch.delenv("OBSERVATORY")
    assert str(error_of(path, observatory="EAST")) == (
        f"{path}: observatory: unknown site 'EAST' (sites in this file: NORTH, SOUTH)"
    )


SITE = """\
actor: {name: fliswarm, host: 127.0.0.1, port: 19996}
image: sdss/flicamera:latest
enabled_nodes:
  APO: [gfa1]
  LCO: [gfa1]
nodes:
  APO:
    gfa1: {host: sdss-gfa1, port: 19995}
  LCO:
    gfa1: {host: sdss-gfa1, port: 19995}
"""


@pytest.mark.parametrize(
    "text, message",
    [
        (
            SITE.replace("LCO: [gfa1]", "LCO: [gfa2]"),
            "enabled_nodes.LCO[0]: unknown node 'gfa2' (nodes defined: gfa1)",
        ),
        (
            SITE.replace("  LCO: [gfa1]\n", ""),
            "enabled_nodes: missing site 'LCO' (sites in nodes: APO, LCO)",
        ),
        (
            SITE.replace("LCO: [gfa1]", "LCO: [gfa1]\n  KPNO: []"),
            "enabled_nodes.KPNO: site 'KPNO' is not in nodes (sites in nodes: APO, LCO)",
        ),
        (
            SITE.replace("port: 19995}\n  LCO", "port: 0}\n  LCO"),
            "nodes.APO.gfa1.port: expected an integer from 1 to 65535, got 0",
        ),
        (
            SITE + "    gfa2: {host: sdss-gfa1, port: 19995}\n",
            "nodes.LCO.gfa2.port: flicamera port 19995 on host 'sdss-gfa1' "
            "is already used by node 'gfa1'",
        ),
    ],
)
def test_bad_site_file(tmp_path: pathlib.Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    assert str(error_of(path, observatory="APO")) == f"{path}: {message}"


# --- Unknown keys ----------------------------------------------------------------------------


def test_unknown_keys_warning(tmp_path: pathlib.Path) -> None:
    text = BASE.replace("port: 19995}\n  gfa2", "port: 19995, colour: red}\n  gfa2")
    text += "foo: 1\nactor_extra: {}\ntimeouts: {talk: 5, retries: 5}\n"
    path = write(tmp_path, text)

    with pytest.warns(ConfigWarning) as record:
        config = load_config(path)

    assert len(record) == 1
    assert str(record[0].message) == (
        f"{path}: ignoring unknown keys: nodes.gfa1.colour, foo, actor_extra, timeouts.retries"
    )
    assert record[0].filename == __file__
    # Unknown keys are dropped from the resolved configuration.
    assert "foo" not in config and "colour" not in config["nodes"]["gfa1"]
    assert config["timeouts"]["talk"] == 5 and "retries" not in config["timeouts"]


def test_unknown_actor_key_is_dropped(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, BASE.replace("port: 19996}", "port: 19996, schema: x.json}"))
    with pytest.warns(ConfigWarning, match=r"actor\.schema"):
        config = load_config(path)
    assert "schema" not in config["actor"]


def test_unknown_keys_site_layout(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, SITE.replace("port: 19995}\n  LCO", "port: 19995, x: 1}\n  LCO"))
    with pytest.warns(ConfigWarning) as record:
        load_config(path, observatory="LCO")
    assert str(record[0].message) == f"{path}: ignoring unknown keys: nodes.APO.gfa1.x"


def test_unknown_keys_reported_with_an_error(tmp_path: pathlib.Path) -> None:
    """A required key written under another name gives the warning (naming it) and the error.

    (A near miss, ``hots:``, is an error of its own: tests/test_config_habits.py.)
    """

    path = write(tmp_path, BASE.replace("host: 10.250.77.11", "address: 10.250.77.11"))
    with pytest.warns(ConfigWarning, match=r"nodes\.gfa1\.address"):
        err = error_of(path)
    assert err.reason == "missing required key 'host'"


def test_validator_rejects_float_integers() -> None:
    assert not get_validator().is_valid({"actor": {"port": 1.0}})


VALID = {"actor": {"name": "fliswarm", "host": "127.0.0.1", "port": 1}, "image": "a"}
VALID |= {"enabled_nodes": [], "nodes": {}}


@pytest.mark.parametrize(
    "image, ok",
    [
        ("flicamera", True),
        ("sdss/flicamera:latest", True),
        ("sdss-hub:5000/sdss/flicamera:latest", True),
        ("localhost/flicamera", True),
        ("ghcr.io/sdss/flicamera:1.0", True),
        ("sdss/flicamera@sha256:" + "0" * 64, True),
        ("Sdss/flicamera", False),
        ("sdss/flicamera:", False),
        ("sdss//flicamera", False),
        ("sdss/flicamera@sha256:abc", False),
        ("sdss/fli camera", False),
    ],
)
def test_image_pattern(image: str, ok: bool) -> None:
    assert get_validator().is_valid(VALID | {"image": image}) is ok


@pytest.mark.parametrize(
    "host, ok",
    [
        ("sdss-gfa1", True),
        ("localhost", True),
        ("10.250.77.11", True),
        ("sdss-gfa1.apo.nmsu.edu", True),
        ("256.1.1.1", False),
        ("1.2.3", False),
        ("a..b", False),
        ("-gfa1", False),
        ("gfa_1", False),
        ("", False),
    ],
)
def test_host_pattern(host: str, ok: bool) -> None:
    nodes = {"gfa1": {"host": host, "port": 19995}}
    assert get_validator().is_valid(VALID | {"nodes": nodes}) is ok
