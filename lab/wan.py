"""The emulated WAN: a userspace IP router between the lab's network namespaces.

`tc netem` is missing on these hosts, so delay, jitter and loss are applied here. The router owns
one TUN device per namespace (created in the router's own namespace, then moved into the site's:
the file descriptor keeps working), reads IP packets from each, and writes each packet to the TUN of
the namespace that owns its destination address, after:

- loss: dropped with probability 1 - (1 - loss_src)(1 - loss_dst);
- bandwidth: a token bucket per direction (src -> dst) at min(bandwidth_src, bandwidth_dst), with a
  bounded backlog (drop-tail once `queue_ms` worth of bytes wait);
- delay: delay_src + delay_dst, plus jitter: each end adds a uniform sample in +-jitter_ms. Like a
  real single path, the router never reorders a direction: a packet is delivered no earlier than
  the previous one of the same direction.

Run as `python -m lab.wan --config FILE` (JSON, written by the lab). The event loop uses
select(2), whose timeout has microsecond resolution (epoll rounds up to whole milliseconds, which
would add up to 1 ms per hop).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import json
import os
import random
import selectors
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import structlog

from shared.aio import event_within
from shared.logging import configure_logging

log = structlog.get_logger(__name__)

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
PR_SET_TIMERSLACK = 29
LATENESS_GAIN = 0.05  # integral control of the timer lateness towards 0
LATENESS_CAP = 0.001
READ_BATCH = 64  # packets read per wake-up and device, so one busy site cannot starve the rest


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One namespace attached to the WAN."""

    site: str
    netns: str
    ifname: str
    address: str
    prefixlen: int
    delay_ms: float
    jitter_ms: float
    loss_pct: float
    bandwidth_mbit: float


@dataclass(frozen=True, slots=True)
class RouterConfig:
    endpoints: tuple[Endpoint, ...]
    mtu: int = 9000
    queue_ms: float = 50.0
    ready_file: str = ""
    stats_file: str = ""
    seed: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> RouterConfig:
        data = json.loads(text)
        data["endpoints"] = tuple(Endpoint(**e) for e in data["endpoints"])
        return cls(**data)


class TokenBucket:
    """Bandwidth of one direction: when may a packet of `size` bytes leave, or drop it.

    Tokens (bytes) refill at `rate` up to `burst`; a packet takes its size in tokens and may drive
    the count negative, which is the backlog waiting to be sent: it leaves once the debt is repaid.
    A packet that would push the backlog beyond `queue` bytes is dropped (drop-tail).
    """

    def __init__(self, rate_bytes_s: float, burst: float, queue: float, now: float) -> None:
        if rate_bytes_s <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate_bytes_s
        self.burst = burst
        self.queue = queue
        self.tokens = burst
        self.updated = now

    def admit(self, size: int, now: float) -> float | None:
        """The departure time of the packet, or None if the queue is full."""
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        backlog = max(0.0, -self.tokens)
        if self.tokens < size and backlog + size > self.queue:
            return None
        self.tokens -= size
        if self.tokens >= 0:
            return now
        return now + (-self.tokens) / self.rate


@dataclass
class LinkStats:
    forwarded: int = 0
    bytes: int = 0
    lost: int = 0
    queue_drops: int = 0


@dataclass
class Link:
    """One direction between two sites: loss, bandwidth, delay and jitter of both ends."""

    src: Endpoint
    dst: Endpoint
    bucket: TokenBucket
    rng: random.Random
    last_delivery: float = 0.0
    stats: LinkStats = field(default_factory=LinkStats)

    @property
    def loss_probability(self) -> float:
        return 1.0 - (1.0 - self.src.loss_pct / 100.0) * (1.0 - self.dst.loss_pct / 100.0)

    @property
    def base_delay_s(self) -> float:
        return (self.src.delay_ms + self.dst.delay_ms) / 1000.0

    def jitter_s(self) -> float:
        j = self.rng.uniform(-self.src.jitter_ms, self.src.jitter_ms) if self.src.jitter_ms else 0.0
        if self.dst.jitter_ms:
            j += self.rng.uniform(-self.dst.jitter_ms, self.dst.jitter_ms)
        return j / 1000.0

    def schedule(self, size: int, now: float) -> float | None:
        """When to deliver a packet of `size` bytes arriving `now`, or None to drop it."""
        if self.rng.random() < self.loss_probability:
            self.stats.lost += 1
            return None
        departure = self.bucket.admit(size, now)
        if departure is None:
            self.stats.queue_drops += 1
            return None
        deliver = max(departure + max(0.0, self.base_delay_s + self.jitter_s()), self.last_delivery)
        self.last_delivery = deliver
        self.stats.forwarded += 1
        self.stats.bytes += size
        return deliver


