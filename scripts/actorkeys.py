#!/usr/bin/env python3
"""Writes fliswarm's keys dictionary for tron's clients (STUI, CLU's tron models).

A tron client knows the keywords of an actor from its *keys dictionary*: a Python expression,
``KeysDictionary("fliswarm", (major, minor), Key(...), ...)``, kept in the ``actorkeys``
product as ``python/actorkeys/fliswarm.py`` and evaluated with opscore's value types (CLU
carries a copy of them in ``clu.legacy.types``). A keyword missing from it is dropped with
"Cannot parse unknown keyword"; one whose values do not match its types, with "Failed parsing
keyword". This script writes fliswarm's dictionary from what fliswarm can write:

- its own keywords, ``fliswarm/etc/keywords.json``, completed with the keywords every CLU actor
  writes (``clu.model.DEFAULT_SCHEMA``) as the actor's model completes them;
- the flicamera keywords it relays with the node name first (`RELAYED`). The relay does not
  validate them, so they are any strings, except flicamera's ``status`` and ``filename``,
  typed as in the dictionary of sdss-fliswarm 0.7 (clients may read those values typed).

A keyword both written and relayed (``text``, ``error``, ``filename``, ``version``...) gets
value types that accept both (`merge`).

How a JSON Schema becomes value types (`values_of`):

- ``string``, ``integer``, ``number``, ``boolean`` are ``String``, ``Int``, ``Float``,
  ``Bool`` (with CLU's ``F`` and ``T``); an ``enum`` is an ``Enum`` of its labels, and so is
  a value listed by `code_enums` (labels from fliswarm's code);
- a type or ``null``: the type, and ``null`` (what CLU writes for `None`) marks an invalid
  value; except for strings, where ``None`` is just a string;
- several types: ``String``, which accepts any value;
- an array whose ``items`` is a list: one value per item, required up to ``minItems``
  (all of them without ``minItems``); the optional items and the ``additionalItems`` that
  follow become any number of strings (the format only allows the last value to repeat);
- an array whose ``items`` is one schema: that type, ``minItems`` to ``maxItems`` times;
- anything else (objects, ``oneOf``...): any strings.

Value names come from the signature that starts a description: ``node={name, addr, ...}:``.

Usage::

    python3 scripts/actorkeys.py > etc/actorkeys/fliswarm.py    # regenerate
    python3 scripts/actorkeys.py --check                        # exit 1 if that file is stale

It reads the ``fliswarm`` package of the checkout it is in.
"""

from __future__ import annotations

import argparse
import copy
import enum
import json
import pathlib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any


ROOT = pathlib.Path(__file__).resolve().parent.parent
#: Where the generated dictionary is shipped.
SHIPPED = ROOT / "etc" / "actorkeys" / "fliswarm.py"
#: The command that writes it, as the header of the file says.
COMMAND = "python3 scripts/actorkeys.py > etc/actorkeys/fliswarm.py"

#: The dictionary's version: bump the minor for added keywords or values, the major when a
#: value changes type. sdss-fliswarm 0.7's dictionary was (1, 0).
VERSION = (2, 2)

#: Keywords of CLU's default schema that flicamera does not write, or that are not relayed
#: with the node name: a CLU ``JSONActor`` (flicamera) writes no user keywords (those come
#: from fliswarm's own ``LegacyActor`` connection), and the relay writes ``help`` lines as
#: they are.
NOT_RELAYED_DEFAULTS = frozenset({"yourUserID", "num_users", "UserInfo", "help"})

_ANY_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}

