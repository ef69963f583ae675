"""The actor's side of its users' lines: commands in, a command's own replies out.

`ActorLines` is mixed into `.FLISwarmActor` before CLU's `~clu.legacy.LegacyActor`: it
handles what CLU 2.6 does badly or slowly with a line from a user (bad UTF-8, lines that are
not commands, unbalanced quotes, overlong lines, a client leaving) and writes a command's
keyword-less ``>`` and ``:`` through `.reply.write_status`.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from clu import CommandError
from clu.command import Command, parse_legacy_command
from clu.legacy import LegacyActor

from fliswarm.fast_talk import parse_talk, run_talk
from fliswarm.reply import same_output_as_clu, write_status


__all__ = ["ActorLines"]

# The command id of a line ``[commander] <command_id> ...`` (commander: tron's ``a.b``).
_LINE_IDS = re.compile(r"\s*(?:[A-Za-z0-9]*\.[A-Za-z0-9_.]+\s+)?(\d{1,9})(?:\s|$)")


class ActorLines(LegacyActor):
    """Command lines in, a command's own status lines out (see the module)."""

    @same_output_as_clu
    def write(
        self,
        message_code: Any = "i",
        message: dict[str, Any] | None = None,
        command: Any = None,
        user_id: int | None = None,
        command_id: int | None = None,
        concatenate: bool = True,
        broadcast: bool = False,
        validate: bool = True,
        write_to_log: bool = True,
        **kwargs: Any,
    ) -> None:
        """CLU's ``write``; a command's own ``>`` and ``:`` take `.reply.write_status`."""

        if (
            (message is None or (message.__class__ is dict and not message))
            and command is not None
            and user_id is None
            and command_id is None
            and not broadcast
            and kwargs.get("silent", False) is False
            and kwargs.keys() <= {"silent", "internal"}
            and write_status(
                self, message_code, command, kwargs.get("internal", False), write_to_log, validate
            )
        ):
            return
        super().write(
            message_code,
            message,
            command,
            user_id,
            command_id,
            concatenate,
            broadcast,
            validate,
            write_to_log,
            **kwargs,
        )

    def new_user(self, transport: Any) -> Any:
        """Registers a new client, or forgets one that left (never a closing one)."""

        if transport.is_closing():
            user_id = getattr(transport, "user_id", None)
            if user_id is not None and self.transports.get(user_id) is transport:
                self.log.debug(f"user {user_id} disconnected.")
                return self.transports.pop(user_id)
            return None
        return super().new_user(transport)

    def new_command(self, transport: Any, command_str: bytes):
        """Handles a command line.

        Invalid UTF-8 is replaced and NUL bytes removed instead of dropping the user; a
        line that is not ``[commander] [command_id] command`` fails for this user only
        (CLU would broadcast the error with command id 0).
        """

        if isinstance(command_str, bytes):
            command_str = command_str.decode(errors="replace").encode()
        command_str = command_str.replace(b"\x00", b"")
        text = command_str.decode().strip()
        if not text:
            return None
        try:
            commander_id, command_id, body = parse_legacy_command(text)
            command = Command(
                command_string=body,
                commander_id=commander_id or getattr(transport, "user_id", 0),
                command_id=command_id,
                consumer_id=self.name,
                actor=self,
                transport=transport,
            )
        except CommandError:
            self._fail_line(transport, text, f"Could not parse command {text[:200]!r}.")
            return None
        # As CLU's new_command.
        ids = f"commander_id={commander_id!r}, command_id={command_id!r}"
        self.log.info(f"New command received: {body!r} ({ids})")
        return self.parse_command(command)

    def parse_command(self, command: Any) -> Any:
        """Parses and runs a command; an unbalanced quote fails it instead of raising.

        A plain ``talk`` line takes `.fast_talk` (click is skipped, same result).
        """

        params = parse_talk(command.body)
        if params is not None:
            return run_talk(self, command, params)
        try:
            shlex.split(command.body)
        except ValueError as err:
            command.set_status(command.status.RUNNING, internal=True)
            return command.fail(error=f"Cannot split command {command.body[:200]!r}: {err}.")
        return super().parse_command(command)

    def _line_too_long(self, transport: Any, head: bytes, size: int) -> None:
        limit = self._server.line_limit
        text = head.decode(errors="replace")
        self._fail_line(transport, text, f"Command line too long ({size} bytes; limit {limit}).")

    def _fail_line(self, transport: Any, text: str, error: str) -> None:
        """Writes ``f`` for a line that is not a command, with its command id if it has one."""

        user_id = getattr(transport, "user_id", None)
        if user_id is None or self.transports.get(user_id) is not transport:
            return
        match = _LINE_IDS.match(text)
        command_id = int(match.group(1)) if match else 0
        # A command bound to the transport: the reply goes to this user only.
        command = Command(
            command_string="",
            commander_id=user_id,
            command_id=command_id,
            consumer_id=self.name,
            actor=self,
            transport=transport,
        )
        command.fail(error=error)
