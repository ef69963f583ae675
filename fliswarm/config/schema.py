"""Schema helpers for the configuration: the error type, friendly messages, unknown keys."""

from __future__ import annotations

import copy
import difflib
import functools
import json
import pathlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import extend


__all__ = [
    "ConfigError",
    "ConfigWarning",
    "schema_path",
    "get_schema",
    "get_validator",
    "key_path",
    "describe",
    "format_error",
    "schema_error",
    "unknown_keys",
    "unknown_key_places",
    "close_key",
    "NEAR_MISS_CUTOFF",
    "with_defaults",
]


class ConfigError(Exception):
    """A configuration file that cannot be used.

    ``str(error)`` is one line: ``<file>: <key path>: <reason>``, leaving out the parts
    that are not known.

    Parameters
    ----------
    reason
        What is wrong and what was expected.
    file
        The configuration file, as the user named it.
    key_path
        Where in the file, in dotted form (``nodes.gfa3.port``, ``enabled_nodes[2]``).
    """

    def __init__(self, reason: str, file: str | None = None, key_path: str | None = None):
        self.reason = reason
        self.file = file
        self.key_path = key_path or None
        super().__init__(": ".join(part for part in (file, self.key_path, reason) if part))


class ConfigWarning(UserWarning):
    """Something in a configuration file is ignored or assumed (unknown keys, the site)."""


def schema_path() -> pathlib.Path:
    """Returns the path of the JSON Schema shipped with fliswarm."""

    return pathlib.Path(__file__).parents[1] / "etc" / "config.schema.json"


@functools.cache
def get_schema() -> dict[str, Any]:
    """Returns the configuration JSON Schema (draft 2020-12), loaded once."""

    with open(schema_path(), encoding="utf-8") as fd:
        return json.load(fd)


def with_defaults(section: Mapping[str, Any] | None, *path: str) -> dict[str, Any]:
    """The known properties of ``section`` with the schema's defaults for the missing ones.

    ``path`` names the object in the schema (``"timeouts"``; ``"volumes", "*"`` for a volume,
    ``"*"`` standing for ``additionalProperties``); no path is the top level. The schema is
    the one place fliswarm's defaults are written.
    """

    schema: Mapping[str, Any] = get_schema()
    for key in path:
        schema = schema["additionalProperties"] if key == "*" else schema["properties"][key]
    section = section or {}
    out: dict[str, Any] = {}
    for key, sub in schema["properties"].items():
        if key in section:
            out[key] = copy.deepcopy(section[key])
        elif "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
    return out


def _is_integer(checker: Any, instance: Any) -> bool:
    # jsonschema accepts 3.0 as an integer; a port or a uid written 3.0 is a mistake.
    return isinstance(instance, int) and not isinstance(instance, bool)


@functools.cache
def _ecma_pattern(pattern: str) -> re.Pattern[str]:
    # JSON Schema patterns follow ECMA-262, where "$" only matches at the very end. Python's
    # "$" also matches before a final newline: "gfa1\n" passed every "^...$" pattern.
    return re.compile(re.sub(r"(?<!\\)\$", r"\\Z", pattern))


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _ecma_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_StrictValidator = extend(
    Draft202012Validator,
    validators={"pattern": _pattern},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


@functools.cache
def get_validator() -> Validator:
    """Returns a validator for `get_schema` (draft 2020-12; floats are never integers)."""

    return _StrictValidator(get_schema())


def key_path(parts: Iterable[Any]) -> str:
    """Formats a path such as ``["nodes", "gfa3", "port"]`` as ``nodes.gfa3.port``.

    Integer items are list indices: ``["enabled_nodes", 2]`` gives ``enabled_nodes[2]``.
    """

    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def describe(value: Any) -> str:
    """A short, YAML-flavoured description of a value, for "got ..." in messages."""

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value) if isinstance(value, (str, int, float)) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


def _expected_number(schema: dict[str, Any]) -> str:
    """Describes a numeric type with its bounds: ``an integer from 1 to 65535``."""

    types = schema.get("type", "number")
    types = [types] if isinstance(types, str) else list(types)
    kind = "an integer" if "integer" in types else "a number"
    low, high = schema.get("minimum"), schema.get("maximum")
    xlow = schema.get("exclusiveMinimum")
    if low is not None and high is not None:
        text = f"{kind} from {low} to {high}"
    elif xlow is not None:
        text = f"{kind} greater than {xlow}"
        if high is not None:
            text += f" and at most {high}"
    elif low is not None:
        text = f"{kind} >= {low}"
    elif high is not None:
        text = f"{kind} <= {high}"
    else:
        text = kind
    return text + (" or null" if "null" in types else "")


def _expected_type(schema: dict[str, Any]) -> str:
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    if any(t in ("integer", "number") for t in types):
        return _expected_number(schema)
    names = [_TYPE_NAMES.get(t, t) for t in types]
    return " or ".join(names)


