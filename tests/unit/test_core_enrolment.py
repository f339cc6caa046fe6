"""Join tokens, enrolment and revocation decided by the core alone (explicit clock), and the
audit record every request leaves, refused ones included."""

from __future__ import annotations

import hashlib

import pytest

from controller.core import events as ev
from controller.core.instructions import CloseSession
from controller.records import JoinToken, NodeCredential
from shared.errors import InvalidArgument, NotFound, PermissionDenied
from tests.unit.core_driver import Driver


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(
    d: Driver, token_id: str, node_id: str = "", uses: int = 1, ttl: float = 60.0
) -> JoinToken:
    d.feed(
        ev.TokenCreateRequested,
        token_id=token_id,
        secret_hash=digest(f"secret-{token_id}"),
        node_id=node_id,
        uses=uses,
        ttl=ttl,
        actor="client:admin",
        stimulus_id=f"create-{token_id}",
    )
    token = d.reply(f"create-{token_id}").value
    assert isinstance(token, JoinToken)
    return token


def enrol(d: Driver, token_id: str, node_id: str, secret: str = "") -> NodeCredential:
    stimulus = d.sid()
    d.feed(
        ev.EnrolRequested,
        token_id=token_id,
        secret_hash=digest(secret or f"secret-{token_id}"),
        node_id=node_id,
        actor=f"token:{token_id}",
        stimulus_id=stimulus,
    )
    reply = d.reply(stimulus)
    if reply.error is not None:
        raise reply.error
    assert isinstance(reply.value, NodeCredential)
    return reply.value


def test_a_token_enrols_as_many_nodes_as_it_has_uses_until_it_expires() -> None:
    d = Driver()
    token = create(d, "tok001", uses=2, ttl=60.0)
    assert token.expires_at == d.now + 60.0 and token.created_by == "client:admin"
    assert d.store["tokens"]["tok001"].secret_hash == digest("secret-tok001")  # a hash only
    assert enrol(d, "tok001", "n1").epoch == 0
    d.now += 59.0
    enrol(d, "tok001", "n2")
    with pytest.raises(PermissionDenied, match="is used up"):
        enrol(d, "tok001", "n3")
    create(d, "tok002", ttl=10.0)
    d.now += 10.0
    with pytest.raises(PermissionDenied, match="has expired"):
        enrol(d, "tok002", "n4")
    assert set(d.store["credentials"]) == {"n1", "n2"}
    assert d.store["tokens"]["tok002"].uses_left == 1  # a refusal spends nothing


def test_a_wrong_secret_says_nothing_about_the_token() -> None:
    d = Driver()
    create(d, "tok001")
    with pytest.raises(PermissionDenied) as wrong:
        enrol(d, "tok001", "n1", secret="guess")
    with pytest.raises(PermissionDenied) as unknown:
        enrol(d, "nosuch", "n1", secret="guess")
    assert str(wrong.value) == str(unknown.value) == "the join token is not valid"
    refusals = [e for e in d.audit if e.action == "node.enrol"]
    assert [(e.actor, e.result) for e in refusals] == [
        ("token:tok001", "refused: the join token is not valid"),
        ("token:nosuch", "refused: the join token is not valid"),
    ]


def test_only_a_token_bound_to_an_enrolled_node_enrols_it_again_and_that_cuts_the_old_one() -> None:
    d = Driver()
    create(d, "tok001")
    enrol(d, "tok001", "n1")
    d.hello("n1")
    create(d, "tok002")
    with pytest.raises(PermissionDenied, match="n1 is enrolled already"):
        enrol(d, "tok002", "n1")
    create(d, "tok003", node_id="n1")
    with pytest.raises(PermissionDenied, match="is for node n1, not n2"):
        enrol(d, "tok003", "n2")
    d.out.clear()
    again = enrol(d, "tok003", "n1")
    assert again.epoch == 1 and d.store["credentials"]["n1"].epoch == 1
    closes = [i for i in d.out if isinstance(i, CloseSession)]
    assert [c.reason for c in closes] == ["the node enrolled again"]


def test_a_revoked_node_is_cut_and_its_certificates_get_no_session() -> None:
    d = Driver()
    create(d, "tok001")
    enrol(d, "tok001", "n1")
    d.hello("n1")
    d.out.clear()
    d.feed(ev.NodeRevokeRequested, node_id="n1", actor="client:admin", stimulus_id="revoke")
    credential = d.reply("revoke").value
    assert isinstance(credential, NodeCredential)
    assert credential.revoked and credential.epoch == 1
    assert [i.reason for i in d.out if isinstance(i, CloseSession)] == [
        "the node's certificate was revoked"
    ]
    d.out.clear()
    d.feed(ev.AgentHello, node_id="n1", session_id="s2", info=d.node("n1").info, epoch=0)
    [close] = [i for i in d.out if isinstance(i, CloseSession)]
    assert close.denied and "is revoked" in close.reason
    assert [e.result for e in d.audit if e.action == "node.connect"] == ["refused"]
    d.feed(ev.NodeRevokeRequested, node_id="nope", stimulus_id="revoke-2")
    assert isinstance(d.reply("revoke-2").error, NotFound)


