"""Real measurements across the emulated WAN: ping RTT, UDP loss and UDP throughput.

Sockets are opened inside a site's network namespace by a short-lived thread that enters it with
setns(2) (a namespace is per thread; the socket stays in it afterwards), so probes need no helper
processes. ping runs through nsenter.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import statistics
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from lab.netns import netns_path, nsenter
from lab.topology import Site

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_UDP_IP_HEADERS = 28  # IPv4 + UDP: what the router's token bucket counts on top of the payload


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run `fn` in a thread that has entered the network namespace `netns`."""
    box: dict[str, T] = {}
    error: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["v"] = fn()
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=run, name=f"netns-{netns}")
    t.start()
    t.join()
    if error:
        raise error[0]
    return box["v"]


def netns_socket(netns: str, kind: socket.SocketKind) -> socket.socket:
    return in_netns(netns, lambda: socket.socket(socket.AF_INET, kind))


# -- expectations from the profiles ------------------------------------------------------------


def expected_rtt_ms(a: Site, b: Site) -> float:
    return 2.0 * (a.wan.delay_ms + b.wan.delay_ms)


def expected_loss_pct(a: Site, b: Site) -> float:
    """One way, a -> b."""
    return 100.0 * (1.0 - (1.0 - a.wan.loss_pct / 100.0) * (1.0 - b.wan.loss_pct / 100.0))


def expected_bandwidth_mbit(a: Site, b: Site) -> float:
    return min(a.wan.bandwidth_mbit, b.wan.bandwidth_mbit)


# -- ping ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PingResult:
    sent: int
    received: int
    min_ms: float
    avg_ms: float
    max_ms: float
    mdev_ms: float
    median_ms: float  # of the replies: what a loaded WAN router's stragglers do not move


_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) received")
_PING_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")
_PING_REPLY = re.compile(r"icmp_seq=\d+ .*time=([\d.]+) ms")


def ping(src: Site, dst: Site, count: int = 40, interval_s: float = 0.05) -> PingResult:
    """ICMP echo from `src`'s namespace to `dst`'s address (what an operator would run)."""
    argv = ["ping", "-n", "-c", str(count), "-i", f"{interval_s:g}", "-W", "2", dst.address]
    done = subprocess.run(
        nsenter(src.netns, argv), capture_output=True, text=True, timeout=count * interval_s + 30
    )
    counts = _PING_COUNTS.search(done.stdout)
    if counts is None:
        raise RuntimeError(f"ping {src.id} -> {dst.id} failed: {done.stdout}{done.stderr}")
    rtt = _PING_RTT.search(done.stdout)
    low, avg, high, mdev = (float(x) for x in rtt.groups()) if rtt else (0.0,) * 4
    replies = [float(m.group(1)) for m in _PING_REPLY.finditer(done.stdout)]
    median = statistics.median(replies) if replies else 0.0
    return PingResult(int(counts.group(1)), int(counts.group(2)), low, avg, high, mdev, median)


# -- UDP: loss and throughput ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UdpResult:
    sent: int
    received: int
    bytes_received: int  # payload
    first_s: float  # arrival times (monotonic) of the first and the last datagram
    last_s: float

    @property
    def loss_pct(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0

    def wire_mbit(self, payload: int) -> float:
        """Throughput at the receiver in IP bytes (what the WAN's bandwidth cap counts)."""
        span = self.last_s - self.first_s
        if self.received < 2 or span <= 0:
            return 0.0
        wire = (self.bytes_received - payload) * (payload + _UDP_IP_HEADERS) / payload
        return wire * 8 / span / 1e6


class Endpoint(Protocol):
    """Where a probe runs: a network namespace and an address in it (a lab Site is one)."""

    @property
    def netns(self) -> str: ...

    @property
    def address(self) -> str: ...


def udp_stream(
    src: Endpoint,
    dst: Endpoint,
    *,
    count: int,
    rate_pps: float,
    payload: int = 100,
    drain_s: float = 1.0,
    port: int = 0,
) -> UdpResult:
    """Send `count` datagrams of `payload` bytes at `rate_pps` from src to dst and count what
    arrives; the receiver stops `drain_s` after the last datagram it saw once sending is done."""
    if payload < 8:
        raise ValueError("payload must hold the 8-byte sequence number")
    rx = netns_socket(dst.netns, socket.SOCK_DGRAM)
    tx = netns_socket(src.netns, socket.SOCK_DGRAM)
    with rx, tx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        rx.bind((dst.address, port))
        rx.settimeout(0.1)
        target = rx.getsockname()
        seen: set[int] = set()
        stats = {"bytes": 0, "first": 0.0, "last": 0.0}
        done = threading.Event()

        def receive() -> None:
            while True:
                try:
                    data = rx.recv(65536)
                except TimeoutError:
                    if done.is_set() and time.monotonic() - max(stats["last"], t_end) > drain_s:
                        return
                    continue
                now = time.monotonic()
                seq = struct.unpack_from("!Q", data)[0]
                if seq not in seen:
                    seen.add(seq)
                    stats["bytes"] += len(data)
                    stats["first"] = stats["first"] or now
                    stats["last"] = now

        t_end = float("inf")
        receiver = threading.Thread(target=receive, name="udp-probe-rx")
        receiver.start()
        try:
            pad = b"\0" * (payload - 8)
            t0 = time.monotonic()
            for seq in range(count):
                delay = t0 + seq / rate_pps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the sender, not synchronisation
                with contextlib.suppress(BlockingIOError):
                    tx.sendto(struct.pack("!Q", seq) + pad, target)
            t_end = time.monotonic()
        finally:
            done.set()
            receiver.join()
    return UdpResult(count, len(seen), int(stats["bytes"]), stats["first"], stats["last"])


def udp_loss(src: Site, dst: Site, count: int = 5000, rate_pps: float = 2000) -> UdpResult:
    """Many small datagrams, well under any bandwidth cap: only the profile's loss drops them."""
    return udp_stream(src, dst, count=count, rate_pps=rate_pps, payload=100)


def udp_bandwidth(
    src: Site,
    dst: Site,
    seconds: float = 3.0,
    offered_factor: float = 2.0,
    payload: int = 8000,
    port: int = 0,
    cap_mbit: float | None = None,
) -> float:
    """Offer `offered_factor` x the expected cap (default: the WAN's) for `seconds` to `port`
    (0 = any); the measured rate is what the path lets through (Mbit/s on the wire)."""
    cap = cap_mbit or expected_bandwidth_mbit(src, dst)
    rate_pps = cap * 1e6 * offered_factor / 8 / (payload + _UDP_IP_HEADERS)
    count = max(10, int(rate_pps * seconds))
    result = udp_stream(src, dst, count=count, rate_pps=rate_pps, payload=payload, port=port)
    return result.wire_mbit(payload)
