"""Incoming live and cold migrations over the WireGuard mesh (issue 11, item 7).

The node's libvirtd serves no TCP at all. A peer's libvirtd reaches it through this gateway
instead: a listener on the node's mesh address, bound to the WireGuard device
(SO_BINDTODEVICE, so nothing arriving on another interface reaches it), that relays each
connection to the local libvirtd's unix socket. The migration's own streams (QEMU's memory
stream, its NBD disk server) listen on the mesh address too (MigrationTarget.listen_address),
and overlay_guard drops whatever reaches that address through any other interface. So a
migration crosses the underlay only inside WireGuard, encrypted and authenticated by the
peers' keys, which the controller distributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import urllib.parse

import structlog

log = structlog.get_logger(__name__)

LIBVIRTD_PORT = 16509
DEFAULT_SOCKET = "/var/run/libvirt/libvirt-sock"
_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
CHUNK = 256 * 1024


def libvirt_socket(uri: str) -> str:
    """The unix socket of a local system libvirtd URI; "" for anything else (remote, test)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("qemu", "qemu+unix") or parts.netloc or parts.path != "/system":
        return ""
    query = urllib.parse.parse_qs(parts.query)
    return query.get("socket", [DEFAULT_SOCKET])[0]


def migration_gateway(libvirt_uri: str) -> MigrationGateway | None:
    """A gateway to the libvirtd of `libvirt_uri`, if that is a local one."""
    path = libvirt_socket(libvirt_uri)
    return MigrationGateway(path) if path else None


class MigrationGateway:
    def __init__(self, libvirt_socket_path: str, port: int = LIBVIRTD_PORT) -> None:
        self._path = libvirt_socket_path
        self.port = port
        self._server: asyncio.Server | None = None
        self._bound = ("", "")

    async def ensure(self, address: str, device: str) -> None:
        """Listening on `address`:16509 of `device` (again, if the address changed)."""
        if self._server is not None and self._bound == (address, device):
            return
        await self.close()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, device.encode())
            sock.bind((address, self.port))
            sock.listen(16)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._server = await asyncio.start_server(self._relay, sock=sock)
        self._bound = (address, device)
        log.info("migration gateway listening", address=address, device=device)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
            self._bound = ("", "")

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self._path)
        except OSError as exc:
            log.warning("migration gateway: libvirtd unreachable", error=str(exc), peer=peer)
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the EOF on (the other direction may still be talking)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass
