"""`make demo`: a controller and one edge agent on this host place a real QEMU guest.

Builds the tiny guest image, starts a private libvirtd, the controller and an agent, then drives
everything through the `novacron` CLI exactly as an operator would, and stops all it started.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab.libvirtd import PrivateLibvirtd
from lab.processes import (
    BIN,
    Daemon,
    free_port,
    node_ready,
    start_agent,
    start_controller,
    wait_until,
)

VM_NAME = "demo-vm"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


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
        daemons.append(start_controller(work, address))
        say("Starting novacron-agent for node edge-berlin-1 (MEC site, Berlin)")
        site = ["--edge-type", "mec", "--location", "52.5200,13.4050", "--country", "DE"]
        site += ["--label", "site=berlin-a"]
        daemons.append(start_agent(work, address, "edge-berlin-1", libvirtd.uri, images, *site))
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
