"""The watchdog feeder (shared/watchdog.py) with a real event loop in a thread and a real
AF_UNIX datagram socket: pings flow while the loop and the checks are healthy and stop when
the loop is blocked or a check fails. Rounds are observed through `on_round`, never slept on."""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.sd_notify import Notifier
from shared.watchdog import BlockingProbe, LivenessCheck, WatchdogFeeder

INTERVAL_S = 1.0  # rounds every 0.5 s, each check given 0.25 s
WAIT_S = 10.0  # a deadline for what must happen, not a threshold on how fast


@dataclass
class World:
    loop: asyncio.AbstractEventLoop
    sock: socket.socket
    notifier: Notifier
    rounds: queue.Queue[str]

    def feeder(self, checks: tuple[LivenessCheck, ...] = ()) -> WatchdogFeeder:
        return WatchdogFeeder(self.notifier, INTERVAL_S, self.loop, checks, self.rounds.put)

    def next_round(self) -> str:
        return self.rounds.get(timeout=WAIT_S)

    def wait_for_round(self, passed: bool) -> str:
        while True:
            problem = self.next_round()
            if (problem == "") == passed:
                return problem

    def ping(self) -> str:
        self.sock.settimeout(WAIT_S)
        return self.sock.recv(256).decode()

    def drain(self) -> list[str]:
        self.sock.setblocking(False)
        got = []
        try:
            while True:
                got.append(self.sock.recv(256).decode())
        except BlockingIOError:
            return got


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    try:
        yield World(loop, sock, Notifier(str(tmp_path / "notify.sock")), queue.Queue())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT_S)
        loop.close()
        sock.close()


def block_loop(loop: asyncio.AbstractEventLoop) -> threading.Event:
    """Block `loop` in a callback (as a stuck synchronous call would) until the event is set."""
    entered, release = threading.Event(), threading.Event()

    def stuck() -> None:
        entered.set()
        release.wait(60)

    loop.call_soon_threadsafe(stuck)
    assert entered.wait(WAIT_S)
    return release


def test_a_healthy_loop_feeds_the_watchdog(world: World) -> None:
    feeder = world.feeder()
    feeder.start()
    try:
        assert world.ping() == "WATCHDOG=1"
        assert world.ping() == "WATCHDOG=1"
    finally:
        feeder.stop()
    assert feeder.pings >= 2


def test_a_blocked_loop_stops_the_pings_and_they_resume_after(world: World) -> None:
    feeder = world.feeder()
    feeder.start()
    try:
        assert world.ping() == "WATCHDOG=1"
        release = block_loop(world.loop)
        try:
            problem = world.wait_for_round(passed=False)
            assert problem == "the event loop did not run a callback within 0.25s"
            world.drain()  # pings of rounds that passed before the loop blocked
            assert world.next_round() != ""
            assert world.next_round() != ""
            assert world.drain() == []  # two whole rounds blocked: not one ping
            assert feeder.problem
        finally:
            release.set()
        world.wait_for_round(passed=True)
        assert "WATCHDOG=1" in world.drain()  # the passing round pinged before it reported
    finally:
        feeder.stop()


def test_a_failing_liveness_check_stops_the_pings(world: World) -> None:
    broken = threading.Event()

    async def store_ok() -> str:
        return "the store failed a read: disk I/O error" if broken.is_set() else ""

    feeder = world.feeder((store_ok,))
    feeder.start()
    try:
        assert world.ping() == "WATCHDOG=1"
        broken.set()
        assert world.wait_for_round(passed=False) == "the store failed a read: disk I/O error"
        world.drain()
        assert world.next_round() == "the store failed a read: disk I/O error"
        assert world.drain() == []
        broken.clear()
        world.wait_for_round(passed=True)
        assert "WATCHDOG=1" in world.drain()
    finally:
        feeder.stop()


def test_a_check_that_never_answers_or_raises_is_a_failure(world: World) -> None:
    async def hangs() -> str:
        await asyncio.Event().wait()
        return ""

    async def raises() -> str:
        raise RuntimeError("boom")

    assert world.feeder((hangs,)).check() == "a liveness check did not answer within 0.25s"
    assert world.feeder((raises,)).check() == "liveness check raised RuntimeError: boom"


def test_a_closed_loop_is_not_alive() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    feeder = WatchdogFeeder(Notifier(None), INTERVAL_S, loop)
    assert feeder.round() == "the event loop is closed"
    with pytest.raises(ValueError, match="watchdog interval must be positive, not 0"):
        WatchdogFeeder(Notifier(None), 0, loop)


async def test_a_blocking_probe_that_hangs_is_reported_without_piling_up_threads() -> None:
    started, release = threading.Event(), threading.Event()
    calls = []

    def libvirt_call() -> str:
        calls.append(1)
        started.set()
        release.wait(60)
        return ""

    probe = BlockingProbe("libvirt", libvirt_call)
    first = asyncio.create_task(probe())
    assert await asyncio.to_thread(started.wait, WAIT_S)
    first.cancel()  # the feeder gave up on it
    assert (await probe()).startswith("libvirt has not answered for ")
    assert (await probe()).startswith("libvirt has not answered for ")
    assert len(calls) == 1  # one thread stuck, not one per round
    release.set()

    await eventually(lambda: probe(), WAIT_S)  # the stuck call returned: a new one runs
    assert len(calls) == 2


async def eventually(check: Callable[[], Awaitable[str]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (problem := await check()) != "":
        assert time.monotonic() < deadline, problem
        await asyncio.sleep(0.01)


async def test_a_blocking_probe_that_raises_reports_why() -> None:
    def refused() -> str:
        raise OSError("connection refused")

    assert await BlockingProbe("store", refused)() == "store failed: connection refused"
