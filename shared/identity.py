"""Who a certificate speaks for: the one URI SAN our CA writes into every client certificate.

    urn:novacron:node:<node id>:<epoch>     an agent (epoch: see controller/core/enrolment.py)
    urn:novacron:client:<name>:<role>       an operator or a service

The controller reads identity only from here, never from what a message says about itself
(issue 11, item 3). Node ids and client names are DNS-label style, so ':' cannot occur in them.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from shared.errors import InvalidArgument

PREFIX = "urn:novacron:"
NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")  # a hostname label, dots allowed


class Role(enum.IntEnum):
    """Client roles, each allowed what the ones below it are."""

    VIEWER = 1  # reads
    OPERATOR = 2  # deploys, migrates, drains, cordons
    ADMIN = 3  # tokens, node revocation, the audit trail

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            raise InvalidArgument(
                f"unknown role {text[:40]!r} (known: viewer, operator, admin)"
            ) from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    node_id: str
    epoch: int

    @property
    def uri(self) -> str:
        return f"{PREFIX}node:{self.node_id}:{self.epoch}"

    @property
    def actor(self) -> str:
        return f"node:{self.node_id}"


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    name: str
    role: Role

    @property
    def uri(self) -> str:
        return f"{PREFIX}client:{self.name}:{self.role.label}"

    @property
    def actor(self) -> str:
        return f"client:{self.name}"


@dataclass(frozen=True, slots=True)
class ServiceIdentity:
    """A caller with a bearer token (no certificate): a service of one role."""

    name: str
    role: Role
    token_id: str

    @property
    def actor(self) -> str:
        return f"service:{self.name}"


Identity = NodeIdentity | ClientIdentity | ServiceIdentity
CertIdentity = NodeIdentity | ClientIdentity  # what a certificate of ours can carry


def check_name(what: str, name: str) -> str:
    """A node id or client name: lowercase DNS label (what certificates and terminals take)."""
    if not NAME.match(name):
        raise InvalidArgument(
            f"{what} {name[:64]!r}: must be 1-63 characters of a-z, 0-9, '.' and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def parse_uri(uri: str) -> Identity | None:
    """The identity a SAN URI names, or None if it is not one of ours (or malformed)."""
    if not uri.startswith(PREFIX):
        return None
    parts = uri[len(PREFIX) :].split(":")
    if len(parts) != 3 or not NAME.match(parts[1]):
        return None
    kind, name, extra = parts
    if kind == "node" and extra.isdigit():
        return NodeIdentity(name, int(extra))
    if kind == "client":
        try:
            return ClientIdentity(name, Role.parse(extra))
        except InvalidArgument:
            return None
    return None
