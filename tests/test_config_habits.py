"""fliswarm reads what sdss-fliswarm 0.7.0 read, and fails clearly where it cannot guess.

0.7 read its configuration with ``sdsstools.configuration.read_yaml_file`` (``#!extends``) and
assumed APO when $OBSERVATORY was not set. fliswarm does the same, and refuses what 0.7 silently
got wrong: a mistyped key (it kept the default), a duplicate key (it kept the last), a key set
differently by a file and the base file it extends (it kept the base file's value). Each is
checked with `load_config` and through the real command line.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import warnings
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sdsstools import configuration as sdsstools_configuration

from fliswarm.config import ConfigError, ConfigWarning, load_config
from fliswarm.config.loader import _merge, _read_chain
from fliswarm.config.schema import unknown_keys


#: etc/fliswarm.yaml of the sdss-fliswarm 0.7.0 wheel, verbatim.
ORIGINAL_0_7 = """\
actor:
  name: fliswarm
  host: 0.0.0.0
  port: 19996
  tron_host: sdss5-hub
  tron_port: 6093
  log_dir: /data/logs/actors/fliswarm
  additional_properties: True

registry: sdss-hub:5000

image: sdss/flicamera:latest
container_name: flicamera

ping_timeout: 0.6

reboot_command: sudo reboot

enabled_nodes:
  APO: [gfa1, gfa2, gfa3, gfa4, gfa5, gfa6, fvc]
  LCO: [gfa1, gfa2, gfa3, gfa4, gfa5, gfa6, fvc]

nodes:
  APO:
    gfa1:
      user: sdss
      host: sdss-gfa1
      port: 19995
      docker-client: tcp://sdss-gfa1:2375
      docker-uid: 2005
      docker-gid: 3005
      category: gfa
      power:
        device: nuc1
    gfa2:
      user: sdss
      host: sdss-gfa2
      port: 19995
      docker-client: tcp://sdss-gfa2:2375
      docker-uid: 2005
      docker-gid: 3005
      category: gfa
      power:
        device: nuc2
    gfa3:
      user: sdss
      host: sdss-gfa3
      port: 19995
      docker-client: tcp://sdss-gfa3:2375
      docker-uid: 2005
      docker-gid: 3005
      category: gfa
      power:
        device: nuc3
    gfa4:
      user: sdss
      host: sdss-gfa4
      port: 19995
      docker-client: tcp://sdss-gfa4:2375
      docker-uid: 2005
      docker-gid: 3005
      category: gfa
      power:
        device: nuc4
    gfa5:
      user: sdss
      host: sdss-gfa5
      port: 19995
      docker-client: tcp://sdss-gfa5:2375
      docker-uid: 2005
      docker-gid: 3005
      category: gfa
      power:
        device: nuc5
    gfa6:
      user: sdss
      host: sdss-gfa6
      port: 19995
      docker-client: tcp://sdss-gfa6:2375
      docker-uid: 2005
      docker-gid: 3005
      category: gfa
      power:
        device: gfa6
    fvc:
      user: sdss
      host: sdss-fvc
      port: 19995
      docker-client: tcp://sdss-fvc:2375
      docker-uid: 2005
      docker-gid: 3005
      category: fvc
      power:
        device: fvc
  LCO:
    gfa1:
      user: sdss
      host: sdss-gfa1
      port: 19995
      docker-client: tcp://sdss-gfa1:2375
      category: gfa
      power:
        device: nuc1
    gfa2:
      user: sdss
      host: sdss-gfa2
      port: 19995
      docker-client: tcp://sdss-gfa2:2375
      category: gfa
      power:
        device: nuc2
    gfa3:
      user: sdss
      host: sdss-gfa3
      port: 19995
      docker-client: tcp://sdss-gfa3:2375
      category: gfa
      power:
        device: nuc3
    gfa4:
      user: sdss
      host: sdss-gfa4
      port: 19995
      docker-client: tcp://sdss-gfa4:2375
      category: gfa
      power:
        device: nuc4
    gfa5:
      user: sdss
      host: sdss-gfa5
      port: 19995
      docker-client: tcp://sdss-gfa5:2375
      category: gfa
      power:
        device: nuc5
    gfa6:
      user: sdss
      host: sdss-gfa6
      port: 19995
      docker-client: tcp://sdss-gfa6:2375
      category: gfa
      power:
        device: gfa6
    fvc:
      user: sdss
      host: sdss-fvc
      port: 19995
      docker-client: tcp://sdss-fvc:2375
      category: fvc
      power:
        device: fvc

