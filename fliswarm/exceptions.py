"""Typed errors raised by fliswarm.

Every error fliswarm raises while talking to a node derives from `NodeError`, itself a
`FliswarmError`, and carries the node name. The network errors also derive from the
matching builtin (`ConnectionError`, `TimeoutError`) so that code written for the
original fliswarm (``except ConnectionError``) keeps working.
"""

from __future__ import annotations


__all__ = [
    "FliswarmError",
    "NodeError",
    "NodeNotConnectedError",
    "NodeUnreachableError",
    "NodeTimeoutError",
    "NodeTLSError",
    "DockerAPIError",
    "ImagePullError",
    "ContainerConflictError",
    "ContainerStartError",
    "VolumeNotFoundError",
    "VolumeInUseError",
    "VolumeDriverError",
    "PingError",
]


class FliswarmError(Exception):
    """Base class of every fliswarm error."""


class NodeError(FliswarmError):
    """An error related to one node.

    Parameters
    ----------
    node
        The name of the node.
    message
        What happened, in plain words.
    """

    def __init__(self, node: str, message: str) -> None:
        self.node = node
        self.message = message
        super().__init__(f"{node}: {message}")


class NodeNotConnectedError(NodeError, ConnectionError):
    """The node has no Docker client (`.Node.connect` was never called or failed)."""


class NodeUnreachableError(NodeError, ConnectionError):
    """The node or its Docker engine refused or dropped the connection."""


class NodeTLSError(NodeUnreachableError):
    """TLS to the node's Docker engine failed: a missing or unreadable certificate or key
    file, or a handshake refused by either side (wrong CA, expired or mismatched
    certificate). Never followed by a plain-TCP attempt."""


class NodeTimeoutError(NodeError, TimeoutError):
    """The node or its Docker engine did not answer within the timeout.

    Parameters
    ----------
    node
        The name of the node.
    message
        What was being done.
    timeout
        The timeout that expired, in seconds.
    """

    def __init__(self, node: str, message: str, timeout: float | None = None) -> None:
        self.timeout = timeout
        if timeout is not None:
            message = f"{message} (no answer within {timeout:g} s)"
        super().__init__(node, message)


class DockerAPIError(NodeError):
    """The Docker engine answered with an error.

    Parameters
    ----------
    node
        The name of the node.
    status
        The HTTP status code of the engine's answer (0 for an error reported in a
        stream, such as a failed pull).
    message
        The engine's error message.
    """

    def __init__(self, node: str, status: int, message: str) -> None:
        self.status = status
        super().__init__(node, f"Docker engine error {status}: {message}")
        self.message = message


class ImagePullError(NodeError):
    """An image could not be pulled (unknown image, registry down...)."""


class ContainerConflictError(NodeError):
    """A container with the requested name exists but was not created by fliswarm."""


class ContainerStartError(NodeError):
    """A container could not be created or started (it has been removed again)."""


class VolumeNotFoundError(NodeError):
    """A volume does not exist on the node."""


class VolumeInUseError(NodeError):
    """A volume cannot be removed because containers use it."""


class VolumeDriverError(NodeError):
    """The requested volume driver does not exist on the node."""


class PingError(FliswarmError):
    """The ``ping`` program cannot be found or run."""
