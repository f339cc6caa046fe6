"""`make demo`: a controller and one edge agent on this host place a real QEMU guest.

Builds the tiny guest image, starts a private libvirtd, the controller and an agent, then drives
everything through the `novacron` CLI exactly as an operator would, and stops all it started.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lab.libvirtd import PrivateLibvirtd
from lab.processes import Daemon, start_daemon

BIN = Path(sys.executable).parent
VM_NAME = "demo-vm"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(address: str, *args: str, show: bool = True, check: bool = True) -> str:
    argv = [str(BIN / "novacron"), "--controller", address, *args]
    if show:
        print(f"$ novacron {' '.join(args)}", flush=True)
    done = subprocess.run(argv, capture_output=True, text=True)
    if show:
        print(done.stdout, end="", flush=True)
        if done.stderr.strip():
            print(done.stderr, end="", file=sys.stderr, flush=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"novacron {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def wait_until(check: Callable[[], bool], timeout: float, what: str, daemons: list[Daemon]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for d in daemons:
            if not d.alive():
                raise RuntimeError(f"{d.name} exited while waiting for {what}:\n{d.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.25)


def node_ready(address: str) -> bool:
    out = cli(address, "node", "list", "-o", "json", show=False, check=False)
    try:
        items = json.loads(out)["items"]
    except (ValueError, KeyError):
        return False
    return any(n.get("condition") == "ready" for n in items)


def first_console_line(address: str) -> str:
    out = cli(address, "vm", "console", VM_NAME, show=False, check=False)
    for line in out.splitlines():
        if "NovaCron guest" in line:
            return line.strip()
    return ""


def run(work: Path) -> None:
    images = work / "images"
    say("Building the tiny guest image (Debian kernel + busybox initramfs, nothing downloaded)")
    subprocess.run(
        [str(BIN / "novacron-image"), "build", "tiny", "--output", str(images)], check=True
    )

    say("Starting a private libvirtd for the edge node")
    libvirtd = PrivateLibvirtd(work / "libvirtd")
    daemons: list[Daemon] = []
    try:
        libvirtd.start()
        port = free_port()
        address = f"127.0.0.1:{port}"
        say(f"Starting novacron-controller on {address}")
        daemons.append(
            start_daemon(
                "controller",
                [
                    str(BIN / "novacron-controller"),
                    "--insecure",
                    "--listen",
                    address,
                    "--state-dir",
                    str(work / "controller"),
                    "--heartbeat-interval",
                    "1s",
                    "--log-format",
                    "json",
                ],
                work / "logs" / "controller.log",
            )
        )
        say("Starting novacron-agent for node edge-berlin-1 (MEC site, Berlin)")
        daemons.append(
            start_daemon(
                "agent",
                [
                    str(BIN / "novacron-agent"),
                    "--insecure",
                    "--node-id",
                    "edge-berlin-1",
                    "--controller",
                    address,
                    "--libvirt-uri",
                    libvirtd.uri,
                    "--edge-type",
                    "mec",
                    "--location",
                    "52.5200,13.4050",
                    "--country",
                    "DE",
                    "--label",
                    "site=berlin-a",
                    "--state-dir",
                    str(work / "agent"),
                    "--images-dir",
                    str(images),
                    "--log-format",
                    "json",
                ],
                work / "logs" / "agent.log",
            )
        )
        wait_until(lambda: node_ready(address), 60, "the agent to register", daemons)
        cli(address, "node", "list")

        say("Deploying a tiny VM: the controller places it and the agent starts it in QEMU")
        started = time.monotonic()
        cli(
            address,
            "vm",
            "deploy",
            VM_NAME,
            "--image",
            "tiny",
            "--vcpus",
            "1",
            "--memory-mib",
            "128",
        )
        print(f"(DeployVM returned after {time.monotonic() - started:.2f}s)")
        cli(address, "vm", "list")

        say("Waiting for the guest's first console line")
        line = ""

        def booted() -> bool:
            nonlocal line
            line = first_console_line(address)
            return bool(line)

        wait_until(booted, 120, "the guest to boot", daemons)
        print(f"$ novacron vm console {VM_NAME}\n{line}")
        print(f"(guest booted {time.monotonic() - started:.1f}s after the deploy call, under TCG)")

        say("Deleting the VM")
        cli(address, "vm", "delete", VM_NAME)
        cli(address, "vm", "list")
        cli(address, "status")
    except BaseException:
        for d in daemons:
            print(
                f"\n--- last lines of {d.name} log ({d.log_path}) ---\n{d.log_tail()}",
                file=sys.stderr,
            )
        raise
    finally:
        say("Stopping everything the demo started")
        for d in reversed(daemons):
            code = d.stop()
            print(f"{d.name} stopped (exit {code})")
        libvirtd.stop()
        print("libvirtd stopped")


def main() -> int:
    # a short path: libvirtd's unix socket must fit in 107 bytes
    work = Path(tempfile.mkdtemp(prefix="nc-demo-", dir="/tmp"))
    try:
        run(work)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say("Demo finished: nothing left running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
