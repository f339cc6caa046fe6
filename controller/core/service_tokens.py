"""Bearer tokens of a role (issue 11, item 4), for services that cannot hold a client
certificate. Like join tokens, only the secret's SHA-256 is kept; unlike them they are used
on every call, so they are long-lived (at most a year) and revocable at once."""

from __future__ import annotations

from dataclasses import replace

from controller.core import events as ev
from controller.core.base import CoreBase
from controller.records import ServiceToken
from shared.errors import AlreadyExists, InvalidArgument, NotFound
from shared.identity import Role, check_name

MAX_SERVICE_TTL_S = 366 * 86400.0


class ServiceTokenMixin(CoreBase):
    def on_service_token_create(self, event: ev.ServiceTokenCreateRequested) -> None:
        check_name("name", event.name)
        role = Role.parse(event.role)
        if not 0 < event.ttl <= MAX_SERVICE_TTL_S:
            raise InvalidArgument(
                f"ttl: must be more than 0 s and at most a year, got {event.ttl:g} s"
            )
        if event.token_id in self.state.service_tokens:
            raise AlreadyExists(f"service token {event.token_id} exists already")
        token = ServiceToken(
            id=event.token_id,
            secret_hash=event.secret_hash,
            name=event.name,
            role=role.label,
            expires_at=self._now + event.ttl,
            created_at=self._now,
            created_by=self._actor,
        )
        self.reply(event.stimulus_id, self.put_service_token(token))

    def on_service_token_revoke(self, event: ev.ServiceTokenRevokeRequested) -> None:
        token = self.state.service_tokens.get(event.token_id)
        if token is None:
            raise NotFound(f"no service token {event.token_id!r}")
        if not token.revoked:
            token = self.put_service_token(replace(token, revoked=True))
        self.reply(event.stimulus_id, token)

    def put_service_token(self, token: ServiceToken) -> ServiceToken:
        self.journal.put(self.state.service_tokens, token.id, token)
        self._out.service_tokens[token.id] = token
        return token