def format_error(error: ValidationError) -> tuple[str, str]:
    """Turns a jsonschema error into a key path and a friendly reason."""

    schema = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    got = describe(instance)
    path = key_path(error.absolute_path)
    validator = error.validator

    if "propertyNames" in error.relative_schema_path:
        expected = schema.get("x-expected", f"a key matching {schema.get('pattern')!r}")
        return path, f"invalid key {describe(instance)}: expected {expected}"
    if validator == "required":
        missing = [key for key in error.validator_value if key not in instance]
        return path, f"missing required key {missing[0]!r}" if missing else error.message
    if validator == "type":
        return path, f"expected {_expected_type(schema)}, got {got}"
    if validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return path, f"expected {_expected_number(schema)}, got {got}"
    if validator == "enum":
        choices = ", ".join(repr(choice) for choice in error.validator_value)
        return path, f"expected one of {choices}, got {got}"
    if validator == "pattern":
        expected = schema.get("x-expected", f"a string matching {schema.get('pattern')!r}")
        return path, f"expected {expected}, got {got}"
    if validator == "minLength":
        return path, "expected a non-empty string"
    if validator == "uniqueItems":
        return path, "expected a list without duplicate names"
    return path, error.message  # pragma: no cover - every keyword we use is handled above


def schema_error(errors: Sequence[ValidationError], file: str | None) -> ConfigError:
    """Builds one `ConfigError` from several schema errors, the most relevant first."""

    best = best_match(errors)
    assert best is not None
    path, reason = format_error(best)
    if len(errors) > 1:
        more = len(errors) - 1
        reason += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(reason, file, path)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """Follows a local ``$ref`` (``#/$defs/name``)."""

    ref = schema.get("$ref")
    if not ref:
        return schema
    target: Any = get_schema()
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return _resolve(target)


def _applicable(schema: dict[str, Any], instance: Any) -> Iterator[dict[str, Any]]:
    """The schema and the subschemas (``$ref``, ``allOf``, ``if/then/else``) that apply."""

    schema = _resolve(schema)
    yield schema
    for sub in schema.get("allOf", []):
        yield from _applicable(sub, instance)
    if "if" in schema:
        matches = get_validator().evolve(schema=schema["if"]).is_valid(instance)
        branch = "then" if matches else "else"
        if branch in schema:
            yield from _applicable(schema[branch], instance)


def unknown_key_places(
    instance: Any,
    schemas: list[dict[str, Any]] | None = None,
    path: tuple[Any, ...] = (),
) -> list[tuple[tuple[Any, ...], list[str]]]:
    """Finds the keys that the schema does not describe, with the keys known at their place.

    A key is known if a ``properties`` entry names it or an ``additionalProperties``
    schema (a mapping such as ``nodes``) covers it. Works on invalid instances too.

    Parameters
    ----------
    instance
        The configuration (or a part of it, with ``schemas`` and ``path``).
    schemas
        The schemas that apply to ``instance``; the whole schema by default.
    path
        The path of ``instance`` in the configuration.

    Returns
    -------
    list
        ``(path, known)`` for each unknown key, in the file's order: ``path`` is the key's
        path (a tuple of keys and list indices) and ``known`` the keys that the schema
        names in the same mapping.
    """

    if schemas is None:
        schemas = [get_schema()]
    subs = [sub for schema in schemas for sub in _applicable(schema, instance)]
    found: list[tuple[tuple[Any, ...], list[str]]] = []
    if isinstance(instance, dict):
        known = list(dict.fromkeys(name for sub in subs for name in sub.get("properties", {})))
        for key, value in instance.items():
            children: list[dict[str, Any]] = []
            for sub in subs:
                if key in sub.get("properties", {}):
                    children.append(sub["properties"][key])
                elif isinstance(sub.get("additionalProperties"), dict):
                    children.append(sub["additionalProperties"])
            if children:
                found += unknown_key_places(value, children, path + (key,))
            else:
                found.append((path + (key,), known))
    elif isinstance(instance, list):
        items = [sub["items"] for sub in subs if isinstance(sub.get("items"), dict)]
        if items:
            for index, value in enumerate(instance):
                found += unknown_key_places(value, items, path + (index,))
    return found


def unknown_keys(instance: Any) -> list[str]:
    """Lists the dotted key paths of the keys that the schema does not describe.

    Parameters
    ----------
    instance
        The configuration, valid or not.

    Returns
    -------
    list of str
        The paths (``nodes.gfa1.colour``), in the file's order.
    """

    return [key_path(path) for path, _ in unknown_key_places(instance)]


#: How close (`difflib.SequenceMatcher` ratio) an unknown key must be to a known one to be
#: taken for a mistyped one: one wrong, missing or extra character in most keys, two letters
#: swapped in a four-letter key (``hots``). Unrelated extra keys (``schema``, ``verbose``) stay
#: well below.
NEAR_MISS_CUTOFF = 0.75


def _normal(key: str) -> str:
    return key.lower().replace("-", "_")


def close_key(key: str, known: Iterable[str]) -> str | None:
    """The known key that ``key`` is most likely a mistyped form of, if any.

    Parameters
    ----------
    key
        An unknown key.
    known
        The keys known at the same place.

    Returns
    -------
    str or None
        The known key equal to ``key`` up to case and ``-``/``_``, else the closest one
        with a similarity of at least `NEAR_MISS_CUTOFF`, else `None`.
    """

    by_normal = {_normal(name): name for name in known}
    if _normal(key) in by_normal:
        return by_normal[_normal(key)]
    close = difflib.get_close_matches(_normal(key), by_normal, n=1, cutoff=NEAR_MISS_CUTOFF)
    return by_normal[close[0]] if close else None
