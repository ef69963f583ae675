"""Loading, validating and resolving the fliswarm configuration file.

The file is YAML, validated with the JSON Schema in ``fliswarm/etc/config.schema.json``.
Two layouts are accepted:

- flat: ``nodes: {gfa1: {...}}`` and ``enabled_nodes: [gfa1, ...]``;
- per site: ``nodes: {APO: {gfa1: ...}, LCO: {...}}`` and
  ``enabled_nodes: {APO: [...], LCO: [...]}``; the site is chosen with ``$OBSERVATORY``.

`load_config` always returns the flat, fully-resolved form, with every default filled in.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import warnings
from collections.abc import Iterable
from typing import Any

import yaml

from fliswarm.config.schema import (
    ConfigError,
    ConfigWarning,
    describe,
    get_validator,
    key_path,
    schema_error,
    unknown_keys,
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


def default_config_path() -> pathlib.Path:
    """Returns the path of the configuration file shipped with fliswarm."""

    return pathlib.Path(__file__).parents[1] / "etc" / "fliswarm.yaml"


def _read(path: pathlib.Path, file: str) -> dict[str, Any]:
    """Reads and parses the YAML file; checks that it is a non-empty mapping."""

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"cannot read the file: not UTF-8 text ({err.reason})", file) from None
    except OSError as err:
        raise ConfigError(f"cannot read the file: {err.strerror or err}", file) from None

    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = err.problem or err.context or "cannot parse"
        raise ConfigError(f"{where}invalid YAML: {problem}", file) from None
    except yaml.YAMLError as err:  # e.g. a control character (ReaderError): one line.
        raise ConfigError(f"invalid YAML: {' '.join(str(err).split())}", file) from None

    if data is None:
        raise ConfigError("the file is empty (expected a mapping of settings)", file)
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of settings at the top, got {describe(data)}", file)
    return data


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


def _is_site_layout(data: dict[str, Any], file: str) -> bool:
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
                        file,
                        key_path(("nodes", name)),
                    )
        return False

    for name, value in nodes.items():
        if _looks_like_node(value):
            raise ConfigError(
                f"{name!r} looks like a node, but enabled_nodes is a mapping of sites (per-site "
                "layout); put the nodes under their site or make enabled_nodes a list",
                file,
                key_path(("nodes", name)),
            )
    sites = ", ".join(nodes) or "none"
    for site in enabled:
        if site not in nodes:
            reason = f"site {site!r} is not in nodes (sites in nodes: {sites})"
            raise ConfigError(reason, file, key_path(("enabled_nodes", site)))
    for site in nodes:
        if site not in enabled:
            reason = f"missing site {site!r} (sites in nodes: {sites})"
            raise ConfigError(reason, file, "enabled_nodes")
    return True


def _check_site(nodes: dict[str, Any], enabled: list[str], file: str, site: str | None) -> None:
    """Semantic checks of one site's (or the flat file's) nodes."""

    prefix: tuple[Any, ...] = (site,) if site else ()
    for index, name in enumerate(enabled):
        if name not in nodes:
            known = ", ".join(nodes) or "none"
            reason = f"unknown node {name!r} (nodes defined: {known})"
            raise ConfigError(reason, file, key_path(("enabled_nodes",) + prefix + (index,)))

    used: dict[tuple[str, int], str] = {}
    for name, node in nodes.items():
        where = (node["host"].lower(), node["port"])
        if where in used:
            reason = (
                f"flicamera port {node['port']} on host {node['host']!r} "
                f"is already used by node {used[where]!r}"
            )
            raise ConfigError(reason, file, key_path(("nodes",) + prefix + (name, "port")))
        used[where] = name


def _choose_site(
    sites: Iterable[str], observatory: str | None, data: dict[str, Any], file: str
) -> str:
    """Picks the site of a per-site file from the argument, $OBSERVATORY or the file."""

    sites = list(sites)
    listed = ", ".join(sites) or "none"
    wanted = observatory or os.environ.get("OBSERVATORY") or data.get("observatory")
    if not wanted:
        reason = (
            f"this file has one section per site ({listed}); "
            "set $OBSERVATORY or pass observatory= to choose one"
        )
        raise ConfigError(reason, file, "observatory")
    for site in sites:
        if site.lower() == wanted.lower():
            return site
    reason = f"unknown site {wanted!r} (sites in this file: {listed})"
    raise ConfigError(reason, file, "observatory")


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

    data = _read(path, file)
    _check_key_types(data, file)
    site_layout = _is_site_layout(data, file)

    unknown = unknown_keys(data)
    if unknown:
        message = f"{file}: ignoring unknown keys: {', '.join(unknown)}"
        warnings.warn(ConfigWarning(message), stacklevel=2)

    errors = list(get_validator().iter_errors(data))
    if errors:
        raise schema_error(errors, file)

    if site_layout:
        for site in data["nodes"]:
            _check_site(data["nodes"][site], data["enabled_nodes"][site], file, site)
        site = _choose_site(data["nodes"], observatory, data, file)
        site_nodes, enabled = data["nodes"][site], data["enabled_nodes"][site]
        chosen: str | None = site
    else:
        _check_site(data["nodes"], data["enabled_nodes"], file, None)
        site_nodes, enabled = data["nodes"], data["enabled_nodes"]
        chosen = observatory or os.environ.get("OBSERVATORY") or data.get("observatory")

    command = data.get("reboot_command")
    if command is not None:
        try:
            shlex.split(command)
        except ValueError as err:
            raise ConfigError(f"cannot split the command: {err}", file, "reboot_command") from None

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
