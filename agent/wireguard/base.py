"""The WireGuard driver interface and its typed values. Every driver passes
tests/contract/test_wireguard_contract.py.

Values validate on construction, so a bad key, endpoint or prefix is rejected (InvalidArgument)
before anything reaches the device: a change is applied whole or not at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, Self

from shared.errors import InvalidArgument

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

KEY_LEN = 32
IFNAME_MAX = 15  # IFNAMSIZ - 1
IFNAME_PREFIX = "ncwg-"
MAX_KEEPALIVE_S = 65535
HANDSHAKE_DOWN_AFTER_S = 180.0  # no handshake for this long: the peer is down (issue 5, item 3)


def interface_name(node_id: str) -> str:
    """A host-unique interface name for a node: the UAPI socket lives on the host's shared
    filesystem, so two agents (two lab sites) must never pick the same name."""
    digest = hashlib.sha256(node_id.encode()).hexdigest()
    return (IFNAME_PREFIX + digest)[:IFNAME_MAX]


class _Key:
    """32 raw bytes; base64 in configs and on the wire to the controller, hex on UAPI."""

    __slots__ = ("_raw",)
    _secret = False

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_LEN:
            raise InvalidArgument(
                f"{type(self).__name__}: a key is {KEY_LEN} bytes, got {len(raw)}"
            )
        self._raw = bytes(raw)

    @classmethod
    def from_base64(cls, text: str) -> Self:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument(f"{cls.__name__}: not base64: {exc}") from None
        return cls(raw)

    @classmethod
    def from_hex(cls, text: str) -> Self:
        try:
            raw = bytes.fromhex(text.strip())
        except ValueError as exc:
            raise InvalidArgument(f"{cls.__name__}: not hex: {exc}") from None
        return cls(raw)

    @property
    def raw(self) -> bytes:
        return self._raw

    def to_base64(self) -> str:
        return base64.b64encode(self._raw).decode()

    def to_hex(self) -> str:
        return self._raw.hex()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and type(other) is type(self) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._raw))

    def __lt__(self, other: _Key) -> bool:
        return self._raw < other._raw

    def __repr__(self) -> str:
        shown = "<redacted>" if self._secret else self.to_base64()
        return f"{type(self).__name__}({shown})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[type[_Key], tuple[bytes]]:
        return (type(self), (self._raw,))


class PublicKey(_Key):
    __slots__ = ()

    def __str__(self) -> str:
        return self.to_base64()


class PrivateKey(_Key):
    """Never leaves the node: repr and str are redacted, and no API returns it."""

    __slots__ = ()
    _secret = True


class PresharedKey(_Key):
    __slots__ = ()
    _secret = True


def parse_public_key(text: str) -> PublicKey:
    return PublicKey.from_base64(text)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An IP literal and port; UAPI takes no host names (resolution is the caller's job)."""

    host: IPAddress
    port: int

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise InvalidArgument(f"endpoint port {self.port} is not in [1, 65535]")

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """'1.2.3.4:51820' or '[2001:db8::1]:51820'."""
        text = text.strip()
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
        else:
            host, sep, port = text.rpartition(":")
            if ":" in host:
                raise InvalidArgument(f"endpoint {text!r}: an IPv6 endpoint is '[addr]:port'")
        if not sep or not host or not port.isdigit():
            raise InvalidArgument(f"endpoint {text!r}: expected 'ip:port' or '[ipv6]:port'")
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            raise InvalidArgument(f"endpoint {text!r}: {host!r} is not an IP address") from None
        return cls(addr, int(port))

    def __str__(self) -> str:
        if self.host.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_network(text: str) -> IPNetwork:
    """A prefix with no host bits set (10.1.0.0/24, 10.1.0.5/32): host bits are a typo here."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise InvalidArgument(f"allowed IP {text!r}: {exc}") from None


def _check_keepalive(seconds: int) -> None:
    if not 0 <= seconds <= MAX_KEEPALIVE_S:
        raise InvalidArgument(f"persistent keepalive {seconds}s is not in [0, {MAX_KEEPALIVE_S}]")


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """What we want configured for one peer. keepalive 0 = off (set it for sites behind NAT)."""

    public_key: PublicKey
    allowed_ips: tuple[IPNetwork, ...] = ()
    endpoint: Endpoint | None = None
    persistent_keepalive_s: int = 0
    preshared_key: PresharedKey | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_keepalive(self.persistent_keepalive_s)
        if len(set(self.allowed_ips)) != len(self.allowed_ips):
            raise InvalidArgument(f"peer {self.public_key}: duplicate allowed IPs")

    @classmethod
    def parse(
        cls,
        public_key: str,
        allowed_ips: Iterable[str] = (),
        endpoint: str = "",
        persistent_keepalive_s: int = 0,
        preshared_key: str = "",
    ) -> PeerConfig:
        """From wire strings (base64 keys, as the controller sends them)."""
        psk = PresharedKey.from_base64(preshared_key) if preshared_key else None
        return cls(
            public_key=parse_public_key(public_key),
            allowed_ips=tuple(parse_network(p) for p in allowed_ips),
            endpoint=Endpoint.parse(endpoint) if endpoint else None,
            persistent_keepalive_s=persistent_keepalive_s,
            preshared_key=psk,
        )


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One peer as the device reports it."""

    public_key: PublicKey
    endpoint: Endpoint | None
    allowed_ips: tuple[IPNetwork, ...]
    last_handshake: float | None  # unix time; None = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive_s: int
    has_preshared_key: bool

    def handshake_age_s(self, now: float | None = None) -> float | None:
        if self.last_handshake is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.last_handshake)

    def is_up(self, now: float | None = None) -> bool:
        age = self.handshake_age_s(now)
        return age is not None and age < HANDSHAKE_DOWN_AFTER_S


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """The device as it reports itself. Deliberately carries no private key."""

    listen_port: int
    fwmark: int
    has_private_key: bool
    peers: tuple[PeerStatus, ...]

    def peer(self, key: PublicKey) -> PeerStatus | None:
        return next((p for p in self.peers if p.public_key == key), None)


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    """The local end. listen_port 0 = let the device pick once; the driver then keeps it
    across restarts, because peers were told that port."""

    name: str
    addresses: tuple[IPInterface, ...]
    listen_port: int = 0
    mtu: int = 1420

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > IFNAME_MAX or "/" in self.name or " " in self.name:
            raise InvalidArgument(f"interface name {self.name!r}: 1..{IFNAME_MAX} chars, no '/'")
        if not 0 <= self.listen_port <= 65535:
            raise InvalidArgument(f"listen port {self.listen_port} is not in [0, 65535]")
        if not 1280 <= self.mtu <= 65535:
            raise InvalidArgument(f"mtu {self.mtu} is not in [1280, 65535]")


