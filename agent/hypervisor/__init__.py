"""Hypervisor drivers: the agent's only way to touch VMs."""
