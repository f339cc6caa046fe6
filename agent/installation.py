"""Absence is not deletion, the agent's side: which controller installation this node belongs to.

The agent remembers the installation id of the first controller that welcomed it (the file
`installation_id` in its state dir, written atomically) and says it in every hello. A controller
whose installation is new to the node (started on an empty, truncated or mistyped state dir) has
no record of this node's VMs; until an operator says `--new-installation` (the welcome's
`take_over`), the node refuses it every destructive command and keeps running everything else.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import structlog

from shared.errors import FailedPrecondition

log = structlog.get_logger(__name__)

FILE = "installation_id"


class InstallationGuard:
    """Blocking file I/O in `__init__` and `welcome` (tiny, once per session)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE
        self.known = _read(self.path)
        self.foreign = ""  # the current controller's installation when it is not ours

    def welcome(self, installation_id: str, take_over: bool) -> None:
        """A controller welcomed this node: remember it, take it as ours, or mark it foreign."""
        self.foreign = ""
        if not installation_id:  # a controller that does not say (an older one)
            return
        if installation_id == self.known:
            return
        if not self.known or take_over:
            if self.known:
                log.warning(
                    "node taken over by a new controller installation",
                    previous_installation=self.known,
                    installation_id=installation_id,
                )
            _write_atomically(self.path, installation_id)
            self.known = installation_id
            return
        self.foreign = installation_id
        log.error("controller installation is new to this node", error=self.refusal())

    def refusal(self) -> str:
        return (
            f"this node belongs to installation {self.known}; controller installation "
            f"{self.foreign} is new to it: restart the controller on its original state dir, "
            "or with --new-installation to take this node over"
        )

    def check_destructive(self, what: str) -> None:
        """Raise FailedPrecondition when the controller is of another installation."""
        if self.foreign:
            message = self.refusal()
            log.warning("destructive command refused", command=what, error=message)
            raise FailedPrecondition(f"{what} refused: {message}")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _write_atomically(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
