"""The ARM64 gateway, proven: the arm64 agent package installed into an arm64 Debian root (run
by qemu-user through binfmt_misc), its agent enrolled with a real controller over mTLS with a
join token and the CA pin, listed by `novacron node list` as aarch64, deploying the aarch64 tiny
guest (qemu-system-aarch64 under the host's libvirtd, reached through a bind-mounted socket:
libvirt's protocol is architecture-neutral) whose console shows it booted; and placement
refusing an x86_64 image on that node, with the reason.

Paths the host libvirtd reads (kernel, overlay, console log) are the agent's paths too: the
gateway's state and images live in one host directory bind-mounted at the same path inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from agent.images.builder import build_tiny_image
from lab.arm64_root import binfmt, build_root, chroot_root, in_root
from lab.errors import LabError
from lab.libvirtd import PrivateLibvirtd
from shared.errors import NovaCronError
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import types_pb2 as pb
from tests.conftest import require_backend
from tests.integration.harness import Cluster, eventually

pytestmark = pytest.mark.qemu
REPO = Path(__file__).resolve().parents[2]
DIST = Path(os.environ.get("NOVACRON_DIST", REPO / "dist"))  # where `make packages` puts them
NOVACRON = REPO / ".venv" / "bin" / "novacron"
NODE = "gw-arm64"
START_S = 180.0  # the agent under qemu-user: Python, grpc and libvirt emulated
BOOT_S = 300.0  # an emulated Cortex-A57 guest


def arm64_debs() -> list[Path]:
    """The arm64 packages the agent needs, fresh from `make packages` (of this checkout: a
    stale dist/ would prove an older agent), unless NOVACRON_DIST names ready ones."""
    if "NOVACRON_DIST" not in os.environ:
        proc = subprocess.run(
            ["make", "-C", str(REPO), "packages"], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"make packages failed: {proc.stderr[-1500:]}"
    debs = sorted(DIST.glob("novacron-edge-common_*_arm64.deb"))
    debs += sorted(DIST.glob("novacron-agent_*_arm64.deb"))
    assert len(debs) == 2, f"expected one edge-common and one agent arm64 .deb in {DIST}: {debs}"
    return debs


@pytest.fixture(scope="module")
def gateway_dir() -> Iterator[Path]:
    """The gateway's state and images, at the same path inside the root and outside."""
    path = Path(tempfile.mkdtemp(prefix="nc-gw-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def arm64_root(
    gateway_dir: Path, private_libvirtd: PrivateLibvirtd
) -> Iterator[tuple[Path, list[Path]]]:
    require_backend(os.geteuid() == 0, "needs root (chroot, binfmt_misc, bind mounts)")
    for tool in ("mmdebstrap", "qemu-system-aarch64", "chroot"):
        require_backend(shutil.which(tool) is not None, f"{tool} not installed")
    debs = arm64_debs()
    try:
        with binfmt():
            t0 = time.monotonic()
            tarball = build_root()
            binds = (gateway_dir, private_libvirtd.socket_path.parent)
            t1 = time.monotonic()
            with chroot_root(tarball, binds) as root:
                t2 = time.monotonic()
                pkgs = root / "tmp" / "debs"
                pkgs.mkdir(parents=True)
                for deb in debs:
                    shutil.copy(deb, pkgs)
                names = [f"/tmp/debs/{d.name}" for d in debs]
                env = {"DEBIAN_FRONTEND": "noninteractive"}
                in_root(root, "apt-get", "install", "-y", "-q", *names, env=env, timeout=900)
                print(
                    f"arm64 root: cached or built {t1 - t0:.1f}s, unpacked and mounted "
                    f"{t2 - t1:.1f}s, packages installed {time.monotonic() - t2:.1f}s"
                )
                yield root, debs
    except LabError as err:
        pytest.fail(f"arm64 root: {err}", pytrace=False)


@pytest.fixture
async def secure_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, secure=True)
    c.heartbeat_interval = 2.0  # an emulated agent: generous, like a slow gateway
    await c.start_controller()
    try:
        yield c
    finally:
        await c.close()


