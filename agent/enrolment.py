"""Joining an installation (kubeadm's model): `--join-token ID.SECRET --ca-pin sha256:HEX`.

1. Fetch the controller's certificate chain from the join port without trusting it, and keep
   the CA certificate whose public key matches the pin. No match: stop, the token is never
   sent (whoever answers on that address is not our controller).
2. Call `Enroll(token, node id, CSR)` over TLS verified against that CA.
3. Keep key, certificate and CA in the state dir; from then on the token is not needed.
"""

from __future__ import annotations

import _ssl
import asyncio
import hashlib
import socket
import ssl
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.credentials import NodeCredentials, new_key_and_request, save
from shared.errors import ConfigError, PermissionDenied, Unavailable
from shared.pb.v1 import agent_pb2 as apb
from shared.pb.v1 import agent_pb2_grpc

TIMEOUT_S = 15.0


def pin_of(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def enrol_address_of(controller: str, enrol_address: str) -> str:
    """Where Enroll is served: given, or the controller's host at its port + 1."""
    if enrol_address:
        return enrol_address
    host, _, port = controller.rpartition(":")
    return f"{host}:{int(port) + 1}"


def fetch_pinned_ca(address: str, pin: str, timeout_s: float = TIMEOUT_S) -> bytes:
    """The CA certificate (PEM) in the chain `address` presents whose key has `pin`."""
    host, _, port = address.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # nothing is trusted from this connection but the pin
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host.strip("[]")) as tls,
        ):
            chain = _unverified_chain(tls)
    except (OSError, ssl.SSLError) as exc:
        raise Unavailable(f"cannot reach the controller's join port {address}: {exc}") from None
    for der in chain:
        cert = x509.load_der_x509_certificate(der)
        if pin_of(cert) == pin.lower():
            return cert.public_bytes(serialization.Encoding.PEM)
    raise PermissionDenied(
        f"the server at {address} presents no CA with pin {pin}: not sending the join token "
        "(wrong --ca-pin, or not our controller)"
    )


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """DER certificates as sent. Python 3.13 has this public; 3.10 to 3.12 have it on the
    private `_sslobj`, returning `_ssl.Certificate` objects."""
    public = getattr(tls, "get_unverified_chain", None)
    certs: list[Any] = public() if public is not None else tls._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    return [c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER) for c in certs or []]


async def enrol(
    state_dir: Path, node_id: str, controller: str, enrol_address: str, token: str, pin: str
) -> NodeCredentials:
    if not pin.startswith("sha256:") or len(pin) != 7 + 64:
        raise ConfigError(
            "agent.ca_pin: expected sha256:<64 hex digits> (from `novacron token create`)"
        )
    address = enrol_address_of(controller, enrol_address)
    ca_pem = await asyncio.to_thread(fetch_pinned_ca, address, pin)
    key_pem, csr_pem = new_key_and_request(node_id)
    request = apb.EnrolRequest(token=token, node_id=node_id, csr_pem=csr_pem)
    credentials = grpc.ssl_channel_credentials(ca_pem)
    async with grpc.aio.secure_channel(address, credentials) as channel:
        try:
            answer = await agent_pb2_grpc.AgentSessionStub(channel).Enroll(
                request, timeout=TIMEOUT_S
            )
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT):
                raise PermissionDenied(f"enrolment refused: {err.details()}") from None
            raise Unavailable(f"enrolment failed ({err.code().name}): {err.details()}") from None
    result = NodeCredentials(ca_pem, key_pem, answer.certificate_pem)
    save(state_dir, result)
    return result
