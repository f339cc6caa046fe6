"""A small client of the WireGuard cross-platform UAPI (https://www.wireguard.com/xplatform/).

Our own, because PyPI `wireguard-tools` fails on peers without endpoint, IPv6 endpoints and
preshared keys, and always replaces every peer (MACHINE-NOTES). Keys are hex on this protocol.

The device applies a `set` line by line and stops at the first bad one, so a bad request is
half-applied by the device: callers pass validated values from base.py, and serialise() checks
the shape again, so nothing invalid is ever sent.
"""

from __future__ import annotations

import base64
import binascii
import errno as errno_mod
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from agent.wireguard.base import (
    DeviceStatus,
    Endpoint,
    IPNetwork,
    PeerStatus,
    PresharedKey,
    PrivateKey,
    PublicKey,
    parse_network,
)
from shared.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    NovaCronError,
    Unavailable,
)

SOCKET_DIR = Path("/var/run/wireguard")
MAX_RESPONSE = 4 << 20  # a device with thousands of peers still fits


def socket_path(ifname: str, socket_dir: Path = SOCKET_DIR) -> Path:
    return socket_dir / f"{ifname}.sock"


def hex_to_base64(text: str) -> str:
    """UAPI key (hex) -> wg-tools key (base64)."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise InvalidArgument(f"key is not hex: {text[:8]}...") from None
    if len(raw) != 32:
        raise InvalidArgument(f"key is {len(raw)} bytes, not 32")
    return base64.b64encode(raw).decode()


def base64_to_hex(text: str) -> str:
    """wg-tools key (base64) -> UAPI key (hex)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"key is not base64: {text[:8]}...") from None
    if len(raw) != 32:
        raise InvalidArgument(f"key is {len(raw)} bytes, not 32")
    return raw.hex()


@dataclass(frozen=True, slots=True)
class PeerUpdate:
    """One peer's block of a `set=1` request."""

    public_key: PublicKey
    remove: bool = False
    update_only: bool = False  # change an existing peer; the device ignores it if absent
    preshared_key: PresharedKey | None = None
    endpoint: Endpoint | None = None
    persistent_keepalive_s: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        if self.remove and (
            self.update_only
            or self.preshared_key is not None
            or self.endpoint is not None
            or self.persistent_keepalive_s is not None
            or self.replace_allowed_ips
            or self.allowed_ips
        ):
            raise InvalidArgument("a peer removal carries nothing but the key")


@dataclass(frozen=True, slots=True)
class DeviceUpdate:
    """A whole `set=1` request: device fields, then peer blocks."""

    private_key: PrivateKey | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: tuple[PeerUpdate, ...] = ()


def serialise_set(update: DeviceUpdate) -> bytes:
    """The request bytes, ending with the blank line that ends it."""
    lines = ["set=1"]
    if update.private_key is not None:
        lines.append(f"private_key={update.private_key.to_hex()}")
    if update.listen_port is not None:
        if not 0 <= update.listen_port <= 65535:
            raise InvalidArgument(f"listen port {update.listen_port} is not in [0, 65535]")
        lines.append(f"listen_port={update.listen_port}")
    if update.fwmark is not None:
        lines.append(f"fwmark={update.fwmark}")
    if update.replace_peers:
        lines.append("replace_peers=true")
    for peer in update.peers:
        lines.append(f"public_key={peer.public_key.to_hex()}")
        if peer.remove:
            lines.append("remove=true")
            continue
        if peer.update_only:
            lines.append("update_only=true")
        if peer.preshared_key is not None:
            lines.append(f"preshared_key={peer.preshared_key.to_hex()}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={peer.endpoint}")
        if peer.persistent_keepalive_s is not None:
            lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive_s}")
        if peer.replace_allowed_ips:
            lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={net}" for net in peer.allowed_ips)
    return ("\n".join(lines) + "\n\n").encode()


GET_REQUEST = b"get=1\n\n"


def parse_errno(text: str) -> int:
    """The `errno=` of a response (wireguard-go sends it negated, e.g. -22); 0 = success."""
    for line in reversed(text.splitlines()):
        if line.startswith("errno="):
            try:
                return abs(int(line[len("errno=") :]))
            except ValueError:
                raise Internal(f"UAPI: bad errno line {line!r}") from None
    raise Internal("UAPI: response without errno")