power:
  actor: jaeger
  command:
    poweron: ieb switch --on
    poweroff: ieb switch --off

volumes:
  home:
    driver: local
    opts:
      type: nfs
      o: nfsvers=4,addr=sdss-hub,ro
      device: :/home/sdss5
  data:
    driver: local
    opts:
      type: nfs
      o: addr=sdss-hub,rw,nolock,hard,nointr,nfsvers=4
      device: :/data
"""

FLAT = """\
actor: {name: fliswarm, host: 127.0.0.1, port: 19996}
image: sdss/flicamera:latest
enabled_nodes: [gfa1]
nodes:
  gfa1: {host: 10.250.77.11, port: 19995}
"""

LCO_ONLY = """\
actor: {name: fliswarm, host: 127.0.0.1, port: 19996}
image: sdss/flicamera:latest
enabled_nodes:
  LCO: [gfa1]
  KPNO: [gfa1]
nodes:
  LCO:
    gfa1: {host: lco-gfa1, port: 19995}
  KPNO:
    gfa1: {host: kpno-gfa1, port: 19995}
"""


@pytest.fixture(autouse=True)
def no_observatory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OBSERVATORY", raising=False)


@pytest.fixture(autouse=True)
def warnings_are_errors() -> Any:
    """Any unexpected warning fails the test."""

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def read_yaml_file(path: pathlib.Path) -> dict[str, Any]:
    """What sdss-fliswarm 0.7 read: sdsstools' reader (which leaves its files open)."""

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        return dict(sdsstools_configuration.read_yaml_file(path))


