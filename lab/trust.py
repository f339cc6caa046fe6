"""The lab runs secure, as a real site does (issue 11, item 5): `novacron-controller init`
makes the installation CA; the lab, as the operator, holds the admin client certificate
init writes, creates one join token per site and hands it to that site's agent, which enrols
over the WAN and speaks mutual TLS from then on.

Everything on the host that talks to the lab's controller (the lab itself, its tests, the
benchmarks, the `novacron` CLI in the demo) uses the admin credentials from here.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import grpc

from lab.errors import LabError
from lab.processes import BIN

CA, CERT, KEY = "ca.crt", "client.crt", "client.key"


def admin_dir(state_dir: Path) -> Path:
    """Where `novacron-controller init` put the admin's credentials (controller/pki_cli.py)."""
    return state_dir / "controller" / "pki" / "admin"


def init_controller(state_dir: Path, addresses: list[str]) -> str:
    """The CA, serving certificate (for `addresses`) and admin set; returns the CA pin."""
    argv = [str(BIN / "novacron-controller"), "init", "--state-dir", str(state_dir / "controller")]
    for address in addresses:
        argv += ["--advertise-address", address]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise LabError(f"novacron-controller init failed: {done.stderr.strip()}")
    for line in done.stdout.splitlines():
        if line.startswith("CA pin:"):
            return line.split(":", 1)[1].strip()
    raise LabError(f"novacron-controller init printed no CA pin:\n{done.stdout}")


def credentials(client_dir: Path) -> grpc.ChannelCredentials:
    ca, cert, key = ((client_dir / n).read_bytes() for n in (CA, CERT, KEY))
    return grpc.ssl_channel_credentials(ca, key, cert)


def channel(address: str, client_dir: Path) -> grpc.Channel:
    """A channel to the lab's controller with the admin's client certificate."""
    return grpc.secure_channel(address, credentials(client_dir))


def cli_env(client_dir: Path) -> dict[str, str]:
    """The environment for `novacron` commands run against the lab (cli/credentials.py)."""
    return {
        **os.environ,
        "NOVACRON_CA": str(client_dir / CA),
        "NOVACRON_CERT": str(client_dir / CERT),
        "NOVACRON_KEY": str(client_dir / KEY),
    }


def join_token(address: str, client_dir: Path, node_id: str, timeout_s: float = 30.0) -> str:
    """A one-use token for `node_id`, once the controller answers (it may still be starting)."""
    from shared.pb.v1 import admin_pb2 as adpb
    from shared.pb.v1 import admin_pb2_grpc

    request = adpb.CreateJoinTokenRequest(
        node_id=node_id, uses=1, ttl_seconds=3600, description="novacron-lab"
    )
    deadline = time.monotonic() + timeout_s
    with channel(address, client_dir) as ch:
        while True:
            try:
                created = admin_pb2_grpc.AdminAPIStub(ch).CreateJoinToken(request, timeout=5)
                return str(created.secret_token)
            except grpc.RpcError as err:
                if err.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise LabError(f"cannot create a join token for {node_id}: {err}") from None
            time.sleep(0.2)
