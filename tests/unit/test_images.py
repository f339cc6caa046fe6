"""Image manifests, the catalog, overlays and the tiny image builder."""

from __future__ import annotations

import gzip
import json
import lzma
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from agent.images import builder, cli
from agent.images.catalog import ImageCatalog, backing_file, parse_manifest
from shared.errors import ConfigError, FailedPrecondition, NotFound
from tests.conftest import require_backend


def make_image(root: Path, name: str, manifest: dict[str, Any] | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "vmlinuz").write_bytes(b"k")
    (d / "initrd.img").write_bytes(b"i" * 10)
    base = {"name": name, "kind": "kernel", "arch": "x86_64", "kernel": "vmlinuz"}
    base["initrd"] = "initrd.img"
    (d / "image.yaml").write_text(yaml.safe_dump(manifest if manifest is not None else base))
    return d


def good(name: str = "img", **over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "kind": "kernel", "arch": "x86_64", "kernel": "vmlinuz"}
    m.update(over)
    return {k: v for k, v in m.items() if v is not None}


def needs_qemu_img() -> None:
    require_backend(shutil.which("qemu-img") is not None, "qemu-img (qemu-utils) not installed")


@pytest.mark.parametrize(
    ("manifest", "key"),
    [
        (good(kernal="vmlinuz"), "kernal"),
        (good(kind=None), "kind"),
        (good(kind="iso"), "kind"),
        (good(arch="sparc"), "arch"),
        (good(kernel="missing"), "kernel"),
        (good(kind="disk", kernel=None), "disk"),
        (good(kernel=None), "kernel"),
        (good(name="other"), "name"),
        (good(cmdline=5), "cmdline"),
    ],
)
def test_manifest_errors_name_the_bad_key(
    tmp_path: Path, manifest: dict[str, Any], key: str
) -> None:
    d = tmp_path / "img"
    d.mkdir()
    (d / "vmlinuz").write_bytes(b"k")
    with pytest.raises(ConfigError, match=rf"image.yaml: {key}:"):
        parse_manifest(manifest, d)


def test_manifest_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        parse_manifest(["x"], tmp_path)


def test_catalog_lists_good_images_and_skips_bad_ones(tmp_path: Path) -> None:
    make_image(tmp_path, "good")
    make_image(tmp_path, "typo", good("typo", kernal="x"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "image.yaml").write_text("name: [unclosed")
    (tmp_path / "no-manifest").mkdir()
    with capture_logs() as logs:
        images = ImageCatalog(tmp_path).list()
    assert [(i.name, i.kind, i.arch, i.size_bytes) for i in images] == [
        ("good", "kernel", "x86_64", 11)
    ]
    reasons = {
        Path(e["image_dir"]).name: e["reason"] for e in logs if e["event"] == "image_skipped"
    }
    assert set(reasons) == {"typo", "broken", "no-manifest"}
    assert "kernal" in reasons["typo"] and "missing" in reasons["no-manifest"]


def test_catalog_of_a_missing_dir_is_empty(tmp_path: Path) -> None:
    assert ImageCatalog(tmp_path / "nope").list() == []


def test_get_unknown_names_the_known_images(tmp_path: Path) -> None:
    make_image(tmp_path, "alpha")
    make_image(tmp_path, "beta")
    with pytest.raises(NotFound, match=r"'gamma'.*known: alpha, beta"):
        ImageCatalog(tmp_path).get("gamma")
    assert ImageCatalog(tmp_path).get("alpha").name == "alpha"


def test_prepare_without_disk_gives_kernel_media(tmp_path: Path) -> None:
    make_image(tmp_path / "images", "k", good("k", initrd="initrd.img", cmdline="quiet"))
    media = ImageCatalog(tmp_path / "images").prepare("k", tmp_path / "vm")
    assert media.kernel == str((tmp_path / "images/k/vmlinuz").resolve())
    assert media.initrd.endswith("initrd.img") and media.cmdline == "quiet" and media.disk == ""


def test_prepare_makes_an_idempotent_overlay_and_release_removes_it(tmp_path: Path) -> None:
    needs_qemu_img()
    d = make_image(tmp_path / "images", "d", good("d", kind="disk", kernel=None, disk="base.qcow2"))
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(d / "base.qcow2"), "16M"], check=True
    )
    catalog = ImageCatalog(tmp_path / "images")
    vm_dir = tmp_path / "vms" / "vm1"
    media = catalog.prepare("d", vm_dir)
    assert media.kernel == "" and media.disk == str(vm_dir / "disk.qcow2")
    assert Path(backing_file(Path(media.disk))) == (d / "base.qcow2").resolve()
    inode = Path(media.disk).stat().st_ino
    assert catalog.prepare("d", vm_dir) == media
    assert Path(media.disk).stat().st_ino == inode  # not recreated
    catalog.release(vm_dir)
    assert not vm_dir.exists()
    catalog.release(vm_dir)  # idempotent