def write(folder: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(path: pathlib.Path, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- The configuration shipped with 0.7.0 --------------------------------------------------


def test_original_file_has_only_known_keys() -> None:
    assert unknown_keys(yaml.safe_load(ORIGINAL_0_7)) == []


@pytest.mark.parametrize("site", ["APO", "LCO"])
def test_original_file_loads(tmp_path: pathlib.Path, site: str) -> None:
    path = write(tmp_path, "fliswarm.yaml", ORIGINAL_0_7)
    config = load_config(path, observatory=site)  # No warning either (fixture).

    assert config["observatory"] == site
    assert config["enabled_nodes"] == ["gfa1", "gfa2", "gfa3", "gfa4", "gfa5", "gfa6", "fvc"]
    assert config["actor"]["additional_properties"] is True
    assert config["actor"]["tron_host"] == "sdss5-hub"
    gfa6 = config["nodes"]["gfa6"]
    assert (gfa6["user"], gfa6["power"], gfa6["category"]) == ("sdss", {"device": "gfa6"}, "gfa")
    assert gfa6["docker-uid"] == (2005 if site == "APO" else None)
    assert (
        config["volumes"]["data"]["opts"]["o"] == "addr=sdss-hub,rw,nolock,hard,nointr,nfsvers=4"
    )
    assert config["power"]["command"]["poweroff"] == "ieb switch --off"
    assert config["reboot_command"] == "sudo reboot"


# --- $OBSERVATORY not set -------------------------------------------------------------------


def test_observatory_unset_assumes_apo(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "fliswarm.yaml", ORIGINAL_0_7)
    with pytest.warns(ConfigWarning) as record:
        config = load_config(path)
    assert [str(w.message) for w in record] == [
        f"{path}: $OBSERVATORY not set; assuming APO (sites in this file: APO, LCO)"
    ]
    assert record[0].filename == __file__
    assert config["observatory"] == "APO"
    assert config["nodes"]["gfa1"]["docker-uid"] == 2005  # The APO section's nodes.


def test_observatory_unset_site_names_any_case(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "fliswarm.yaml", ORIGINAL_0_7.replace("  APO:", "  apo:"))
    with pytest.warns(ConfigWarning, match=r"assuming APO"):
        assert load_config(path)["observatory"] == "apo"


def test_observatory_set_no_warning(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch):
    path = write(tmp_path, "fliswarm.yaml", ORIGINAL_0_7)
    monkeypatch.setenv("OBSERVATORY", "lco")
    assert load_config(path)["observatory"] == "LCO"
    monkeypatch.setenv("OBSERVATORY", "")  # Empty is not set.
    with pytest.warns(ConfigWarning, match=r"\$OBSERVATORY not set; assuming APO"):
        assert load_config(path)["observatory"] == "APO"


def test_observatory_key_in_the_file_is_not_overridden_by_apo(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "fliswarm.yaml", "observatory: LCO\n" + ORIGINAL_0_7)
    assert load_config(path)["observatory"] == "LCO"


def test_observatory_unset_without_apo_names_the_variable(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "fliswarm.yaml", LCO_ONLY)
    assert error_of(path) == (
        f"{path}: this file has one section per site and no APO section; "
        "set $OBSERVATORY to one of: LCO, KPNO"
    )


def test_observatory_unknown_names_the_variable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "fliswarm.yaml", LCO_ONLY)
    monkeypatch.setenv("OBSERVATORY", "APO")
    assert error_of(path) == (
        f"{path}: $OBSERVATORY is 'APO', not a site of this file; set it to one of: LCO, KPNO"
    )


def test_flat_file_needs_no_observatory(tmp_path: pathlib.Path) -> None:
    assert load_config(write(tmp_path, "flat.yaml", FLAT))["observatory"] is None


# --- Mistyped keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, where, guess",
    [
        (FLAT + "self-healing: false\n", "self-healing", "self_healing"),
        (FLAT + "Self_Healing: false\n", "Self_Healing", "self_healing"),
        (FLAT + "selfhealing: false\n", "selfhealing", "self_healing"),
        (FLAT + "timeout: {talk: 5}\n", "timeout", "timeouts"),
        (FLAT.replace("enabled_nodes:", "enabled_node:"), "enabled_node", "enabled_nodes"),
        (FLAT + "timeouts: {docker_conect: 5}\n", "timeouts.docker_conect", "docker_connect"),
        (FLAT + "timeouts: {tlak: 5}\n", "timeouts.tlak", "talk"),
        (FLAT.replace("host: 10.250", "hots: 10.250"), "nodes.gfa1.hots", "host"),
        (
            FLAT.replace("port: 19995}", "port: 1, docker_client: x}"),
            "nodes.gfa1.docker_client",
            "docker-client",
        ),
        (FLAT.replace("port: 19996}", "port: 1, tron-host: x}"), "actor.tron-host", "tron_host"),
        (FLAT + "volumes: {data: {drivers: local}}\n", "volumes.data.drivers", "driver"),
        (FLAT + "power: {actor: jaeger, comand: {}}\n", "power.comand", "command"),
    ],
)
def test_near_miss_key_is_an_error(tmp_path: pathlib.Path, text: str, where: str, guess: str):
    path = write(tmp_path, "typo.yaml", text)
    key = where.split(".")[-1]
    line = next(n for n, text_line in enumerate(text.splitlines(), 1) if key in text_line)
    assert error_of(path) == (
        f"{path}: {where}: unknown key (line {line}); did you mean {guess!r}?"
    )


def test_near_miss_in_the_per_site_layout(tmp_path: pathlib.Path) -> None:
    text = ORIGINAL_0_7.replace(
        "      docker-gid: 3005\n      category: gfa\n      power:\n        device: nuc5",
        "      docker_gid: 3005\n      category: gfa\n      power:\n        device: nuc5",
    )
    assert text != ORIGINAL_0_7
    path = write(tmp_path, "fliswarm.yaml", text)
    line = text.splitlines().index("      docker_gid: 3005") + 1
    assert error_of(path, observatory="LCO") == (
        f"{path}: nodes.APO.gfa5.docker_gid: unknown key (line {line}); did you mean 'docker-gid'?"
    )


def test_every_near_miss_is_named(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "typo.yaml", FLAT + "self-healing: false\ntimeout: {}\n")
    assert error_of(path) == (
        f"{path}: self-healing: unknown key (line 6); did you mean 'self_healing'? "
        "(also timeout: did you mean 'timeouts'?)"
    )


