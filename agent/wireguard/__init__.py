"""WireGuard for the edge mesh: one driver interface (base.py); the userspace driver
(wireguard-go over UAPI) is the one this project ships, since the lab host has no kernel module."""

from agent.wireguard.base import (
    DeviceStatus,
    Endpoint,
    InterfaceConfig,
    PeerChanges,
    PeerConfig,
    PeerStatus,
    PresharedKey,
    PrivateKey,
    PublicKey,
    WireGuardDriver,
    interface_name,
)
from agent.wireguard.kernel import kernel_wireguard_available
from agent.wireguard.userspace import UserspaceWireGuard

__all__ = [
    "DeviceStatus",
    "Endpoint",
    "InterfaceConfig",
    "PeerChanges",
    "PeerConfig",
    "PeerStatus",
    "PresharedKey",
    "PrivateKey",
    "PublicKey",
    "UserspaceWireGuard",
    "WireGuardDriver",
    "interface_name",
    "kernel_wireguard_available",
]