@contextlib.contextmanager
def agent_process(root: Path, config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The packaged agent, running inside the root; stopped by its pid, always."""
    binary = next(
        (p for p in ("usr/bin/novacron-agent", "opt/novacron-edge/bin/novacron-agent")
         if (root / p).exists()),
        None,
    )  # fmt: skip
    assert binary is not None, "the agent package installed no novacron-agent"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["chroot", str(root), f"/{binary}", "--config", str(config), "--log-format", "json"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"},  # nothing of ours
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the agent and nothing else
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


async def cli(cluster: Cluster, *argv: str) -> subprocess.CompletedProcess[str]:
    admin = cluster.pki.directory / "admin"
    env = {
        **os.environ,
        "NOVACRON_CA": str(admin / "ca.crt"),
        "NOVACRON_CERT": str(admin / "client.crt"),
        "NOVACRON_KEY": str(admin / "client.key"),
    }
    cmd = [str(NOVACRON), "--controller", cluster.address, *argv]
    return await asyncio.to_thread(
        subprocess.run, cmd, capture_output=True, text=True, env=env, check=False
    )


async def test_arm64_gateway_enrols_reports_aarch64_and_runs_an_aarch64_guest(
    arm64_root: tuple[Path, list[Path]],
    gateway_dir: Path,
    private_libvirtd: PrivateLibvirtd,
    secure_cluster: Cluster,
) -> None:
    root, debs = arm64_root
    assert {d.name.split("_")[0] for d in debs} >= {"novacron-agent", "novacron-edge-common"}
    cluster = secure_cluster
    machine = in_root(root, "uname", "-m").strip()
    assert machine == "aarch64"  # the root really runs arm64 binaries
    installed = in_root(root, "dpkg-query", "-W", "-f", "${Package} ${Architecture}\\n")
    assert "novacron-agent arm64" in installed, installed

    images = gateway_dir / "images"
    try:
        build_tiny_image(images, "tiny", arch="arm64")
        build_tiny_image(images, "tiny-x86", arch="x86_64")  # on the gateway, for the refusal
    except NovaCronError as err:
        pytest.fail(f"cannot build the guest images: {err}", pytrace=False)

    config = gateway_dir / "agent.yaml"
    agent_cfg = {
        "node_id": NODE,
        "controller": cluster.address,
        "enrol_address": f"127.0.0.1:{cluster.enrol_port}",
        "join_token": await cluster.join_token(NODE),
        "ca_pin": cluster.pki.pin(),
        "libvirt_uri": private_libvirtd.uri,
        "edge_type": "iot",
        "labels": {"site": NODE},
        "state_dir": str(gateway_dir / "state"),
        "images_dir": str(images),
        "metrics_listen": "",
        "heartbeat_interval": "2s",
    }
    config.write_text(yaml.safe_dump({"agent": agent_cfg}))
    config.chmod(0o600)
    log = gateway_dir / "agent.log"

    timings: dict[str, float] = {}
    started = time.monotonic()
    with agent_process(root, config, log) as proc:

        async def listed() -> bool:
            assert proc.poll() is None, f"agent exited {proc.returncode}: {log.read_text()[-2000:]}"
            try:
                node = await cluster.api.GetNode(epb.GetNodeRequest(node_id=NODE))
            except grpc.aio.AioRpcError:
                return False
            return node.condition == pb.NODE_CONDITION_READY

        await eventually(listed, START_S, "the arm64 agent to enrol and be ready", interval=1.0)
        timings["agent ready"] = time.monotonic() - started
        # the agent is an aarch64 program, run by qemu-user (binfmt_misc's interpreter)
        exe = os.readlink(f"/proc/{proc.pid}/exe")
        assert "aarch64" in exe, exe
        assert (gateway_dir / "state" / "pki").is_dir()  # enrolled: its certificate is kept

        listing = await cli(cluster, "node", "list")
        assert listing.returncode == 0, listing.stderr
        row = next(line for line in listing.stdout.splitlines() if NODE in line)
        assert "aarch64" in row.split(), listing.stdout

        deployed = time.monotonic()
        vm = await cluster.api.DeployVM(
            epb.DeployVMRequest(
                spec=pb.VMSpec(name="arm-guest", image="tiny", vcpus=1, memory_mib=256),
                request_id="arm64-1",
            ),
            timeout=BOOT_S,
        )
        try:
            assert vm.state == pb.VM_STATE_RUNNING and vm.node_id == NODE
            console = ""

            async def booted() -> bool:
                nonlocal console
                reply = await cluster.api.GetVMConsole(
                    epb.GetVMConsoleRequest(name_or_id="arm-guest")
                )
                console = reply.text
                return "NovaCron guest arm-guest booted" in console

            await eventually(booted, BOOT_S, "the aarch64 guest's console", interval=1.0)
            timings["deploy to console line"] = time.monotonic() - deployed
            xml = await asyncio.to_thread(_domain_xml, private_libvirtd, "nc-arm-guest")
            assert "<emulator>/usr/bin/qemu-system-aarch64</emulator>" in xml, xml
            assert "arch='aarch64'" in xml and "machine='virt" in xml, xml
            first = console.split("NovaCron guest arm-guest booted", 1)[1].splitlines()[0]
            assert "-arm64" in first, first  # Debian's arm64 kernel ran it

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await cluster.api.DeployVM(
                    epb.DeployVMRequest(
                        spec=pb.VMSpec(name="x86-guest", image="tiny-x86", vcpus=1, memory_mib=128),
                        request_id="x86-1",
                    )
                )
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            reason = refused.value.details() or ""
            assert "with image 'tiny-x86' only for x86_64" in reason, reason
            explain = await cli(
                cluster, "placement", "explain", "--image", "tiny-x86", "--vcpus", "1",
                "--memory-mib", "128",
            )  # fmt: skip
            assert "image 'tiny-x86' is x86_64, node is aarch64" in explain.stdout, (
                explain.stdout + explain.stderr
            )
            print(f"node list:\n{listing.stdout}\nrefusal: {reason}\nexplain:\n{explain.stdout}")
            print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        finally:
            await cluster.api.DeleteVM(epb.DeleteVMRequest(name_or_id="arm-guest"), timeout=120)
        names = await asyncio.to_thread(_domains, private_libvirtd)
        assert "nc-x86-guest" not in names and "nc-arm-guest" not in names, names


def _domain_xml(daemon: PrivateLibvirtd, name: str) -> str:
    import libvirt

    conn = libvirt.open(daemon.uri)
    try:
        return str(conn.lookupByName(name).XMLDesc(0))
    finally:
        conn.close()


def _domains(daemon: PrivateLibvirtd) -> list[str]:
    import libvirt

    conn = libvirt.open(daemon.uri)
    try:
        return [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()
