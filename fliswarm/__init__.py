"""fliswarm: run FLI cameras in Docker containers on a swarm of nodes, as a CLU actor."""

from importlib.metadata import PackageNotFoundError, version


try:
    __version__ = version("fliswarm")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

NAME = "fliswarm"
