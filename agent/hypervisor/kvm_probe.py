"""Decide at run time whether KVM really works, on x86_64 and on aarch64 hosts.

/dev/kvm existing proves nothing: on some hosts QEMU asserts when it sets an MSR (-cpu host), or
the vCPU never reaches the guest (default CPU). So we boot a program of a few instructions that
can only end QEMU if a vCPU executed it: on x86 a boot sector that writes to QEMU's
isa-debug-exit port (exit status 99), on aarch64 a raw image loaded with -kernel on the virt
machine that calls PSCI SYSTEM_OFF through `hvc #0` (QEMU exits 0; otherwise it spins forever).
And it must be quick: on a host where the boot sector took ~1.5 s under KVM (against ~0.2 s
where KVM works), real guests never printed a line in 60 s, so a slow KVM counts as broken.
The same programs run under TCG in the tests (`run_probe(arch, "tcg")`), so the code path that
decides is exercised even on hosts without KVM.
"""

from __future__ import annotations

import functools
import os
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from shared.arch import host_arch, normalise

log = structlog.get_logger(__name__)

# mov al, 0x31; out 0xf4, al; hlt; jmp $-3  -> QEMU exits with (0x31 << 1) | 1 = 99.
_BOOT_SECTOR = bytes([0xB0, 0x31, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD])
PSCI_SYSTEM_OFF = 0x84000008
# movz x0, #0x0008; movk x0, #0x8400, lsl #16; hvc #0; b .   (little-endian A64)
AARCH64_PROGRAM = struct.pack("<4I", 0xD2800100, 0xF2B08000, 0xD4000002, 0x14000000)
_TIMEOUT_S = 1.5
_FAST_S = 0.8  # QEMU start + the boot sector where KVM really works: ~0.2 s


@dataclass(frozen=True, slots=True)
class Probe:
    """How to run the probe program for one architecture."""

    qemu: str
    machine: list[str]
    expected_exit: int
    tcg_cpu: str


PROBES = {
    "x86_64": Probe(
        "qemu-system-x86_64",
        ["-M", "pc", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"],
        99,
        "qemu64",
    ),
    "aarch64": Probe("qemu-system-aarch64", ["-M", "virt"], 0, "cortex-a57"),
}


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    reason: str
    seconds: float = 0.0


def _write_program(arch: str, directory: Path, program: bytes | None) -> list[str]:
    """The probe program on disk and the QEMU options that boot it."""
    if arch == "x86_64":
        code = _BOOT_SECTOR if program is None else program
        img = directory / "boot.img"
        img.write_bytes(code + bytes(510 - len(code)) + b"\x55\xaa")
        return ["-drive", f"file={img},format=raw,if=floppy"]
    img = directory / "probe.bin"
    img.write_bytes(AARCH64_PROGRAM if program is None else program)
    return ["-kernel", str(img)]


def run_probe(
    arch: str, accel: str, timeout_s: float = _TIMEOUT_S, program: bytes | None = None
) -> ProbeResult:
    """Boot the probe program of `arch` under `accel` ("kvm": -cpu host; "tcg": a model CPU);
    ok only if QEMU ended with the exit status that only the program's last act produces.
    `program` replaces the built-in one (tests: a program that never powers off)."""
    arch = normalise(arch)
    probe = PROBES.get(arch)
    if probe is None:
        return ProbeResult(False, f"no KVM probe for arch {arch!r}")
    qemu = shutil.which(probe.qemu)
    if qemu is None:
        return ProbeResult(False, f"{probe.qemu} not installed")
    cpu = "host" if accel == "kvm" else probe.tcg_cpu
    with tempfile.TemporaryDirectory(prefix="nc-kvm-probe-") as tmp:
        boot = _write_program(arch, Path(tmp), program)
        cmd = [
            qemu, "-accel", accel, "-cpu", cpu, *probe.machine, "-m", "64",
            "-nodefaults", "-display", "none", "-no-reboot", *boot,
        ]  # fmt: skip
        started = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            return ProbeResult(False, f"guest did not finish in {timeout_s}s", timeout_s)
        took = time.monotonic() - started
    if proc.returncode == probe.expected_exit:
        return ProbeResult(True, "", took)
    lines = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
    return ProbeResult(False, f"exit status {proc.returncode}: {lines[0]}", took)


@functools.cache
def kvm_works(arch: str = "") -> bool:
    """True only if a guest of `arch` (default: this machine's) ran under KVM with -cpu host
    (what our kvm domains use). KVM runs only the host's own architecture. Cached."""
    arch = normalise(arch or host_arch())
    if arch != host_arch():
        log.info("kvm_probe", result=False, reason=f"{arch} is not this host's {host_arch()}")
        return False
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        log.info("kvm_probe", result=False, reason="/dev/kvm not accessible")
        return False
    result = run_probe(arch, "kvm")
    if result.ok and result.seconds > _FAST_S:
        log.info(
            "kvm_probe",
            result=False,
            reason=f"KVM ran the probe but slowly ({result.seconds:.2f}s)",
        )
        return False
    log.info("kvm_probe", result=result.ok, arch=arch, reason=result.reason)
    return result.ok
