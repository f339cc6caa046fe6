"""The .deb packages (`make packages`, packaging/build_deb.py): built for amd64 and arm64, the
arm64 ones checked down to the ELF machine of every shared object, the amd64 ones installed,
upgraded and purged in a fresh Debian bookworm root, which must end as it began.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_backend
from tests.system.debroot import build_root, file_list, fresh_root, in_root, run, spawn_in_root

pytestmark = pytest.mark.deb

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
UPGRADE = f"{VERSION}+1"
PACKAGES = ("novacron-edge-common", "novacron-controller", "novacron-agent")
EM_X86_64, EM_AARCH64 = 62, 183
# trees that change whatever is installed (apt's and dpkg's books, logs, caches, mounts)
VOLATILE = ("/proc", "/dev", "/sys", "/run", "/tmp", "/var/cache", "/var/log", "/var/lib/apt",
            "/var/lib/dpkg")  # fmt: skip
# useradd/userdel keep the previous passwd/group/shadow as NAME-: the files are the system's
ACCOUNT_BACKUPS = {"/etc/passwd-", "/etc/group-", "/etc/shadow-", "/etc/gshadow-"}


def build_problem() -> str:
    for tool in ("dpkg-deb",):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return ""


def root_problem() -> str:
    if os.geteuid() != 0:
        return "needs root (mmdebstrap, chroot, mounts)"
    for tool in ("mmdebstrap", "unshare", "chroot", "zstd"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return ""


def build(out: Path, *args: str) -> None:
    run([sys.executable, str(REPO / "packaging/build_deb.py"), "--out", str(out), *args],
        "packaging/build_deb.py", timeout=1200)  # fmt: skip


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both architectures, as `make packages` builds them (wheels cached by the lock's hash)."""
    problem = build_problem()
    require_backend(not problem, problem)
    out = tmp_path_factory.mktemp("debs")
    build(out)
    return out


def deb(out: Path, name: str, arch: str, version: str = VERSION) -> Path:
    path = out / f"{name}_{version}_{arch}.deb"
    assert path.is_file(), f"{path.name} was not built: {sorted(p.name for p in out.iterdir())}"
    return path


def field(path: Path, name: str) -> str:
    return run(["dpkg-deb", "-f", str(path), name], f"dpkg-deb -f {path.name}").strip()


def elf_machines(tree: Path) -> dict[str, int]:
    """{shared object: e_machine} of every ELF .so under `tree`."""
    found = {}
    for path in tree.rglob("*.so*"):
        if path.is_file() and not path.is_symlink():
            head = path.read_bytes()[:20]
            if head[:4] == b"\x7fELF":
                found[str(path.relative_to(tree))] = int.from_bytes(head[18:20], "little")
    return found


