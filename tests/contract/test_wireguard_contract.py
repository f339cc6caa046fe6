"""The WireGuard driver contract, on real wireguard-go in network namespaces made here.

Each node is a helper process that entered its own namespace (as the agent runs inside its
site's netns in the lab) and drives a UserspaceWireGuard there; the nodes share an underlay
bridge in a hub namespace and must pass real traffic over the overlay. Everything created here
(namespaces, wireguard-go processes, UAPI sockets) is removed in the fixture, even on failure.

The kernel driver does not exist yet (no module on this host), so only "userspace" runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from agent.wireguard.base import (
    Endpoint,
    InterfaceConfig,
    PeerConfig,
    PrivateKey,
    PublicKey,
    WireGuardDriver,
    interface_name,
    parse_network,
)
from agent.wireguard.kernel import kernel_wireguard_available
from agent.wireguard.keys import public_key_of
from agent.wireguard.uapi import socket_path
from agent.wireguard.userspace import UserspaceWireGuard
from shared.errors import AlreadyExists, InvalidArgument, NotFound
from tests.conftest import require_backend, wait_for

CLONE_NEWNET = 0x40000000
CALL_TIMEOUT_S = 30.0
PING_TIMEOUT_S = 10.0
UNDERLAY = "192.168.213.{}"
OVERLAY = "10.213.0.{}"
FIGURES: dict[str, float] = {}


def backend_problem() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("wireguard-go", "wg", "ip", "ping"):
        if shutil.which(tool) is None:
            return (
                f"{tool} not installed (Debian: wireguard-go wireguard-tools iproute2 iputils-ping)"
            )
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun missing"
    return ""


# --- the helper process: one per node, inside its namespace ------------------------------------


def _enter_netns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def _ping_series_stats(out: str) -> dict[str, float]:
    """`ping -D` output -> replies, pings lost between the first and last reply (so the one
    in flight at SIGINT does not count), and the longest silence between replies."""
    replies = [
        (float(ts), int(seq))
        for ts, seq in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)", out, re.M)
    ]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(replies)]
    span = replies[-1][1] - replies[0][1] + 1 if replies else 0
    return {
        "replies": len(replies),
        "lost": span - len({seq for _, seq in replies}),
        "max_gap_s": max(gaps, default=0.0),
    }


def _node_main(netns: str, name: str, address: str, state_dir: str, conn: Connection) -> None:
    _enter_netns(netns)
    driver = UserspaceWireGuard(
        InterfaceConfig(name, (ipaddress.ip_interface(address),)), Path(state_dir)
    )
    series: subprocess.Popen[str] | None = None
    series_out = Path(state_dir) / "ping-series.out"
    try:
        while True:
            try:
                op, args, kwargs = conn.recv()
            except EOFError:
                break
            try:
                result: Any = None
                if op == "close":
                    conn.send(("ok", None))
                    break
                if op == "attr":
                    result = getattr(driver, args[0])
                elif op == "ping":
                    result = (
                        subprocess.run(
                            ["ping", "-n", "-q", "-c", "1", "-W", "1", args[0]],
                            capture_output=True,
                            check=False,
                        ).returncode
                        == 0
                    )
                elif op == "ping_series_start":
                    with open(series_out, "w") as out:
                        series = subprocess.Popen(
                            ["ping", "-n", "-D", "-i", "0.01", "-W", "1", args[0]],
                            stdout=out,
                            text=True,
                        )
                elif op == "ping_series_replies":
                    result = _ping_series_stats(series_out.read_text())["replies"]
                elif op == "ping_series_stop":
                    assert series is not None
                    series.send_signal(signal.SIGINT)
                    series.wait(timeout=10)
                    series = None
                    result = _ping_series_stats(series_out.read_text())
                elif op == "kernel_probe":
                    result = kernel_wireguard_available()
                elif op == "sh":
                    result = subprocess.run(args, capture_output=True, text=True, check=False)
                else:
                    result = getattr(driver, op)(*args, **kwargs)
                conn.send(("ok", result))
            except Exception as exc:
                conn.send(("err", exc))
    finally:
        if series is not None:
            series.kill()
            series.wait()
        driver.close()


@dataclass
class Node:
    """A driver in a namespace, called from the test process."""

    index: int
    netns: str
    ifname: str
    state_dir: Path
    proc: multiprocessing.process.BaseProcess
    conn: Connection

    @property
    def underlay(self) -> str:
        return UNDERLAY.format(self.index)

    @property
    def overlay(self) -> str:
        return OVERLAY.format(self.index)

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        self.conn.send((op, args, kwargs))
        if not self.conn.poll(CALL_TIMEOUT_S):
            raise TimeoutError(f"node {self.index}: {op} took over {CALL_TIMEOUT_S}s")
        status, value = self.conn.recv()
        if status == "err":
            raise value
        return value

    def attr(self, name: str) -> Any:
        return self.call("attr", name)

    def ping(self, ip: str) -> bool:
        return bool(self.call("ping", ip))

    def endpoint(self, address: str | None = None) -> Endpoint:
        return Endpoint(ipaddress.ip_address(address or self.underlay), self.attr("listen_port"))

    def peer_config(self, keepalive: int = 0, address: str | None = None) -> PeerConfig:
        return PeerConfig(
            public_key=self.attr("public_key"),
            allowed_ips=(parse_network(f"{self.overlay}/32"),),
            endpoint=self.endpoint(address),
            persistent_keepalive_s=keepalive,
        )

    def ip(self, *args: str) -> str:
        done = self.call("sh", "ip", *args)
        assert done.returncode == 0, done.stderr
        return str(done.stdout)


@dataclass
class Mesh:
    token: str
    hub: str
    nodes: list[Node] = field(default_factory=list)


def _netns_inode(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/run/netns/{name}")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _pids_in_netns(inodes: set[tuple[int, int]]) -> list[int]:
    """wireguard-go processes living in our namespaces (started by our drivers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "wireguard-go":
                    continue
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in inodes:
            found.append(int(entry))
    return found


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    """Three nodes (1, 2, 3) on one underlay bridge; drivers created but not up."""
    problem = backend_problem()
    require_backend(not problem, problem)
    token = secrets.token_hex(3)
    m = Mesh(token=token, hub=f"ncwgt-{token}-hub")
    names = [m.hub]
    ctx = multiprocessing.get_context("spawn")
    try:
        _run("ip", "netns", "add", m.hub)
        _run("ip", "-n", m.hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", m.hub, "link", "set", "br0", "up")
        for i in (1, 2, 3):
            ns = f"ncwgt-{token}-{i}"
            names.append(ns)
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            hub_end = f"v{i}"
            _run(
                "ip", "-n", m.hub, "link", "add", hub_end, "type", "veth",
                "peer", "name", "u0", "netns", ns,
            )  # fmt: skip
            _run("ip", "-n", m.hub, "link", "set", hub_end, "master", "br0", "up")
            _run("ip", "-n", ns, "address", "add", f"{UNDERLAY.format(i)}/24", "dev", "u0")
            _run("ip", "-n", ns, "link", "set", "u0", "up")
            state = tmp_path / f"node{i}"
            state.mkdir()
            parent, child = ctx.Pipe()
            ifname = interface_name(f"wgtest-{token}-{i}")
            proc = ctx.Process(
                target=_node_main,
                args=(f"/run/netns/{ns}", ifname, f"{OVERLAY.format(i)}/24", str(state), child),
                daemon=True,
            )
            proc.start()
            m.nodes.append(Node(i, ns, ifname, state, proc, parent))
        yield m
    finally:
        for node in m.nodes:
            with contextlib.suppress(Exception):
                node.conn.send(("close", (), {}))
            node.proc.join(timeout=15)
            if node.proc.is_alive():
                node.proc.kill()
                node.proc.join(timeout=5)
        inodes = {ino for ino in (_netns_inode(n) for n in names) if ino is not None}
        for pid in _pids_in_netns(inodes):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for node in m.nodes:
            with contextlib.suppress(FileNotFoundError):
                socket_path(node.ifname).unlink()
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def connect(a: Node, b: Node, keepalive: int = 0) -> None:
    a.call("add_peer", b.peer_config(keepalive))
    b.call("add_peer", a.peer_config(keepalive))


def wait_ping(src: Node, dst: Node, timeout_s: float = PING_TIMEOUT_S) -> float:
    """Seconds until src reaches dst over the overlay."""
    start = time.monotonic()
    wait_for(lambda: src.ping(dst.overlay), timeout_s, f"ping {src.overlay} -> {dst.overlay}")
    return time.monotonic() - start


def series_replies_at_least(node: Node, count: int) -> None:
    wait_for(
        lambda: node.call("ping_series_replies") >= count, PING_TIMEOUT_S, f"{count} ping replies"
    )


def up_all(mesh: Mesh) -> None:
    for node in mesh.nodes:
        node.call("up")


def record(name: str, seconds: float) -> None:
    FIGURES[name] = seconds
    print(f"\nFIGURE {name}: {seconds * 1000:.1f} ms")


# --- the contract ------------------------------------------------------------------------------


def test_userspace_driver_satisfies_the_protocol(tmp_path: Path) -> None:
    driver: WireGuardDriver = UserspaceWireGuard(
        InterfaceConfig("ncwg-typecheck", (ipaddress.ip_interface("10.0.0.1/24"),)), tmp_path
    )
    assert driver.name == "ncwg-typecheck"


def test_up_creates_an_addressed_link_and_keeps_the_key_private(mesh: Mesh) -> None:
    a = mesh.nodes[0]
    assert a.attr("name") == a.ifname  # the helper process is up: time only the driver
    start = time.monotonic()
    a.call("up")
    record("tunnel_up", time.monotonic() - start)
    link = a.ip("-o", "link", "show", "dev", a.ifname)
    assert ",UP" in link or "<UP" in link or "UP," in link, link
    assert f"{a.overlay}/24" in a.ip("-o", "address", "show", "dev", a.ifname)
    assert socket_path(a.ifname).is_socket()
    assert a.attr("listen_port") > 0
    status = a.call("status")
    assert status.has_private_key and status.peers == ()
    key_file = a.state_dir / "wireguard" / f"{a.ifname}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    private = PrivateKey.from_base64(key_file.read_text())
    assert public_key_of(private) == a.attr("public_key")
    a.call("up")  # idempotent
    assert a.attr("restarts") == 0


def test_add_peer_then_traffic_flows(mesh: Mesh) -> None:
    a, b, _ = mesh.nodes
    up_all(mesh)
    start = time.monotonic()
    connect(a, b)
    assert wait_ping(a, b) < PING_TIMEOUT_S
    record("add_peer_to_first_ping", time.monotonic() - start)
    assert b.ping(a.overlay)


def test_third_peer_does_not_disturb_the_first(mesh: Mesh) -> None:
    a, b, c = mesh.nodes
    up_all(mesh)
    connect(a, b)
    wait_ping(a, b)
    before = a.call("status").peer(b.attr("public_key"))
    assert before.last_handshake is not None
    b.call("ping_series_start", a.overlay)
    series_replies_at_least(b, 5)
    during = b.call("ping_series_replies")
    connect(a, c)
    wait_ping(a, c)
    series_replies_at_least(b, during + 5)
    series = b.call("ping_series_stop")
    after = a.call("status").peer(b.attr("public_key"))
    assert after.last_handshake == before.last_handshake  # same session, no new handshake
    assert after.rx_bytes > before.rx_bytes
    assert series["lost"] == 0 and series["max_gap_s"] < 0.5, series
    assert a.ping(b.overlay)


def test_remove_peer_leaves_the_other_working(mesh: Mesh) -> None:
    a, b, c = mesh.nodes
    up_all(mesh)
    connect(a, b)
    connect(a, c)
    wait_ping(a, b)
    wait_ping(a, c)
    before = a.call("status").peer(b.attr("public_key"))
    a.call("remove_peer", c.attr("public_key"))
    assert [p.public_key for p in a.call("peers")] == [b.attr("public_key")]
    assert a.call("status").peer(c.attr("public_key")) is None
    assert not a.ping(c.overlay)
    assert a.ping(b.overlay)
    after = a.call("status").peer(b.attr("public_key"))
    assert after.last_handshake == before.last_handshake


def test_roam_to_a_new_endpoint(mesh: Mesh) -> None:
    a, b, _ = mesh.nodes
    up_all(mesh)
    connect(a, b)
    wait_ping(a, b)
    new_addr = UNDERLAY.format(12)
    # delete first: removing a primary address also removes its secondaries
    b.ip("address", "del", f"{b.underlay}/24", "dev", "u0")
    b.ip("address", "add", f"{new_addr}/24", "dev", "u0")
    b_key = b.attr("public_key")
    changed = a.call("update_peer", b_key, endpoint=b.endpoint(new_addr))
    assert str(changed.endpoint.host) == new_addr
    start = time.monotonic()
    wait_ping(a, b)
    record("roam_to_first_ping", time.monotonic() - start)
    assert str(a.call("status").peer(b_key).endpoint.host) == new_addr


def test_update_allowed_ips_routes_a_new_prefix(mesh: Mesh) -> None:
    a, b, _ = mesh.nodes
    up_all(mesh)
    connect(a, b)
    wait_ping(a, b)
    extra = "10.214.0.1"
    b.ip("address", "add", f"{extra}/32", "dev", b.ifname)
    a.ip("route", "add", "10.214.0.0/24", "dev", a.ifname)
    assert not a.ping(extra)  # not b's allowed IP yet: wireguard drops it
    b_key = b.attr("public_key")
    nets = (parse_network(f"{b.overlay}/32"), parse_network("10.214.0.0/24"))
    a.call("update_peer", b_key, allowed_ips=nets)
    wait_for(lambda: a.ping(extra), PING_TIMEOUT_S, "ping over the new allowed IP")
    assert set(a.call("status").peer(b_key).allowed_ips) == set(nets)


def test_rotate_private_key_resumes_traffic(mesh: Mesh) -> None:
    a, b, _ = mesh.nodes
    up_all(mesh)
    connect(a, b)
    wait_ping(a, b)
    old = a.attr("public_key")
    b.call("ping_series_start", a.overlay)
    series_replies_at_least(b, 5)
    before = b.call("ping_series_replies")
    new = a.call("rotate_private_key")
    assert new != old and a.attr("public_key") == new
    # what the controller does: hand the new key to the peer (same routes and endpoint)
    b.call("remove_peer", old)
    b.call("add_peer", a.peer_config())
    series_replies_at_least(b, before + 5)  # traffic resumed
    series = b.call("ping_series_stop")
    record("rotation_gap", series["max_gap_s"])
    print(f"rotation: {series['lost']} of 10 ms-spaced pings lost")
    assert series["max_gap_s"] < 5.0, series
    key_file = a.state_dir / "wireguard" / f"{a.ifname}.key"
    assert public_key_of(PrivateKey.from_base64(key_file.read_text())) == new
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_stats_are_real(mesh: Mesh) -> None:
    a, b, c = mesh.nodes
    up_all(mesh)
    connect(a, b)
    a.call("add_peer", c.peer_config())  # configured, never contacted
    wait_ping(a, b)
    b_key = b.attr("public_key")
    before = a.call("status").peer(b_key)
    for _ in range(20):
        assert a.ping(b.overlay)
    after = a.call("status").peer(b_key)
    age = after.handshake_age_s()
    assert age is not None and age < 10 and after.is_up()
    assert after.tx_bytes - before.tx_bytes >= 20 * 84  # 20 ICMP packets, at least
    assert after.rx_bytes - before.rx_bytes >= 20 * 84
    idle = a.call("status").peer(c.attr("public_key"))
    assert idle.last_handshake is None and idle.rx_bytes == 0 and not idle.is_up()


def test_killed_wireguard_go_is_restarted_with_its_config(mesh: Mesh) -> None:
    a, b, _ = mesh.nodes
    up_all(mesh)
    connect(a, b, keepalive=25)
    wait_ping(a, b)
    old_pid, port, key = a.attr("pid"), a.attr("listen_port"), a.attr("public_key")
    os.kill(old_pid, signal.SIGKILL)
    start = time.monotonic()
    wait_for(
        lambda: a.attr("restarts") == 1 and a.attr("pid") not in (None, old_pid),
        10,
        "wireguard-go restarted by the supervisor",
    )
    wait_ping(a, b)
    record("restart_to_first_ping", time.monotonic() - start)
    assert (a.attr("listen_port"), a.attr("public_key")) == (port, key)
    peer = a.call("status").peer(b.attr("public_key"))
    assert peer is not None and peer.persistent_keepalive_s == 25
    assert str(peer.endpoint) == str(b.endpoint())
    assert f"{a.overlay}/24" in a.ip("-o", "address", "show", "dev", a.ifname)


def test_bad_input_is_rejected_and_nothing_is_half_applied(mesh: Mesh) -> None:
    a, b, c = mesh.nodes
    up_all(mesh)
    connect(a, b)
    b_key = b.attr("public_key")
    good = PublicKey.from_base64(b_key.to_base64())
    with pytest.raises(InvalidArgument):
        PublicKey.from_base64("not-a-key")
    with pytest.raises(InvalidArgument):
        PublicKey.from_base64("AAAA")  # valid base64, wrong length
    with pytest.raises(InvalidArgument):
        PeerConfig.parse(str(good), ["10.9.0.1/32"], endpoint="192.168.213.2")  # no port
    with pytest.raises(InvalidArgument):
        PeerConfig.parse(str(good), ["10.9.0.1/32"], endpoint="fe80::1:51820")  # no brackets
    with pytest.raises(InvalidArgument):
        PeerConfig.parse(str(good), ["10.9.0.1/24"])  # host bits set
    with pytest.raises(InvalidArgument):
        PeerConfig.parse(str(good), [], persistent_keepalive_s=-1)

    before_status, before_peers = a.call("status"), a.call("peers")
    with pytest.raises(NotFound):
        a.call("remove_peer", c.attr("public_key"))
    with pytest.raises(NotFound):
        a.call("update_peer", c.attr("public_key"), endpoint=c.endpoint())
    with pytest.raises(AlreadyExists):
        a.call("add_peer", b.peer_config())
    with pytest.raises(InvalidArgument):
        a.call("add_peer", a.peer_config())  # our own key
    with pytest.raises(InvalidArgument):  # one bad entry: none of the set is applied
        a.call("set_peers", [c.peer_config(), a.peer_config()])
    with pytest.raises(InvalidArgument):
        a.call("set_peers", [c.peer_config(), c.peer_config()])
    after_status = a.call("status")
    assert a.call("peers") == before_peers
    assert [(p.public_key, p.allowed_ips, p.endpoint) for p in after_status.peers] == [
        (p.public_key, p.allowed_ips, p.endpoint) for p in before_status.peers
    ]
    wait_ping(a, b)  # still working


def test_set_peers_converges_incrementally(mesh: Mesh) -> None:
    a, b, c = mesh.nodes
    up_all(mesh)
    b.call("add_peer", a.peer_config())
    c.call("add_peer", a.peer_config())
    changes = a.call("set_peers", [b.peer_config()])
    assert changes.added == (b.attr("public_key"),) and not changes.removed
    wait_ping(a, b)
    hs = a.call("status").peer(b.attr("public_key")).last_handshake
    changes = a.call("set_peers", [b.peer_config(), c.peer_config(keepalive=5)])
    assert changes.added == (c.attr("public_key"),) and not changes.updated
    wait_ping(a, c)
    assert a.call("set_peers", [b.peer_config(), c.peer_config(keepalive=5)]).empty
    changes = a.call("set_peers", [c.peer_config(keepalive=7)])
    assert changes.removed == (b.attr("public_key"),)
    assert changes.updated == (c.attr("public_key"),)
    assert a.call("status").peer(c.attr("public_key")).persistent_keepalive_s == 7
    assert hs is not None


def test_host_unique_names_and_kernel_probe(mesh: Mesh) -> None:
    names = {interface_name(f"site-{i}") for i in range(1000)}
    assert len(names) == 1000 and all(len(n) <= 15 for n in names)
    a = mesh.nodes[0]
    found = a.call("kernel_probe")  # inside our namespace, never on the host
    assert isinstance(found, bool)
    assert "ncwgprobe" not in a.ip("-o", "link")
