"""The one exception the CLI turns into `error: CODE: message` and exit status 1."""

from __future__ import annotations


class CLIError(Exception):
    """A failure a person can act on; `code` is a gRPC status name or a CLI-side code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
