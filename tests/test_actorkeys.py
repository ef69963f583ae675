"""fliswarm's keys dictionary for tron's clients (``etc/actorkeys/fliswarm.py``).

The shipped file is what ``scripts/actorkeys.py`` writes now; it loads with CLU's copy of
opscore's ``KeysDictionary`` (what CLU's tron models and, through opscore, STUI use); it lists
every keyword the actor's model has, and every value the model accepts, written by a real actor,
parses with it; sdss-fliswarm 0.7's keywords keep their types; and through a real tron hub, a
CLU tron model of fliswarm built from it parses everything a real fliswarm actor writes and
relays from real flicamera actors, with no "Cannot parse unknown keyword" and no "Failed
parsing keyword".
"""

from __future__ import annotations

import asyncio
import copy
import importlib.resources
import importlib.util
import json
import logging
import math
import pathlib
import subprocess
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
from clu.exceptions import CluWarning
from clu.legacy.tron import TronConnection
from clu.legacy.types import keys as opkeys
from clu.legacy.types import types as optypes
from clu.legacy.types.messages import Keyword
from clu.legacy.types.parser import ReplyParser
from clu.model import DEFAULT_SCHEMA
from helpers_actor import FlicameraProcesses, free_port, running_flicameras, tron_ready
from helpers_actor import write_config as write_actor_config
from helpers_inprocess import UserTransport, offline_actor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fliswarm.actor import KEYWORDS_SCHEMA, FLISwarmActor
from fliswarm.supervision.state import NodeState


if TYPE_CHECKING:
    from fliswarm_testbed.tron_fixtures import ClientFactory, HubFactory


ROOT = pathlib.Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "etc" / "actorkeys" / "fliswarm.py"
GENERATOR = ROOT / "scripts" / "actorkeys.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fliswarm_actorkeys_script", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up.
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def keydict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[opkeys.KeysDictionary]:
    """The shipped dictionary, installed in an ``actorkeys`` package of its own and loaded by
    name, as tron's clients load it (`KeysDictionary.load`). Registered while the module runs:
    a `TronConnection` with the ``fliswarm`` model gets it."""

    assert "actorkeys" not in sys.modules, "an actorkeys package is already imported"
    base = tmp_path_factory.mktemp("actorkeys")
    package = base / "actorkeys"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fliswarm.py").write_text(SHIPPED.read_text(encoding="utf-8"))
    sys.path.insert(0, str(base))
    try:
        loaded = opkeys.KeysDictionary.load("fliswarm", forceReload=True)
        yield loaded
    finally:
        sys.path.remove(str(base))
        sys.modules.pop("actorkeys", None)
        if opkeys.KeysDictionary.registry.get("fliswarm") is not None:
            del opkeys.KeysDictionary.registry["fliswarm"]


def _parse(line: bytes | str) -> list[Keyword]:
    """The keywords of an actor's output line (``user mid code keywords``), parsed by the
    reply parser of tron's clients, as tron forwards the line (``cmdr mid actor code ...``)."""

    text = line.decode() if isinstance(line, bytes) else line
    _user, mid, code, *body = text.rstrip("\n").split(" ", 3)
    reply = ReplyParser().parse(f"fstest.me {mid} fliswarm {code} {' '.join(body)}".rstrip())
    return list(reply.keywords)


def _consume(keydict: opkeys.KeysDictionary, keyword: Any) -> list[Any]:
    """The typed values of a keyword; fails as a tron client would drop it."""

    assert keyword.name in keydict, f"Cannot parse unknown keyword fliswarm.{keyword.name}"
    raw = list(keyword.values)
    assert keydict[keyword.name].consume(keyword), f"Failed parsing {keyword.name}={raw}"
    return list(keyword.values)


# -------------------------------------------------------------------- the shipped file