#: flicamera's keywords as fliswarm relays them (the node name, then flicamera's values; a
#: mapping gives its values in order). The relay does not validate them: any strings, but for
#: ``status`` (basecam's status command: the camera, then ``FLICamera._status_internal``,
#: the two areas flattened) and ``filename`` (basecam's ``{camera, filename}``), typed as
#: sdss-fliswarm 0.7's dictionary typed them. The names are basecam's schema
#: (``basecam/actor/schema.json``, checked by the tests) and the keywords basecam writes
#: outside it (``state`` and ``image_type`` while post-processing, ``camera`` when a status
#: fails); CLU's default keywords are added by `relayed_keywords`.
RELAYED: dict[str, dict[str, Any]] = {
    "status": {
        "type": "array",
        "description": (
            "status={node, camera, model, serial, fwrev, hwrev, hbin, vbin, visible_ul_x, "
            "visible_ul_y, visible_lr_x, visible_lr_y, ul_x, ul_y, lr_x, lr_y, "
            "temperature_ccd, temperature_base, exposure_time_left, cooler_power}: "
            "the status of a camera (flicamera), the node name first."
        ),
        "items": [{"type": "string"}] * 4 + [{"type": "integer"}] * 12 + [{"type": "number"}] * 4,
    },
    "filename": {
        "type": "array",
        "description": "filename={node, camera, path}: the file an exposure wrote.",
        "items": [{"type": "string"}] * 3,
    },
    "exposure_state": {
        **_ANY_STRINGS,
        "description": (
            "exposure_state={node, camera, state, image_type, remaining_time, exposure_time, "
            "current_stack, n_stack}: the stage of an exposure (flicamera)."
        ),
    },
    "error": {**_ANY_STRINGS, "description": "An error message (node, camera, message)."},
    "text": {**_ANY_STRINGS, "description": "Text for humans (node, text)."},
    "cameras": {**_ANY_STRINGS, "description": "Connected cameras (node, cameras)."},
    "default_cameras": {**_ANY_STRINGS, "description": "Default cameras (node, cameras)."},
    "camera_connected": {**_ANY_STRINGS, "description": "A camera connected (node, camera)."},
    "camera_disconnected": {
        **_ANY_STRINGS,
        "description": "A camera disconnected (node, camera).",
    },
    "temperature": {**_ANY_STRINGS, "description": "CCD temperature (node, camera, ccd_temp)."},
    "binning": {
        **_ANY_STRINGS,
        "description": "Binning in pixels (node, camera, horizontal, vertical).",
    },
    "area": {**_ANY_STRINGS, "description": "Area read from the CCD (node, camera, area)."},
    "shutter": {**_ANY_STRINGS, "description": "Shutter status (node, camera, shutter)."},
    "state": {**_ANY_STRINGS, "description": "Post-processing state (node, state)."},
    "image_type": {**_ANY_STRINGS, "description": "Image type (node, image_type)."},
    "camera": {**_ANY_STRINGS, "description": "The camera of an error (node, camera)."},
}

#: Descriptions of CLU's default keywords (``clu.model.DEFAULT_SCHEMA`` has none).
CLU_HELP = {
    "text": "Text for humans.",
    "schema": "The actor's keyword schema (JSON).",
    "version": "Actor version.",
    "help": "Help text, one line per keyword.",
    "error": "An error message.",
    "exception": "An exception message.",
    "exception_info": "Details of an error: module, type, message, filename, line, traceback.",
    "yourUserID": "Your user ID.",
    "UserInfo": "UserInfo={user_id, address}: a connected user.",
    "num_users": "Number of connected users.",
    "command_model": "The actor's command model.",
}


def code_enums() -> dict[tuple[str, int], type[enum.Enum]]:
    """Values of fliswarm's own keywords that are an `enum.Enum` of the code.

    Returns
    -------
    enums
        The enumeration by (keyword, value index); its labels are the members' values.
    """

    from fliswarm.supervision.state import NodeState

    return {("nodeState", 1): NodeState}


# ------------------------------------------------------------------------- value types


@dataclass(frozen=True)
class Value:
    """One value type of a key: an opscore type name and its metadata.

    Attributes
    ----------
    type
        ``String``, ``Int``, ``Float``, ``Bool`` or ``Enum``.
    name
        The value's name, if any.
    help
        A description of the value, if any.
    labels
        The ``Bool`` labels (false, true) or the ``Enum`` labels.
    invalid
        The string that stands for an invalid (null) value, if any.
    """

    type: str
    name: str | None = None
    help: str | None = None
    labels: tuple[str, ...] = ()
    invalid: str | None = None

    def same_type(self, other: Value) -> bool:
        """Whether two values parse alike (their type, labels and invalid string)."""

        return (self.type, self.labels, self.invalid) == (other.type, other.labels, other.invalid)

    def bare(self) -> Value:
        """The same type without name and help."""

        return replace(self, name=None, help=None)


STRING = Value("String")


