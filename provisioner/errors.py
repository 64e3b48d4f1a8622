"""Errors that reach the user.

Every failure a sysadmin can cause or fix is a `CoopError` with a message that
says what is wrong and a hint that says what to do; the CLI prints both and
exits non-zero. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CoopError(Exception):
    """A failure the user can act on."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, str | None]:
        return {"error": self.message, "hint": self.hint, "kind": type(self).__name__}


class InvalidInput(CoopError):
    """A value given on the command line or in a file is not acceptable."""

    exit_code = 2


class NotFound(CoopError):
    """A member, plan or group named by the user does not exist."""

    exit_code = 3


class Conflict(CoopError):
    """The change would clash with what the directory already holds."""

    exit_code = 4


class ConfigError(CoopError):
    """The configuration file or a secret is missing or wrong."""

    exit_code = 5


class DirectoryUnavailable(CoopError):
    """The directory cannot be reached, or refused our credentials."""

    exit_code = 6