def error_for_errno(code: int, what: str) -> NovaCronError:
    """Map a device errno to our error hierarchy."""
    name = errno_mod.errorcode.get(code, str(code))
    message = f"{what}: device refused ({name}: {os.strerror(code)})"
    if code == errno_mod.EINVAL:
        return InvalidArgument(message)
    if code == errno_mod.EADDRINUSE:
        return FailedPrecondition(message)
    if code == errno_mod.ENOENT:
        return NotFound(message)
    return Internal(message)


class _PeerBuilder:
    def __init__(self, key: PublicKey) -> None:
        self.key = key
        self.endpoint: Endpoint | None = None
        self.allowed: list[IPNetwork] = []
        self.sec = 0
        self.nsec = 0
        self.rx = 0
        self.tx = 0
        self.keepalive = 0
        self.psk = False

    def build(self) -> PeerStatus:
        handshake = None if self.sec == 0 and self.nsec == 0 else self.sec + self.nsec / 1e9
        return PeerStatus(
            public_key=self.key,
            endpoint=self.endpoint,
            allowed_ips=tuple(self.allowed),
            last_handshake=handshake,
            rx_bytes=self.rx,
            tx_bytes=self.tx,
            persistent_keepalive_s=self.keepalive,
            has_preshared_key=self.psk,
        )


def parse_get(text: str) -> DeviceStatus:
    """Parse a `get=1` response. Unknown keys are skipped (newer devices add fields)."""
    code = parse_errno(text)
    if code:
        raise error_for_errno(code, "get")
    listen_port = 0
    fwmark = 0
    has_private = False
    peers: list[PeerStatus] = []
    cur: _PeerBuilder | None = None
    for line in text.splitlines():
        if not line or line.startswith("errno="):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise Internal(f"UAPI: malformed line {line!r}")
        try:
            if key == "public_key":
                if cur is not None:
                    peers.append(cur.build())
                cur = _PeerBuilder(PublicKey.from_hex(value))
            elif cur is None:
                if key == "listen_port":
                    listen_port = int(value)
                elif key == "fwmark":
                    fwmark = int(value)
                elif key == "private_key":
                    has_private = any(c != "0" for c in value)
            elif key == "endpoint":
                cur.endpoint = Endpoint.parse(value)
            elif key == "allowed_ip":
                cur.allowed.append(parse_network(value))
            elif key == "last_handshake_time_sec":
                cur.sec = int(value)
            elif key == "last_handshake_time_nsec":
                cur.nsec = int(value)
            elif key == "rx_bytes":
                cur.rx = int(value)
            elif key == "tx_bytes":
                cur.tx = int(value)
            elif key == "persistent_keepalive_interval":
                cur.keepalive = int(value)
            elif key == "preshared_key":
                cur.psk = any(c != "0" for c in value)
        except (ValueError, InvalidArgument) as exc:
            raise Internal(f"UAPI: bad value in {key!r}: {exc}") from None
    if cur is not None:
        peers.append(cur.build())
    return DeviceStatus(
        listen_port=listen_port, fwmark=fwmark, has_private_key=has_private, peers=tuple(peers)
    )


class UapiClient:
    """One connection per request: simple, and a device restart between calls is harmless."""

    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def _exchange(self, request: bytes) -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout_s)
                sock.connect(str(self.path))
                sock.sendall(request)
                buf = bytearray()
                while not buf.endswith(b"\n\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > MAX_RESPONSE:
                        raise Internal(f"UAPI {self.path}: response over {MAX_RESPONSE} bytes")
        except OSError as exc:
            raise Unavailable(f"UAPI {self.path}: {exc}") from None
        if not buf.endswith(b"\n\n"):
            raise Unavailable(f"UAPI {self.path}: connection closed mid-response")
        return buf.decode()

    def get(self) -> DeviceStatus:
        return parse_get(self._exchange(GET_REQUEST))

    def set(self, update: DeviceUpdate) -> None:
        request = serialise_set(update)
        code = parse_errno(self._exchange(request))
        if code:
            raise error_for_errno(code, "set")

    def alive(self) -> bool:
        """True when a device answers on the socket."""
        try:
            self._exchange(GET_REQUEST)
        except (Unavailable, Internal):
            return False
        return True