@dataclass(frozen=True)
class Values:
    """The value types of a key: required values, then optional values of one type.

    Attributes
    ----------
    fixed
        The required values, in order.
    tail
        The type of the optional values that follow, if any.
    tail_max
        How many optional values at most; `None` for any number.
    """

    fixed: tuple[Value, ...] = ()
    tail: Value | None = None
    tail_max: int | None = 0

    @property
    def max_count(self) -> int | None:
        """The largest number of values, `None` if unbounded."""

        if self.tail is None:
            return len(self.fixed)
        return None if self.tail_max is None else len(self.fixed) + self.tail_max

    def position(self, index: int) -> Value | None:
        """The type of the value at ``index``, `None` if there is none."""

        if index < len(self.fixed):
            return self.fixed[index]
        count = self.max_count
        if self.tail is not None and (count is None or index < count):
            return self.tail
        return None


ANY_STRINGS = Values((), STRING, None)


def signature(name: str, description: str | None) -> list[str]:
    """The value names of a description that starts with ``name={a, b, c}:``.

    Parameters
    ----------
    name
        The keyword.
    description
        The schema's description, if any.

    Returns
    -------
    names
        The names, or an empty list if the description has no signature.

    Raises
    ------
    ValueError
        If a name is not a valid opscore value name.
    """

    match = re.match(rf"\s*{re.escape(name)}=\{{([^}}]*)\}}", description or "")
    if not match:
        return []
    names = [part.strip() for part in match.group(1).split(",")]
    for value_name in names:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", value_name):
            raise ValueError(f"{name}: {value_name!r} is not a valid value name")
    return names


def _scalar(schema: Mapping[str, Any]) -> Value:
    """The value type of a scalar schema (`STRING` for anything else)."""

    import clu

    types = schema.get("type")
    types = list(types) if isinstance(types, list) else [types]
    nullable = "null" in types and len(types) > 1
    types = [kind for kind in types if kind != "null"]
    if "enum" in schema and types == ["string"]:
        return Value("Enum", labels=tuple(str(label) for label in schema["enum"]))
    if len(types) != 1:
        return STRING
    kind = {"string": "String", "integer": "Int", "number": "Float", "boolean": "Bool"}.get(
        types[0]
    )
    if kind is None:
        return STRING
    labels = (clu.format_value(False), clu.format_value(True)) if kind == "Bool" else ()
    invalid = clu.format_value(None) if nullable and kind != "String" else None
    return Value(kind, labels=labels, invalid=invalid)


def values_of(name: str, schema: Mapping[str, Any]) -> Values:
    """The value types of a keyword from its JSON Schema (see the module's rules).

    Parameters
    ----------
    name
        The keyword (for the enumerations of `code_enums`).
    schema
        Its JSON Schema.

    Returns
    -------
    values
        The value types, named after the description's signature.
    """

    names = signature(name, schema.get("description"))
    enums = {index: kind for (key, index), kind in code_enums().items() if key == name}

    def named(value: Value, index: int) -> Value:
        if index in enums:
            labels = tuple(str(member.value) for member in enums[index])
            value = Value("Enum", labels=labels)
        return replace(value, name=names[index]) if index < len(names) else value

    if schema.get("type") != "array":
        if "type" not in schema or "oneOf" in schema or schema.get("type") == "object":
            return ANY_STRINGS
        return Values((named(_scalar(schema), 0),))

    items = schema.get("items")
    if isinstance(items, Mapping):
        value = _scalar(items)
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        tail_max = None if high is None else int(high) - low
        return Values((value,) * low, value, tail_max)
    if not isinstance(items, list):
        return ANY_STRINGS

    required = int(schema.get("minItems", len(items)))
    typed = [named(_scalar(item), index) for index, item in enumerate(items)]
    additional = schema.get("additionalItems", True) is not False
    while len(typed) < required:  # Required values beyond the listed items.
        typed.append(named(_scalar(schema.get("additionalItems") or {}), len(typed)))
    fixed, optional = typed[:required], typed[required:]
    if not optional and not additional:
        return Values(tuple(fixed))
    extra = [value.name for value in optional if value.name]
    extra += names[len(typed) :]
    help_text = f"optional: {', '.join(extra)}" if extra else None
    if additional:
        tail_max = None
        help_text = f"{help_text}, then any values" if help_text else None
    else:
        tail_max = len(optional)
    if not additional and all(value.same_type(optional[0]) for value in optional):
        tail = replace(optional[0].bare(), help=help_text)
    else:
        tail = replace(STRING, help=help_text)
    return Values(tuple(fixed), tail, tail_max)


