"""fliswarm's runtime state: what changes while it runs and must survive a restart.

The configuration says how the site is meant to be; the runtime state records what operators
changed since, with actor commands, that fliswarm must remember when it starts again. It is one
small JSON file next to the actor's log, ``<actor.log_dir>/<actor name>-state.json``
(`state_path`), with one section per kind of state::

    {
      "format": 1,
      "written": "2025-06-01T12:00:00Z",
      "nodes": {"config_enabled_nodes": ["gfa1", "gfa2", "fvc"],
                "enabled": [], "disabled": ["gfa2"]},
      "images": {"gfa1": {"image": "hub:5000/sdss/flicamera@sha256:...",
                          "previous": "hub:5000/sdss/flicamera@sha256:...",
                          "requested": "sdss/flicamera:1.1"}}
    }

- ``nodes`` (`NodeOverrides`): the nodes ``enable`` and ``disable`` enabled or disabled against
  the configuration's ``enabled_nodes``, and that list as it was then.
- ``images`` (`DeployedImage`): per node, the image ``deploy`` or ``rollback`` put on it,
  pinned to its digest, and the one it ran before (what ``rollback`` returns to). A node
  without an entry runs the configuration's ``image``.

Another kind of state is another section: `RuntimeState.section` reads it and
`RuntimeState.update` writes it, keeping the other sections as they are (sections this version
does not know included). Every write replaces the whole file atomically (a temporary file in the
same directory, flushed to disk, then renamed over the old one), so a crash leaves the old file
or the new one, never a mix. A missing file is an empty state; a file that cannot be read or
parsed is one line for the log (`RuntimeState.problem`) and an empty state: the configuration
wins. Without ``actor.log_dir`` nothing is kept (`RuntimeState.kept` is false).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


__all__ = [
    "DeployedImage",
    "FORMAT",
    "MAX_BYTES",
    "NodeOverrides",
    "RuntimeState",
    "StateFileError",
    "state_path",
]

#: The format of the file this version reads and writes (``format`` in the file).
FORMAT = 1

#: A state file larger than this is not read (it cannot be one fliswarm wrote), in bytes.
MAX_BYTES = 1024 * 1024

#: The section of `NodeOverrides`.
NODES = "nodes"

#: The section of the `DeployedImage` of each node.
IMAGES = "images"


class StateFileError(Exception):
    """The runtime-state file cannot be read or written; the message is one line."""


def state_path(log_dir: str | os.PathLike[str] | None, name: str) -> Path | None:
    """The runtime-state file of an actor: ``<log_dir>/<name>-state.json``.

    Parameters
    ----------
    log_dir
        The actor's log directory (``actor.log_dir``); ``~`` is expanded.
    name
        The actor's name (its log is ``<log_dir>/<name>.log``).

    Returns
    -------
    path
        The file, or `None` without a log directory (nothing is kept).
    """

    if not log_dir:
        return None
    return Path(log_dir).expanduser() / f"{name}-state.json"


def _names(value: Any, what: str) -> tuple[str, ...]:
    """A list of node names from the file, or `ValueError` naming ``what``."""

    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"'{what}' is not a list of node names")
    return tuple(dict.fromkeys(value))


def _listing(names: Iterable[str]) -> str:
    return ", ".join(names) or "none"


@dataclass(frozen=True)
class NodeOverrides:
    """The nodes enabled or disabled at run time, against the configuration's ``enabled_nodes``.

    Attributes
    ----------
    config_enabled_nodes
        The configuration's ``enabled_nodes`` when the overrides were made. The overrides
        apply only while the configuration still enables exactly these nodes: once someone
        changes ``enabled_nodes`` (or starts fliswarm with ``--nodes``), the configuration
        wins.
    enabled
        Nodes enabled at run time that the configuration does not enable.
    disabled
        Nodes the configuration enables that are disabled at run time.
    """

    config_enabled_nodes: tuple[str, ...] = ()
    enabled: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()

    @classmethod
    def of(cls, configured: Iterable[str], enabled: Iterable[str]) -> NodeOverrides:
        """The overrides that make ``enabled`` out of the configuration's ``configured``."""

        configured = tuple(configured)
        enabled = tuple(enabled)
        return cls(
            config_enabled_nodes=configured,
            enabled=tuple(name for name in enabled if name not in configured),
            disabled=tuple(name for name in configured if name not in enabled),
        )

    @classmethod
    def from_json(cls, data: Any) -> NodeOverrides:
        """Reads the ``nodes`` section; `ValueError` (what is wrong) if it is malformed."""

        if not isinstance(data, dict):
            raise ValueError("'nodes' is not a mapping")
        return cls(
            config_enabled_nodes=_names(
                data.get("config_enabled_nodes", []), "nodes.config_enabled_nodes"
            ),
            enabled=_names(data.get("enabled", []), "nodes.enabled"),
            disabled=_names(data.get("disabled", []), "nodes.disabled"),
        )

    def to_json(self) -> dict[str, list[str]]:
        """The ``nodes`` section."""

        return {
            "config_enabled_nodes": list(self.config_enabled_nodes),
            "enabled": list(self.enabled),
            "disabled": list(self.disabled),
        }

    def __bool__(self) -> bool:
        """Whether any node is enabled or disabled at run time."""

        return bool(self.enabled or self.disabled)

    def describe(self) -> str:
        """The overrides in words (``disabled at run time: gfa2; enabled at run time: none``)."""

        return (
            f"disabled at run time: {_listing(self.disabled)}; "
            f"enabled at run time: {_listing(self.enabled)}"
        )

    def apply(
        self, configured: Collection[str], known: Collection[str]
    ) -> tuple[list[str], list[str]]:
        """The nodes to enable at start, from the configuration and these overrides.

        Parameters
        ----------
        configured
            The configuration's ``enabled_nodes``.
        known
            The configured nodes, in their order.

        Returns
        -------
        tuple
            The nodes to enable (in the order of ``known``), and the problems to log, one
            line each: overrides made against another ``enabled_nodes`` are not applied (the
            configuration wins); nodes the configuration no longer has are ignored.
        """

        if not self:
            return [name for name in known if name in configured], []
        if set(self.config_enabled_nodes) != set(configured):
            problem = (
                f"not applying the nodes {self.describe()}: they were made when the "
                f"configuration's enabled_nodes was [{_listing(self.config_enabled_nodes)}], "
                f"it is now [{_listing(configured)}] (the configuration wins)."
            )
            return [name for name in known if name in configured], [problem]
        problems = []
        unknown = [name for name in (*self.enabled, *self.disabled) if name not in known]
        if unknown:
            problems.append(
                f"ignoring the nodes {_listing(unknown)}: enabled or disabled at run time, "
                "they are not in the configuration."
            )
        wanted = (set(configured) | set(self.enabled)) - set(self.disabled)
        return [name for name in known if name in wanted], problems


