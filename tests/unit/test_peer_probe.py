"""The peer prober over real UDP sockets on loopback (the echo and the prober of one agent)."""

from __future__ import annotations

import asyncio

from agent.peer_probe import PeerProber


async def test_probes_are_echoed_and_timed() -> None:
    prober = PeerProber()
    await prober.start()
    try:
        prober.set_peers({"self": "127.0.0.1"})
        prober.probe_all()
        window = prober.windows()[0]
        async with asyncio.timeout(5):  # wait on the answer, with a deadline
            while window.stats() is None:
                await asyncio.sleep(0.005)
        stats = prober.windows()[0].stats()
        assert stats is not None
        assert stats.target == "self"
        assert 0 < stats.p50_ms < 100
        prober.set_peers({})
        assert prober.windows() == []
    finally:
        prober.close()
