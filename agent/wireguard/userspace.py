"""WireGuard in userspace: `wireguard-go` started, supervised and configured over UAPI.

For hosts without the kernel module (this one, the lab). This module is the driver's
configuration: its key and peers, set over UAPI. agent.wireguard.wireguard_go runs the process.

The driver holds the desired state (key, port, peers) and treats the process as disposable:
if wireguard-go dies it is restarted and the whole state re-applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from agent.wireguard.base import (
    DeviceStatus,
    Endpoint,
    IPNetwork,
    PeerChanges,
    PeerConfig,
    PublicKey,
)
from agent.wireguard.keys import generate_private_key, public_key_of, write_private_key
from agent.wireguard.uapi import DeviceUpdate, PeerUpdate
from agent.wireguard.wireguard_go import IP_TIMEOUT_S as IP_TIMEOUT_S
from agent.wireguard.wireguard_go import NO_PSK as NO_PSK
from agent.wireguard.wireguard_go import STABLE_AFTER_S as STABLE_AFTER_S
from agent.wireguard.wireguard_go import STOP_TIMEOUT_S as STOP_TIMEOUT_S
from agent.wireguard.wireguard_go import WireGuardGoProcess, _full_update
from shared.errors import AlreadyExists, Internal, InvalidArgument, NotFound


class UserspaceWireGuard(WireGuardGoProcess):
    """Implements agent.wireguard.base.WireGuardDriver with wireguard-go."""

    # --- identity ---------------------------------------------------------------------------

    @property
    def public_key(self) -> PublicKey:
        with self._lock:
            if self._public is None:
                self._load_key()
            assert self._public is not None
            return self._public

    @property
    def listen_port(self) -> int:
        return self._port

    # --- peers ------------------------------------------------------------------------------

    def add_peer(self, peer: PeerConfig) -> None:
        with self._lock:
            self._ensure_device()
            self._check_not_self(peer.public_key)
            if peer.public_key in self._peers:
                raise AlreadyExists(f"peer {peer.public_key} is already configured")
            self._uapi.set(DeviceUpdate(peers=(_full_update(peer),)))
            self._record(peer)
            self.log.info("peer added", peer=str(peer.public_key), endpoint=str(peer.endpoint))

    def update_peer(
        self,
        public_key: PublicKey,
        *,
        endpoint: Endpoint | None = None,
        allowed_ips: Sequence[IPNetwork] | None = None,
        persistent_keepalive_s: int | None = None,
    ) -> PeerConfig:
        with self._lock:
            self._ensure_device()
            current = self._peers.get(public_key)
            if current is None:
                raise NotFound(f"peer {public_key} is not configured")
            changed = dataclasses.replace(
                current,
                endpoint=current.endpoint if endpoint is None else endpoint,
                allowed_ips=current.allowed_ips if allowed_ips is None else tuple(allowed_ips),
                persistent_keepalive_s=(
                    current.persistent_keepalive_s
                    if persistent_keepalive_s is None
                    else persistent_keepalive_s
                ),
            )  # validates (InvalidArgument) before anything is sent
            update = PeerUpdate(
                public_key=public_key,
                update_only=True,
                endpoint=endpoint,
                persistent_keepalive_s=persistent_keepalive_s,
                replace_allowed_ips=allowed_ips is not None,
                allowed_ips=changed.allowed_ips if allowed_ips is not None else (),
            )
            self._uapi.set(DeviceUpdate(peers=(update,)))
            self._record(changed)
            self.log.info("peer updated", peer=str(public_key), endpoint=str(changed.endpoint))
            return changed

    def remove_peer(self, public_key: PublicKey) -> None:
        with self._lock:
            self._ensure_device()
            if public_key not in self._peers:
                raise NotFound(f"peer {public_key} is not configured")
            self._uapi.set(DeviceUpdate(peers=(PeerUpdate(public_key=public_key, remove=True),)))
            del self._peers[public_key]
            self.log.info("peer removed", peer=str(public_key))

    def set_peers(self, peers: Sequence[PeerConfig]) -> PeerChanges:
        with self._lock:
            self._ensure_device()
            desired: dict[PublicKey, PeerConfig] = {}
            for peer in peers:  # validate everything before touching the device
                self._check_not_self(peer.public_key)
                if peer.public_key in desired:
                    raise InvalidArgument(f"peer {peer.public_key} is listed twice")
                desired[peer.public_key] = peer
            removed = sorted(k for k in self._peers if k not in desired)
            updated = sorted(
                k for k in desired if k in self._peers and self._peers[k] != desired[k]
            )
            added = sorted(k for k in desired if k not in self._peers)
            for key in removed:
                self.remove_peer(key)
            for key in updated:
                self._uapi.set(DeviceUpdate(peers=(_full_update(desired[key], update_only=True),)))
                self._record(desired[key])
            for key in added:
                self.add_peer(desired[key])
            return PeerChanges(tuple(added), tuple(removed), tuple(updated))

    def peers(self) -> list[PeerConfig]:
        with self._lock:
            return [self._peers[k] for k in sorted(self._peers)]

    def status(self) -> DeviceStatus:
        with self._lock:
            self._ensure_device()
            return self._uapi.get()

    def rotate_private_key(self) -> PublicKey:
        with self._lock:
            self._ensure_device()
            new = generate_private_key()
            public = public_key_of(new)
            if public in self._peers:
                raise Internal("generated key pair collides with a peer's key")
            # The file is the source of truth: a restart after a failed set still uses the new key.
            write_private_key(self._key_path, new)
            self._private, self._public = new, public
            self._uapi.set(DeviceUpdate(private_key=new))
            self.log.info("private key rotated", public_key=str(public))
            return public

    def _check_not_self(self, key: PublicKey) -> None:
        if key == self.public_key:
            raise InvalidArgument(f"peer {key} is this node's own public key")

    def _record(self, peer: PeerConfig) -> None:
        """Mirror the device: an allowed IP given to one peer is taken from any other."""
        self._peers[peer.public_key] = peer
        claimed = set(peer.allowed_ips)
        for key, other in list(self._peers.items()):
            if key != peer.public_key and claimed & set(other.allowed_ips):
                kept = tuple(n for n in other.allowed_ips if n not in claimed)
                self._peers[key] = dataclasses.replace(other, allowed_ips=kept)
                self.log.info("allowed ips moved", to=str(peer.public_key), from_=str(key))
