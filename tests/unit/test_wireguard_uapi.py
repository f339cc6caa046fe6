"""The UAPI text protocol and the WireGuard value types: pure, no device needed."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.wireguard.base import (
    Endpoint,
    InterfaceConfig,
    PeerConfig,
    PeerStatus,
    PresharedKey,
    PrivateKey,
    PublicKey,
    interface_name,
    parse_network,
)
from agent.wireguard.uapi import (
    DeviceUpdate,
    PeerUpdate,
    UapiClient,
    base64_to_hex,
    error_for_errno,
    hex_to_base64,
    parse_errno,
    parse_get,
    serialise_set,
)
from shared.errors import FailedPrecondition, Internal, InvalidArgument, Unavailable

K1 = PublicKey(bytes(range(32)))
K2 = PublicKey(bytes(range(32, 64)))
PRIV = PrivateKey(bytes([7]) * 32)
PSK = PresharedKey(bytes([9]) * 32)

# What wireguard-go v0.0.20220316 answers to get=1 (two peers, one over IPv6, one with a PSK).
GET_RESPONSE = (
    f"private_key={'07' * 32}\n"
    "listen_port=51820\n"
    "fwmark=0\n"
    f"public_key={K1.to_hex()}\n"
    f"preshared_key={'00' * 32}\n"
    "protocol_version=1\n"
    "endpoint=192.168.1.2:51820\n"
    "last_handshake_time_sec=1700000000\n"
    "last_handshake_time_nsec=500000000\n"
    "tx_bytes=1234\n"
    "rx_bytes=5678\n"
    "persistent_keepalive_interval=25\n"
    "allowed_ip=10.0.0.2/32\n"
    "allowed_ip=fd00::2/128\n"
    f"public_key={K2.to_hex()}\n"
    f"preshared_key={PSK.to_hex()}\n"
    "protocol_version=1\n"
    "endpoint=[2001:db8::1]:4500\n"
    "last_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\n"
    "tx_bytes=0\n"
    "rx_bytes=0\n"
    "persistent_keepalive_interval=0\n"
    "some_future_field=1\n"
    "errno=0\n\n"
)


def test_parse_get() -> None:
    status = parse_get(GET_RESPONSE)
    assert status.listen_port == 51820 and status.has_private_key
    assert [p.public_key for p in status.peers] == [K1, K2]
    first = status.peer(K1)
    assert first is not None
    assert first.endpoint == Endpoint(ipaddress.ip_address("192.168.1.2"), 51820)
    assert first.allowed_ips == (parse_network("10.0.0.2/32"), parse_network("fd00::2/128"))
    assert first.last_handshake == 1700000000.5
    assert (first.rx_bytes, first.tx_bytes, first.persistent_keepalive_s) == (5678, 1234, 25)
    assert not first.has_preshared_key
    second = status.peer(K2)
    assert second is not None and second.has_preshared_key
    assert str(second.endpoint) == "[2001:db8::1]:4500"
    assert second.last_handshake is None and second.allowed_ips == ()


def test_parse_get_of_an_empty_device_and_errors() -> None:
    empty = parse_get(f"private_key={'00' * 32}\nlisten_port=0\nerrno=0\n\n")
    assert empty.peers == () and not empty.has_private_key
    with pytest.raises(InvalidArgument):
        parse_get("errno=-22\n\n")
    with pytest.raises(Internal):
        parse_get("listen_port=1\n\n")  # no errno
    with pytest.raises(Internal):
        parse_get("garbage\nerrno=0\n\n")
    with pytest.raises(Internal):
        parse_get("public_key=zz\nerrno=0\n\n")


def test_serialise_a_new_peer_in_protocol_order() -> None:
    update = DeviceUpdate(
        private_key=PRIV,
        listen_port=51820,
        peers=(
            PeerUpdate(
                public_key=K1,
                preshared_key=PSK,
                endpoint=Endpoint.parse("[2001:db8::1]:51820"),
                persistent_keepalive_s=25,
                replace_allowed_ips=True,
                allowed_ips=(parse_network("10.0.0.2/32"), parse_network("fd00::/64")),
            ),
        ),
    )
    assert serialise_set(update).decode() == (
        "set=1\n"
        f"private_key={'07' * 32}\n"
        "listen_port=51820\n"
        f"public_key={K1.to_hex()}\n"
        f"preshared_key={'09' * 32}\n"
        "endpoint=[2001:db8::1]:51820\n"
        "persistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.0.0.2/32\n"
        "allowed_ip=fd00::/64\n"
        "\n"
    )


def test_serialise_update_only_and_remove() -> None:
    update = DeviceUpdate(
        peers=(
            PeerUpdate(public_key=K1, update_only=True, endpoint=Endpoint.parse("10.1.1.1:1")),
            PeerUpdate(public_key=K2, remove=True),
        )
    )
    assert serialise_set(update).decode() == (
        f"set=1\npublic_key={K1.to_hex()}\nupdate_only=true\nendpoint=10.1.1.1:1\n"
        f"public_key={K2.to_hex()}\nremove=true\n\n"
    )
    assert serialise_set(DeviceUpdate()) == b"set=1\n\n"


def test_a_removal_carries_only_the_key() -> None:
    with pytest.raises(InvalidArgument):
        PeerUpdate(public_key=K1, remove=True, endpoint=Endpoint.parse("10.1.1.1:1"))


def test_errno_parsing_and_mapping() -> None:
    assert parse_errno("errno=0\n\n") == 0
    assert parse_errno("errno=-22\n\n") == 22
    assert parse_errno("errno=22\n\n") == 22
    assert isinstance(error_for_errno(22, "set"), InvalidArgument)
    assert isinstance(error_for_errno(98, "set"), FailedPrecondition)
    assert isinstance(error_for_errno(5, "set"), Internal)
    assert "EINVAL" in str(error_for_errno(22, "set"))


@given(st.binary(min_size=32, max_size=32))
def test_key_encodings_round_trip(raw: bytes) -> None:
    key = PublicKey(raw)
    assert PublicKey.from_hex(key.to_hex()) == key
    assert PublicKey.from_base64(key.to_base64()) == key
    assert hex_to_base64(key.to_hex()) == key.to_base64()
    assert base64_to_hex(key.to_base64()) == key.to_hex()


def test_bad_keys() -> None:
    for bad in ("", "AAAA", "not base64!", "A" * 44):
        with pytest.raises(InvalidArgument):
            PublicKey.from_base64(bad)
    with pytest.raises(InvalidArgument):
        PublicKey.from_hex("00" * 31)
    with pytest.raises(InvalidArgument):
        hex_to_base64("xyz")
    with pytest.raises(InvalidArgument):
        base64_to_hex("AAAA")


def test_secret_keys_are_redacted_and_kinds_differ() -> None:
    assert "redacted" in repr(PRIV) and PRIV.to_base64() not in repr(PRIV)
    assert "redacted" in repr(PSK)
    assert str(K1) == K1.to_base64()
    assert PublicKey(PRIV.raw) != PRIV  # same bytes, different kind


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("1.2.3.4:51820", "1.2.3.4:51820"),
        ("[2001:db8::1]:443", "[2001:db8::1]:443"),
        (" 10.0.0.1:1 ", "10.0.0.1:1"),
    ],
)
def test_endpoint_parse(text: str, shown: str) -> None:
    assert str(Endpoint.parse(text)) == shown


@pytest.mark.parametrize(
    "text",
    ["1.2.3.4", "1.2.3.4:", "1.2.3.4:0", "1.2.3.4:70000", "2001:db8::1:51820", "[2001:db8::1]",
     "host.example:51820", ":51820", "1.2.3.4:x"],
)  # fmt: skip
def test_endpoint_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        Endpoint.parse(text)


def test_peer_config_parse_and_validation() -> None:
    peer = PeerConfig.parse(
        K1.to_base64(), ["10.0.0.2/32"], endpoint="1.2.3.4:5", preshared_key=PSK.to_base64()
    )
    assert peer.preshared_key == PSK and peer.endpoint is not None
    assert PSK.to_base64() not in repr(peer)
    with pytest.raises(InvalidArgument):
        PeerConfig.parse(K1.to_base64(), ["10.0.0.2/24"])  # host bits
    with pytest.raises(InvalidArgument):
        PeerConfig.parse(K1.to_base64(), ["10.0.0.2/32", "10.0.0.2/32"])
    with pytest.raises(InvalidArgument):
        PeerConfig(K1, persistent_keepalive_s=70000)


def test_interface_config_validation() -> None:
    addr = (ipaddress.ip_interface("10.0.0.1/24"),)
    for bad in ("", "x" * 16, "a/b"):
        with pytest.raises(InvalidArgument):
            InterfaceConfig(bad, addr)
    with pytest.raises(InvalidArgument):
        InterfaceConfig("wg0", addr, listen_port=70000)


def test_interface_names_are_short_and_stable() -> None:
    assert interface_name("site-a") == interface_name("site-a")
    assert interface_name("site-a") != interface_name("site-b")
    assert len(interface_name("x" * 200)) <= 15
    assert interface_name("site-a").startswith("ncwg-")


def test_handshake_age_and_liveness() -> None:
    peer = PeerStatus(K1, None, (), 1000.0, 0, 0, 0, False)
    assert peer.handshake_age_s(now=1010.0) == 10.0
    assert peer.is_up(now=1179.0) and not peer.is_up(now=1181.0)
    never = PeerStatus(K1, None, (), None, 0, 0, 0, False)
    assert never.handshake_age_s(now=5.0) is None and not never.is_up(now=5.0)


@pytest.fixture
def fake_device(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """A unix socket answering like a device: records requests, replies per request kind."""
    path = tmp_path / "wg.sock"
    seen: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while not buf.endswith(b"\n\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                seen.append(buf)
                if buf.startswith(b"get=1"):
                    conn.sendall(GET_RESPONSE.encode())
                elif b"listen_port=1\n" in buf:
                    conn.sendall(b"errno=-98\n\n")
                else:
                    conn.sendall(b"errno=0\n\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, seen
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes accept()
        server.close()
        thread.join(timeout=5)


def test_client_exchanges(fake_device: tuple[Path, list[bytes]]) -> None:
    path, seen = fake_device
    client = UapiClient(path, timeout_s=2)
    assert client.alive()
    assert [p.public_key for p in client.get().peers] == [K1, K2]
    client.set(DeviceUpdate(peers=(PeerUpdate(public_key=K1, remove=True),)))
    assert seen[-1] == f"set=1\npublic_key={K1.to_hex()}\nremove=true\n\n".encode()
    with pytest.raises(FailedPrecondition):
        client.set(DeviceUpdate(listen_port=1))


def test_client_without_a_device(tmp_path: Path) -> None:
    client = UapiClient(tmp_path / "absent.sock", timeout_s=1)
    assert not client.alive()
    with pytest.raises(Unavailable):
        client.get()
