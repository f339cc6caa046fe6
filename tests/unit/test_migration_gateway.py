"""The migration gateway relays a peer's libvirtd connection to the local unix socket, and
listens only on the device it is bound to; the overlay guard's rules."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from agent.migration_gateway import DEFAULT_SOCKET, MigrationGateway, libvirt_socket
from agent.overlay_guard import CHAIN, commands


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_unix_socket_of_a_local_libvirt_uri() -> None:
    assert libvirt_socket("qemu:///system") == DEFAULT_SOCKET
    assert libvirt_socket("qemu+unix:///system?socket=/run/x/sock") == "/run/x/sock"
    assert libvirt_socket("qemu+tcp://10.0.0.1/system") == ""
    assert libvirt_socket("test:///default") == ""
    assert libvirt_socket("qemu:///session") == ""


async def test_a_connection_is_relayed_both_ways_to_the_libvirtd_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "libvirt-sock")
    seen: list[bytes] = []

    async def libvirtd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        seen.append(data)
        writer.write(b"answer:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(libvirtd, path=path)
    gateway = MigrationGateway(path, port=free_port())
    try:
        await gateway.ensure("127.0.0.1", "lo")
        await gateway.ensure("127.0.0.1", "lo")  # idempotent
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"hello")
        await writer.drain()
        assert await reader.read(100) == b"answer:hello"
        writer.close()
        assert seen == [b"hello"]
    finally:
        await gateway.close()
        server.close()
    with pytest.raises(OSError):  # closed: nothing listens any more
        await asyncio.open_connection("127.0.0.1", gateway.port)


async def test_it_binds_to_its_device_only(tmp_path: Path) -> None:
    gateway = MigrationGateway(str(tmp_path / "sock"), port=free_port())
    with pytest.raises(OSError):  # no such device: refused, never bound to every interface
        await gateway.ensure("127.0.0.1", "nc-no-such-dev")


def test_the_guard_lets_only_the_tunnel_and_loopback_reach_the_mesh_address() -> None:
    steps = [argv for argv, _ in commands("10.250.0.3", "ncwg-a", previous="10.250.0.9")]
    assert ["iptables", "-w", "-A", CHAIN, "-i", "lo", "-j", "RETURN"] in steps
    assert ["iptables", "-w", "-A", CHAIN, "-i", "ncwg-a", "-j", "RETURN"] in steps
    assert steps.index(["iptables", "-w", "-A", CHAIN, "-j", "DROP"]) > steps.index(
        ["iptables", "-w", "-A", CHAIN, "-i", "ncwg-a", "-j", "RETURN"]
    )
    assert ["iptables", "-w", "-D", "INPUT", "-d", "10.250.0.9/32", "-j", CHAIN] in steps
