"""The documentation builds without warnings and its reference pages cover the product.

One real Sphinx build (``-W``) into a temporary folder; then the built HTML is read and compared
with what exists in the code: every configuration key (walking the JSON Schema), every actor
command and its options (walking ``fliswarm.commands.parser``), every keyword (keywords.json)
and every ``fliswarm`` CLI command. The walks here are independent of the docs extension, so a
key, command or keyword added to the product but missing from the docs fails the test.

The example files under ``etc/`` are checked too: the configurations load with
`fliswarm.config.load_config`, the node ``daemon.json`` files are valid JSON with the settings the
docs explain, the systemd unit's command line parses with the real CLI, and the modulefile sets
what stageManager needs.
"""

from __future__ import annotations

import html
import json
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from html.parser import HTMLParser
from typing import Any

import click
import pytest

import fliswarm
from fliswarm.__main__ import fliswarm as cli
from fliswarm.actor import KEYWORDS_SCHEMA
from fliswarm.commands import parser
from fliswarm.config import ConfigWarning, load_config
from fliswarm.config.schema import get_schema


ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ETC = ROOT / "etc"


# ------------------------------------------------------------------------------ the build


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Builds the HTML docs with warnings as errors; returns the output folder."""

    out = tmp_path_factory.mktemp("docs-html")
    # The timeout only says "does not hang" (a build takes well under a minute here).
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
        + ["-d", str(out / ".doctrees"), str(DOCS), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"sphinx failed:\n{proc.stdout}\n{proc.stderr}"
    return out


class _Page(HTMLParser):
    """Collects a page's text, its sections' text by id, and its definition-list entries."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.sections: dict[str, list[str]] = {}
        self._open_sections: list[tuple[str | None, int]] = []
        self._depth = 0
        #: (dt id, dt text, dd text) of every definition-list entry.
        self.entries: list[tuple[str | None, str, str]] = []
        self._dt: list[str] | None = None
        self._dt_id: str | None = None
        self._dd: list[str] | None = None
        self._dd_depth = 0
        self.codes: list[str] = []
        self._code: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "section":
            self._open_sections.append((attributes.get("id"), self._depth))
            if attributes.get("id"):
                self.sections[attributes["id"] or ""] = []
        self._depth += 1
        if tag == "dt":
            self._dt, self._dt_id = [], attributes.get("id")
        elif tag == "dd":
            if self._dd is None:
                self._dd, self._dd_depth = [], self._depth
        elif tag == "code":
            self._code = []

    def handle_endtag(self, tag: str) -> None:
        self._depth -= 1
        if tag == "section" and self._open_sections:
            self._open_sections.pop()
        elif tag == "dt" and self._dt is not None:
            self._pending = (self._dt_id, _clean("".join(self._dt)))
            self._dt = None
        elif tag == "dd" and self._dd is not None and self._depth + 1 == self._dd_depth:
            dt_id, dt_text = getattr(self, "_pending", (None, ""))
            self.entries.append((dt_id, dt_text, _clean(" ".join(self._dd))))
            self._dd = None
        elif tag == "code" and self._code is not None:
            self.codes.append(_clean("".join(self._code)))
            self._code = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        for ident, _ in self._open_sections:
            if ident:
                self.sections[ident].append(data)
        for buffer in (self._dt, self._dd, self._code):
            if buffer is not None:
                buffer.append(data)


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(text)).strip()


def _page(built: pathlib.Path, name: str) -> _Page:
    page = _Page()
    page.feed((built / f"{name}.html").read_text(encoding="utf-8"))
    return page


def _section_text(page: _Page, ident: str) -> str:
    assert ident in page.sections, f"no section {ident!r} in the page"
    return _clean(" ".join(page.sections[ident]))


