"""The installation's CA and the controller's serving certificate (controller/pki.py,
issue 11 item 1): made once, keys 0600, the chain usable by a real TLS handshake with the
advertised names checked, and a clear error for what is missing or wrong."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controller.config import ControllerConfig
from controller.main import main
from controller.pki import init_pki, pki_of, require_pki
from controller.server import ControllerServer
from shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from tests.conftest import require_backend


def test_init_makes_a_ca_and_a_serving_certificate_for_the_advertised_names(
    tmp_path: Path,
) -> None:
    pki = init_pki(tmp_path, ["10.213.0.1", "controller.example.net"])
    for key in (pki.ca_key, pki.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.213.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["controller.example.net"]
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    spki = ca.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert pki.pin() == "sha256:" + hashlib.sha256(spki).hexdigest()


def test_a_tls_client_trusting_the_ca_accepts_the_controller_by_its_address(
    tmp_path: Path,
) -> None:
    pki = init_pki(tmp_path, ["127.0.0.1"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    left, right = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(left, server_side=True) as tls:
                tls.sendall(tls.recv(5))
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    with client_ctx.wrap_socket(right, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"hello")
        assert tls.recv(5) == b"hello"
        assert tls.version() == "TLSv1.3"
    thread.join(timeout=10)
    assert not errors
    wrong = ssl.create_default_context(cafile=str(pki.ca_cert))
    left, right = socket.socketpair()
    threading.Thread(target=lambda: _quietly(server_ctx, left), daemon=True).start()
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        wrong.wrap_socket(right, server_hostname="10.9.9.9")
    right.close()


def _quietly(ctx: ssl.SSLContext, sock: socket.socket) -> None:
    try:
        with ctx.wrap_socket(sock, server_side=True):
            pass
    except (ssl.SSLError, OSError):
        pass


def test_a_second_init_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    pki = init_pki(tmp_path, ["10.0.0.1"])
    before = {p: p.read_bytes() for p in pki.directory.iterdir()}
    with pytest.raises(AlreadyExists, match="would orphan every enrolled node"):
        init_pki(tmp_path, ["10.0.0.2"])
    assert {p: p.read_bytes() for p in pki.directory.iterdir()} == before


@pytest.mark.parametrize("address", ["", "not a name", "-bad.example", "x" * 300, "a..b"])
def test_a_bad_advertised_address_is_refused_and_writes_nothing(
    tmp_path: Path, address: str
) -> None:
    with pytest.raises(InvalidArgument, match="--advertise-address"):
        init_pki(tmp_path, ["10.0.0.1", address])
    assert not pki_of(tmp_path).directory.exists()


def test_no_advertised_address_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="at least one --advertise-address"):
        init_pki(tmp_path, [])


def test_a_state_dir_without_a_ca_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        require_pki(tmp_path)
    assert f"novacron-controller init --state-dir {tmp_path}" in str(caught.value)
    init_pki(tmp_path, ["10.0.0.1"])
    assert require_pki(tmp_path).directory == tmp_path / "pki"


def test_the_init_command_prints_the_pin_and_refuses_a_second_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["init", "--state-dir", str(tmp_path), "--advertise-address", "10.0.0.1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"CA pin:              {pki_of(tmp_path).pin()}" in out
    assert "PRIVATE KEY" not in out  # keys are never printed
    assert main(argv) == 2
    assert "holds a CA already" in capsys.readouterr().err


def test_init_as_root_hands_the_pki_to_the_state_dirs_owner(tmp_path: Path) -> None:
    """As after installing the package: the state dir is the service user's, init runs as root.
    A root-owned CA (0600) would keep the service from reading its own key."""
    require_backend(os.geteuid() == 0, "needs root (chown)")
    state = tmp_path / "controller"
    state.mkdir(mode=0o700)
    os.chown(state, 4242, 4343)  # the service user, any non-root id
    argv = ["--state-dir", str(state), "--advertise-address", "10.0.0.1"]
    assert main(["init", *argv]) == 0
    assert main(["rotate-serving-cert", *argv]) == 0
    made = [state / "pki", *(state / "pki").rglob("*")]
    assert len(made) >= 8
    assert {(p.stat().st_uid, p.stat().st_gid) for p in made} == {(4242, 4343)}
    assert stat.S_IMODE((state / "pki/ca.key").stat().st_mode) == 0o600  # modes kept
    assert stat.S_IMODE((state / "pki/admin").stat().st_mode) == 0o700


async def test_a_controller_started_without_insecure_says_what_to_run(tmp_path: Path) -> None:
    config = ControllerConfig(
        listen="127.0.0.1:0", state_dir=tmp_path, insecure=False, metrics_listen=""
    )
    with pytest.raises(FailedPrecondition, match="novacron-controller init --state-dir"):
        await ControllerServer(config).start()
    assert not (tmp_path / "controller.db").exists()  # refused before touching any state
    init_pki(tmp_path, ["127.0.0.1"])
    server = ControllerServer(config)
    try:
        assert await server.start() > 0
        assert server.enrol_port > 0  # and the join port beside it
    finally:
        await server.stop(grace=0)
