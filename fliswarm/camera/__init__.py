"""The connection to each node's flicamera actor and the relay of its replies.

- `.device`: `FlicameraDevice`, one TCP connection to a flicamera actor, and `ReplyStream`,
  its reading side;
- `.subcommand`: `SubCommand`, one command sent to a flicamera actor for a fliswarm command.
"""

from .device import FlicameraDevice
from .subcommand import SubCommand, wait_all


__all__ = ["FlicameraDevice", "SubCommand", "wait_all"]
