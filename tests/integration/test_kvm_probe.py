"""The KVM probe's programs run for real under TCG: the same code path that decides KVM,
with the accelerator swapped, so a wrong instruction or QEMU option fails here, not on a
gateway. The negative programs show that only the program's own power-off ends QEMU."""

from __future__ import annotations

import shutil
import struct

import pytest

from agent.hypervisor import kvm_probe
from agent.hypervisor.kvm_probe import PROBES, PSCI_SYSTEM_OFF, run_probe
from tests.conftest import require_backend

pytestmark = pytest.mark.qemu
GENEROUS_S = 60.0  # TCG on a busy 2-core machine; the verdict is the exit status, not the time


def need(arch: str) -> None:
    tool = PROBES[arch].qemu
    require_backend(shutil.which(tool) is not None, f"{tool} not installed (qemu-system-*)")


@pytest.mark.parametrize("arch", ["aarch64", "x86_64"])
def test_probe_program_runs_and_powers_off_under_tcg(arch: str) -> None:
    need(arch)
    result = run_probe(arch, "tcg", GENEROUS_S)
    assert result.ok, result.reason


def test_aarch64_program_is_psci_system_off_over_hvc() -> None:
    movz, movk, hvc, spin = struct.unpack("<4I", kvm_probe.AARCH64_PROGRAM)
    imm = ((movk >> 5) & 0xFFFF) << 16 | ((movz >> 5) & 0xFFFF)
    assert imm == PSCI_SYSTEM_OFF and hvc == 0xD4000002 and spin == 0x14000000


@pytest.mark.parametrize(
    "program",
    [
        struct.pack("<I", 0x14000000),  # b .: never powers off
        # x0 = 0x84000000 (PSCI_VERSION): the call returns and the vCPU spins
        struct.pack("<4I", 0xD2800000, 0xF2B08000, 0xD4000002, 0x14000000),
    ],
    ids=["spin", "psci-version"],
)
def test_a_program_that_does_not_power_off_is_not_success(program: bytes) -> None:
    need("aarch64")
    result = run_probe("aarch64", "tcg", 3.0, program)
    assert not result.ok and "did not finish" in result.reason


def test_kvm_is_never_claimed_for_a_foreign_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kvm_probe, "host_arch", lambda: "x86_64")
    kvm_probe.kvm_works.cache_clear()
    try:
        assert kvm_probe.kvm_works("arm64") is False
        monkeypatch.setattr(kvm_probe.os, "access", lambda *_: False)
        assert kvm_probe.kvm_works("x86_64") is False  # no /dev/kvm: no probe, no KVM
    finally:
        kvm_probe.kvm_works.cache_clear()


def test_unknown_arch_has_no_probe() -> None:
    result = run_probe("riscv64", "tcg")
    assert not result.ok and "no KVM probe for arch 'riscv64'" in result.reason
