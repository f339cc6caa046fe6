"""Where the CLI finds its client certificate: flags, then environment, then
`~/.config/novacron/` (or $XDG_CONFIG_HOME/novacron): `ca.crt`, `client.crt`, `client.key`,
as `novacron-controller issue-client NAME --role ROLE --out DIR` writes them.

With a complete set the CLI speaks mutual TLS and trusts only that CA. Without any, it speaks
plain text (for a controller started with --insecure); a half set is an error, never a
silent fall-back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from cli.errors import CLIError

ENV = {"ca": "NOVACRON_CA", "cert": "NOVACRON_CERT", "key": "NOVACRON_KEY"}
FILES = {"ca": "ca.crt", "cert": "client.crt", "key": "client.key"}


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    ca: Path
    cert: Path
    key: Path

    def channel_credentials(self) -> grpc.ChannelCredentials:
        try:
            ca, cert, key = (p.read_bytes() for p in (self.ca, self.cert, self.key))
        except OSError as exc:
            raise CLIError("INVALID_ARGUMENT", f"cannot read credentials: {exc}") from None
        return grpc.ssl_channel_credentials(ca, key, cert)


@dataclass(frozen=True, slots=True)
class BearerCredentials:
    """A service token (`novacron service-token create`), over TLS verified against `ca`:
    for the controller's join port, which asks no client certificate."""

    ca: Path
    token: str

    def channel_credentials(self) -> grpc.ChannelCredentials:
        try:
            ca = self.ca.read_bytes()
        except OSError as exc:
            raise CLIError("INVALID_ARGUMENT", f"cannot read the CA: {exc}") from None
        return grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(ca), grpc.access_token_call_credentials(self.token)
        )


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "novacron"


def resolve(
    ca: str | None,
    cert: str | None,
    key: str | None,
    insecure: bool,
    token: str | None = None,
) -> ClientCredentials | BearerCredentials | None:
    """The credentials to use, or None for plain text (--insecure, or none anywhere)."""
    if insecure or os.environ.get("NOVACRON_INSECURE", "") in ("1", "true", "yes"):
        return None
    token = token or os.environ.get("NOVACRON_TOKEN", "").strip() or None
    if token:
        ca_path = ca or os.environ.get(ENV["ca"], "").strip() or str(config_dir() / FILES["ca"])
        return BearerCredentials(Path(ca_path).expanduser(), token)
    given = {"ca": ca, "cert": cert, "key": key}
    found: dict[str, Path] = {}
    for what, value in given.items():
        value = value or os.environ.get(ENV[what], "").strip() or None
        if value:
            found[what] = Path(value).expanduser()
    if not found:
        default = config_dir()
        if all((default / name).is_file() for name in FILES.values()):
            found = {what: default / name for what, name in FILES.items()}
    if not found:
        return None
    missing = [f"--{w} (or {ENV[w]})" for w in FILES if w not in found]
    if missing:
        raise CLIError(
            "INVALID_ARGUMENT", f"incomplete client credentials: {', '.join(missing)} missing"
        )
    return ClientCredentials(found["ca"], found["cert"], found["key"])


def open_channel(
    target: str,
    credentials: ClientCredentials | BearerCredentials | None,
    options: list[tuple[str, str]],
) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials.channel_credentials(), options=options)
