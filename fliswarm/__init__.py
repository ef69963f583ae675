"""fliswarm: run FLI cameras in Docker containers on a swarm of nodes, as a CLU actor."""

from importlib.metadata import PackageNotFoundError, version


#: The distribution is sdss-fliswarm (0.7's name), the import package fliswarm.
DISTRIBUTION = "sdss-fliswarm"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

NAME = "fliswarm"
