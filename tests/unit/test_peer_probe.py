"""The ICMP peer prober against this host's own kernel (loopback answers echo requests)."""

from __future__ import annotations

import asyncio
import os

from agent.peer_probe import PeerProber, echo_request, parse_reply
from tests.conftest import require_backend


def test_echo_request_checksum_and_reply_parsing() -> None:
    packet = echo_request(0x1234, 7)
    assert packet[0] == 8 and len(packet) > 8
    words = [int.from_bytes(packet[i : i + 2], "big") for i in range(0, len(packet), 2)]
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF  # a valid internet checksum sums to all ones
    ip_header = bytes([0x45]) + bytes(19)
    reply = bytes([0]) + packet[1:]
    assert parse_reply(ip_header + reply) == (0x1234, 7)
    assert parse_reply(ip_header + packet) is None  # a request, not a reply


async def test_probes_are_answered_and_timed_by_the_kernel() -> None:
    require_backend(os.geteuid() == 0, "raw ICMP needs root")
    prober = PeerProber()
    await prober.start()
    try:
        prober.set_peers({"self": "127.0.0.1"})
        prober.probe_all()
        window = prober.windows()[0]
        async with asyncio.timeout(5):  # wait on the answer, with a deadline
            while window.stats() is None:
                await asyncio.sleep(0.005)
        stats = window.stats()
        assert stats is not None and stats.target == "self"
        assert 0 < stats.p50_ms < 50
        prober.set_peers({})
        assert prober.windows() == []
    finally:
        prober.close()
