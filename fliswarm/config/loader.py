"""Loading, validating and resolving the fliswarm configuration file.

The file is YAML, validated with the JSON Schema in ``fliswarm/etc/config.schema.json``.
Two layouts are accepted:

- flat: ``nodes: {gfa1: {...}}`` and ``enabled_nodes: [gfa1, ...]``;
- per site: ``nodes: {APO: {gfa1: ...}, LCO: {...}}`` and
  ``enabled_nodes: {APO: [...], LCO: [...]}``; the site is chosen with ``$OBSERVATORY``.

A file may extend another one with a comment line ``#!extends base.yaml`` (as
``sdsstools.configuration.read_yaml_file`` allowed, which fliswarm 0.7 used): the two are
merged, mappings recursively; a key both files set to different values is an error.

`load_config` always returns the flat, fully-resolved form, with every default filled in.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import warnings
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml
from jsonschema.exceptions import best_match

from fliswarm.config.schema import (
    ConfigError,
    ConfigWarning,
    close_key,
    describe,
    get_validator,
    key_path,
    schema_error,
    unknown_key_places,
    with_defaults,
)
from fliswarm.tools import split_names


__all__ = [
    "ConfigError",
    "ConfigWarning",
    "DOCKER_PORT",
    "DOCKER_TLS_PORT",
    "default_config_path",
    "load_config",
]

ACTOR_KEYS = ("name", "host", "port", "tron_host", "tron_port", "log_dir")
NODE_KEYS = ("host", "port", "docker-client", "category", "user", "docker-uid", "docker-gid")
TLS_KEYS = ("ca", "cert", "key")
DOCKER_PORT = 2375
#: The engine's port when docker-tls is set (Docker's usual TLS port).
DOCKER_TLS_PORT = 2376
#: The site a per-site file falls back to when $OBSERVATORY is not set (as fliswarm 0.7).
DEFAULT_SITE = "APO"
#: The comment that makes a file extend another one (sdsstools' ``read_yaml_file``).
EXTENDS = "#!extends"
#: At most this many values (aliases counted each time they are used) in one file.
MAX_VALUES = 100_000


def default_config_path() -> pathlib.Path:
    """Returns the path of the configuration file shipped with fliswarm."""

    return pathlib.Path(__file__).parents[1] / "etc" / "fliswarm.yaml"


# Line breaks as YAML counts them, so that line numbers agree with the parser's.
_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")

#: A key path: the keys (and list indices) from the top of the file.
KeyPath = tuple[Any, ...]


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first, self.second = key, first, second


class _Loader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader that refuses duplicate keys and records each key's line."""

    def __init__(self, stream: str):
        super().__init__(stream)
        #: id(mapping) -> (the mapping, kept alive; {key: line of the key}).
        self.key_lines: dict[int, tuple[dict[Any, Any], dict[Any, int]]] = {}

    def _check_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *defaults`` then ``port: 2`` is an override, not a duplicate.
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # An unhashable key: construct_mapping says so.
            if first is not None:
                raise _DuplicateKey(key, first, line)
            seen[key] = line

    def construct_yaml_map(self, node: yaml.MappingNode) -> Generator[dict[Any, Any], None, None]:
        data: dict[Any, Any] = {}
        yield data
        self._check_duplicates(node)
        data.update(self.construct_mapping(node))
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:  # Flattened: keys merged with ``<<`` come first.
            key = self.construct_object(key_node)
            try:
                lines[key] = key_node.start_mark.line + 1
            except TypeError:  # pragma: no cover - construct_mapping refused it already
                pass
        self.key_lines[id(data)] = (data, lines)


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)

#: ``${VAR}`` or ``${VAR|default}`` in a plain value, expanded as fliswarm 0.7 (sdsstools) did.
_ENV = re.compile(r"\$\{(.+?)\}")