@dataclass(frozen=True, slots=True)
class PeerChanges:
    """What set_peers() did, so the agent can report exactly what is applied."""

    added: tuple[PublicKey, ...] = ()
    removed: tuple[PublicKey, ...] = ()
    updated: tuple[PublicKey, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.updated)


class WireGuardDriver(Protocol):
    """Blocking API (the agent calls it from a worker thread). Peer changes are incremental:
    each touches one peer and leaves the others' sessions alone."""

    @property
    def name(self) -> str: ...

    @property
    def public_key(self) -> PublicKey:
        """The only key that leaves the node."""
        ...

    @property
    def listen_port(self) -> int: ...

    def up(self) -> None:
        """Create the device, apply key, port, addresses, link up, then any peers. Idempotent."""
        ...

    def down(self) -> None:
        """Remove the device. Idempotent. Peers are forgotten."""
        ...

    def add_peer(self, peer: PeerConfig) -> None:
        """AlreadyExists if the key is configured; InvalidArgument for our own key."""
        ...

    def update_peer(
        self,
        public_key: PublicKey,
        *,
        endpoint: Endpoint | None = None,
        allowed_ips: Sequence[IPNetwork] | None = None,
        persistent_keepalive_s: int | None = None,
    ) -> PeerConfig:
        """Change only the given fields (roam, new routes). NotFound for an unknown peer."""
        ...

    def remove_peer(self, public_key: PublicKey) -> None:
        """NotFound for an unknown peer."""
        ...

    def set_peers(self, peers: Sequence[PeerConfig]) -> PeerChanges:
        """Converge on exactly `peers` with the fewest per-peer changes."""
        ...

    def peers(self) -> list[PeerConfig]:
        """The configured (desired) peers, sorted by key."""
        ...

    def status(self) -> DeviceStatus:
        """Live per-peer figures: handshake time, rx/tx bytes, current endpoint."""
        ...

    def rotate_private_key(self) -> PublicKey:
        """New key pair on the node; returns the public key to hand to the peers."""
        ...

    def close(self) -> None: ...
