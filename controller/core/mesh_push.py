"""The mesh: versioned peer sets pushed to every member, and key rotation."""

from __future__ import annotations

from dataclasses import replace

from controller.core import events as ev
from controller.core.state import Join, Pending
from controller.core.vm_ops import VMOpsMixin
from controller.mesh import peer_set
from controller.records import VMRecord
from shared.commands import ApplyMesh, CommandResult, RotateKey
from shared.domain import DesiredState
from shared.errors import FailedPrecondition, NovaCronError
from shared.mesh import MeshConfig, MeshIdentity


class MeshMixin(VMOpsMixin):
    def mesh_members(self) -> dict[str, MeshIdentity]:
        return {n.node_id: n.mesh for n in self.state.nodes.values() if n.mesh is not None}

    def vm_routes(self) -> dict[str, tuple[str, ...]]:
        """node id -> the addresses of the VMs it hosts (what its peers route to it)."""
        routes: dict[str, list[str]] = {}
        for vm in self.state.vms.values():
            if vm.address and vm.desired is not DesiredState.DELETED:
                routes.setdefault(vm.node_id, []).append(vm.address)
        return {node_id: tuple(sorted(addrs)) for node_id, addrs in routes.items()}

    def mesh_config(self, node_id: str) -> MeshConfig:
        members = self.mesh_members()
        for member in members:  # every member holds its overlay address
            self.hold_address("mesh", member)
        return peer_set(
            node_id,
            members,
            self.state.ipam,
            self.state.mesh_version,
            vm_routes=self.vm_routes(),
            vm_pool=self.settings.vm_pool,
        )

    def push_mesh_if_routed(self, vm: VMRecord) -> None:
        if vm.address:
            self.push_mesh()

    def push_mesh(self, only: str = "") -> set[str]:
        """Send each connected member the peer set of a new version (or, with `only`, that
        member its current one). Idempotent on the agent: it applies only the difference.
        Returns the command ids."""
        if not only:
            self.count("mesh_version")
        targets = [only] if only else sorted(self.mesh_members())
        sent: set[str] = set()
        for node_id in targets:
            if self.state.connected(node_id) and node_id in self.mesh_members():
                config = self.mesh_config(node_id)
                sent.add(self.send(node_id, ApplyMesh(config), purpose="mesh"))
        return sent

    def on_mesh_result(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        if lost is not None:
            self.log.warning("mesh push failed", node_id=pending.node_id, error=str(lost))
            return
        assert result is not None
        node = self.state.nodes.get(pending.node_id)
        if node is not None and result.mesh is not None:
            self.put_node(replace(node, mesh_status=result.mesh))
        if result.error is not None:
            self.log.warning(
                "mesh config refused", node_id=pending.node_id, error=result.error.message
            )

    def on_rotate_key(self, event: ev.RotateKeyRequested) -> None:
        node = self.state.get_node(event.node_id)
        if node.mesh is None:
            raise FailedPrecondition(f"node {event.node_id!r} is not in the mesh")
        if not self.state.connected(event.node_id):
            raise FailedPrecondition(f"node {event.node_id!r} is not connected")
        self.send(event.node_id, RotateKey(), purpose="rotate", waiters=(event.stimulus_id,))

    def on_rotate_result(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        error = lost or (result.error.to_exception() if result and result.error else None)
        node = self.state.nodes.get(pending.node_id)
        if error is not None or result is None or result.mesh is None or node is None:
            for waiter in pending.waiters:
                self.reply_error(waiter, error or FailedPrecondition("no mesh status returned"))
            return
        status = result.mesh
        assert node.mesh is not None
        node = self.put_node(
            replace(node, mesh_status=status, mesh=replace(node.mesh, public_key=status.public_key))
        )
        self.audit("node.rotate_key", node.node_id, "")
        sent = self.push_mesh()
        for waiter in pending.waiters:  # answered once every peer has its new set
            join = Join(waiter, "rotate", frozenset(sent), node_id=node.node_id)
            if sent:
                self.join(join)
            else:
                self.finish_join(join)