@pytest.mark.parametrize(
    "text, unknown",
    [
        # Keys CLU actors accept and other SDSS files carry: far from any fliswarm key.
        (
            FLAT.replace("port: 19996}", "port: 1, schema: x.json, verbose: true}"),
            "actor.schema, actor.verbose",
        ),
        (FLAT + "log_dir: /tmp\nfoo: 1\n", "log_dir, foo"),
        (
            FLAT.replace("port: 19995}", "port: 1, docker-tls-verify: true}"),
            "nodes.gfa1.docker-tls-verify",
        ),
    ],
)
def test_far_unknown_key_is_a_warning(tmp_path: pathlib.Path, text: str, unknown: str) -> None:
    path = write(tmp_path, "extra.yaml", text)
    with pytest.warns(ConfigWarning) as record:
        load_config(path)
    assert [str(w.message) for w in record] == [f"{path}: ignoring unknown keys: {unknown}"]


# --- Duplicate keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key, first, second",
    [
        (FLAT + "image: other\n", "image", 2, 6),
        (FLAT.replace("port: 19995}", "port: 19995,\n        port: 19996}"), "port", 5, 6),
        (FLAT + "timeouts:\n  talk: 5\n  ssh: 2\n  talk: 6\n", "talk", 7, 9),
        (FLAT + "'self_healing': true\nself_healing: false\n", "self_healing", 6, 7),
    ],
)
def test_duplicate_key_is_an_error(
    tmp_path: pathlib.Path, text: str, key: str, first: int, second: int
) -> None:
    path = write(tmp_path, "dup.yaml", text)
    assert error_of(path) == (
        f"{path}: line {second}: duplicate key {key!r} (also at line {first} of the same "
        "mapping): remove one of them"
    )


def test_merge_keys_may_override(tmp_path: pathlib.Path) -> None:
    """``<<: *alias`` then a key of the alias is an override, as YAML says, not a duplicate."""

    text = FLAT.replace(
        "nodes:\n  gfa1: {host: 10.250.77.11, port: 19995}",
        "defaults: &node {host: 10.250.77.11, port: 19995, category: gfa}\n"
        "nodes:\n  gfa1: {<<: *node, port: 19990}",
    )
    path = write(tmp_path, "merge.yaml", text)
    with pytest.warns(ConfigWarning, match=r"unknown keys: defaults$"):
        node = load_config(path)["nodes"]["gfa1"]
    assert (node["host"], node["port"], node["category"]) == ("10.250.77.11", 19990, "gfa")


def test_same_key_in_other_mappings_is_fine(tmp_path: pathlib.Path) -> None:
    text = FLAT + "timeouts: {ssh: 3}\nssh: {user: sdss}\n"
    assert load_config(write(tmp_path, "ok.yaml", text))["ssh"]["user"] == "sdss"


def test_recursive_alias_is_an_error(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "loop.yaml", FLAT + "environment: &env {A: *env}\n")
    assert error_of(path) == (
        f"{path}: environment.A: line 6: a value that contains itself (a recursive YAML alias)"
    )


# --- #!extends ------------------------------------------------------------------------------

BASE = """\
actor: {name: fliswarm, host: 127.0.0.1, port: 19996}
image: sdss/flicamera:latest
timeouts: {talk: 20}
enabled_nodes: [gfa1]
nodes:
  gfa1: {host: 10.250.77.11, port: 19995}
"""

SITE = """\
# The site's additions.
#!extends base.yaml

timeouts: {ssh: 4}
nodes:
  gfa1: {category: gfa}
  gfa2: {host: 10.250.77.12, port: 19995}
self_healing: false
"""


def test_extends(tmp_path: pathlib.Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    config = load_config(write(tmp_path, "site.yaml", SITE))

    assert config["timeouts"]["talk"] == 20 and config["timeouts"]["ssh"] == 4
    assert config["nodes"]["gfa1"]["category"] == "gfa"
    assert config["nodes"]["gfa1"]["host"] == "10.250.77.11"
    assert list(config["nodes"]) == ["gfa1", "gfa2"]
    assert config["self_healing"] is False
    assert config["enabled_nodes"] == ["gfa1"]


def test_extends_reads_as_sdsstools(tmp_path: pathlib.Path) -> None:
    """The same result as 0.7's reader: its merged data, written out, loads the same."""

    write(tmp_path, "base.yaml", BASE)
    site = write(tmp_path, "site.yaml", SITE)
    merged = write(tmp_path, "merged.yaml", yaml.safe_dump(read_yaml_file(site)))
    assert load_config(site) == load_config(merged)


def test_extends_path_is_relative_to_the_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "conf/shared/base.yaml", BASE)
    site = write(tmp_path, "conf/site.yaml", SITE.replace("base.yaml", "shared/base.yaml"))
    write(tmp_path, "shared/base.yaml", "image: elsewhere\n")  # Relative to the cwd: not it.
    monkeypatch.chdir(tmp_path)
    assert load_config(pathlib.Path("conf/site.yaml"))["image"] == "sdss/flicamera:latest"
    absolute = write(
        tmp_path, "abs.yaml", SITE.replace("base.yaml", str(site.parent / "shared/base.yaml"))
    )
    assert load_config(absolute)["image"] == "sdss/flicamera:latest"