def test_shipped_file_is_what_the_documented_command_writes():
    header = SHIPPED.read_text(encoding="utf-8").splitlines()[:8]
    command = "python3 scripts/actorkeys.py > etc/actorkeys/fliswarm.py"
    assert any(command in line for line in header), "the header names the command"
    assert any("Do not edit" in line for line in header)

    proc = subprocess.run(
        [sys.executable, str(GENERATOR)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == SHIPPED.read_text(encoding="utf-8"), (
        "etc/actorkeys/fliswarm.py is stale: run " + command
    )


def test_check_option_tells_a_stale_file(tmp_path: pathlib.Path, capsys):
    generator = _generator()
    fresh = tmp_path / "fliswarm.py"
    assert generator.main(["-o", str(fresh)]) == 0
    assert generator.main(["--check", str(fresh)]) == 0
    fresh.write_text(fresh.read_text().replace('Key("enabledNodes"', 'Key("enabledNode"'))
    assert generator.main(["--check", str(fresh)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_loads_by_name_with_opscore_types(keydict: opkeys.KeysDictionary):
    assert keydict.name == "fliswarm"
    major, minor = keydict.version
    assert (major, minor) > (1, 0), "newer than sdss-fliswarm 0.7's dictionary (1, 0)"
    assert keydict.checksum  # Set by load: the file was read from the package.
    assert opkeys.KeysDictionary.load("fliswarm") is keydict  # What TronConnection gets.


def _key(text: str) -> opkeys.Key:
    """A key written by the generator, evaluated with opscore's types as `load` does."""

    symbols: dict[str, Any] = {"Key": opkeys.Key}
    symbols.update(
        (name, value)
        for name, value in vars(optypes).items()
        if isinstance(value, type) and issubclass(value, optypes.ValueType)
    )
    return eval(text, symbols)  # The generator's own output.


def test_conversion_rules_beyond_keywords_json():
    """Nullable numbers, enums, bounded lists and optional typed items (see the generator)."""

    generator = _generator()

    def key(schema: dict[str, Any]) -> opkeys.Key:
        spec = generator.KeySpec("k", generator.values_of("k", schema), None, "relayed")
        return _key(generator._flat(generator._key_call(spec)))

    def parse(key: opkeys.Key, *values: str) -> list[Any] | None:
        keyword = Keyword("k", list(values))
        return list(keyword.values) if key.consume(keyword) else None

    nullable = key({"type": "array", "items": [{"type": ["integer", "null"]}], "minItems": 1})
    assert parse(nullable, "3") == [3]
    assert parse(nullable, "None") == [optypes.InvalidValue]  # CLU writes None as None.
    assert parse(nullable, "x") is None
    state = key({"type": "string", "enum": ["on", "off"]})
    assert parse(state, "on") == ["on"] and parse(state, "dim") is None
    bounded = key({"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 2})
    assert parse(bounded) is None and parse(bounded, "1", "2", "3") is None
    assert parse(bounded, "1", "2.5") == [1.0, 2.5]
    optional = key(
        {
            "type": "array",
            "items": [{"type": "string"}, {"type": "boolean"}, {"type": "boolean"}],
            "minItems": 1,
            "additionalItems": False,
        }
    )
    assert parse(optional, "a") == ["a"]
    kinds = [type(value).__name__ for value in parse(optional, "a", "T", "F") or []]
    assert kinds == ["String", "Bool", "Bool"]
    assert parse(optional, "a", "T", "F", "T") is None


# ------------------------------------------------------------- every keyword, every value


def test_lists_every_keyword_of_the_actor_model(keydict, actor_output):
    actor, _ = actor_output
    written = set(actor.model.schema["properties"])
    assert written == set(WRITTEN)  # keywords.json, plus CLU's own keywords.
    missing = sorted(name for name in written if name not in keydict)
    assert not missing, f"keywords fliswarm writes but the dictionary lacks: {missing}"


def test_lists_every_relayed_basecam_keyword(keydict):
    schema = importlib.resources.files("basecam.actor") / "schema.json"
    relayed = json.loads(schema.read_text(encoding="utf-8"))["properties"]
    missing = sorted(name for name in relayed if name not in keydict)
    assert not missing, f"flicamera (basecam) keywords the dictionary lacks: {missing}"


def test_node_state_labels_are_the_code_states(keydict):
    state = keydict["nodeState"].typedValues.vtypes[1]
    assert state.enumLabels == [member.value for member in NodeState]


# Strings without what the keyword format cannot carry inside one value unquoted (``,``
# splits values, ``;`` keywords; an empty string makes the whole line unparsable).
_WORD = r"[A-Za-z0-9_./:@+-]{1,10}"
_strings = st.from_regex(rf"{_WORD}( {_WORD})?", fullmatch=True)


def _values(schema: dict[str, Any], nested: bool = False) -> st.SearchStrategy[Any]:
    """Values valid under a keyword's JSON Schema (the subset keywords.json and CLU use).

    In a mapping (``nested``), lists are not empty: CLU writes a mapping as the list of its
    values, and an empty list in it leaves an empty value, which makes the whole line
    unparsable whatever the dictionary (a limit of the keyword format, not of the dictionary).
    """

    if "oneOf" in schema:
        return st.one_of([_values(option, nested) for option in schema["oneOf"]])
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    options = []
    for kind in kinds:
        if kind == "string":
            options.append(st.sampled_from(schema["enum"]) if "enum" in schema else _strings)
        elif kind == "integer":  # opscore's Int is 32-bit; fliswarm's are ports and ids.
            options.append(st.integers(-(2**31) + 1, 2**31 - 1))
        elif kind == "number":
            options.append(st.floats(allow_nan=False, allow_infinity=False, width=32))
        elif kind == "boolean":
            options.append(st.booleans())
        elif kind == "null":
            options.append(st.none())
        elif kind == "array":
            options.append(_arrays(schema, nested))
        elif kind == "object":
            properties = schema.get("properties") or {}
            fields = {key: _values(option, True) for key, option in properties.items()}
            keys = st.from_regex(r"[a-z]{1,6}", fullmatch=True)
            options.append(
                st.fixed_dictionaries(fields) if fields else st.dictionaries(keys, _strings)
            )
    assert options, f"no values for {schema}"
    return st.one_of(options)


def _arrays(schema: dict[str, Any], nested: bool) -> st.SearchStrategy[list[Any]]:
    items = schema.get("items")
    low = max(int(schema.get("minItems", 0)), int(nested))
    scalar = {"type": ["string", "integer", "boolean", "null"]}
    if not isinstance(items, list):
        return st.lists(_values(items or scalar), min_size=low, max_size=max(low, 4))
    extra = schema.get("additionalItems", scalar)
    extra_values = st.just([]) if extra is False else st.lists(_values(extra), max_size=2)
    # Without minItems, a listed item is written always (the generator's rule; only CLU's
    # UserInfo has none, and CLU always writes its two values).
    low = int(schema.get("minItems", len(items)))

    @st.composite
    def tuples(draw: st.DrawFn) -> list[Any]:
        count = draw(st.integers(min(low, len(items)), len(items)))
        head = [draw(_values(item)) for item in items[:count]]
        return head + (draw(extra_values) if count == len(items) else [])

    return tuples()


#: What the actor's model holds: keywords.json, then CLU's keywords (checked against a real
#: actor's model by `test_lists_every_keyword_of_the_actor_model`).
WRITTEN = sorted(
    set(json.loads(KEYWORDS_SCHEMA.read_text(encoding="utf-8"))["properties"])
    | set(DEFAULT_SCHEMA)
)


@pytest.fixture(scope="module")
def actor_output(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, UserTransport]]:
    """A real fliswarm actor (not started) and the transport of a user it writes to."""

    with offline_actor(tmp_path_factory.mktemp("actor-logs")) as actor:
        transport = UserTransport()
        actor.transports[transport.user_id] = transport
        yield actor, transport


@pytest.mark.parametrize("name", WRITTEN)
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_every_value_the_actor_writes_parses(
    keydict, actor_output, name: str, data: st.DataObject
):
    """A value valid for the actor's model, written by a real actor (which validates it against
    the model), parses with the dictionary, typed values equal to those sent."""

    actor, transport = actor_output
    schema = copy.deepcopy(actor.model.schema["properties"][name])
    if name == "nodeState":  # keywords.json allows any state; the code writes a NodeState.
        schema["items"][1]["enum"] = [state.value for state in NodeState]
    value = data.draw(_values(schema), label=name)
    transport.data.clear()
    actor.write("i", {name: value})
    [line] = transport.data
    parsed = {keyword.name: keyword for keyword in _parse(line)}
    assert name in parsed, f"the actor did not write {name}={value!r}: {line!r}"
    for keyword in parsed.values():
        typed = _consume(keydict, keyword)
        if keyword.name != name or not isinstance(value, list) or len(typed) != len(value):
            continue
        items = schema.get("items")
        for index, (got, sent) in enumerate(zip(typed, value, strict=True)):
            kind = type(got).__name__
            if isinstance(items, list) and index < len(items) and sent is not None:
                allowed = _KINDS.get(_json_type(items[index]) or "", ("String",))
                assert kind in allowed, (name, index)
            if kind == "Bool":
                assert bool(got) is sent
            elif kind == "Int":
                assert int(got) == sent
            elif kind == "Float":
                assert math.isclose(got, sent, rel_tol=1e-6, abs_tol=1e-30)
            elif kind == "Enum":
                assert got == sent


#: The value types a JSON type must parse to (`String` accepts anything: only for strings and
#: mixed types).
_KINDS = {
    "string": ("String", "Enum"),
    "integer": ("Int",),
    "number": ("Float",),
    "boolean": ("Bool",),
}


def _json_type(schema: dict[str, Any]) -> str | None:
    """The one non-null JSON type of a schema, `None` if it allows several."""

    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else [k for k in kinds or [] if k != "null"]
    return kinds[0] if len(kinds) == 1 else None


# --------------------------------------------------------------- sdss-fliswarm 0.7's types

#: The keywords of sdss-fliswarm 0.7's dictionary and their value types, as in the actorkeys
#: product: github.com/sdss/actorkeys, python/actorkeys/fliswarm.py at commit
#: 08d640c80fe7e300e03919bf0c88a7c8e6016da5 (KeysDictionary version (1, 0)). A type name is one
#: value; ``("String", 0)`` is ``String() * (0,)``.
ORIGINAL_07: dict[str, list[Any]] = {
    "yourUserID": ["Int"],
    "num_users": ["Int"],
    "userInfo": ["Int", "String"],
    "version": ["String"],
    "text": [("String", 0)],
    "error": ["String", "String"],
    "status": ["String"] * 4 + ["Int"] * 12 + ["Float"] * 4,
    "exposure_state": [("String", 0)],
    "filename": ["String"] * 3,
    "filename_bundle": [("String", 0)],
    "container": ["String"] * 2,
    "volume": ["String", "String", "Bool", "String"],
    "node": ["String"] * 3 + ["Bool"] * 2,
    "enabledNodes": [("String", 0)],
}

_SAMPLES = {"String": ["gfa1", "2.5", "T"], "Int": ["7", "-3"], "Float": ["2.5", "-10"]}
_SAMPLES["Bool"] = ["T", "F"]


def _original_key(name: str, spec: list[Any]) -> opkeys.Key:
    def vtype(kind: str) -> Any:
        return optypes.Bool("F", "T") if kind == "Bool" else getattr(optypes, kind)()

    vtypes = [vtype(s[0]) * (s[1],) if isinstance(s, tuple) else vtype(s) for s in spec]
    return opkeys.Key(name, *vtypes)


def _value_lists(spec: list[Any]) -> Iterator[list[str]]:
    """Value lists the 0.7 key accepts: each sample in turn at each position, and 0, 1 and 3
    repeated values."""

    fixed = [s for s in spec if not isinstance(s, tuple)]
    repeated = [s for s in spec if isinstance(s, tuple)]
    rounds = max(len(_SAMPLES[kind]) for kind in fixed) if fixed else 1
    for turn in range(rounds):
        head = [_SAMPLES[kind][turn % len(_SAMPLES[kind])] for kind in fixed]
        if not repeated:
            yield head
            continue
        kind, low = repeated[0]
        for count in (low, low + 1, low + 3):
            yield head + [_SAMPLES[kind][i % len(_SAMPLES[kind])] for i in range(count)]


def _differences(ours: opkeys.Key, name: str) -> list[str]:
    """How ``ours`` parses the value lists 0.7's key accepted differently (none if alike)."""

    original = _original_key(name, ORIGINAL_07[name])
    differences = []
    for values in _value_lists(ORIGINAL_07[name]):
        theirs_kw = Keyword(name, list(values))
        ours_kw = Keyword(name, list(values))
        assert original.consume(theirs_kw), f"bad sample {values}"
        text = f"{name}={','.join(values)}"
        if not ours.consume(ours_kw):
            differences.append(f"{text}: 0.7 parsed it, we do not")
            continue
        expected = [type(value).__name__ for value in theirs_kw.values]
        got = [type(value).__name__ for value in ours_kw.values]
        if got != expected:
            differences.append(f"{text}: types {got}, 0.7 {expected}")
    return differences


@pytest.mark.parametrize("name", sorted(ORIGINAL_07))
def test_keywords_of_07_keep_their_types(keydict, name: str):
    """Every value list 0.7's key accepted parses with ours, to values of the same types."""

    assert name in keydict, f"0.7's keyword {name} is missing"
    assert not _differences(keydict[name], name)


def test_a_changed_type_is_a_difference():
    """The comparison sees a value that changed type, and a value list no longer accepted."""

    as_string = _original_key("node", ["String"] * 4 + ["Bool"])
    assert any("types" in text for text in _differences(as_string, "node"))
    no_repeat = _original_key("enabledNodes", ["String"])
    assert any("we do not" in text for text in _differences(no_repeat, "enabledNodes"))


# ----------------------------------------------------- a CLU tron model, through real tron


@pytest.fixture(scope="module")
def flicameras(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlicameraProcesses]:
    yield from running_flicameras(tmp_path_factory.mktemp("flicamera-data"), ["gfa1", "gfa2"])


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


#: Commands sent through tron, and keywords each must make the model see.
COMMANDS = [
    ("ping", ["text"]),
    ("version", ["version"]),
    ("help", ["help"]),
    ("status", ["enabledNodes", "nodeState", "node", "device"]),
    ("talk status", ["status", "failedNodes"]),
    ("talk expose 0.1", ["exposure_state", "filename", "filename_bundle"]),
    ("talk -n gfa1 temperature", ["temperature"]),
    ("talk -n gfa1 binning", ["binning"]),
    ("talk -n gfa1 area", ["area"]),
    ("talk -n gfa1 version", ["version"]),
    ("talk -n gfa1 nosuchcommand", ["error"]),
]


@pytest.mark.tron
@pytest.mark.timeout(180)
async def test_clu_tron_model_parses_what_fliswarm_writes(
    keydict,
    flicameras: FlicameraProcesses,
    tmp_path: pathlib.Path,
    tron_hub_factory: HubFactory,
    tron_client_factory: ClientFactory,
):
    actor_port = free_port()
    hub = await tron_hub_factory({"fliswarm": ("127.0.0.1", actor_port)})
    ports = dict(flicameras.ports, fvc=free_port())
    path = write_actor_config(
        tmp_path / "fliswarm.yaml",
        actor_port,
        ports,
        ["gfa1", "gfa2", "fvc"],
        actor={
            "tron_host": hub.host,
            "tron_port": hub.commander_port,
            "log_dir": str(tmp_path / "logs"),
        },
    )
    actor = FLISwarmActor.from_config(str(path))
    actor.tron_max_delay = 1.0
    await actor.start()
    # What STUI would be: a client of tron that parses fliswarm's keywords with the
    # dictionary (tron sends every actor's output to every client).
    model_client = TronConnection("fstest.keys", hub.host, hub.commander_port, models=["fliswarm"])
    records = _Records()
    model_client.log.addHandler(records)
    try:
        for name in ("gfa1", "gfa2"):
            await actor.connect_device(name)
        client = await tron_client_factory(hub)
        await tron_ready(client, "fliswarm", 30)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # As STUI does at start, it also asks tron for the values it has cached.
            await model_client.start(get_keys=True)
            assert model_client.connected()
            model = model_client.models["fliswarm"]
            for command, expected in COMMANDS:
                reply = await client.send(command, timeout=60)
                assert reply.code in (":", "f"), str(reply)
                # The model's own command comes back after what tron sent before it.
                ping = model_client.send_command("fliswarm", "ping")
                await asyncio.wait_for(ping, 30)
                for keyword in expected:
                    assert keyword in model, f"{command}: the model has no key {keyword}"
                    assert model[keyword].keyword is not None, f"{command}: no {keyword} seen"
                for line in reply.lines:
                    for name in line.keywords:
                        assert name in keydict, f"{command}: unknown {name}"
        problems = [
            str(warning.message)
            for warning in caught
            if issubclass(warning.category, CluWarning) and "fliswarm" in str(warning.message)
        ]
        assert not problems, "\n".join(problems)
        assert not [message for message in records.messages if "Failed parsing" in message]

        # Values arrive typed as the dictionary says.
        assert model["nodeState"].value[1] in {state.value for state in NodeState}
        assert isinstance(model["device"].value[1], bool)
        assert isinstance(model["device"].value[3], int)
        assert isinstance(model["node"].value[3], bool)
        status = model["status"].value
        assert status[0] in ("gfa1", "gfa2") and isinstance(status[4], int)
        assert isinstance(status[16], float)
        assert model["failedNodes"].value == ["gfa1"]  # The last talk failed on gfa1.
        assert len(model["filename_bundle"].value) == 2
    finally:
        model_client.log.removeHandler(records)
        model_client.stop()
        await actor.stop()
