"""Who may join and speak for a node: join tokens, enrolment and node revocation.

A token is `<id>.<secret>`; the core keeps only the secret's SHA-256 and compares it in
constant time. A token bound to a node id (`--node-id`) may enrol that node even if it is
enrolled already (re-enrolment, after a lost disk or a revocation); an unbound one only a node
id never enrolled, so a leaked unbound token cannot take over an existing node and its VMs.

Each node has a credential with an epoch, written into its certificates' identity. Revoking
the node, or enrolling it again, moves the epoch on: every certificate issued before is
refused from then on, even though it has not expired (no CRL to distribute: the controller
is the only party that checks node certificates).
"""

from __future__ import annotations

import hmac
from dataclasses import replace

from controller.core import events as ev
from controller.core.base import CoreBase
from controller.records import JoinToken, NodeCredential
from shared.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from shared.identity import check_name

MAX_TTL_S = 30 * 24 * 3600.0
MAX_USES = 1000


class EnrolmentMixin(CoreBase):
    def on_token_create(self, event: ev.TokenCreateRequested) -> None:
        if event.node_id:
            check_name("node_id", event.node_id)
        if not 0 < event.ttl <= MAX_TTL_S:
            raise InvalidArgument(
                f"ttl: must be more than 0 s and at most 30 days, got {event.ttl:g} s"
            )
        if not 1 <= event.uses <= MAX_USES:
            raise InvalidArgument(f"uses: must be 1 to {MAX_USES}, got {event.uses}")
        if len(event.description) > 200:
            raise InvalidArgument("description: at most 200 characters")
        if event.token_id in self.state.tokens:
            raise AlreadyExists(f"token {event.token_id} exists already")
        token = JoinToken(
            id=event.token_id,
            secret_hash=event.secret_hash,
            node_id=event.node_id,
            uses_left=event.uses,
            expires_at=self._now + event.ttl,
            created_at=self._now,
            created_by=self._actor,
            description=event.description,
        )
        self.reply(event.stimulus_id, self.put_token(token))

    def on_token_revoke(self, event: ev.TokenRevokeRequested) -> None:
        token = self.state.tokens.get(event.token_id)
        if token is None:
            raise NotFound(f"no join token {event.token_id!r}")
        if not token.revoked:
            token = self.put_token(replace(token, revoked=True))
        self.reply(event.stimulus_id, token)

    def on_enrol(self, event: ev.EnrolRequested) -> None:
        """Refusals are audited like successes; the message does not say which check failed
        for an unknown or wrong secret (no oracle for guessing)."""
        check_name("node_id", event.node_id)
        token = self.state.tokens.get(event.token_id)
        if token is None or not hmac.compare_digest(token.secret_hash, event.secret_hash):
            raise PermissionDenied("the join token is not valid")
        if token.revoked:
            raise PermissionDenied(f"join token {token.id} was revoked")
        if self._now >= token.expires_at:
            raise PermissionDenied(f"join token {token.id} has expired")
        if token.uses_left <= 0:
            raise PermissionDenied(f"join token {token.id} is used up")
        if token.node_id and token.node_id != event.node_id:
            raise PermissionDenied(
                f"join token {token.id} is for node {token.node_id}, not {event.node_id}"
            )
        current = self.state.credentials.get(event.node_id)
        if current is not None and not token.node_id:
            raise PermissionDenied(
                f"node {event.node_id} is enrolled already; to enrol it again, create a token "
                f"for it: novacron token create --node-id {event.node_id}"
            )
        self.put_token(replace(token, uses_left=token.uses_left - 1))
        credential = NodeCredential(
            node_id=event.node_id,
            epoch=0 if current is None else current.epoch + 1,
            enrolled_at=self._now,
            token_id=token.id,
        )
        self.put_credential(credential)
        if current is not None:  # the certificates of before are refused from now on
            self._cut_sessions(event.node_id, "the node enrolled again")
        self.reply(event.stimulus_id, credential)

    def on_certificate_issued(self, event: ev.CertificateIssued) -> None:
        current = self.state.credentials.get(event.node_id)
        if current is None or not current.accepts(event.epoch):
            raise PermissionDenied(
                f"node {event.node_id}'s certificate (epoch {event.epoch}) is revoked or "
                "superseded: nothing was issued"
            )
        if event.not_after > current.expires_at:
            self.put_credential(replace(current, expires_at=event.not_after))
        self.reply(event.stimulus_id, None)  # audited as a request: node.certificate

    def on_node_revoke(self, event: ev.NodeRevokeRequested) -> None:
        current = self.state.credentials.get(event.node_id)
        if current is None:
            raise NotFound(f"node {event.node_id!r} has no enrolment to revoke")
        if not current.revoked:
            current = self.put_credential(replace(current, revoked=True, epoch=current.epoch + 1))
        self._cut_sessions(event.node_id, "the node's certificate was revoked")
        self.reply(event.stimulus_id, current)

    def on_identity_refused(self, event: ev.IdentityRefused) -> None:
        self.audit(event.action, event.target, event.detail, result="refused")
        self.reply(event.stimulus_id, None)

    def _cut_sessions(self, node_id: str, reason: str) -> None:
        session = self.state.sessions.get(node_id)
        if session is not None:
            self.close_session(node_id, session.session_id, reason)