def test_extends_chain(tmp_path: pathlib.Path) -> None:
    """A base file may extend another (sdsstools >= 1.9 read only one level)."""

    write(tmp_path, "root.yaml", "registry: hub:5000\nping_timeout: 0.3\n")
    write(tmp_path, "base.yaml", "#!extends root.yaml\n" + BASE)
    config = load_config(write(tmp_path, "site.yaml", SITE))
    assert (config["registry"], config["ping_timeout"]) == ("hub:5000", 0.3)
    assert (config["timeouts"]["talk"], config["timeouts"]["ssh"]) == (20, 4)


def test_extends_anywhere_and_with_a_comment(tmp_path: pathlib.Path) -> None:
    """0.7 honoured the line anywhere in the file, as a comment after the name too."""

    write(tmp_path, "base.yaml", BASE)
    text = "self_healing: false\n  #!extends base.yaml   # the shared settings\n"
    assert load_config(write(tmp_path, "site.yaml", text))["self_healing"] is False


def test_extends_only_the_line(tmp_path: pathlib.Path) -> None:
    """A file with only ``#!extends`` is its base file (0.7 read it as empty)."""

    write(tmp_path, "base.yaml", BASE)
    site = write(tmp_path, "site.yaml", "#!extends base.yaml\n")
    assert load_config(site) == load_config(tmp_path / "base.yaml")


def test_extends_an_empty_base(tmp_path: pathlib.Path) -> None:
    write(tmp_path, "base.yaml", "# nothing yet\n")
    site = write(tmp_path, "site.yaml", "#!extends base.yaml\n" + BASE)
    assert load_config(site)["image"] == "sdss/flicamera:latest"


