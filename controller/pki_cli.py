"""`novacron-controller init` and `novacron-controller issue-client`: the commands that use
the CA key directly, on the controller's host. Run as root (as an operator will, after installing
the package), what they write in the state dir is handed to the dir's owner, the `novacron` user
the service runs as: a root-owned CA would stop the service from reading it.

init makes the CA, the serving certificate and a first admin client certificate (in
STATE_DIR/pki/admin, what the CLI reads when copied to ~/.config/novacron). issue-client makes
more, for operators and services, each with one role.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from controller.issuer import Issuer
from controller.pki import Pki, init_pki, require_pki, rotate_serving, write_private
from shared.errors import AlreadyExists, NovaCronError
from shared.identity import ClientIdentity, Role, check_name

ADMIN_DIR = "admin"


def write_client_set(directory: Path, pki: Pki, identity: ClientIdentity) -> None:
    """ca.crt, client.crt and client.key (0600) in `directory`, never over existing files."""
    names = ("ca.crt", "client.crt", "client.key")
    existing = [n for n in names if (directory / n).exists()]
    if existing:
        raise AlreadyExists(f"{directory} holds {', '.join(existing)} already; choose --out")
    key_pem, issued = Issuer(pki).issue_client(identity)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(directory / "client.key", key_pem)
    (directory / "client.crt").write_bytes(issued.certificate_pem)
    (directory / "ca.crt").write_bytes(pki.ca_cert.read_bytes())


def hand_to_owner(state_dir: Path, tree: Path) -> None:
    """`tree` (in `state_dir`) and everything in it owned by the state dir's owner, when we are
    root and it is not: modes are kept, so keys stay 0600 and directories 0700."""
    if os.geteuid() != 0:
        return
    owner = state_dir.stat()
    if owner.st_uid == 0:
        return
    for directory, _, files in os.walk(tree):
        for path in [directory, *(os.path.join(directory, f) for f in files)]:
            os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)


def _usage(directory: Path) -> str:
    return (
        f"use it with: mkdir -p ~/.config/novacron && cp {directory}/* ~/.config/novacron/\n"
        f"         or: export NOVACRON_CA={directory}/ca.crt NOVACRON_CERT={directory}/"
        f"client.crt NOVACRON_KEY={directory}/client.key"
    )


def init(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="novacron-controller init",
        description="Create the installation's CA, the controller's serving certificate and "
        "an admin client certificate in STATE_DIR/pki (keys 0600), once; print the CA's pin "
        "for joining agents.",
    )
    p.add_argument("--state-dir", type=Path, required=True, help="the controller's state dir")
    p.add_argument(
        "--advertise-address",
        action="append",
        required=True,
        metavar="ADDRESS",
        help="an IP address or DNS name agents and clients dial (repeatable): the "
        "certificate's subject alternative names",
    )
    args = p.parse_args(argv)
    try:
        pki = init_pki(args.state_dir, args.advertise_address)
        admin = pki.directory / ADMIN_DIR
        write_client_set(admin, pki, ClientIdentity("admin", Role.ADMIN))
        hand_to_owner(args.state_dir, pki.directory)
    except NovaCronError as exc:
        print(f"novacron-controller init: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"novacron-controller init: cannot write {args.state_dir}: {exc}", file=sys.stderr)
        return 1
    print(f"CA certificate:      {pki.ca_cert}")
    print(f"serving certificate: {pki.server_cert} ({', '.join(args.advertise_address)})")
    print(f"admin credentials:   {admin} (client:admin, role admin)")
    print(f"CA pin:              {pki.pin()}")
    print(_usage(admin))
    return 0


def rotate_serving_cert(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="novacron-controller rotate-serving-cert",
        description="A new serving key and certificate; a running controller uses them from "
        "its next handshake on, and open streams stay up.",
    )
    p.add_argument("--state-dir", type=Path, required=True, help="the controller's state dir")
    p.add_argument(
        "--advertise-address", action="append", required=True, metavar="ADDRESS",
        help="an IP address or DNS name agents and clients dial (repeatable)",
    )  # fmt: skip
    args = p.parse_args(argv)
    try:
        pki = require_pki(args.state_dir)
        rotate_serving(pki, args.advertise_address)
        hand_to_owner(args.state_dir, pki.directory)
    except NovaCronError as exc:
        print(f"novacron-controller rotate-serving-cert: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"novacron-controller rotate-serving-cert: {exc}", file=sys.stderr)
        return 1
    print(f"serving certificate: {pki.server_cert} ({', '.join(args.advertise_address)})")
    return 0


def issue_client(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="novacron-controller issue-client",
        description="A client certificate of this installation for an operator or a service.",
    )
    p.add_argument("name", help="who it is for (a-z, 0-9, '-'): the audit's actor client:NAME")
    p.add_argument("--role", required=True, choices=[r.label for r in Role])
    p.add_argument("--state-dir", type=Path, required=True, help="the controller's state dir")
    p.add_argument("--out", type=Path, required=True, help="directory to write the files to")
    args = p.parse_args(argv)
    try:
        identity = ClientIdentity(check_name("name", args.name), Role.parse(args.role))
        write_client_set(args.out, require_pki(args.state_dir), identity)
    except NovaCronError as exc:
        print(f"novacron-controller issue-client: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"novacron-controller issue-client: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: client:{args.name}, role {args.role}")
    print(_usage(args.out))
    return 0
