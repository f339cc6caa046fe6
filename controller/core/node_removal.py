"""`novacron node remove NODE`: forget a node that is gone (issue 11, item 9). Before it, no
RPC removed a node, so a node registered by mistake, or by a hostile agent, stayed in every
listing for good.

Refused while the node is connected (it is not gone) or still has VMs, unless forced: then
its VMs' records are forgotten behind tombstones, so copies that come back with the node are
destroyed as deleted, never re-adopted. Its credential is revoked: its certificates no
longer connect, and enrolling it again needs a token bound to its id.
"""

from __future__ import annotations

from dataclasses import replace

from controller.core import events as ev
from controller.core.drain import DrainMixin
from shared.errors import FailedPrecondition, NotFound


class NodeRemovalMixin(DrainMixin):
    def on_node_remove(self, event: ev.NodeRemoveRequested) -> None:
        node_id = event.node_id
        if node_id not in self.state.nodes:
            raise NotFound(f"no node {node_id!r}")
        connected = node_id in self.state.sessions
        vms = sorted(
            (vm for vm in self.state.vms.values() if vm.node_id == node_id),
            key=lambda vm: vm.spec.name,
        )
        if not event.force:
            if connected:
                raise FailedPrecondition(
                    f"node {node_id} is connected, so it is not gone: stop its agent or "
                    f"`novacron node revoke {node_id}` first (or --force)"
                )
            if vms:
                names = ", ".join(vm.spec.name for vm in vms[:10])
                raise FailedPrecondition(
                    f"node {node_id} has {len(vms)} VM(s) ({names}): delete or move them "
                    "first, or --force (their records are forgotten; copies that come back "
                    "with the node are destroyed as deleted)"
                )
        for vm in vms:
            self.forget_vm(vm)
        session = self.state.sessions.get(node_id)
        if session is not None:
            self.close_session(node_id, session.session_id, "the node was removed", denied=True)
        self.journal.pop(self.state.nodes, node_id)
        self._out.nodes.pop(node_id, None)
        self._out.forget_nodes[node_id] = None
        for table in (
            self.state.sessions,
            self.state.histories,
            self.state.disconnected_at,
            self.state.lost_at,
            self.state.declared_dead,
            self.state.hypervisor_problems,
            self.state.drains,
            self.state.ipam.held,
        ):
            if node_id in table:
                self.journal.pop(table, node_id)
        credential = self.state.credentials.get(node_id)
        if credential is not None and not credential.revoked:
            self.put_credential(replace(credential, revoked=True, epoch=credential.epoch + 1))
        self.state.fleet_changed()
        self.push_mesh()  # its peers drop it
        self.reply(event.stimulus_id, tuple(vm.spec.name for vm in vms))