def test_extends_same_value_twice_is_fine(tmp_path: pathlib.Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    text = SITE + "image: sdss/flicamera:latest\ntimeouts: {talk: 20}\n"
    site = write(tmp_path, "site.yaml", text.replace("timeouts: {ssh: 4}\n", ""))
    assert load_config(site)["timeouts"]["talk"] == 20


def test_extends_conflict_keeps_the_base_value_with_a_warning(tmp_path: pathlib.Path) -> None:
    """0.7 (sdsstools) kept the base file's value, silently: fliswarm keeps it too (a file that
    loaded in 0.7 loads the same), and says which key and which value."""

    base = write(tmp_path, "base.yaml", BASE)
    site = write(tmp_path, "site.yaml", SITE.replace("{ssh: 4}", "{ssh: 4, talk: 30}"))
    assert read_yaml_file(site)["timeouts"]["talk"] == 20  # What 0.7 ran with.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", ConfigWarning)
        assert load_config(site)["timeouts"]["talk"] == 20
    assert [str(w.message) for w in record] == [
        f"{site}: timeouts.talk: line 4: also set, to another value, in the base file {base} "
        "(line 3); the base file's value is used, as in fliswarm 0.7 (#!extends adds keys, it "
        "does not override them): set it in one file only"
    ]
    # A list is one value: 0.7 ignored the site's enabled_nodes, and so does fliswarm.
    site.write_text(SITE + "enabled_nodes: [gfa1, gfa2]\n")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", ConfigWarning)
        assert load_config(site)["enabled_nodes"] == read_yaml_file(site)["enabled_nodes"]
    assert "enabled_nodes: line 9: also set" in str(record[-1].message)


@pytest.mark.parametrize(
    "text, files, message",
    [
        (
            "#!extends missing.yaml\n",
            {},
            "line 1: #!extends missing.yaml: no such file ({dir}/missing.yaml)",
        ),
        ("#!extends sub\n", {"sub/x.yaml": ""}, "line 1: #!extends sub: not a file ({dir}/sub)"),
        (
            "#!extends site.yaml\n" + BASE,
            {},
            "line 1: #!extends site.yaml: a cycle ({dir}/site.yaml -> {dir}/site.yaml)",
        ),
        (
            "#!extends list.yaml\n",
            {"list.yaml": "[1, 2]\n"},
            "line 1: #!extends list.yaml: the base file holds a list, not a mapping of settings",
        ),
        (
            "#!extends num.yaml\n",
            {"num.yaml": "3\n"},
            "line 1: #!extends num.yaml: the base file holds 3, not a mapping of settings",
        ),
        ("#!extends\n" + BASE, {}, "line 1: expected '#!extends <file>', got '#!extends'"),
        (
            "#!extendsbase.yaml\n" + BASE,
            {},
            "line 1: expected '#!extends <file>', got '#!extendsbase.yaml'",
        ),
        (
            "#!extends my base.yaml\n" + BASE,
            {},
            "line 1: #!extends takes one file name, got 'my base.yaml' (a file name with "
            "spaces cannot be extended)",
        ),
        (
            "#!extends a.yaml\n\n#!extends b.yaml\n",
            {},
            "line 3: a second #!extends line (the first is line 1); a file extends one base "
            "file (which may extend another)",
        ),
    ],
)
def test_extends_errors(tmp_path: pathlib.Path, text: str, files: dict[str, str], message: str):
    for name, content in files.items():
        write(tmp_path, name, content)
    site = write(tmp_path, "site.yaml", text)
    assert error_of(site) == f"{site}: " + message.format(dir=tmp_path)


def test_extends_cycle_of_two(tmp_path: pathlib.Path) -> None:
    a = write(tmp_path, "a.yaml", "#!extends b.yaml\n" + BASE)
    b = write(tmp_path, "b.yaml", "#!extends a.yaml\n")
    assert error_of(a) == f"{b}: line 1: #!extends a.yaml: a cycle ({a} -> {b} -> {a})"


def test_problems_of_the_base_file_name_it(tmp_path: pathlib.Path) -> None:
    base = write(tmp_path, "base.yaml", BASE + "self-healing: false\n")
    site = write(tmp_path, "site.yaml", SITE)
    assert error_of(site) == (
        f"{base}: self-healing: unknown key (line 7); did you mean 'self_healing'?"
    )
    base.write_text(BASE + "image: again\n")
    assert error_of(site) == (
        f"{base}: line 7: duplicate key 'image' (also at line 2 of the same mapping): "
        "remove one of them"
    )
    base.write_text(BASE.replace("port: 19995}", "port: 0}"))
    assert error_of(site) == f"{base}: nodes.gfa1.port: expected an integer from 1 to 65535, got 0"
    base.write_text(BASE + "colour: red\n")
    with pytest.warns(ConfigWarning) as record:
        load_config(site)
    assert [str(w.message) for w in record] == [f"{base}: ignoring unknown keys: colour"]


# Random pairs of files: fliswarm reads what sdsstools reads, and warns exactly when "the file
# overrides its base" would have read something else.

_keys = st.sampled_from(["a", "b", "c", "d"])
_values = st.recursive(
    st.none() | st.integers(-3, 3) | st.sampled_from(["x", "y"]),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=6,
)
_documents = st.dictionaries(_keys, _values, min_size=1, max_size=4)


def _override(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        return {**base, **{k: _override(base[k], v) if k in base else v for k, v in top.items()}}
    return top


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(base=_documents, top=_documents)
def test_extends_agrees_with_sdsstools(tmp_path: pathlib.Path, base: Any, top: Any) -> None:
    write(tmp_path, "base.yaml", yaml.safe_dump(base))
    site = write(tmp_path, "site.yaml", "#!extends base.yaml\n" + yaml.safe_dump(top))
    original = json.dumps(read_yaml_file(site))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", ConfigWarning)
        merged, _ = _merge(_read_chain(site, str(site)))
    assert json.dumps(merged) == original  # What 0.7 read, whatever the files.
    # A warning exactly when "the file overrides its base" would have read something else.
    differs = json.dumps(_override(base, top), sort_keys=True) != json.dumps(
        json.loads(original), sort_keys=True
    )
    assert bool(record) == differs, (base, top, [str(w.message) for w in record])


# --- The command line -----------------------------------------------------------------------


def run(tmp_path: pathlib.Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("OBSERVATORY", "FLISWARM_CONFIG")}
    environ.update(FLISWARM_PID_FILE=str(tmp_path / "state" / "fliswarm.pid"), **env)
    return subprocess.run(
        [sys.executable, "-m", "fliswarm", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    "files, error",
    [
        (
            {"site.yaml": FLAT + "self-healing: false\n"},
            "ERROR: {dir}/site.yaml: self-healing: unknown key (line 6); did you mean "
            "'self_healing'?",
        ),
        (
            {"site.yaml": FLAT + "timeouts:\n  docker_conect: 3\n"},
            "ERROR: {dir}/site.yaml: timeouts.docker_conect: unknown key (line 7); did you mean "
            "'docker_connect'?",
        ),
        (
            {"site.yaml": FLAT + "image: again\n"},
            "ERROR: {dir}/site.yaml: line 6: duplicate key 'image' (also at line 2 of the same "
            "mapping): remove one of them",
        ),
        (
            {"site.yaml": "#!extends base.yaml\n" + FLAT},
            "ERROR: {dir}/site.yaml: line 1: #!extends base.yaml: no such file ({dir}/base.yaml)",
        ),
        (
            {"site.yaml": LCO_ONLY},
            "ERROR: {dir}/site.yaml: this file has one section per site and no APO section; set "
            "$OBSERVATORY to one of: LCO, KPNO",
        ),
    ],
)
def test_cli_config_check_errors(tmp_path: pathlib.Path, files: dict[str, str], error: str):
    for name, text in files.items():
        write(tmp_path, name, text)
    result = run(tmp_path, "-c", str(tmp_path / "site.yaml"), "config", "check")
    assert result.returncode == 2
    assert one_line(result.stderr) == error.format(dir=tmp_path)
    assert result.stdout == ""


def test_cli_config_check_extends_and_assumes_apo(tmp_path: pathlib.Path) -> None:
    write(tmp_path, "shared/fliswarm.yaml", ORIGINAL_0_7)
    site = write(tmp_path, "site.yaml", "#!extends shared/fliswarm.yaml\nself_healing: false\n")
    result = run(tmp_path, "-c", str(site), "config", "check")
    assert result.returncode == 0, result.stderr
    assert one_line(result.stderr) == (
        f"WARNING: {site}: $OBSERVATORY not set; assuming APO (sites in this file: APO, LCO)"
    )
    resolved = yaml.safe_load(result.stdout)
    assert resolved["observatory"] == "APO" and resolved["self_healing"] is False
    assert resolved["nodes"]["fvc"]["docker-uid"] == 2005


def test_cli_without_observatory(tmp_path: pathlib.Path) -> None:
    apo = write(tmp_path, "apo.yaml", ORIGINAL_0_7)
    lco = write(tmp_path, "lco.yaml", LCO_ONLY)

    for path in (apo, lco):  # status needs no site: it only reads the pid file.
        result = run(tmp_path, "-c", str(path), "status")
        assert (result.returncode, result.stdout, result.stderr) == (
            1,
            "fliswarm is not running.\n",
            "",
        )

    # start checks the configuration first: no site to guess, nothing started.
    result = run(tmp_path, "-c", str(lco), "start")
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"ERROR: {lco}: this file has one section per site and no APO section; "
        "set $OBSERVATORY to one of: LCO, KPNO"
    )
    assert not (tmp_path / "state" / "fliswarm.pid").exists()


def test_environment_variables_in_values_as_0_7(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``${VAR}`` and ``${VAR|default}`` at the start of a plain value, as sdsstools read them."""

    monkeypatch.setenv("FLISWARM_TEST_LOGS", "/srv/logs")
    monkeypatch.delenv("FLISWARM_TEST_UNSET", raising=False)
    text = BASE.replace("image: sdss/flicamera:latest", "image: ${FLISWARM_TEST_UNSET|sdss/x:1}")
    text += "reboot_command: ${FLISWARM_TEST_LOGS}/reboot now\n"
    site = write(tmp_path, "site.yaml", text)
    config = load_config(site)
    assert config["image"] == "sdss/x:1" == read_yaml_file(site)["image"]
    assert config["reboot_command"] == "/srv/logs/reboot now"
    assert config["reboot_command"] == read_yaml_file(site)["reboot_command"]