def _expand_environment(loader: _Loader, node: yaml.ScalarNode) -> str:
    """A plain value starting with ``${...}``, with each ``${VAR}`` or ``${VAR|default}``
    replaced by the variable's value, else the default, else left as it is."""

    value = str(loader.construct_scalar(node))
    for match in _ENV.findall(value):
        name, *default = match.split("|", 1)
        fallback = default[0] if default else "${" + name + "}"
        value = value.replace("${" + match + "}", os.environ.get(name, fallback))
    return value


_Loader.add_implicit_resolver("!env", _ENV, None)
_Loader.add_constructor("!env", _expand_environment)


@dataclass
class _Document:
    """One file of the configuration: its data and the line of each key."""

    file: str
    data: dict[str, Any]
    lines: dict[KeyPath, int] = field(default_factory=dict)


def _read_text(path: pathlib.Path, file: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"cannot read the file: not UTF-8 text ({err.reason})", file) from None
    except OSError as err:
        raise ConfigError(f"cannot read the file: {err.strerror or err}", file) from None


def _parse(text: str, file: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parses YAML as `yaml.safe_load` does, refusing duplicate keys; returns the data and
    the line of each key (by key path)."""

    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        data = loader.get_single_data()
    except _DuplicateKey as err:
        reason = (
            f"line {err.second}: duplicate key {describe(err.key)} (also at line {err.first} "
            "of the same mapping): remove one of them"
        )
        raise ConfigError(reason, file) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = err.problem or err.context or "cannot parse"
        raise ConfigError(f"{where}invalid YAML: {problem}", file) from None
    except yaml.YAMLError as err:  # e.g. a control character (ReaderError): one line.
        raise ConfigError(f"invalid YAML: {' '.join(str(err).split())}", file) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", file) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, _key_lines(data, loader.key_lines, file)


def _key_lines(
    data: Any, table: dict[int, tuple[dict[Any, Any], dict[Any, int]]], file: str
) -> dict[KeyPath, int]:
    """The line of each key by key path; refuses values that contain themselves (recursive
    aliases) and files that expand to more than `MAX_VALUES` values."""

    lines: dict[KeyPath, int] = {}
    count = 0
    stack: list[tuple[KeyPath, Any, set[int]]] = [((), data, set())]
    while stack:
        path, value, ancestors = stack.pop()
        count += 1
        if count > MAX_VALUES:
            reason = f"too many values (over {MAX_VALUES}, counting each use of an alias)"
            raise ConfigError(reason, file)
        if isinstance(value, dict):
            items: list[tuple[Any, Any]] = list(value.items())
            key_lines = table.get(id(value), ({}, {}))[1]
            for key in value:
                lines.setdefault(path + (key,), key_lines.get(key, 0))
        elif isinstance(value, list):
            items = list(enumerate(value))
        else:
            continue
        if id(value) in ancestors:
            line = next(
                (lines[path[:end]] for end in range(len(path), 0, -1) if path[:end] in lines), 0
            )
            where = f"line {line}: " if line else ""
            reason = f"{where}a value that contains itself (a recursive YAML alias)"
            raise ConfigError(reason, file, key_path(path))
        inner = ancestors | {id(value)}
        for key, sub in reversed(items):
            stack.append((path + (key,), sub, inner))
    return lines


def _directive(text: str, file: str) -> tuple[int, str] | None:
    """Finds the ``#!extends FILE`` line: its number and the file it names."""

    found: list[tuple[int, str]] = []
    for number, line in enumerate(_LINE_BREAK.split(text), 1):
        stripped = line.strip()
        if not stripped.startswith(EXTENDS):
            continue
        rest = stripped[len(EXTENDS) :]
        words = rest.split()
        if rest[:1] not in ("", " ", "\t") or not words:
            reason = f"line {number}: expected '{EXTENDS} <file>', got {describe(stripped)}"
            raise ConfigError(reason, file)
        if len(words) > 1 and not words[1].startswith("#"):
            reason = (
                f"line {number}: {EXTENDS} takes one file name, got {describe(rest.strip())} "
                "(a file name with spaces cannot be extended)"
            )
            raise ConfigError(reason, file)
        found.append((number, words[0]))
    if len(found) > 1:
        reason = (
            f"line {found[1][0]}: a second {EXTENDS} line (the first is line {found[0][0]}); "
            "a file extends one base file (which may extend another)"
        )
        raise ConfigError(reason, file)
    return found[0] if found else None


def _read_chain(
    path: pathlib.Path,
    file: str,
    chain: tuple[tuple[str, str], ...] = (),
    extended_by: tuple[str, str] | None = None,
) -> list[_Document]:
    """Reads a file and, following ``#!extends``, its base files: the file first.

    ``chain`` holds the real path and the name of each file that extends this one;
    ``extended_by`` names the file that extends this one and its ``#!extends`` line.
    """

    text = _read_text(path, file)
    data, lines = _parse(text, file)
    directive = _directive(text, file)
    if data is not None and not isinstance(data, dict):
        if extended_by:
            extending, where = extended_by
            reason = f"{where}: the base file holds {describe(data)}, not a mapping of settings"
            raise ConfigError(reason, extending)
        raise ConfigError(f"expected a mapping of settings at the top, got {describe(data)}", file)
    if data is None and not (extended_by or directive):
        raise ConfigError("the file is empty (expected a mapping of settings)", file)
    _check_key_types(data or {}, file)
    document = _Document(file, data or {}, lines)
    if directive is None:
        return [document]

    number, name = directive
    where = f"line {number}: {EXTENDS} {name}"
    base_path = pathlib.Path(name) if os.path.isabs(name) else path.parent / name
    base_file = str(base_path)
    chain += ((os.path.realpath(path), file),)
    real = os.path.realpath(base_path)
    reals = [seen for seen, _ in chain]
    if real in reals:
        cycle = " -> ".join(name for _, name in chain[reals.index(real) :])
        raise ConfigError(f"{where}: a cycle ({cycle} -> {base_file})", file)
    if not base_path.exists():
        raise ConfigError(f"{where}: no such file ({base_file})", file)
    if not base_path.is_file():
        raise ConfigError(f"{where}: not a file ({base_file})", file)
    return [document] + _read_chain(base_path, base_file, chain, (file, where))


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same YAML types (``1`` is not ``true``, nor ``1.0``)."""

    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


class _Origins:
    """Where each key of the merged configuration was written: its file and line."""

    def __init__(self, top: str):
        self.top = top
        self.where: dict[KeyPath, tuple[str, int]] = {}

    def add(self, document: _Document) -> None:
        """Records the keys of ``document`` (over those of the files it extends)."""

        for path, line in document.lines.items():
            self.where[path] = (document.file, line)

    def file(self, path: Iterable[Any]) -> str:
        """The file that holds ``path``, or the longest part of it that a file holds."""

        path = tuple(path)
        for end in range(len(path), 0, -1):
            if path[:end] in self.where:
                return self.where[path[:end]][0]
        return self.top

    def line(self, path: KeyPath) -> int:
        """The line of the key at ``path`` in `file`, 0 if not known."""

        return self.where.get(path, ("", 0))[1]


def _merge(documents: list[_Document]) -> tuple[dict[str, Any], _Origins]:
    """Merges a file with its base files (the file first), mappings recursively."""

    origins = _Origins(documents[0].file)
    merged = documents[-1].data
    origins.add(documents[-1])
    for document in reversed(documents[:-1]):
        merged = _merge_into(merged, document, (), origins)
        origins.add(document)
    return merged, origins


def _merge_into(
    base: dict[str, Any], document: _Document, path: KeyPath, origins: _Origins
) -> dict[str, Any]:
    """The keys of ``base`` in its order, then the new keys of ``document`` (at ``path``).

    As sdsstools' ``merge_config(base, document)``: a key that both set to different values
    (other than two mappings, which are merged) keeps the base's value, with a warning.
    """

    data: dict[str, Any] = document.data
    for key in path:
        data = data[key]
    out = dict(base)
    for key, value in data.items():
        sub = path + (key,)
        if key not in base:
            out[key] = value
        elif isinstance(value, dict) and isinstance(base[key], dict):
            out[key] = _merge_into(base[key], document, sub, origins)
        elif not _same(value, base[key]):
            message = (
                f"{document.file}: {key_path(sub)}: line {document.lines.get(sub, 0)}: also set, "
                f"to another value, in the base file {origins.file(sub)} (line "
                f"{origins.line(sub)}); the base file's value is used, as in fliswarm 0.7 "
                f"({EXTENDS} adds keys, it does not override them): set it in one file only"
            )
            warnings.warn(ConfigWarning(message), stacklevel=2)
    return out


def _check_unknown_keys(data: dict[str, Any], origins: _Origins) -> None:
    """Refuses unknown keys close to a known one (typos); warns about the others."""

    typos: list[tuple[KeyPath, str]] = []
    ignored: dict[str, list[str]] = {}
    for path, known in unknown_key_places(data):
        guess = close_key(str(path[-1]), known)
        if guess is not None:
            typos.append((path, guess))
        else:
            ignored.setdefault(origins.file(path), []).append(key_path(path))
    for file, paths in ignored.items():
        message = f"{file}: ignoring unknown keys: {', '.join(paths)}"
        warnings.warn(ConfigWarning(message), stacklevel=3)
    if typos:
        path, guess = typos[0]
        line = origins.line(path)
        reason = f"unknown key{f' (line {line})' if line else ''}; did you mean {guess!r}?"
        if len(typos) > 1:
            others = "; ".join(f"{key_path(p)}: did you mean {g!r}?" for p, g in typos[1:])
            reason += f" (also {others})"
        raise ConfigError(reason, origins.file(path), key_path(path))


def _check_key_types(data: Any, file: str, path: tuple[Any, ...] = ()) -> None:
    """Rejects mapping keys that YAML did not read as strings (``1:``, ``on:``, ``null:``)."""

    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(key, str):
                reason = f"key {describe(key)} is not a string (quote it)"
                raise ConfigError(reason, file, key_path(path))
            _check_key_types(value, file, path + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            _check_key_types(value, file, path + (index,))


def _looks_like_node(value: Any) -> bool:
    return isinstance(value, dict) and any(
        not isinstance(value.get(key), dict) for key in ("host", "port") if key in value
    )


def _is_site_layout(data: dict[str, Any], origins: _Origins) -> bool:
    """Decides the layout from ``enabled_nodes`` and checks that ``nodes`` agrees."""

    enabled = data.get("enabled_nodes")
    nodes = data.get("nodes")
    if not isinstance(enabled, (dict, list)) or not isinstance(nodes, dict):
        return isinstance(enabled, dict)  # The schema reports the wrong types.

    if isinstance(enabled, list):
        for name, value in nodes.items():
            if isinstance(value, dict) and not _looks_like_node(value):
                if any(_looks_like_node(sub) for sub in value.values()):
                    raise ConfigError(
                        f"{name!r} looks like a site, but enabled_nodes is a list (flat layout); "
                        f"for the per-site layout write enabled_nodes as {{{name}: [...]}}",
                        origins.file(("nodes", name)),
                        key_path(("nodes", name)),
                    )
        return False

    for name, value in nodes.items():
        if _looks_like_node(value):
            raise ConfigError(
                f"{name!r} looks like a node, but enabled_nodes is a mapping of sites (per-site "
                "layout); put the nodes under their site or make enabled_nodes a list",
                origins.file(("nodes", name)),
                key_path(("nodes", name)),
            )
    sites = ", ".join(nodes) or "none"
    for site in enabled:
        if site not in nodes:
            reason = f"site {site!r} is not in nodes (sites in nodes: {sites})"
            path = ("enabled_nodes", site)
            raise ConfigError(reason, origins.file(path), key_path(path))
    for site in nodes:
        if site not in enabled:
            reason = f"missing site {site!r} (sites in nodes: {sites})"
            raise ConfigError(reason, origins.file(("enabled_nodes",)), "enabled_nodes")
    return True


def _check_site(
    nodes: dict[str, Any], enabled: list[str], origins: _Origins, site: str | None
) -> None:
    """Semantic checks of one site's (or the flat file's) nodes."""

    prefix: tuple[Any, ...] = (site,) if site else ()
    for index, name in enumerate(enabled):
        if name not in nodes:
            known = ", ".join(nodes) or "none"
            reason = f"unknown node {name!r} (nodes defined: {known})"
            path = ("enabled_nodes",) + prefix + (index,)
            raise ConfigError(reason, origins.file(path), key_path(path))

    used: dict[tuple[str, int], str] = {}
    for name, node in nodes.items():
        where = (node["host"].lower(), node["port"])
        if where in used:
            reason = (
                f"flicamera port {node['port']} on host {node['host']!r} "
                f"is already used by node {used[where]!r}"
            )
            path = ("nodes",) + prefix + (name, "port")
            raise ConfigError(reason, origins.file(path), key_path(path))
        used[where] = name


def _choose_site(
    sites: Iterable[str], observatory: str | None, data: dict[str, Any], origins: _Origins
) -> tuple[str, str | None]:
    """Picks the site of a per-site file from the argument, $OBSERVATORY or the file.

    Without any of them, the site is `DEFAULT_SITE` if the file has it (as in fliswarm
    0.7); then the second item returned is the warning to give.
    """

    sites = list(sites)
    listed = ", ".join(sites) or "none"
    file = origins.top
    if observatory:
        wanted, source = observatory, "argument"
    elif os.environ.get("OBSERVATORY"):
        wanted, source = os.environ["OBSERVATORY"], "environment"
    elif data.get("observatory"):
        wanted, source = data["observatory"], "file"
    else:
        for site in sites:
            if site.lower() == DEFAULT_SITE.lower():
                warning = (
                    f"{file}: $OBSERVATORY not set; assuming {DEFAULT_SITE} "
                    f"(sites in this file: {listed})"
                )
                return site, warning
        reason = (
            f"this file has one section per site and no {DEFAULT_SITE} section; "
            f"set $OBSERVATORY to one of: {listed}"
        )
        raise ConfigError(reason, file)

    for site in sites:
        if site.lower() == wanted.lower():
            return site, None
    if source == "environment":
        reason = f"$OBSERVATORY is {wanted!r}, not a site of this file; set it to one of: {listed}"
        raise ConfigError(reason, file)
    reason = f"unknown site {wanted!r} (sites in this file: {listed})"
    where = origins.file(("observatory",)) if source == "file" else file
    raise ConfigError(reason, where, "observatory")


def _tls(value: dict[str, Any] | None) -> dict[str, str] | None:
    return {key: value[key] for key in TLS_KEYS} if value else None


def _power(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if not value:
        return None
    command = value["command"]
    return {
        "actor": value["actor"],
        "command": {"poweron": command["poweron"], "poweroff": command["poweroff"]},
    }


def _resolve(
    data: dict[str, Any],
    nodes: dict[str, Any],
    enabled: list[str],
    observatory: str | None,
) -> dict[str, Any]:
    """Builds the flat, resolved configuration from a valid file."""

    actor_in = data["actor"]
    actor = with_defaults(actor_in, "actor")
    actor = {key: actor.get(key) for key in ACTOR_KEYS}
    if "additional_properties" in actor_in:
        actor["additional_properties"] = actor_in["additional_properties"]

    ssh = with_defaults(data.get("ssh"), "ssh")
    global_tls = _tls(data.get("docker-tls"))

    resolved_nodes: dict[str, Any] = {}
    for name, node in nodes.items():
        out = {key: node.get(key) for key in NODE_KEYS}
        out["docker-tls"] = _tls(node.get("docker-tls")) or global_tls
        port = DOCKER_TLS_PORT if out["docker-tls"] else DOCKER_PORT
        out["docker-client"] = node.get("docker-client", f"tcp://{node['host']}:{port}")
        out["user"] = node.get("user", ssh["user"])
        out["power"] = {"device": node["power"]["device"]} if "power" in node else None
        if node.get("environment"):
            out["environment"] = dict(node["environment"])
        resolved_nodes[name] = out

    volumes = {
        name: with_defaults(volume, "volumes", "*")
        for name, volume in (data.get("volumes") or {}).items()
    }

    top = with_defaults(data)
    return {
        "actor": actor,
        "observatory": observatory,
        "registry": data.get("registry"),
        "image": data["image"],
        "container_name": top["container_name"],
        "ping_timeout": top["ping_timeout"],
        "status_interval": top["status_interval"],
        "timeouts": with_defaults(data.get("timeouts"), "timeouts"),
        "liveness": with_defaults(data.get("liveness"), "liveness"),
        "restart_policy": top["restart_policy"],
        "self_healing": top["self_healing"],
        "replace_drifted": top["replace_drifted"],
        "environment": dict(top["environment"]),
        "docker-tls": global_tls,
        "reboot_command": top["reboot_command"],
        "ssh": ssh,
        "power": _power(data.get("power")),
        "enabled_nodes": list(enabled),
        "nodes": resolved_nodes,
        "volumes": volumes,
    }


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    observatory: str | None = None,
    nodes: str | list[str] | None = None,
) -> dict[str, Any]:
    """Loads, validates and resolves a configuration file.

    Parameters
    ----------
    path
        The YAML file. Defaults to `default_config_path`.
    observatory
        The site to use with a per-site file (case-insensitive). Defaults to
        ``$OBSERVATORY``, then to a top-level ``observatory`` key in the file.
    nodes
        Node names (list or comma-separated string) that replace ``enabled_nodes``.

    Returns
    -------
    dict
        The flat, fully-resolved configuration (JSON-serialisable), with defaults filled.

    Raises
    ------
    ConfigError
        If the file cannot be read or is not valid; the message is one line naming
        the file, the key path and what was expected.

    Warns
    -----
    ConfigWarning
        Once, naming every key that the schema does not describe (they are ignored).
    """

    path = pathlib.Path(path) if path is not None else default_config_path()
    file = str(path)

    data, origins = _merge(_read_chain(path, file))
    site_layout = _is_site_layout(data, origins)
    _check_unknown_keys(data, origins)

    errors = list(get_validator().iter_errors(data))
    if errors:
        raise schema_error(errors, origins.file(best_match(errors).absolute_path))

    if site_layout:
        for site in data["nodes"]:
            _check_site(data["nodes"][site], data["enabled_nodes"][site], origins, site)
        site, assumed = _choose_site(data["nodes"], observatory, data, origins)
        if assumed:
            warnings.warn(ConfigWarning(assumed), stacklevel=2)
        site_nodes, enabled = data["nodes"][site], data["enabled_nodes"][site]
        chosen: str | None = site
    else:
        _check_site(data["nodes"], data["enabled_nodes"], origins, None)
        site_nodes, enabled = data["nodes"], data["enabled_nodes"]
        chosen = observatory or os.environ.get("OBSERVATORY") or data.get("observatory")

    command = data.get("reboot_command")
    if command is not None:
        try:
            shlex.split(command)
        except ValueError as err:
            where = origins.file(("reboot_command",))
            reason = f"cannot split the command: {err}"
            raise ConfigError(reason, where, "reboot_command") from None

    if nodes is not None:
        names = split_names(nodes)
        if not names:
            raise ConfigError("no node names given to override enabled_nodes", file, "nodes")
        for name in names:
            if name not in site_nodes:
                known = ", ".join(site_nodes) or "none"
                reason = f"unknown node {name!r} in the nodes override (nodes defined: {known})"
                raise ConfigError(reason, file, "enabled_nodes")
        enabled = names

    return _resolve(data, site_nodes, enabled, chosen or None)
