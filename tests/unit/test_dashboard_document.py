"""The dashboard's state document from a hand-driven core (a migration in progress, with its
phase), and the authentication decisions of controller/dashboard/auth.py."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from controller.config import ControllerConfig
from controller.core import events as ev
from controller.dashboard.auth import COOKIE, decide, session_cookie
from controller.dashboard.document import state_document
from controller.dashboard.events import event_source
from controller.event_feed import EventFeed, FeedEvent
from controller.records import AuditEntry
from controller.view import ControllerView
from shared import commands as c
from shared.domain import LatencyStats, Location
from shared.errors import ConfigError
from shared.identity import Role, ServiceIdentity
from tests.unit.core_driver import Driver

TARGET = c.MigrationTarget("qemu+tcp://n2/system", "tcp://n2")
GOOD = "ncs.aaaaaaaa." + "b" * 32


def view_of(d: Driver) -> ControllerView:
    return ControllerView(d.core, lambda: d.now)


def test_a_migration_in_progress_is_shown_with_its_phase() -> None:
    d = Driver()
    d.hello("n1")
    d.hello("n2")
    vm = d.deploy("web", "n1")
    d.feed(ev.MigrateRequested, name_or_id=vm.id, target="n2", stimulus_id="mig")
    doc = state_document(view_of(d), d.now)
    (mig,) = doc["migrations"]
    assert (mig["vm_name"], mig["source"], mig["target"]) == ("web", "n1", "n2")
    assert mig["phase"] == "pre_checks" and mig["active"] and mig["progress_pct"] == 10
    d.answer(d.sent(c.PrepareMigration, "n2"), migration_target=TARGET)
    (mig,) = state_document(view_of(d), d.now)["migrations"]
    assert mig["phase"] == "snapshot"
    (shown,) = state_document(view_of(d), d.now)["vms"]
    assert shown["node_id"] == "n1" and shown["migrating_to"] == "n2"
    assert json.loads(json.dumps(doc)) == doc  # plain JSON, nothing else


def test_a_vm_latency_is_its_node_rtt_at_the_vm_percentile() -> None:
    d = Driver()
    d.hello("n1")
    vm = d.deploy("web", "n1")
    node = d.core.state.nodes["n1"]
    stats = LatencyStats("controller", 3.0, 140.0, 200.0, 1.0, 0.0, 20)
    d.core.state.nodes["n1"] = replace(node, latencies=(stats,))
    (shown,) = state_document(view_of(d), d.now)["vms"]
    assert shown["id"] == vm.id
    assert shown["latency_percentile"] == 95 and shown["latency_ms"] == 140.0
    assert shown["latency_bound_ms"] == 100.0 and shown["latency_over"] is True
    (n,) = state_document(view_of(d), d.now)["nodes"]
    assert n["rtt_ms"] == {"p50": 3.0, "p95": 140.0, "p99": 200.0}
    assert n["allocated"]["vcpus"] == vm.spec.vcpus and n["condition"] == "ready"


def test_a_vm_placed_near_its_users_shows_the_estimate_placement_judged_it_by() -> None:
    d = Driver()
    d.hello("n1")  # a MEC node in Berlin (52.5, 13.4)
    vm = d.deploy("ar", "n1")
    node = d.core.state.nodes["n1"]
    stats = LatencyStats("controller", 3.0, 140.0, 200.0, 1.0, 0.0, 20)
    d.core.state.nodes["n1"] = replace(node, latencies=(stats,))  # not the users' latency
    paris = replace(vm.spec.placement, near=Location(48.8566, 2.3522), max_latency_ms=10.0)
    d.core.state.vms[vm.id] = replace(vm, spec=replace(vm.spec, placement=paris))
    (shown,) = state_document(view_of(d), d.now)["vms"]
    assert shown["latency_source"] == "estimated"
    assert 9.5 < shown["latency_ms"] < 10.0  # ~876 km at 100 km per ms of RTT, + 1 ms MEC access
    assert shown["latency_bound_ms"] == 10.0 and shown["latency_over"] is False


def verify(token: str) -> ServiceIdentity | None:
    return ServiceIdentity("board", Role.VIEWER, "aaaaaaaa") if token == GOOD else None


def test_who_may_read_the_dashboard() -> None:
    viewer = {"subjectAltName": (("URI", "urn:novacron:client:ann:viewer"),)}
    node = {"subjectAltName": (("URI", "urn:novacron:node:edge-a:1"),)}
    foreign = {"subjectAltName": (("URI", "spiffe://elsewhere/x"),)}
    assert decide(viewer, None, None, verify).status == 200
    assert decide(node, None, None, verify).status == 403
    assert decide(foreign, None, None, verify).status == 401  # not one of our identities
    assert decide(None, None, None, verify).status == 401
    assert decide(None, None, None, verify, enforce=False).status == 200
    assert decide(None, f"Bearer {GOOD}", None, verify).status == 200
    assert decide(None, "Bearer nope", None, verify).status == 401
    assert decide(None, "Basic xyz", None, verify).status == 401
    cookie = session_cookie(GOOD).split(";")[0]
    assert decide(None, None, f"other=1; {cookie}", verify).status == 200
    stale = decide(None, None, f"{COOKIE}=ncs.gone", verify)
    assert stale.status == 401 and stale.clear_cookie
    assert decide(None, None, '"; =;;\x00junk', verify).status == 401  # a malformed header


class _Audit:
    async def audit_log(
        self, limit: int = 100, since: float = 0.0, actor: str = ""
    ) -> list[AuditEntry]:
        return [AuditEntry(at=5.0, action="vm.deploy", target="web", actor="client:ann")][:limit]


async def test_events_come_from_the_feed_newest_first_or_the_audit_after_a_restart() -> None:
    feed = EventFeed(10)
    source = event_source(_Audit(), feed)
    (only,) = await source(5)  # an empty feed (just restarted): the durable audit trail
    assert (only["kind"], only["subject"], only["actor"]) == ("vm.deploy", "web", "client:ann")
    feed.publish(FeedEvent("node.registered", "node a", "node a registered", 1.0))
    feed.publish(FeedEvent("alert.firing", "node a", "node a lost", 2.0, severity="critical"))
    shown = await source(5)
    assert [e["kind"] for e in shown] == ["alert.firing", "node.registered"]
    assert shown[0]["severity"] == "critical"


def test_dashboard_listen_is_checked_and_empty_turns_it_off() -> None:
    assert ControllerConfig().dashboard_listen == "127.0.0.1:7780"
    assert ControllerConfig(dashboard_listen="").dashboard_listen == ""
    with pytest.raises(ConfigError, match=r"controller\.dashboard_listen: expected HOST:PORT"):
        ControllerConfig(dashboard_listen="7780")
