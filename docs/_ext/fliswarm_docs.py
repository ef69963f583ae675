"""Sphinx directives that render fliswarm's own JSON files at build time.

- ``.. fliswarm-config-schema::`` renders ``fliswarm/etc/config.schema.json``: every key,
  with its type, default, whether it is required, what is accepted, and its description.
- ``.. fliswarm-keywords::`` renders ``fliswarm/etc/keywords.json``: every keyword the actor
  writes itself, with the types of its values and its meaning.

Both read the files shipped in the package when the docs are built, so the reference pages
cannot drift from the product. Every key or keyword gets an HTML anchor
(``config-actor-tron_host``, ``keyword-enabledNodes``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


__all__ = ["ConfigEntry", "config_entries", "anchor", "setup"]

#: Names of the mapping placeholders in key paths, by the key of the mapping.
PLACEHOLDERS = {
    "nodes": "node",
    "volumes": "volume",
    "environment": "VARIABLE",
    "opts": "option",
}

_TYPE_NAMES = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "object": "mapping",
    "array": "list",
    "null": "null",
}


@dataclass
class ConfigEntry:
    """One documented configuration key."""

    path: list[str]
    schema: dict[str, Any]
    required: bool

    @property
    def dotted(self) -> str:
        """``nodes.<node>.docker-uid``."""
        return ".".join(self.path)


def anchor(prefix: str, name: str) -> str:
    """The HTML id of a documented item: ``config-nodes-node-host``."""

    return prefix + "-" + re.sub(r"[^A-Za-z0-9_]+", "-", name).strip("-")


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follows local ``$ref`` pointers (``#/$defs/node``), keeping sibling keys."""

    ref = schema.get("$ref")
    if not ref:
        return schema
    target: Any = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    merged = dict(_resolve(target, root))
    merged.update({k: v for k, v in schema.items() if k != "$ref"})
    return merged


