"""Latency to mesh peers, measured over the tunnel with ICMP echo.

The peer's kernel answers (no process of ours on the far end to add scheduling delay), and
replies are timed with the kernel's receive timestamp (SO_TIMESTAMPNS), so the figure is the
path's RTT, not our event loop's. Needs CAP_NET_RAW (the agent runs as root for libvirt).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

import structlog

from agent.latency import LatencyWindow, Prober
from agent.mesh import MeshManager
from shared.pb.v1 import types_pb2 as pb

log = structlog.get_logger(__name__)

PROBE_TIMEOUT_S = 3.0
_ECHO_REQUEST, _ECHO_REPLY = 8, 0
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_PAYLOAD = b"novacron-probe"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", _ECHO_REQUEST, 0, 0, ident, seq & 0xFFFF)
    csum = _checksum(header + _PAYLOAD)
    return struct.pack("!BBHHH", _ECHO_REQUEST, 0, csum, ident, seq & 0xFFFF) + _PAYLOAD


def parse_reply(packet: bytes) -> tuple[int, int] | None:
    """(ident, seq) of an ICMP echo reply in an IPv4 packet, else None."""
    if len(packet) < 20:
        return None
    offset = (packet[0] & 0x0F) * 4
    if len(packet) < offset + 8:
        return None
    kind, _code, _csum, ident, seq = struct.unpack("!BBHHH", packet[offset : offset + 8])
    return (ident, seq) if kind == _ECHO_REPLY else None


class PeerProber:
    """One window per peer (keyed by node id); peers come and go with the mesh config."""

    def __init__(self) -> None:
        self._probers: dict[str, Prober] = {}
        self._by_address: dict[str, str] = {}
        self._sock: socket.socket | None = None
        self._ident = os.getpid() & 0xFFFF
        self._loop: asyncio.AbstractEventLoop | None = None
        self._quiet_until = 0.0

    async def start(self) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except PermissionError:
            log.warning("peer latency probes disabled: raw ICMP needs CAP_NET_RAW")
            return
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._receive)

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def set_peers(self, peers: dict[str, str]) -> None:
        """node id -> overlay address of the peers to probe: those with an established
        tunnel (before the first handshake, probes would time the handshake, not the path).
        Windows of peers that stay are kept."""
        self._by_address = {address: node_id for node_id, address in peers.items()}
        for node_id in list(self._probers):
            if node_id not in peers:
                del self._probers[node_id]
        for node_id in peers:
            if node_id not in self._probers:
                # wall clock: replies are timed by the kernel's (realtime) receive stamp
                self._probers[node_id] = Prober(LatencyWindow(node_id), PROBE_TIMEOUT_S, time.time)

    def hold(self, seconds: float) -> None:
        """Send no probes for a while (after a key rotation; see the session)."""
        self._quiet_until = time.monotonic() + seconds

    def probe_all(self) -> None:
        if self._sock is None or time.monotonic() < self._quiet_until:
            return
        for address, node_id in self._by_address.items():
            prober = self._probers[node_id]
            seq = prober.next_probe()
            try:
                self._sock.sendto(echo_request(self._ident, seq), (address, 0))
            except OSError as exc:  # no route yet: not a loss of the path
                prober.cancel(seq)
                log.debug("probe not sent", peer=node_id, error=str(exc))

    def _receive(self) -> None:
        assert self._sock is not None
        while True:
            try:
                packet, ancillary, _flags, addr = self._sock.recvmsg(1500, 64)
            except (BlockingIOError, InterruptedError):
                return
            parsed = parse_reply(packet)
            node_id = self._by_address.get(addr[0])
            if parsed is None or node_id is None or parsed[0] != self._ident:
                continue
            prober = self._probers[node_id]
            seq = prober.in_flight(parsed[1])
            if seq is not None:
                prober.answered(seq, at=_kernel_time(ancillary))

    def windows(self) -> list[LatencyWindow]:
        return [p.window for p in self._probers.values()]


def _kernel_time(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanos = struct.unpack("qq", data[:16])
            return float(seconds) + float(nanos) / 1e9
    return None


def reachable_peers(mesh: MeshManager, status: pb.MeshStatus) -> dict[str, str]:
    """Peers with a live tunnel, by node id -> overlay address (what probes go to)."""
    addresses = {p.node_id: p.address for p in mesh.peers if p.address}
    return {
        p.node_id: addresses[p.node_id] for p in status.peers if p.up and p.node_id in addresses
    }
