"""A Debian root booted with systemd as its PID 1 (systemd-nspawn), for tests of the units under
the init system they are written for: the host's PID 1 is not systemd, so `systemctl` cannot
run them here, but a container's can.

The container has a network namespace of its own (loopback only) and no machined registration
(`--register=no --keep-unit`: the host has no systemd to register with). Commands run inside
through nsenter into its PID 1's namespaces. It is ended by the pid of the systemd-nspawn we
started: SIGTERM asks its systemd to power off, SIGKILL if that takes too long.
"""

from __future__ import annotations

import contextlib
import hashlib
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BOOT_S = 60.0
POWEROFF_S = 30.0


def boot_problem() -> str:
    for tool in ("systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian: systemd-container, util-linux)"
    return ""


@dataclass
class Booted:
    root: Path
    nspawn: subprocess.Popen[bytes]
    init_pid: int
    console: Path

    def sh(self, script: str, timeout: float = 120, check: bool = True) -> str:
        """`script` (sh) inside the container, as root; its stdout (and the exit code first,
        on a line of its own, when not `check`)."""
        argv = [
            "nsenter", "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p", "--",
            "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8",
            "HOME=/root", "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=", "/bin/sh", "-ec", script,
        ]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if not check:
            return f"{proc.returncode}\n{proc.stdout}{proc.stderr}"
        if proc.returncode != 0:
            tail = (proc.stderr + proc.stdout).strip().splitlines()[-15:]
            raise AssertionError(f"`{script[:70]}` in the container failed ({proc.returncode}):\n"
                                 + "\n".join(tail))  # fmt: skip
        return proc.stdout

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """systemd's own view of `unit`: the named properties."""
        out = self.sh(f"systemctl show {shlex.quote(unit)} -p {','.join(props)}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.sh(f"journalctl -u {shlex.quote(unit)} --no-pager -o cat || true")


def machine_suffix(root: Path) -> str:
    """Letters and digits only (a temporary dir's name may hold '_', which nspawn refuses)."""
    return hashlib.sha256(str(root).encode()).hexdigest()[:8]


def _init_pid(nspawn: subprocess.Popen[bytes]) -> int | None:
    """The container's PID 1 as the host sees it: the child of systemd-nspawn running systemd."""
    children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children")
    with contextlib.suppress(OSError):
        for pid in children.read_text().split():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
    return None


@contextlib.contextmanager
def booted(root: Path, console: Path, binds: Sequence[tuple[Path, str]] = ()) -> Iterator[Booted]:
    """`root` booted; powered off (by our pid) afterwards, whatever happened."""
    argv = ["systemd-nspawn", "--quiet", "-D", str(root), "--boot", "--register=no", "--keep-unit",
            "--private-network", f"--machine=nc-sd-{machine_suffix(root)}"]  # fmt: skip
    argv += [f"--bind={src}:{dst}" for src, dst in binds]
    with console.open("wb") as out:
        nspawn = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + BOOT_S
        box: Booted | None = None
        while True:
            assert nspawn.poll() is None, (
                f"systemd-nspawn exited {nspawn.returncode}: "
                + (console.read_text(errors="replace")[-1500:])
            )
            pid = _init_pid(nspawn)
            if pid is not None:
                box = box or Booted(root, nspawn, pid, console)
                state = box.sh("systemctl is-system-running || true").strip()
                if state in ("running", "degraded"):
                    break
            assert time.monotonic() < deadline, (
                f"not booted in {BOOT_S:.0f} s: " + (console.read_text(errors="replace")[-1500:])
            )
            time.sleep(0.2)  # polling another init system's progress: nothing to wait on
        yield box
    finally:
        if nspawn.poll() is None:
            nspawn.send_signal(signal.SIGTERM)
            try:
                nspawn.wait(timeout=POWEROFF_S)
            except subprocess.TimeoutExpired:
                nspawn.kill()
                nspawn.wait()