def _parts(schema: dict[str, Any], root: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema and the branches documented with it (``allOf``, and the flat layout:
    the ``else`` branch of ``if/then/else``)."""

    schema = _resolve(schema, root)
    parts = [schema]
    for sub in schema.get("allOf", []):
        parts += _parts(sub, root)
    if "else" in schema:
        parts += _parts(schema["else"], root)
    return parts


def _merge(subs: list[dict[str, Any]], root: dict[str, Any]) -> dict[str, Any]:
    """Merges the schemas given for one key; the first one wins for shared keys."""

    merged: dict[str, Any] = {}
    for sub in reversed(subs):
        merged.update(_resolve(sub, root))
    return merged


def config_entries(
    schema: dict[str, Any],
    root: dict[str, Any] | None = None,
    path: list[str] | None = None,
    required: bool = False,
) -> Iterator[ConfigEntry]:
    """Walks the configuration schema and yields every key, parents first.

    Mappings of user-chosen names (``nodes``, ``volumes``...) appear with a placeholder
    (``nodes.<node>.host``). The flat layout is documented; the per-site layout only adds
    a site level (see the page's introduction).
    """

    root = schema if root is None else root
    path = path or []
    parts = _parts(schema, root)
    if path:
        yield ConfigEntry(path, _merge(parts, root), required)

    properties: dict[str, list[dict[str, Any]]] = {}
    needed: set[str] = set()
    for part in parts:
        for key, sub in (part.get("properties") or {}).items():
            properties.setdefault(key, []).append(sub)
        needed.update(part.get("required") or [])
    for key, subs in properties.items():
        yield from config_entries(_merge(subs, root), root, path + [key], key in needed)

    for part in parts:
        extra = part.get("additionalProperties")
        if isinstance(extra, dict):
            name = PLACEHOLDERS.get(path[-1] if path else "", "name")
            yield from config_entries(extra, root, path + [f"<{name}>"], False)
            break


def _type_text(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(choice) for choice in schema["enum"])
    types = schema.get("type")
    if types is None:
        return "any"
    types = [types] if isinstance(types, str) else list(types)
    return " or ".join(_TYPE_NAMES.get(t, t) for t in types)


def _accepted(schema: dict[str, Any]) -> str | None:
    """What values are accepted beyond the type (range, pattern, length)."""

    notes: list[str] = []
    low, high = schema.get("minimum"), schema.get("maximum")
    xlow = schema.get("exclusiveMinimum")
    if low is not None and high is not None:
        notes.append(f"from {low} to {high}")
    elif low is not None:
        notes.append(f">= {low}")
    if xlow is not None:
        notes.append(f"> {xlow}" + (f" and <= {high}" if high is not None else ""))
    elif high is not None and low is None:
        notes.append(f"<= {high}")
    if schema.get("minLength"):
        notes.append("not empty")
    if schema.get("uniqueItems"):
        notes.append("no duplicates")
    if "x-expected" in schema:
        notes.append(schema["x-expected"])
    names = schema.get("propertyNames")
    if isinstance(names, dict) and "x-expected" in names:
        notes.append(f"keys: {names['x-expected']}")
    return "; ".join(notes) if notes else None


def _field(label: str, value: str, literal: bool = False) -> list[nodes.Node]:
    return [
        nodes.strong(text=f"{label}:"),
        nodes.Text(" "),
        nodes.literal(text=value) if literal else nodes.Text(value),
    ]


def _entry_item(entry: ConfigEntry) -> nodes.definition_list_item:
    schema = entry.schema
    item = nodes.definition_list_item()
    term_id = anchor("config", entry.dotted)
    item += nodes.term("", "", nodes.literal(text=entry.dotted), ids=[term_id])

    body = nodes.definition()
    facts = nodes.paragraph()
    facts += _field("Type", _type_text(schema))
    facts += nodes.Text(" · ")
    if entry.required:
        facts += nodes.strong(text="required")
    elif "default" in schema:
        facts += _field("Default", json.dumps(schema["default"]), literal=True)
    else:
        facts += nodes.Text("optional")
    accepted = _accepted(schema)
    if accepted:
        facts += nodes.Text(" · ")
        facts += _field("Accepted", accepted)
    body += facts
    if schema.get("description"):
        body += nodes.paragraph(text=schema["description"])
    item += body
    return item


def _section(title: str, ident: str) -> nodes.section:
    section = nodes.section(ids=[ident])
    section += nodes.title(text=title)
    return section


class ConfigSchemaDirective(SphinxDirective):
    """Renders the configuration schema (``fliswarm-config-schema``)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from fliswarm.config.schema import get_schema, schema_path

        self.env.note_dependency(str(schema_path()))
        schema = get_schema()
        entries = list(config_entries(schema))

        general = _section("Top-level settings", "config-section-top-level")
        general_list = nodes.definition_list()
        general += general_list
        groups: dict[str, nodes.definition_list] = {}
        out: list[nodes.Node] = [general]
        for entry in entries:
            top = entry.path[0]
            is_group = entry.schema.get("type") == "object" or (
                isinstance(entry.schema.get("type"), list) and "object" in entry.schema["type"]
            )
            if len(entry.path) == 1 and not is_group:
                general_list += _entry_item(entry)
                continue
            if top not in groups:
                section = _section(f"{top}", anchor("config-section", top))
                groups[top] = nodes.definition_list()
                section += groups[top]
                out.append(section)
            groups[top] += _entry_item(entry)
        return out


def _value_types(schema: dict[str, Any]) -> str:
    """``string, string or null, boolean, ...`` for a keyword's values."""

    items = schema.get("items")
    if schema.get("type") != "array":
        return _type_text(schema)
    if isinstance(items, list):
        text = ", ".join(_type_text(item) for item in items)
        if schema.get("additionalItems"):
            text += ", ..."
        return text
    if isinstance(items, dict):
        return f"{_type_text(items)}, ... (any number)"
    return "list"


class KeywordsDirective(SphinxDirective):
    """Renders the actor's keyword schema (``fliswarm-keywords``)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from fliswarm.actor import KEYWORDS_SCHEMA

        self.env.note_dependency(str(KEYWORDS_SCHEMA))
        schema = json.loads(KEYWORDS_SCHEMA.read_text(encoding="utf-8"))
        out = nodes.definition_list()
        for name, sub in sorted(schema["properties"].items(), key=lambda kv: kv[0].lower()):
            item = nodes.definition_list_item()
            item += nodes.term("", "", nodes.literal(text=name), ids=[anchor("keyword", name)])
            body = nodes.definition()
            body += nodes.paragraph("", "", *_field("Values", _value_types(sub)))
            description = sub.get("description") or "Free text (information or progress)."
            body += nodes.paragraph(text=description)
            item += body
            out += item
        return [out]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("fliswarm-config-schema", ConfigSchemaDirective)
    app.add_directive("fliswarm-keywords", KeywordsDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