@pytest.mark.parametrize(("arch", "machine"), [("amd64", EM_X86_64), ("arm64", EM_AARCH64)])
def test_each_architecture_gets_its_own_native_code(
    debs: Path, arch: str, machine: int, tmp_path: Path
) -> None:
    for name in PACKAGES:
        path = deb(debs, name, arch)
        assert field(path, "Architecture") == arch
        assert field(path, "Version") == VERSION
    common = deb(debs, "novacron-edge-common", arch)
    run(["dpkg-deb", "-x", str(common), str(tmp_path)], "dpkg-deb -x")
    machines = elf_machines(tmp_path)
    wrong = {so: m for so, m in machines.items() if m != machine}
    assert not wrong, f"{arch} package holds foreign code: {wrong}"
    for native in ("grpc/_cython/cygrpc", "cryptography/hazmat/bindings/_rust", "numpy/_core"):
        assert any(native in so for so in machines), f"{arch}: no {native} extension"
    site = tmp_path / "opt/novacron-edge/lib/python3.11/site-packages"
    assert (site / "controller/main.py").is_file() and not (site / "lab").exists()
    cfg = (tmp_path / "opt/novacron-edge/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg and "home = /usr/bin" in cfg
    assert os.readlink(tmp_path / "opt/novacron-edge/bin/python") == "/usr/bin/python3.11"
    installed_kib = int(field(common, "Installed-Size"))
    files = [Path(d) / f for d, _, names in os.walk(tmp_path) for f in names]
    actual_kib = sum(p.lstat().st_size for p in files if not p.is_symlink()) / 1024
    assert actual_kib <= installed_kib <= actual_kib * 1.2 + 64


def test_the_thin_packages_depend_on_the_same_common_build(debs: Path) -> None:
    for name in ("novacron-controller", "novacron-agent"):
        depends = field(deb(debs, name, "arm64"), "Depends")
        assert f"novacron-edge-common (= {VERSION})" in depends
    assert "python3-libvirt" in field(deb(debs, "novacron-agent", "arm64"), "Depends")
    listing = run(["dpkg-deb", "-c", str(deb(debs, "novacron-agent", "arm64"))], "dpkg-deb -c")
    for path in ("./lib/systemd/system/novacron-agent.service", "./etc/novacron/agent.yaml",
                 "./opt/novacron-edge/bin/novacron-agent"):  # fmt: skip
        assert path in listing


def test_a_second_build_of_the_same_tree_is_byte_identical(debs: Path, tmp_path: Path) -> None:
    """Reproducible: pinned, hash-checked wheels; mtimes from the last commit; no build paths."""
    build(tmp_path, "--arch", "arm64")
    for name in PACKAGES:
        first, second = deb(debs, name, "arm64"), deb(tmp_path, name, "arm64")
        assert first.read_bytes() == second.read_bytes(), f"{first.name} differs between builds"


@pytest.fixture
def debian_root() -> Iterator[Path]:
    problem = root_problem()
    require_backend(not problem, problem)
    with fresh_root(build_root()) as root:
        policy = root / "usr/sbin/policy-rc.d"  # the maintainer scripts must not start anything
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        yield root


def install(root: Path, out: Path, version: str) -> None:
    inside = root / "tmp" / f"debs-{version}"
    inside.mkdir()
    for name in PACKAGES:
        shutil.copy(deb(out, name, "amd64", version), inside)
    in_root(root, f"apt-get install -y -q --no-install-recommends /tmp/debs-{version}/*.deb")


def configured(root: Path, daemon: str, config: str) -> tuple[int, str]:
    """The units' ExecCondition= helper: its exit code and what it said."""
    out = in_root(root, f"/opt/novacron-edge/libexec/novacron-configured {daemon} {config}",
                  check=False)  # fmt: skip
    code, _, said = out.partition("\n")
    return int(code), said


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def controller_serves(root: Path, log: Path) -> list[str]:
    """The packaged controller, started as its unit starts it (Type=notify: a NOTIFY_SOCKET),
    says READY=1 and ends with 0 on SIGTERM; the notify messages it sent."""
    listen, enrol = free_ports(2)
    (root / "tmp/controller-test.yaml").write_text(
        f"controller:\n  listen: 127.0.0.1:{listen}\n  enrol_listen: 127.0.0.1:{enrol}\n"
        '  metrics_listen: ""\n  dashboard_listen: ""\n'
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(root / "tmp/notify.sock"))
    notify.settimeout(0.2)
    argv = ["novacron-controller", "--config", "/tmp/controller-test.yaml"]
    proc = spawn_in_root(root, argv, {"NOTIFY_SOCKET": "/tmp/notify.sock"}, log)
    messages: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while not any("READY=1" in m.split("\n") for m in messages):
            assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()[-1500:]}"
            assert time.monotonic() < deadline, f"no READY=1 in 90 s: {messages}"
            try:
                messages.append(notify.recv(4096).decode())
            except TimeoutError:
                continue
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-1500:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    return messages


