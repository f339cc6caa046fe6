"""Start and stop the project's own daemons as child processes, by pid, with their logs kept."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20, skip: str = "") -> str:
        """The log's last `lines`, leaving out lines containing `skip` (e.g. heartbeats)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        kept = [line for line in text.splitlines() if not skip or skip not in line]
        return "\n".join(kept[-lines:])

    def stacks(self, wait_s: float = 2.0) -> str:
        """Every thread's stack, which the daemon writes to its log on SIGUSR1
        (shared.logging.dump_stacks_on_sigusr1): where it is stuck, for a timed-out wait."""
        if not self.alive():
            return ""
        try:
            before = self.log_path.stat().st_size
        except OSError:
            return ""
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + wait_s
        text, previous = "", None
        while time.monotonic() < deadline and (not text or text != previous):
            time.sleep(0.2)  # until the dump has stopped growing
            previous = text
            with self.log_path.open("rb") as log:
                log.seek(before)
                text = log.read().decode(errors="replace")
        return text

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; only ever the process we started."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_daemon(name: str, argv: list[str], log_path: Path, *, detach: bool = False) -> Daemon:
    """detach: run in a session of its own, so it outlives us and a terminal's Ctrl-C."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=detach,
        )
    return Daemon(name, process, log_path)


BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_controller(
    work: Path,
    address: str,
    *extra: str,
    heartbeat: str = "1s",
    log_level: str = "info",
    insecure: bool = True,
) -> Daemon:
    """novacron-controller with its state and log under `work`: --insecure, or with the CA
    that `novacron-controller init` made in work/controller (lab.trust.init_controller)."""
    argv = [
        str(BIN / "novacron-controller"), *(["--insecure"] if insecure else []),
        "--listen", address,
        "--state-dir", str(work / "controller"), "--heartbeat-interval", heartbeat,
        "--log-format", "json", "--log-level", log_level, *extra,
    ]  # fmt: skip
    return start_daemon("controller", argv, work / "logs" / "controller.log")


def start_agent(
    work: Path,
    address: str,
    node_id: str,
    libvirt_uri: str,
    images: Path,
    *extra: str,
    log_level: str = "info",
    insecure: bool = True,
) -> Daemon:
    """novacron-agent for `node_id` with its state and log under `work` (not --insecure:
    `extra` gives --join-token and --ca-pin)."""
    argv = [
        str(BIN / "novacron-agent"), *(["--insecure"] if insecure else []), "--node-id", node_id,
        "--controller", address, "--libvirt-uri", libvirt_uri,
        "--state-dir", str(work / "agents" / node_id), "--images-dir", str(images),
        "--log-format", "json", "--log-level", log_level,
        "--metrics-listen", "127.0.0.1:0",  # agents may share a namespace: any free port
        *extra,
    ]  # fmt: skip
    return start_daemon(f"agent {node_id}", argv, work / "logs" / f"agent-{node_id}.log")


def node_ready(address: str, node_id: str | None = None, env: dict[str, str] | None = None) -> bool:
    """Whether the controller reports `node_id` (or any node) ready, asked via the CLI
    (`env`: its credentials, lab.trust.cli_env)."""
    out = subprocess.run(
        [str(BIN / "novacron"), "--controller", address, "node", "list", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    try:
        items = json.loads(out)["items"]
    except (ValueError, KeyError):
        return False
    return any(
        n.get("condition") == "ready" and node_id in (None, n["info"]["node_id"]) for n in items
    )


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, daemons: Sequence[Daemon] = ()
) -> None:
    """Poll `check` until true; fail early, with its log, if a daemon we wait on died; on a
    timeout, show the daemons' logs."""
    deadline = time.monotonic() + timeout
    while not check():
        for d in daemons:
            if not d.alive():
                raise RuntimeError(f"{d.name} exited while waiting for {what}:\n{d.log_tail()}")
        if time.monotonic() > deadline:
            logs = "".join(
                f"\n--- {d.name}, last lines but heartbeats:\n{d.log_tail(30, 'heartbeat')}"
                f"\n--- {d.name}, its threads now:\n{d.stacks()}"
                for d in daemons
            )
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}{logs}")
        time.sleep(0.2)