def test_prepare_refuses_a_foreign_disk_in_the_vm_dir(tmp_path: Path) -> None:
    needs_qemu_img()
    d = make_image(tmp_path / "images", "d", good("d", kind="disk", kernel=None, disk="base.qcow2"))
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(d / "base.qcow2"), "16M"], check=True
    )
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(vm_dir / "disk.qcow2"), "1M"], check=True
    )
    with pytest.raises(FailedPrecondition, match="not an overlay"):
        ImageCatalog(tmp_path / "images").prepare("d", vm_dir)


# -- builder --------------------------------------------------------------------------------


def test_newest_kernel_uses_version_order(tmp_path: Path) -> None:
    for v in ("6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-30-amd64"):
        (tmp_path / f"vmlinuz-{v}").write_bytes(b"k")
    assert builder.newest_kernel(tmp_path).name == "vmlinuz-6.1.0-10-amd64"


def test_missing_kernel_names_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="linux-image-amd64"):
        builder.newest_kernel(tmp_path)


def test_dynamic_elf_detection() -> None:
    assert builder._is_dynamic_elf(Path("/bin/sh").resolve().read_bytes())
    assert builder._is_dynamic_elf(b"#!/bin/sh\n")


def _cpio_names(archive: bytes) -> dict[str, int]:
    """name -> mode of each newc entry."""
    raw, pos = gzip.decompress(archive), 0
    out: dict[str, int] = {}
    while True:
        hdr = raw[pos : pos + 110]
        assert hdr[:6] == b"070701"
        mode, size, namesize = (int(hdr[6 + 8 * i : 14 + 8 * i], 16) for i in (1, 6, 11))
        name = raw[pos + 110 : pos + 110 + namesize - 1].decode()
        if name == "TRAILER!!!":
            return out
        out[name] = mode
        pos += 110 + namesize
        pos += -pos % 4
        pos += size + (-size % 4)


def test_initramfs_holds_init_busybox_and_console(tmp_path: Path) -> None:
    fake = tmp_path / "busybox"
    fake.write_bytes(b"\x7fELF")
    names = _cpio_names(builder.build_initramfs(fake))
    assert {"init", "bin/busybox", "bin/sh", "dev/console", "proc", "sys"} <= set(names)
    assert names["init"] & 0o111
    assert builder.build_initramfs(fake) == builder.build_initramfs(fake)  # reproducible


