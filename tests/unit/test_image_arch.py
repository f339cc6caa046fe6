"""Building a guest for an architecture: bad names, a foreign-architecture dpkg that is not set
up, and a busybox of the wrong CPU are refused with errors that say what to do."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from agent.images import foreign
from agent.images.builder import build_tiny_image
from agent.images.cli import main
from shared.errors import FailedPrecondition, Internal, InvalidArgument


def elf(machine: int) -> bytes:
    return b"\x7fELF\x02\x01\x01" + bytes(11) + struct.pack("<H", machine) + bytes(40)


def test_an_unknown_arch_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"image arch 'sparc' is not supported"):
        build_tiny_image(tmp_path, "tiny", arch="sparc")
    assert not (tmp_path / "tiny").exists()


def test_the_cli_says_so_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "tiny", "--arch", "mips", "--output", str(tmp_path)]) == 1
    assert "image arch 'mips' is not supported" in capsys.readouterr().err


def test_a_busybox_for_another_cpu_is_refused(tmp_path: Path) -> None:
    x86, arm = tmp_path / "x86", tmp_path / "arm"
    x86.write_bytes(elf(0x3E))
    arm.write_bytes(elf(0xB7))
    foreign.require_elf_machine(arm, "aarch64")
    with pytest.raises(FailedPrecondition, match=r"ELF machine 0x3e, not aarch64"):
        foreign.require_elf_machine(x86, "aarch64")
    (tmp_path / "text").write_text("#!/bin/sh\n")
    with pytest.raises(FailedPrecondition, match="not an ELF binary"):
        foreign.require_elf_machine(tmp_path / "text", "aarch64")


def test_dpkg_without_the_architecture_says_how_to_add_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    answers = {"--print-architecture": "amd64\n", "--print-foreign-architectures": "i386\n"}
    monkeypatch.setattr(foreign, "_run", lambda cmd, *_a, **_k: answers[cmd[1]])
    with pytest.raises(
        FailedPrecondition, match=r"dpkg --add-architecture arm64 && apt-get update"
    ):
        foreign.guest_parts("aarch64", tmp_path)


def test_the_kernel_package_is_read_from_the_metapackage(monkeypatch: pytest.MonkeyPatch) -> None:
    depends = "linux-image-6.1.0-57-arm64 (= 6.1.192-3)"
    monkeypatch.setattr(foreign, "_run", lambda *_a, **_k: depends)
    assert foreign._kernel_package(Path("linux-image-arm64.deb")) == "linux-image-6.1.0-57-arm64"
    monkeypatch.setattr(foreign, "_run", lambda *_a, **_k: "libc6")
    with pytest.raises(Internal, match="depends on no linux-image"):
        foreign._kernel_package(Path("m.deb"))