def test_install_upgrade_and_purge_leave_a_clean_root(
    debs: Path, debian_root: Path, tmp_path: Path
) -> None:
    root = debian_root
    build(tmp_path, "--arch", "amd64", "--version", UPGRADE)
    before = file_list(root, VOLATILE)
    install(root, debs, VERSION)

    assert VERSION in in_root(root, "novacron-controller --version")
    checked = in_root(root, "novacron-agent config check /etc/novacron/agent.yaml")
    assert "state_dir" in checked
    imported = in_root(root, "/opt/novacron-edge/bin/python -c 'import grpc, libvirt, "
                       "cryptography, numpy, yaml, psutil; print(libvirt.__file__)'")  # fmt: skip
    assert imported.startswith("/usr/lib/python3/dist-packages/")  # Debian's python3-libvirt
    # every entry point's module tree imports: nothing it needs was left out of the venv
    in_root(root, "/opt/novacron-edge/bin/python -c 'import controller.main, controller.server, "
            "agent.main, agent.images.cli, cli.main'")  # fmt: skip
    assert VERSION in in_root(root, "novacron --version")
    user = in_root(root, "getent passwd novacron").strip().split(":")
    assert user[5:] == ["/var/lib/novacron", "/usr/sbin/nologin"], user
    for daemon in ("agent", "controller"):
        conffiles = in_root(root, f"dpkg-query -W -f='${{Conffiles}}' novacron-{daemon}")
        assert f"/etc/novacron/{daemon}.yaml" in conffiles
        assert (root / f"lib/systemd/system/novacron-{daemon}.service").is_file()
        wants = root / f"etc/systemd/system/multi-user.target.wants/novacron-{daemon}.service"
        assert wants.is_symlink(), f"novacron-{daemon} is not enabled"
        enabled = in_root(root, f"systemctl --root=/ is-enabled novacron-{daemon}.service")
        assert enabled.strip() == "enabled"
    assert (root / "etc/novacron/agent.yaml").stat().st_mode & 0o777 == 0o600
    # the units as installed, with the packaging drop-in, against the root's own systemd
    units = "novacron-agent.service novacron-controller.service"
    in_root(root, f"systemd-analyze verify {units}")
    dropin = root / "lib/systemd/system/novacron-agent.service.d/10-configured.conf"
    assert "ExecCondition=/opt/novacron-edge/libexec/novacron-configured agent" in (
        dropin.read_text()
    )

    # enabled, yet not started until configured: the units' ExecCondition= says not yet, why,
    # and fails (255) on a broken file instead of skipping it
    code, said = configured(root, "agent", "/etc/novacron/agent.yaml")
    assert code == 1 and "join_token" in said, said
    code, said = configured(root, "controller", "/etc/novacron/controller.yaml")
    assert code == 1 and "novacron-controller init" in said, said
    (root / "tmp/broken.yaml").write_text("agent: [not, a, mapping]\n")
    assert configured(root, "agent", "/tmp/broken.yaml")[0] == 255
    in_root(root, "novacron-controller init --state-dir /var/lib/novacron/controller "
            "--advertise-address 127.0.0.1")  # fmt: skip
    assert configured(root, "controller", "/etc/novacron/controller.yaml")[0] == 0
    told = controller_serves(root, tmp_path / "controller.log")
    assert any(line.startswith("STATUS=") for m in told for line in m.split("\n")), told

    # running the commands wrote nothing dpkg does not know about (no __pycache__ in /opt)
    shipped = set(in_root(root, "dpkg -L " + " ".join(PACKAGES)).split())
    present = set(in_root(root, "find /opt/novacron-edge").split())
    assert present <= shipped, f"not from a package: {sorted(present - shipped)[:5]}"

    # upgrade: the administrator's edit of a conffile and the controller's CA survive
    with (root / "etc/novacron/agent.yaml").open("a") as f:
        f.write("# edited by the administrator\n")
    install(root, tmp_path, UPGRADE)
    versions = in_root(root, "dpkg-query -W -f='${Version} ' " + " ".join(PACKAGES)).split()
    assert versions == [UPGRADE] * 3
    assert "edited by the administrator" in (root / "etc/novacron/agent.yaml").read_text()
    assert (root / "var/lib/novacron/controller/pki/ca.crt").is_file()
    assert VERSION in in_root(root, "novacron-controller --version")

    in_root(root, "apt-get purge -y -q " + " ".join(PACKAGES))
    assert in_root(root, "getent passwd novacron || echo gone").strip() == "gone"
    assert in_root(root, "getent group novacron || echo gone").strip() == "gone"
    after = file_list(root, VOLATILE) - ACCOUNT_BACKUPS
    assert after - before == set(), f"left behind: {sorted(after - before)}"
    removed = before - ACCOUNT_BACKUPS - after
    assert removed == set(), f"removed: {sorted(removed)}"
    status = in_root(root, "dpkg-query -W -f='${db:Status-Abbrev}${Package}\\n' 'novacron*' "
                     "2>/dev/null || true")  # fmt: skip
    assert "novacron" not in status, status


def test_build_refuses_a_version_dpkg_would_not_take(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "packaging/build_deb.py"), "--out", str(tmp_path),
         "--version", "v1 beta"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "'v1 beta' is not a Debian version" in proc.stderr
    assert not list(tmp_path.iterdir())
