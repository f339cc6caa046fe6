"""X25519 key pairs made on the node. The private key is written 0600 under the agent's state
dir and never leaves the node; only the public key travels.

`cryptography` is used when importable; otherwise `wg genkey` / `wg pubkey` (wireguard-tools),
with the private key passed on stdin, never in argv (argv is world-readable in /proc).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import stat
import subprocess
from pathlib import Path

import structlog

from agent.wireguard.base import PrivateKey, PublicKey
from shared.errors import FailedPrecondition, Internal, NovaCronError

log = structlog.get_logger(__name__)

WG_TIMEOUT_S = 5.0


def _have_cryptography() -> bool:
    return importlib.util.find_spec("cryptography") is not None


def _wg(args: list[str], stdin: str = "") -> str:
    if shutil.which("wg") is None:
        raise FailedPrecondition("neither `cryptography` nor `wg` (wireguard-tools) is installed")
    try:
        proc = subprocess.run(
            ["wg", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=WG_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Internal(f"wg {args[0]}: {exc}") from None
    if proc.returncode != 0:
        raise Internal(f"wg {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def generate_private_key() -> PrivateKey:
    if _have_cryptography():
        from cryptography.hazmat.primitives.asymmetric.x25519 import (  # type: ignore[import-not-found,unused-ignore]
            X25519PrivateKey,
        )
        from cryptography.hazmat.primitives.serialization import (  # type: ignore[import-not-found,unused-ignore]
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        raw = X25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )
        return PrivateKey(raw)
    return PrivateKey.from_base64(_wg(["genkey"]))


def public_key_of(private: PrivateKey) -> PublicKey:
    if _have_cryptography():
        from cryptography.hazmat.primitives.asymmetric.x25519 import (  # type: ignore[import-not-found,unused-ignore]
            X25519PrivateKey,
        )
        from cryptography.hazmat.primitives.serialization import (  # type: ignore[import-not-found,unused-ignore]
            Encoding,
            PublicFormat,
        )

        pub = X25519PrivateKey.from_private_bytes(private.raw).public_key()
        return PublicKey(pub.public_bytes(Encoding.Raw, PublicFormat.Raw))
    return PublicKey.from_base64(_wg(["pubkey"], stdin=private.to_base64() + "\n"))


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Atomically replace `path` with `key` (base64, mode 0600): a crash leaves the old key or
    the new one, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key.to_base64() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def load_or_create_private_key(path: Path) -> PrivateKey:
    """The node's key: read it, or make one the first time."""
    if not path.exists():
        key = generate_private_key()
        write_private_key(path, key)
        log.info("wireguard key pair generated", path=str(path))
        return key
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("wireguard private key was readable by others; fixed", path=str(path))
        path.chmod(0o600)
    try:
        return PrivateKey.from_base64(path.read_text())
    except NovaCronError as exc:
        raise FailedPrecondition(f"private key file {path} is corrupt: {exc}") from None