# --------------------------------------------------------------- configuration reference


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _schema_keys(
    schema: dict[str, Any], root: dict[str, Any], path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """Every key path of the flat layout (``<*>`` for user-chosen names) -> its schemas."""

    schema = _resolve(schema, root)
    found: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    branches = [schema, *schema.get("allOf", [])]
    if "else" in schema:
        branches.append(schema["else"])
    for branch in branches:
        branch = _resolve(branch, root)
        for key, sub in (branch.get("properties") or {}).items():
            found.setdefault(path + (key,), []).append(_resolve(sub, root))
            for sub_path, subs in _schema_keys(sub, root, path + (key,)).items():
                found.setdefault(sub_path, []).extend(subs)
        extra = branch.get("additionalProperties")
        if isinstance(extra, dict):
            found.setdefault(path + ("<*>",), []).append(_resolve(extra, root))
            for sub_path, subs in _schema_keys(extra, root, path + ("<*>",)).items():
                found.setdefault(sub_path, []).extend(subs)
    return found


def _generic(dotted: str) -> str:
    return re.sub(r"<[^<>]+>", "<*>", dotted)


def test_config_reference_lists_every_key(built: pathlib.Path):
    schema = get_schema()
    keys = _schema_keys(schema, schema)
    assert len(keys) > 40  # The walk works (the schema has ~55 keys).
    page = _page(built, "configuration")
    documented = {_generic(dt): (dt_id, dd) for dt_id, dt, dd in page.entries if dt}

    missing = [".".join(path) for path in keys if ".".join(path) not in documented]
    assert not missing, f"configuration keys missing from the reference: {missing}"

    for path, subs in keys.items():
        dt_id, body = documented[".".join(path)]
        assert dt_id and dt_id.startswith("config-"), f"{'.'.join(path)} has no anchor"
        # Where a key is described twice (``nodes``: both layouts), the first description.
        description = next((sub["description"] for sub in subs if sub.get("description")), "")
        assert _clean(description) in body, f"{'.'.join(path)}: description"
        merged = subs[0]
        if "default" in merged:
            assert f"Default: {json.dumps(merged['default'])}" in body, ".".join(path)
        for choice in merged.get("enum", []):
            assert json.dumps(choice) in body, f"{'.'.join(path)}: choice {choice!r}"

    required = {f"actor.{key}" for key in schema["properties"]["actor"]["required"]}
    required |= set(schema["required"])
    for dotted in required:
        assert "required" in documented[dotted][1], f"{dotted} is not marked required"


# ---------------------------------------------------------------------- actor commands


def _section_id(*words: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", " ".join(words).lower()).strip("-")


def _squash(text: str) -> str:
    """Text without white space or rST inline markup, to compare help with rendered help."""

    return re.sub(r"[\s`*]+", "", text)


def _usage(group: click.Group, name: str, command: click.Command, prog: str) -> str:
    parent = click.Context(group, info_name=prog)
    ctx = click.Context(command, info_name=name, parent=parent)
    return " ".join([prog, name, *command.collect_usage_pieces(ctx)])


def _check_command(page: _Page, group: click.Group, name: str, prog: str) -> None:
    command = group.commands[name]
    text = _section_text(page, _section_id(prog, name))
    usage = re.sub(r"\s+", "", _usage(group, name, command, prog))
    assert usage in re.sub(r"\s+", "", text), f"{prog} {name}: usage"
    squashed = _squash(text)
    first = _squash((command.help or "").split("\n\n")[0])
    assert first and first in squashed, f"{prog} {name}: help"
    for param in command.params:
        if isinstance(param, click.Option) and param.hidden:
            continue  # Hidden options (testing aids) are not documented on purpose.
        if isinstance(param, click.Option):
            for opt in param.opts + param.secondary_opts:
                assert opt in text, f"{prog} {name}: option {opt}"
            if param.help:
                assert _squash(param.help) in squashed, f"{prog} {name}: help of {param.opts}"
        else:
            assert param.human_readable_name.upper() in text.upper(), f"{prog} {name}"


def test_command_reference_lists_every_actor_command(built: pathlib.Path):
    page = _page(built, "commands")
    names = [name for name, cmd in parser.commands.items() if not cmd.hidden]
    for expected in ("talk", "status", "reconnect", "enable", "disable", "reboot", "simulate"):
        assert expected in names
    for name in names:
        _check_command(page, parser, name, "fliswarm")


def _cli_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if command.hidden:
            continue
        yield group, prefix, name
        if isinstance(command, click.Group):
            yield from _cli_commands(command, prefix + (name,))


def test_cli_reference_lists_every_cli_command(built: pathlib.Path):
    page = _page(built, "cli")
    found = list(_cli_commands(cli))
    names = {" ".join(prefix + (name,)) for _, prefix, name in found}
    assert {"start", "stop", "restart", "status", "config check"} <= names
    for group, prefix, name in found:
        _check_command(page, group, name, " ".join(("fliswarm", *prefix)))


# ---------------------------------------------------------------------------- keywords


def test_keyword_reference_lists_every_keyword(built: pathlib.Path):
    schema = json.loads(KEYWORDS_SCHEMA.read_text(encoding="utf-8"))
    page = _page(built, "keywords")
    documented = {dt: (dt_id, dd) for dt_id, dt, dd in page.entries}
    assert len(schema["properties"]) >= 10
    for name, sub in schema["properties"].items():
        assert name in documented, f"keyword {name} missing from the reference"
        dt_id, body = documented[name]
        assert dt_id == f"keyword-{name}"
        if sub.get("description"):
            assert _clean(sub["description"]) in body, f"keyword {name}: description"
    # The relayed flicamera keywords and the node-name rule are explained.
    text = _clean(" ".join(page.text))
    assert "node name prepended" in text
    assert "exposure_state=gfa1,gfa1," in text


def test_index_links_every_page(built: pathlib.Path):
    index = (built / "index.html").read_text(encoding="utf-8")
    for source in sorted(DOCS.glob("*.md")) + sorted(DOCS.glob("*.rst")):
        if source.stem != "index":
            assert f'href="{source.stem}.html"' in index, f"{source.name} not in the index"
    assert (built / "_images" / "architecture.svg").is_file()
    assert 'src="_images/architecture.svg"' in (built / "architecture.html").read_text()


# -------------------------------------------------------------------------- etc/ files


@pytest.mark.parametrize("name", ["testbed.yaml", "apo.yaml", "lco.yaml"])
def test_example_configurations_load(name: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OBSERVATORY", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)  # No unknown keys either.
        config = load_config(ETC / name)
    assert config["enabled_nodes"]
    assert set(config["enabled_nodes"]) <= set(config["nodes"])


def test_testbed_example_matches_the_testbed():
    from fliswarm_testbed.bed import Testbed

    bed = Testbed(instance=0, names=["gfa1", "gfa2", "fvc"])
    expected = load_config_dict(bed.fliswarm_config("sdss/flicamera:sim", port=19996))
    assert load_config(ETC / "testbed.yaml") == expected


def load_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """Resolves a configuration given as a dictionary (through a temporary file)."""

    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fd:
        yaml.safe_dump(data, fd)
        fd.flush()
        return load_config(fd.name)


@pytest.mark.parametrize("site", ["APO", "LCO"])
def test_site_examples_match_the_internal_configuration(site: str):
    flat = load_config(ETC / f"{site.lower()}.yaml")
    internal = load_config(observatory=site)
    assert flat == internal


def test_daemon_json_examples():
    plain = json.loads((ETC / "docker" / "daemon.json").read_text())
    assert "tcp://0.0.0.0:2375" in plain["hosts"]
    assert plain["tls"] is False
    tls = json.loads((ETC / "docker" / "daemon-tls.json").read_text())
    assert "tcp://0.0.0.0:2376" in tls["hosts"]
    assert tls["tlsverify"] is True
    for key in ("tlscacert", "tlscert", "tlskey"):
        assert tls[key].startswith("/etc/docker/tls/")
    internal = load_config(observatory="APO")
    for example in (plain, tls):
        assert internal["registry"] in example["insecure-registries"]


def test_systemd_unit_runs_a_real_cli_command():
    import configparser

    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ETC / "systemd" / "fliswarm.service")
    service = unit["Service"]
    assert service["Type"] == "simple"
    argv = shlex.split(service["ExecStart"])
    assert pathlib.PurePath(argv[0]).name == "fliswarm"
    assert argv[-2:] == ["start", "--debug"]  # Foreground: systemd supervises the process.
    # The arguments parse with the real CLI (nothing is run).
    ctx = cli.make_context("fliswarm", argv[1:], resilient_parsing=True)
    assert [*ctx._protected_args, *ctx.args] == ["start", "--debug"]
    assert "multi-user.target" in unit["Install"]["WantedBy"]


def test_modulefile():
    files = list((ETC / "modulefiles" / "fliswarm").iterdir())
    assert len(files) == 1
    text = files[0].read_text()
    assert text.startswith("#%Module")
    version = re.search(r"^set version\s+(\S+)$", text, re.M)
    assert version and version.group(1) == files[0].name
    assert files[0].name == fliswarm.__version__, "rename the modulefile for this version"
    assert re.search(r"^prepend-path\s+PATH\s+\$root/bin$", text, re.M)
    assert re.search(r"^setenv\s+FLISWARM_DIR\s+\$root$", text, re.M)
    tclsh = shutil.which("tclsh")
    if tclsh is not None:  # Evaluate it for real, with the module commands stubbed.
        stub = (
            "set env(HOME) /home/x\n"
            'proc setenv {k v} {puts "setenv $k=$v"}\n'
            'proc prepend-path {k v} {puts "prepend $k=$v"}\n'
            "proc module-whatis {args} {}\nproc conflict {args} {}\n"
            f"source {files[0]}\n"
        )
        proc = subprocess.run(
            [tclsh], input=stub, capture_output=True, text=True, timeout=10, check=True
        )
        assert f"prepend PATH=/home/sdss5/software/fliswarm/{files[0].name}/bin" in proc.stdout
        # Every recipe uses the one default pid file (0.7's /var/tmp/actor.pid): none sets its own.
        assert "FLISWARM_PID_FILE" not in proc.stdout
