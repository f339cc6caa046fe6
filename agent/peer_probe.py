"""Latency to mesh peers, measured over the tunnel: a UDP echo on every node's overlay address
and a prober that sends each peer a numbered datagram per interval."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from typing import cast

from agent.latency import LatencyWindow, Prober

PROBE_PORT = 7702
_MAGIC = b"NCP1"
_FORMAT = "!4sQ"  # magic, sequence number
PROBE_TIMEOUT_S = 3.0


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if data.startswith(_MAGIC) and self.transport is not None:
            self.transport.sendto(data, addr)


class _Replies(asyncio.DatagramProtocol):
    def __init__(self, on_reply: Callable[[str, int], None]) -> None:
        self.on_reply = on_reply

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if len(data) == struct.calcsize(_FORMAT) and data.startswith(_MAGIC):
            _, seq = struct.unpack(_FORMAT, data)
            self.on_reply(str(addr[0]), seq)


class PeerProber:
    """One window per peer (keyed by node id); peers come and go with the mesh config."""

    def __init__(self) -> None:
        self._probers: dict[str, Prober] = {}
        self._by_address: dict[str, str] = {}
        self._echo: asyncio.DatagramTransport | None = None
        self._sender: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._echo, _ = await loop.create_datagram_endpoint(
            _Echo, local_addr=("0.0.0.0", PROBE_PORT)
        )
        self._sender, _ = await loop.create_datagram_endpoint(
            lambda: _Replies(self._reply), local_addr=("0.0.0.0", 0)
        )

    def close(self) -> None:
        for transport in (self._echo, self._sender):
            if transport is not None:
                transport.close()

    def set_peers(self, peers: dict[str, str]) -> None:
        """node id -> overlay address. Windows of peers that stay are kept."""
        self._by_address = {address: node_id for node_id, address in peers.items()}
        for node_id in list(self._probers):
            if node_id not in peers:
                del self._probers[node_id]
        for node_id in peers:
            if node_id not in self._probers:
                self._probers[node_id] = Prober(
                    LatencyWindow(node_id), PROBE_TIMEOUT_S, time.monotonic
                )

    def probe_all(self) -> None:
        if self._sender is None:
            return
        for address, node_id in self._by_address.items():
            seq = self._probers[node_id].next_probe()
            self._sender.sendto(struct.pack(_FORMAT, _MAGIC, seq), (address, PROBE_PORT))

    def _reply(self, address: str, seq: int) -> None:
        node_id = self._by_address.get(address)
        if node_id is not None:
            self._probers[node_id].answered(seq)

    def windows(self) -> list[LatencyWindow]:
        return [p.window for p in self._probers.values()]