@dataclass(frozen=True)
class DeployedImage:
    """The image ``deploy`` (or ``rollback``) put on a node.

    Attributes
    ----------
    image
        The full reference pinned to its digest (``hub:5000/sdss/flicamera@sha256:...``):
        the node's desired image from then on.
    previous
        What the node ran before, pinned to its digest when it was known (else its
        reference as configured): what ``rollback`` returns to. `None` if unknown.
    requested
        The image as the operator named it (``sdss/flicamera:1.1``), for the reports.
    """

    image: str
    previous: str | None = None
    requested: str | None = None

    @classmethod
    def from_json(cls, node: str, data: Any) -> DeployedImage:
        """Reads one node's entry; `ValueError` (what is wrong) if it is malformed."""

        where = f"images.{node}"
        if not isinstance(data, dict) or not isinstance(data.get("image"), str):
            raise ValueError(f"'{where}' is not a mapping with an 'image'")
        for key in ("previous", "requested"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ValueError(f"'{where}.{key}' is not a string")
        return cls(data["image"], data.get("previous"), data.get("requested"))

    def to_json(self) -> dict[str, str | None]:
        """One node's entry."""

        return {"image": self.image, "previous": self.previous, "requested": self.requested}


class RuntimeState:
    """The runtime-state file of one fliswarm actor (see the module).

    Parameters
    ----------
    path
        The file (`state_path`); `None` keeps nothing (reads are empty, writes do nothing).

    Attributes
    ----------
    problem
        Why the file could not be read by the last `load` (one line), or `None`.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self.problem: str | None = None
        self._document: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<RuntimeState {self.path}>"

    @property
    def kept(self) -> bool:
        """Whether the state is kept in a file (``actor.log_dir`` is set)."""

        return self.path is not None

    def read(self) -> dict[str, Any]:
        """Reads the file: its document, ``{}`` if there is none.

        Raises
        ------
        StateFileError
            If the file cannot be read, is not JSON, or is not a state file of this format.
        """

        if self.path is None:
            return {}
        where = f"the runtime-state file {self.path}"
        try:
            with open(self.path, "rb") as file:
                raw = file.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise StateFileError(f"cannot read {where}: {err.strerror or err}.") from None
        if len(raw) > MAX_BYTES:
            raise StateFileError(f"{where} is larger than {MAX_BYTES} bytes: not read.")
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise StateFileError(f"{where} is not valid JSON ({err}).") from None
        if not isinstance(document, dict):
            raise StateFileError(f"{where} is not a JSON object.")
        if document.get("format") != FORMAT:
            raise StateFileError(
                f"{where} has format {document.get('format')!r}; this fliswarm reads "
                f"format {FORMAT}."
            )
        return document

    def load(self) -> str | None:
        """Reads the file into memory (`read`); returns and keeps (`problem`) why it could not
        be read, in which case the state is empty (the configuration wins)."""

        try:
            self._document = self.read()
            self.problem = None
        except StateFileError as err:
            self._document = {}
            self.problem = f"{err} Using the configuration only."
        return self.problem

    def section(self, name: str) -> Any:
        """A copy of one section of the state as loaded, `None` if absent."""

        return copy.deepcopy(self._document.get(name))

    def update(self, name: str, value: Any) -> None:
        """Sets one section (`None` removes it) and writes the file atomically.

        The other sections are kept as they are. Does nothing when the state is not kept.

        Raises
        ------
        StateFileError
            If the file cannot be written (the state in memory is then unchanged).
        """

        if self.path is None:
            return
        document = copy.deepcopy(self._document)
        if value is None:
            document.pop(name, None)
        else:
            document[name] = copy.deepcopy(value)
        document["format"] = FORMAT
        document["written"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._write(document)
        self._document = document
        self.problem = None

    def _write(self, document: dict[str, Any]) -> None:
        assert self.path is not None
        path = self.path
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        temporary: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
            temporary = None
            with contextlib.suppress(OSError):  # The rename itself, on disk.
                directory = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
        except OSError as err:
            raise StateFileError(
                f"cannot write the runtime-state file {path}: {err.strerror or err}."
            ) from None
        finally:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)

    # Nodes enabled and disabled at run time.

    def node_overrides(self) -> NodeOverrides:
        """The ``nodes`` section as loaded (no overrides if absent).

        Raises
        ------
        StateFileError
            If the section is malformed.
        """

        data = self._document.get(NODES)
        if data is None:
            return NodeOverrides()
        try:
            return NodeOverrides.from_json(data)
        except ValueError as err:
            raise StateFileError(f"the runtime-state file {self.path}: {err}.") from None

    def set_node_overrides(self, overrides: NodeOverrides) -> None:
        """Writes the ``nodes`` section (removed when there is no override); see `update`."""

        self.update(NODES, overrides.to_json() if overrides else None)

    def enabled_nodes(
        self, configured: Collection[str], known: Collection[str]
    ) -> tuple[list[str], list[str]]:
        """The nodes to enable at start (`NodeOverrides.apply`), from the state as loaded.

        Returns
        -------
        tuple
            The nodes to enable, in the order of ``known``, and the problems to log (one line
            each, the load problem first).
        """

        problems = [self.problem] if self.problem else []
        try:
            overrides = self.node_overrides()
        except StateFileError as err:
            problems.append(f"{err} Using the configuration only.")
            overrides = NodeOverrides()
        enabled, more = overrides.apply(configured, known)
        return enabled, problems + [f"{self.path}: {line}" for line in more]

    # Images deployed to the nodes.

    def deployed_images(self) -> dict[str, DeployedImage]:
        """The ``images`` section as loaded, by node (empty if absent).

        Raises
        ------
        StateFileError
            If the section is malformed.
        """

        data = self._document.get(IMAGES)
        if data is None:
            return {}
        try:
            if not isinstance(data, dict):
                raise ValueError("'images' is not a mapping")
            return {str(node): DeployedImage.from_json(node, item) for node, item in data.items()}
        except ValueError as err:
            raise StateFileError(f"the runtime-state file {self.path}: {err}.") from None

    def set_deployed_images(self, images: dict[str, DeployedImage]) -> None:
        """Writes the ``images`` section (removed when empty); see `update`."""

        value = {node: image.to_json() for node, image in sorted(images.items())}
        self.update(IMAGES, value or None)
