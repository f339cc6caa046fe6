"""Notable changes in what the controller persisted, as feed events (controller/event_feed.py).

Fed every `Persist` the runner wrote, so it sees exactly the durable changes, after they are
durable: audited API requests, migration phases, failover outcomes, VMs deleted, nodes
registered and removed. A migration's progress writes (bytes moved) are not events; only a
change of phase is.
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.core.instructions import Persist
from controller.event_feed import FeedEvent
from controller.records import FailoverRecord, MigrationPhase, MigrationRecord


class PersistFeed:
    """Remembers the last phase of each migration and outcome of each failover it reported."""

    def __init__(self, known_nodes: Iterable[str] = ()) -> None:
        self._phases: dict[str, MigrationPhase] = {}
        self._failovers: dict[str, str] = {}
        self._nodes: set[str] = set(known_nodes)

    def events(self, persist: Persist, now: float) -> list[FeedEvent]:
        out: list[FeedEvent] = []
        for entry in persist.audit:
            ok = entry.result == "ok"
            detail = f" ({entry.detail})" if entry.detail else ""
            out.append(
                FeedEvent(
                    kind=entry.action,
                    subject=entry.target,
                    message=f"{entry.actor or 'api'}: {entry.action} {entry.target}{detail}"
                    + ("" if ok else f": {entry.result}"),
                    at=entry.at,
                    severity="info" if ok else "warning",
                    fields=(
                        ("actor", entry.actor),
                        ("result", entry.result),
                        ("request_id", entry.request_id),
                    ),
                )
            )
        out.extend(e for mig in persist.migrations if (e := self._migration(mig, now)))
        out.extend(e for rec in persist.failovers if (e := self._failover(rec, now)))
        for tomb in persist.tombstones:
            text = f"VM {tomb.name} deleted (generation {tomb.generation})"
            out.append(FeedEvent("vm.deleted", f"vm {tomb.name}", text, now))
        for node in persist.nodes:
            if node.node_id not in self._nodes:
                self._nodes.add(node.node_id)
                text = f"node {node.node_id} registered ({node.info.arch}, {node.info.hostname})"
                out.append(FeedEvent("node.registered", f"node {node.node_id}", text, now))
        for node_id in persist.forget_nodes:
            self._nodes.discard(node_id)
            text = f"node {node_id} removed"
            out.append(FeedEvent("node.removed", f"node {node_id}", text, now))
        return out

    def _migration(self, mig: MigrationRecord, now: float) -> FeedEvent | None:
        if self._phases.get(mig.id) is mig.phase:
            return None
        if mig.phase.terminal:
            self._phases.pop(mig.id, None)
        else:
            self._phases[mig.id] = mig.phase
        text = f"migration {mig.id[:8]} of VM {mig.vm_name} ({mig.source} -> {mig.target}, "
        text += f"{mig.mode}): {mig.phase.value}"
        if mig.phase is MigrationPhase.FAILED and mig.error:
            text += f": {mig.error}"
        elif mig.phase is MigrationPhase.SUCCEEDED and mig.downtime_ms:
            text += f" (downtime {mig.downtime_ms:.0f} ms)"
        return FeedEvent(
            kind=f"migration.{mig.phase.value}",
            subject=f"vm {mig.vm_name}",
            message=text,
            at=mig.updated_at or now,
            severity="warning" if mig.phase is MigrationPhase.FAILED else "info",
            fields=(
                ("migration_id", mig.id),
                ("phase", mig.phase.value),
                ("source", mig.source),
                ("target", mig.target),
            ),
        )

    def _failover(self, rec: FailoverRecord, now: float) -> FeedEvent | None:
        outcome = rec.outcome or "started"
        if self._failovers.get(rec.id) == outcome:
            return None
        if rec.active:
            self._failovers[rec.id] = outcome
        else:
            self._failovers.pop(rec.id, None)
        text = f"failover of VM {rec.vm_name} from {rec.source} to {rec.target}: {outcome}"
        if rec.error:
            text += f": {rec.error}"
        return FeedEvent(
            kind=f"failover.{outcome}",
            subject=f"vm {rec.vm_name}",
            message=text,
            at=now,
            severity="critical" if outcome == "failed" else "info",
            fields=(("failover_id", rec.id), ("source", rec.source), ("target", rec.target)),
        )