def merge(first: Values, second: Values) -> Values:
    """Value types that accept the values of both ``first`` and ``second``.

    The values both require keep their type where they agree and are strings where they do
    not (a name only if both give it); the rest are optional, of their common type or strings.

    Parameters
    ----------
    first, second
        The value types to merge.

    Returns
    -------
    values
        The merged value types.
    """

    if first == second:
        return first
    count = min(len(first.fixed), len(second.fixed))
    fixed = []
    for one, two in zip(first.fixed[:count], second.fixed[:count], strict=True):
        value = one.bare() if one.same_type(two) else STRING
        name = one.name if one.name == two.name else None
        fixed.append(replace(value, name=name, help=one.help if one.help == two.help else None))
    maxima = [first.max_count, second.max_count]
    top = None if None in maxima else max(count for count in maxima if count is not None)
    if top == count:
        return Values(tuple(fixed))
    span = max(len(first.fixed), len(second.fixed)) + 1 if top is None else top
    rest = [
        optional
        for values in (first, second)
        for index in range(count, span)
        if (optional := values.position(index)) is not None
    ]
    tail = rest[0].bare() if all(other.same_type(rest[0]) for other in rest) else STRING
    return Values(tuple(fixed), tail, None if top is None else top - count)


# ----------------------------------------------------------------------------- keywords


@dataclass(frozen=True)
class KeySpec:
    """A key of the dictionary.

    Attributes
    ----------
    name
        The keyword.
    values
        Its value types.
    help
        Its description.
    section
        The comment of the group it belongs to.
    """

    name: str
    values: Values
    help: str | None
    section: str


def own_schema() -> dict[str, dict[str, Any]]:
    """The JSON Schema of what fliswarm writes itself, as its actor's model has it.

    Returns
    -------
    properties
        ``fliswarm/etc/keywords.json``'s properties, then those of CLU's default schema that
        it does not define (as ``clu.model.BaseModel`` adds them), described by `CLU_HELP`.
    """

    from clu.model import DEFAULT_SCHEMA

    from fliswarm.actor import KEYWORDS_SCHEMA

    properties = dict(json.loads(KEYWORDS_SCHEMA.read_text(encoding="utf-8"))["properties"])
    for name, schema in DEFAULT_SCHEMA.items():
        if name not in properties:
            properties[name] = {**copy.deepcopy(schema), "description": CLU_HELP.get(name)}
    return properties


def relayed_keywords() -> dict[str, Values]:
    """The value types of every keyword fliswarm relays from flicamera.

    Returns
    -------
    relayed
        `RELAYED`, then CLU's default keywords a flicamera actor writes, each as the node
        name followed by the keyword's values.
    """

    from clu.model import DEFAULT_SCHEMA

    relayed = {name: values_of(name, schema) for name, schema in RELAYED.items()}
    for name, schema in DEFAULT_SCHEMA.items():
        if name in NOT_RELAYED_DEFAULTS or name in relayed:
            continue
        values = values_of(name, schema)
        node = Value("String", name="node")
        relayed[name] = Values((node, *values.fixed), values.tail, values.tail_max)
    return relayed


def keywords() -> list[KeySpec]:
    """Every key of fliswarm's dictionary, in the order they are written.

    Returns
    -------
    keys
        fliswarm's own keywords (keywords.json's order, then CLU's defaults), each merged with
        the relayed keyword of the same name, then the keywords only relayed.
    """

    from fliswarm.actor import KEYWORDS_SCHEMA

    ours = json.loads(KEYWORDS_SCHEMA.read_text(encoding="utf-8"))["properties"]
    relayed = relayed_keywords()
    keys: list[KeySpec] = []
    for name, schema in own_schema().items():
        values = values_of(name, schema)
        if name in relayed:
            values = merge(values, relayed.pop(name))
        section = "fliswarm's keywords" if name in ours else "CLU's keywords"
        help_text = schema.get("description") or CLU_HELP.get(name)
        keys.append(KeySpec(name, values, help_text, section))
    for name, values in relayed.items():
        keys.append(KeySpec(name, values, RELAYED[name].get("description"), "relayed"))
    return keys


# ---------------------------------------------------------------------------- rendering

LINE_LENGTH = 99
INDENT = "    "

SECTIONS = {
    "fliswarm's keywords": [
        "fliswarm's own keywords (fliswarm/etc/keywords.json), with the values of the",
        "flicamera keywords relayed under the same name.",
    ],
    "CLU's keywords": ["Keywords every CLU actor writes (clu.model.DEFAULT_SCHEMA)."],
    "relayed": ["Keywords relayed from the flicamera actors, the node name first."],
}