def make_link(
    src: Endpoint, dst: Endpoint, mtu: int, queue_ms: float, rng: random.Random, now: float
) -> Link:
    rate = min(src.bandwidth_mbit, dst.bandwidth_mbit) * 1e6 / 8
    burst = max(2.0 * mtu, rate * 0.002)  # 2 ms of line rate: smooth, yet one jumbo frame fits
    queue = max(4.0 * mtu, rate * queue_ms / 1000.0)
    return Link(src, dst, TokenBucket(rate, burst, queue, now), rng)


def parse_dst(packet: bytes) -> bytes | None:
    """IPv4 destination address of a packet (4 raw bytes), None for anything else."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    return packet[16:20]


# -- the process ------------------------------------------------------------------------------


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def attach(ep: Endpoint, mtu: int) -> int:
    """Create the endpoint's TUN, move it into its namespace and address it."""
    fd = open_tun(ep.ifname)
    _ip("link", "set", ep.ifname, "netns", ep.netns)
    _ip("-n", ep.netns, "link", "set", ep.ifname, "mtu", str(mtu), "addrgenmode", "none")
    _ip("-n", ep.netns, "addr", "add", f"{ep.address}/{ep.prefixlen}", "dev", ep.ifname)
    _ip("-n", ep.netns, "link", "set", ep.ifname, "up")
    return fd


class Router:
    """Moves packets between the TUN devices according to the links' schedules."""

    def __init__(self, config: RouterConfig, fds: dict[str, int]) -> None:
        self.config = config
        self.fds = fds
        self.loop = asyncio.get_running_loop()
        rng = random.Random(config.seed)
        now = self.loop.time()
        self.by_addr = {bytes(map(int, e.address.split("."))): e for e in config.endpoints}
        self.links = {
            (a.site, b.site): make_link(a, b, config.mtu, config.queue_ms, rng, now)
            for a in config.endpoints
            for b in config.endpoints
            if a is not b
        }
        self.unroutable = 0
        self.write_drops = 0
        self.lateness = 0.0  # how much earlier than due to set timers (self-calibrating)

    def start(self) -> None:
        for ep in self.config.endpoints:
            self.loop.add_reader(self.fds[ep.site], self._readable, ep)

    def _readable(self, src: Endpoint) -> None:
        fd = self.fds[src.site]
        now = self.loop.time()
        for _ in range(READ_BATCH):
            try:
                packet = os.read(fd, 65536)
            except BlockingIOError:
                return
            dst_ep = self.by_addr.get(parse_dst(packet) or b"")
            if dst_ep is None or dst_ep is src:
                self.unroutable += 1
                continue
            at = self.links[(src.site, dst_ep.site)].schedule(len(packet), now)
            if at is not None:
                # wake up early by the timer's typical lateness, measured below
                self.loop.call_at(
                    at - self.lateness, self._deliver, self.fds[dst_ep.site], packet, at
                )

    def _deliver(self, fd: int, packet: bytes, due: float) -> None:
        late = self.loop.time() - due
        self.lateness = min(LATENESS_CAP, max(0.0, self.lateness + LATENESS_GAIN * late))
        if late < 0.0:
            # The lead learnt while the host was busy outlives the load: a timer that fires on
            # time once it is quiet would deliver early by up to LATENESS_CAP. Never early.
            self.loop.call_at(due, self._write, fd, packet)
            return
        self._write(fd, packet)

    def _write(self, fd: int, packet: bytes) -> None:
        try:
            os.write(fd, packet)
        except OSError:  # the namespace's queue is full or the device is gone
            self.write_drops += 1

    def stats(self) -> dict[str, object]:
        return {
            "links": {f"{a}>{b}": asdict(link.stats) for (a, b), link in self.links.items()},
            "unroutable": self.unroutable,
            "write_drops": self.write_drops,
            "cpu_s": round(time.process_time(), 3),
            "timer_lead_us": round(self.lateness * 1e6, 1),
            "time": time.time(),
        }


async def serve(config: RouterConfig) -> None:
    fds: dict[str, int] = {}
    try:
        for ep in config.endpoints:
            fds[ep.site] = attach(ep, config.mtu)
        router = Router(config, fds)
        router.start()
        if config.ready_file:
            Path(config.ready_file).write_text(str(os.getpid()))
        log.info("wan_router_ready", endpoints=len(fds))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            if config.stats_file:
                tmp = Path(config.stats_file + ".tmp")
                tmp.write_text(json.dumps(router.stats()))
                tmp.replace(config.stats_file)
            await event_within(stop, 2.0)
    finally:
        for fd in fds.values():
            os.close(fd)  # a non-persistent TUN disappears with its last descriptor
        log.info("wan_router_stopped")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.wan", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="JSON RouterConfig")
    args = p.parse_args(argv)
    configure_logging("info", json=True)
    # timers fire up to 50 us late by default; the WAN's delays should be exact
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    config = RouterConfig.from_json(args.config.read_text())
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        loop.run_until_complete(serve(config))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