def test_token_requests_are_bounded() -> None:
    d = Driver()
    for fields, message in (
        ({"ttl": 0.0}, "ttl: must be more than 0"),
        ({"ttl": 31 * 86400.0}, "at most 30 days"),
        ({"uses": 0}, "uses: must be 1 to 1000"),
        ({"node_id": "Bad\x1b[31m"}, "node_id"),
    ):
        d.feed(
            ev.TokenCreateRequested,
            token_id="tok009",
            secret_hash="x",
            stimulus_id="bad",
            **fields,  # type: ignore[arg-type]
        )
        error = d.reply("bad").error
        assert isinstance(error, InvalidArgument) and message in str(error)
        d.out.clear()
    assert not d.store["tokens"]


def test_every_request_is_audited_with_its_actor_and_request_id() -> None:
    d = Driver()
    d.hello("n1")
    d.feed(ev.CordonRequested, node_id="n1", cordoned=True, actor="client:otto", stimulus_id="c1")
    d.feed(ev.CordonRequested, node_id="n9", cordoned=True, actor="client:otto", stimulus_id="c2")
    cordons = [e for e in d.audit if e.action == "node.cordon"]
    assert [(e.actor, e.target, e.result[:7], e.request_id) for e in cordons] == [
        ("client:otto", "n1", "ok", "c1"),
        ("client:otto", "n9", "refused", "c2"),
    ]


def test_a_gone_node_is_removed_only_without_vms_unless_forced() -> None:
    d = Driver()
    create(d, "tok001")
    enrol(d, "tok001", "n1")
    d.hello("n1")
    vm = d.deploy("web", "n1")
    d.feed(ev.NodeRemoveRequested, node_id="n1", stimulus_id="r1")
    assert "is connected, so it is not gone" in str(d.reply("r1").error)
    d.disconnect("n1")
    d.feed(ev.NodeRemoveRequested, node_id="n1", stimulus_id="r2")
    assert "has 1 VM(s) (web)" in str(d.reply("r2").error)
    assert "n1" in d.store["nodes"]  # refusals change nothing
    d.feed(ev.NodeRemoveRequested, node_id="n1", force=True, stimulus_id="r3")
    assert d.reply("r3").value == ("web",)
    assert "n1" not in d.store["nodes"] and "n1" not in d.core.state.nodes
    assert d.tombstone(vm.id) is not None and vm.id not in d.store["vms"]
    assert d.store["credentials"]["n1"].revoked  # its certificates connect no more
    d.restart()
    assert "n1" not in d.core.state.nodes  # and it stays gone
    d.feed(ev.NodeRemoveRequested, node_id="n1", stimulus_id="r4")
    assert isinstance(d.reply("r4").error, NotFound)


def issue(d: Driver, node_id: str, epoch: int, not_after: float, renewal: bool) -> None:
    stimulus = d.sid()
    d.feed(
        ev.CertificateIssued,
        node_id=node_id,
        epoch=epoch,
        not_after=not_after,
        renewal=renewal,
        actor=f"node:{node_id}" if renewal else "token:tok001",
        stimulus_id=stimulus,
    )
    reply = d.reply(stimulus)
    if reply.error is not None:
        raise reply.error


def test_each_certificate_issued_is_kept_with_the_credential_and_audited() -> None:
    """Its expiry outlives a controller restart (the CertificateExpiring alert reads it);
    a renewal leaves an audit record like every other change of a node's standing."""
    d = Driver()
    create(d, "tok001")
    enrol(d, "tok001", "n1")
    issue(d, "n1", 0, 1_000_000.0, renewal=False)
    assert d.store["credentials"]["n1"].expires_at == 1_000_000.0
    issue(d, "n1", 0, 3_000_000.0, renewal=True)
    assert d.store["credentials"]["n1"].expires_at == 3_000_000.0
    records = [e for e in d.audit if e.action == "node.certificate"]
    assert [(e.actor, e.target, e.result) for e in records] == [
        ("token:tok001", "n1", "ok"),
        ("node:n1", "n1", "ok"),
    ]
    assert records[1].detail == "renewal epoch=0 not_after=1970-02-04T17:20:00+00:00"
    d.restart()
    assert d.core.state.credentials["n1"].expires_at == 3_000_000.0


def test_no_certificate_is_kept_for_a_node_revoked_meanwhile() -> None:
    d = Driver()
    create(d, "tok001")
    enrol(d, "tok001", "n1")
    d.feed(ev.NodeRevokeRequested, node_id="n1", stimulus_id="revoke")
    with pytest.raises(PermissionDenied, match="revoked or superseded: nothing was issued"):
        issue(d, "n1", 0, 2_000_000.0, renewal=True)
    assert d.store["credentials"]["n1"].expires_at == 0.0
    refused = [e for e in d.audit if e.action == "node.certificate"]
    assert [e.result.split(":")[0] for e in refused] == ["refused"]