@dataclass
class _Call:
    """A call expression to lay out: ``func(args...)`` followed by ``suffix``."""

    func: str
    args: list[str | _Call]
    suffix: str = ""


def _string(text: str) -> str:
    return json.dumps(text)


def _value_call(value: Value) -> _Call:
    args: list[str | _Call] = [_string(label) for label in value.labels]
    for key in ("name", "help", "invalid"):
        if getattr(value, key) is not None:
            args.append(f"{key}={_string(getattr(value, key))}")
    return _Call(value.type, args)


def _key_call(key: KeySpec) -> _Call:
    values = key.values
    fixed = list(values.fixed)
    args: list[str | _Call] = [_string(key.name)]
    if values.tail is not None and values.tail_max != 0:
        low = 0
        while fixed and fixed[-1] == values.tail.bare() and values.tail == values.tail.bare():
            fixed.pop()
            low += 1
        high = None if values.tail_max is None else low + values.tail_max
        repeat = f"({low},)" if high is None else str(low) if low == high else f"({low}, {high})"
        tail = _value_call(values.tail)
        tail.suffix = f" * {repeat}"
        args += [_value_call(value) for value in fixed] + [tail]
    else:
        args += [_value_call(value) for value in fixed]
    if key.help:
        args.append(f"help={_string(key.help)}")
    return _Call("Key", args)


def _flat(item: str | _Call) -> str:
    if isinstance(item, str):
        return item
    return f"{item.func}({', '.join(_flat(arg) for arg in item.args)}){item.suffix}"


def _layout(item: str | _Call, depth: int, trailer: str) -> list[str]:
    """Lines of ``item`` at ``depth``, followed by ``trailer`` (``,`` in an argument list)."""

    indent = INDENT * depth
    line = f"{indent}{_flat(item)}{trailer}"
    if isinstance(item, str) or len(line) <= LINE_LENGTH or not item.args:
        return [line]
    lines = [f"{indent}{item.func}("]
    for arg in item.args:
        lines += _layout(arg, depth + 1, ",")
    lines.append(f"{indent}){item.suffix}{trailer}")
    return lines


def render(keys: Sequence[KeySpec]) -> str:
    """The dictionary file: a header, then the ``KeysDictionary`` expression.

    Parameters
    ----------
    keys
        The keys, in order.

    Returns
    -------
    text
        The file's text.
    """

    lines = [
        "# fliswarm's keys dictionary for tron's clients (STUI, CLU's tron models): install it",
        "# in the actorkeys product as python/actorkeys/fliswarm.py (docs/deployment.md).",
        "#",
        f"# Generated by `{COMMAND}`",
        "# from fliswarm/etc/keywords.json, CLU's default keywords and the relayed flicamera",
        "# keywords of scripts/actorkeys.py. Do not edit: change those and run it again.",
        "",
        "# type: ignore",
        "",
        "KeysDictionary(",
        f"{INDENT}{_string('fliswarm')},",
        f"{INDENT}({VERSION[0]}, {VERSION[1]}),",
    ]
    section = None
    for key in keys:
        if key.section != section:
            section = key.section
            lines += [f"{INDENT}# {text}" for text in SECTIONS[section]]
        lines += _layout(_key_call(key), 1, ",")
    lines.append(")")
    return "\n".join(lines) + "\n"


def generate() -> str:
    """The text of fliswarm's keys dictionary, as ``etc/actorkeys/fliswarm.py`` ships it."""

    return render(keywords())


def main(argv: Iterable[str] | None = None) -> int:
    """Writes the dictionary to standard output (or ``-o``), or checks a file (``--check``).

    Parameters
    ----------
    argv
        The command-line arguments (`sys.argv` without the program if `None`).

    Returns
    -------
    status
        0, or 1 when ``--check`` finds the file different from what would be written.
    """

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=pathlib.Path, help="write to this file")
    parser.add_argument(
        "--check",
        type=pathlib.Path,
        nargs="?",
        const=SHIPPED,
        metavar="FILE",
        help=f"exit 1 if FILE (default {SHIPPED.relative_to(ROOT)}) is not up to date",
    )
    args = parser.parse_args(None if argv is None else list(argv))
    text = generate()
    if args.check is not None:
        current = args.check.read_text(encoding="utf-8") if args.check.exists() else ""
        if current != text:
            print(f"{args.check} is out of date: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # This checkout's fliswarm, whatever is installed.
    sys.exit(main())