def _fake_modules(root: Path) -> Path:
    """A /lib/modules/<kver> tree: virtio_net -> net_failover -> failover, plus a built-in."""
    kdir = root / "9.9.9-test"
    for rel, data in {
        "kernel/net/core/failover.ko": b"failover",
        "kernel/drivers/net/net_failover.ko.xz": lzma.compress(b"net_failover"),
        "kernel/drivers/net/virtio_net.ko": b"virtio_net",
        "kernel/drivers/virtio/virtio-ring.ko": b"virtio_ring",
        "kernel/drivers/other/zstd_mod.ko.zst": b"(zstd)",
    }.items():
        (kdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (kdir / rel).write_bytes(data)
    (kdir / "modules.dep").write_text(
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko.xz "
        "kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko "
        "kernel/drivers/virtio/virtio-ring.ko\n"
        "kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko\n"
        "kernel/net/core/failover.ko:\n"
        "kernel/drivers/virtio/virtio-ring.ko:\n"
        "kernel/drivers/other/zstd_mod.ko.zst:\n"
        "kernel/drivers/net/needs_gone.ko: kernel/drivers/net/gone.ko\n"
    )
    (kdir / "modules.builtin").write_text("kernel/drivers/virtio/virtio.ko\n")
    return root


def test_guest_modules_in_dependency_order_and_decompressed(tmp_path: Path) -> None:
    root = _fake_modules(tmp_path)
    mods = builder.guest_modules("9.9.9-test", ("virtio_net",), root)
    assert mods == [
        ("failover", b"failover"),
        ("net_failover", b"net_failover"),  # .ko.xz, decompressed
        ("virtio_ring", b"virtio_ring"),  # file virtio-ring.ko, modprobe name virtio_ring
        ("virtio_net", b"virtio_net"),
    ]  # virtio itself is built in


def test_guest_modules_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _fake_modules(tmp_path)
    with pytest.raises(FailedPrecondition, match=r"linux-image-0\.0"):
        builder.guest_modules("0.0", ("virtio_net",), root)
    with pytest.raises(FailedPrecondition, match="nope not found"):
        builder.guest_modules("9.9.9-test", ("nope",), root)
    with pytest.raises(FailedPrecondition, match=r"gone not found.*needed by needs_gone"):
        builder.guest_modules("9.9.9-test", ("needs_gone",), root)
    monkeypatch.setattr("agent.images.builder.shutil.which", lambda _name: None)
    with pytest.raises(FailedPrecondition, match="zstd"):
        builder.guest_modules("9.9.9-test", ("zstd_mod",), root)


def test_host_kernel_modules_for_the_guest_nic() -> None:
    try:
        kver = builder.kernel_version(builder.newest_kernel())
        names = [n for n, _ in builder.guest_modules(kver)]
    except FailedPrecondition as err:
        require_backend(False, str(err))
    assert "virtio_net" in names
    for dep, mod in (("failover", "net_failover"), ("net_failover", "virtio_net")):
        assert names.index(dep) < names.index(mod)


def test_initramfs_carries_modules_and_their_load_order(tmp_path: Path) -> None:
    fake = tmp_path / "busybox"
    fake.write_bytes(b"\x7fELF")
    archive = builder.build_initramfs(fake, [("failover", b"a"), ("net_failover", b"b")])
    names = _cpio_names(archive)
    assert {"lib/modules/failover.ko", "lib/modules/net_failover.ko"} <= set(names)
    assert b"failover\nnet_failover\n" in gzip.decompress(archive)
    assert not any(n.startswith("lib/") for n in _cpio_names(builder.build_initramfs(fake)))


def test_init_script_configures_the_network_after_the_first_line() -> None:
    script = builder.INIT_SCRIPT
    first = script.index('echo "NovaCron guest $NAME booted')
    for needle in ("nc.ip=", "nc.gw=", "insmod", "ip addr add", "ip route add default"):
        assert script.index(needle) > 0
    assert first < script.index("insmod") < script.index("ip addr add")
    assert 'say "eth0 $IP via ${GW:-none}"' in script  # == NET_LINE with the variables
    assert builder.NET_LINE.format(name="$NAME", ip="$IP", gw="${GW:-none}") == (
        "NovaCron guest $NAME net eth0 $IP via ${GW:-none}"
    )
    assert "did not appear" in script


def test_init_script_prints_the_first_line_format() -> None:
    assert 'echo "NovaCron guest $NAME booted: kernel $(uname -r)" > /dev/console' in (
        builder.INIT_SCRIPT
    )
    assert "nc.name=" in builder.INIT_SCRIPT


def test_build_tiny_image_is_idempotent_and_listed(tmp_path: Path) -> None:
    try:
        builder.newest_kernel()
        builder.static_busybox()
    except FailedPrecondition as err:
        require_backend(False, str(err))
    needs_qemu_img()
    path = builder.build_tiny_image(tmp_path, "tiny")
    mtime = (path / "image.yaml").stat().st_mtime_ns
    assert builder.build_tiny_image(tmp_path, "tiny") == path
    assert (path / "image.yaml").stat().st_mtime_ns == mtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    (info,) = ImageCatalog(tmp_path).list()
    assert (info.name, info.kind, info.arch) == ("tiny", "kernel", "x86_64")
    manifest = ImageCatalog(tmp_path).manifest("tiny")
    assert manifest.disk is not None and manifest.kernel is not None
    assert "console=ttyS0" in manifest.cmdline
    assert "lib/modules/virtio_net.ko" in _cpio_names((path / "initrd.img").read_bytes())


@pytest.mark.parametrize("stamp", [None, '{"format": 1}', "not json"])
def test_a_stale_cached_image_is_rebuilt(tmp_path: Path, stamp: str | None) -> None:
    """Images cached before the NIC driver (no or an older build stamp) must not be reused."""
    try:
        builder.newest_kernel()
        builder.static_busybox()
    except FailedPrecondition as err:
        require_backend(False, str(err))
    needs_qemu_img()
    path = builder.build_tiny_image(tmp_path, "tiny")
    (path / "initrd.img").write_bytes(b"old")  # what an old build would have
    if stamp is None:
        (path / builder.BUILD_STAMP).unlink()
    else:
        (path / builder.BUILD_STAMP).write_text(stamp)
    assert builder.build_tiny_image(tmp_path, "tiny") == path
    assert json.loads((path / builder.BUILD_STAMP).read_text())["format"] == builder.BUILD_FORMAT
    assert "lib/modules/virtio_net.ko" in _cpio_names((path / "initrd.img").read_bytes())


def test_cli_list_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_image(tmp_path, "alpha")
    assert cli.main(["list", "--dir", str(tmp_path), "-o", "json"]) == 0
    assert [i["name"] for i in json.loads(capsys.readouterr().out)] == ["alpha"]
    assert cli.main(["list", "--dir", str(tmp_path)]) == 0
    assert "alpha" in capsys.readouterr().out
    assert cli.main(["build", "Bad Name", "--output", str(tmp_path)]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
