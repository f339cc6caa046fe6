"""The audit record of every API request the core handles (issue 11, item 6): who asked,
what, on what, and how it ended, in the same write as the request's own changes, so it is
stored before any reply (a failed write fails the call).

Requests that change nothing durable (a console read) are recorded too: who looked at a
guest's console is what an auditor asks first.
"""

from __future__ import annotations

import datetime as dt

from controller.core import events as ev

ACTIONS: dict[type[ev.Event], str] = {
    ev.DeployRequested: "vm.deploy",
    ev.DeployManyRequested: "vm.deploy-batch",
    ev.DeleteRequested: "vm.delete",
    ev.PowerRequested: "vm.power",
    ev.ConsoleRequested: "vm.console",
    ev.MigrateRequested: "vm.migrate",
    ev.CordonRequested: "node.cordon",
    ev.FailOverRequested: "node.failover",
    ev.DrainRequested: "node.drain",
    ev.RotateKeyRequested: "node.rotate-key",
    ev.AdoptRequested: "orphan.adopt",
    ev.DeleteOrphanRequested: "orphan.delete",
    ev.TokenCreateRequested: "token.create",
    ev.TokenRevokeRequested: "token.revoke",
    ev.EnrolRequested: "node.enrol",
    ev.CertificateIssued: "node.certificate",
    ev.NodeRevokeRequested: "node.revoke",
    ev.NodeRemoveRequested: "node.remove",
    ev.ServiceTokenCreateRequested: "service-token.create",
    ev.ServiceTokenRevokeRequested: "service-token.revoke",
}


def action_of(event: ev.Event) -> str:
    return ACTIONS.get(type(event), type(event).__name__)


def target_of(event: ev.Event) -> str:
    """What the request is about, as an operator would search for it."""
    if isinstance(event, ev.DeployRequested):
        return event.spec.name
    if isinstance(event, ev.DeployManyRequested):
        return ",".join(s.name for s in event.specs)
    if isinstance(
        event,
        ev.TokenCreateRequested
        | ev.TokenRevokeRequested
        | ev.ServiceTokenCreateRequested
        | ev.ServiceTokenRevokeRequested,
    ):
        return event.token_id
    for name in ("name_or_id", "node_id"):
        value = getattr(event, name, None)
        if isinstance(value, str):
            return value
    return ""


def detail_of(event: ev.Event) -> str:
    if isinstance(event, ev.MigrateRequested):
        return f"target={event.target or '(placement)'} mode={event.mode}"
    if isinstance(event, ev.PowerRequested):
        return "suspend" if event.paused else "resume"
    if isinstance(event, ev.CordonRequested):
        return "cordon" if event.cordoned else "uncordon"
    if isinstance(event, ev.EnrolRequested):
        return f"token={event.token_id}"
    if isinstance(event, ev.CertificateIssued):
        expires = dt.datetime.fromtimestamp(event.not_after, dt.UTC).isoformat(timespec="seconds")
        why = "renewal" if event.renewal else "enrolment"
        return f"{why} epoch={event.epoch} not_after={expires}"
    if isinstance(event, ev.ServiceTokenCreateRequested):
        return f"name={event.name} role={event.role} ttl={event.ttl:g}s"
    if isinstance(event, ev.TokenCreateRequested):
        bound = event.node_id or "(any new node)"
        return f"node={bound} uses={event.uses} ttl={event.ttl:g}s"
    if isinstance(event, ev.DeployRequested | ev.DeployManyRequested) and event.request_id:
        return f"request_id={event.request_id}"
    return ""
