"""`novacron token ...`, `novacron node revoke` and `novacron audit`: the AdminAPI commands
(docs/security.md); every one needs an admin client certificate."""

from __future__ import annotations

import argparse
import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp

from cli.commands import Context, _emit_list, _emit_one
from cli.parser_util import Subparsers
from cli.parser_util import group as _group
from cli.parser_util import sub as _sub
from cli.render import age, describe, table
from shared.config import parse_duration
from shared.errors import ConfigError
from shared.pb.v1 import admin_pb2 as adpb


def duration(text: str) -> float:
    """`90s`, `15m`, `1h`, `7d` or plain seconds."""
    units = {"d": 86400.0}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return float(text[:-1]) * units[text[-1]]
    try:
        seconds = parse_duration(text, "duration")
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 90s, 15m, 1h or 7d, got {text!r}"
        ) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return seconds


def _when(ts: Timestamp, now: float) -> str:
    seconds = ts.ToNanoseconds() / 1e9
    delta = seconds - now
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{stamp} (in {age(delta)})" if delta > 0 else f"{stamp} ({age(-delta)} ago)"


def token_create(ctx: Context, args: argparse.Namespace) -> int:
    request = adpb.CreateJoinTokenRequest(
        ttl_seconds=round(args.ttl),
        node_id=args.node_id or "",
        uses=args.uses,
        description=args.description or "",
    )
    created = ctx.client.call(ctx.client.admin.CreateJoinToken, request)
    token = created.token

    def as_table() -> str:
        join = f"novacron-agent --join-token {created.secret_token} --ca-pin {created.ca_pin}"
        return (
            describe(
                [
                    ("Token", created.secret_token),
                    ("CA pin", created.ca_pin),
                    ("Node", token.node_id or "(any node id not enrolled yet)"),
                    ("Uses", str(token.uses_left)),
                    ("Expires", _when(token.expires_at, ctx.now)),
                    ("Join with", join),
                ]
            )
            + "The secret is shown only now; the controller keeps a hash of it.\n"
        )

    return _emit_one(ctx, created, as_table)


def _token_rows(tokens: list[adpb.JoinToken], now: float) -> str:
    rows = []
    for t in tokens:
        expires = t.expires_at.ToNanoseconds() / 1e9
        state = "revoked" if t.revoked else "used up" if not t.uses_left else (
            "expired" if expires <= now else "usable"
        )  # fmt: skip
        rows.append(
            [t.id, t.node_id or "*", str(t.uses_left), _when(t.expires_at, now), state,
             t.created_by, t.description]
        )  # fmt: skip
    return table(["ID", "NODE", "USES", "EXPIRES", "STATE", "CREATED BY", "DESCRIPTION"], rows)


def token_list(ctx: Context, args: argparse.Namespace) -> int:
    response = ctx.client.call(ctx.client.admin.ListJoinTokens, adpb.ListJoinTokensRequest())
    tokens = list(response.tokens)
    return _emit_list(ctx, tokens, lambda: _token_rows(tokens, ctx.now), "join tokens")


def token_revoke(ctx: Context, args: argparse.Namespace) -> int:
    request = adpb.RevokeJoinTokenRequest(id=args.id.split(".")[0])  # the whole token also
    token = ctx.client.call(ctx.client.admin.RevokeJoinToken, request)
    return _emit_one(ctx, token, lambda: f"join token {token.id} revoked\n")


def node_revoke(ctx: Context, args: argparse.Namespace) -> int:
    request = adpb.RevokeNodeRequest(node_id=args.node)
    credential = ctx.client.call(ctx.client.admin.RevokeNode, request)
    text = (
        f"node {credential.node_id} revoked: its stream is cut and its certificates are "
        f"refused; to let it back, `novacron token create --node-id {credential.node_id}`\n"
    )
    return _emit_one(ctx, credential, lambda: text)


def node_remove(ctx: Context, args: argparse.Namespace) -> int:
    request = adpb.RemoveNodeRequest(node_id=args.node, force=args.force)
    removed = ctx.client.call(ctx.client.admin.RemoveNode, request)
    forgotten = (
        f"; VMs forgotten: {', '.join(removed.vms_forgotten)}" if removed.vms_forgotten else ""
    )
    return _emit_one(ctx, removed, lambda: f"node {removed.node_id} removed{forgotten}\n")


def service_token_create(ctx: Context, args: argparse.Namespace) -> int:
    request = adpb.CreateServiceTokenRequest(
        name=args.name, role=args.role, ttl_seconds=round(args.ttl)
    )
    created = ctx.client.call(ctx.client.admin.CreateServiceToken, request)
    token = created.token

    def as_table() -> str:
        return (
            describe(
                [
                    ("Token", created.secret_token),
                    ("Name", f"{token.name} (audited as service:{token.name})"),
                    ("Role", token.role),
                    ("Expires", _when(token.expires_at, ctx.now)),
                    ("Use with", "NOVACRON_TOKEN=... novacron --controller HOST:7701 ..."),
                ]
            )
            + "The secret is shown only now; the controller keeps a hash of it.\n"
        )

    return _emit_one(ctx, created, as_table)


def service_token_list(ctx: Context, args: argparse.Namespace) -> int:
    request = adpb.ListServiceTokensRequest()
    tokens = list(ctx.client.call(ctx.client.admin.ListServiceTokens, request).tokens)

    def as_table() -> str:
        rows = [
            [t.id, t.name, t.role, _when(t.expires_at, ctx.now),
             "revoked" if t.revoked else "usable", t.created_by]
            for t in tokens
        ]  # fmt: skip
        return table(["ID", "NAME", "ROLE", "EXPIRES", "STATE", "CREATED BY"], rows)

    return _emit_list(ctx, tokens, as_table, "service tokens")


def service_token_revoke(ctx: Context, args: argparse.Namespace) -> int:
    token_id = args.id.split(".")[1] if args.id.startswith("ncs.") else args.id
    token = ctx.client.call(
        ctx.client.admin.RevokeServiceToken, adpb.RevokeServiceTokenRequest(id=token_id)
    )
    return _emit_one(ctx, token, lambda: f"service token {token.id} ({token.name}) revoked\n")


def audit(ctx: Context, args: argparse.Namespace) -> int:
    request = adpb.ListAuditRequest(
        since_seconds=args.since or 0.0, actor=args.actor or "", limit=args.limit
    )
    records = list(ctx.client.call(ctx.client.admin.ListAudit, request).records)
    records.reverse()  # oldest first, as a log reads

    def as_table() -> str:
        rows = [
            [
                dt.datetime.fromtimestamp(r.at.ToNanoseconds() / 1e9, dt.UTC).strftime(
                    "%Y-%m-%d %H:%M:%S"
                ),
                r.actor,
                r.action,
                r.target,
                r.result,
                r.detail,
            ]
            for r in records
        ]
        return table(["TIME (UTC)", "ACTOR", "ACTION", "TARGET", "RESULT", "DETAIL"], rows)

    return _emit_list(ctx, records, as_table, "audit records")


def add_security_commands(top: Subparsers, node: Subparsers) -> None:
    tokens = _group(
        top,
        "token",
        "join tokens: how a new node enrols (admin)",
        "  novacron token create --ttl 1h\n  novacron token create --node-id gw-7 --uses 1\n"
        "  novacron token list\n  novacron token revoke abc123\n",
    )
    create = _sub(
        tokens,
        "create",
        "a join token and the CA pin, to start an agent with (the secret is shown once)",
        "  novacron token create\n  novacron token create --ttl 30m --node-id gw-7\n"
        "  novacron token create --uses 20 --ttl 1d --description 'PoP roll-out'\n",
        token_create,
    )
    create.add_argument("--ttl", type=duration, default=3600.0, help="valid for (default 1h)")
    create.add_argument(
        "--node-id", help="only this node id may enrol with it (needed to enrol one again)"
    )
    create.add_argument("--uses", type=int, default=1, help="enrolments it allows (default 1)")
    create.add_argument("--description", help="a note for `token list`")
    _sub(tokens, "list", "join tokens: id, node, uses left, expiry", "  novacron token list\n",
         token_list, aliases=("ls",))  # fmt: skip
    revoke = _sub(tokens, "revoke", "no more enrolments with this token",
                  "  novacron token revoke abc123\n", token_revoke)  # fmt: skip
    revoke.add_argument("id", metavar="ID", help="the token's id (the part before the dot)")
    node_cmd = _sub(
        node,
        "revoke",
        "cut a node's stream and refuse its certificates from now on (admin); its VMs stay",
        "  novacron node revoke gw-7\n",
        node_revoke,
    )
    node_cmd.add_argument("node", metavar="NODE", help="node id")
    remove = _sub(
        node,
        "remove",
        "forget a node that is gone (admin); refused while it is connected or has VMs",
        "  novacron node remove gw-7\n  novacron node remove gw-7 --force\n",
        node_remove,
    )
    remove.add_argument("node", metavar="NODE", help="node id")
    remove.add_argument(
        "--force",
        action="store_true",
        help="even so: its VMs' records are forgotten (copies that come back are destroyed)",
    )
    services = _group(
        top,
        "service-token",
        "bearer tokens of a role, for services that cannot hold a certificate (admin)",
        "  novacron service-token create ci --role operator --ttl 30d\n"
        "  novacron service-token list\n  novacron service-token revoke k3j9x0ab\n",
    )
    screate = _sub(
        services, "create", "a service token of one role (the secret is shown once)",
        "  novacron service-token create grafana --role viewer\n", service_token_create,
    )  # fmt: skip
    screate.add_argument("name", metavar="NAME", help="the service: its audit actor")
    screate.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    screate.add_argument("--ttl", type=duration, default=30 * 86400.0, help="default 30d")
    _sub(services, "list", "service tokens: id, name, role, expiry",
         "  novacron service-token list\n", service_token_list, aliases=("ls",))  # fmt: skip
    srevoke = _sub(services, "revoke", "the token stops working at once",
                   "  novacron service-token revoke k3j9x0ab\n", service_token_revoke)  # fmt: skip
    srevoke.add_argument("id", metavar="ID", help="its id (or the whole token)")
    log = _sub(
        top,
        "audit",
        "the audit trail: who did what, when, and how it ended (admin)",
        "  novacron audit --since 1h\n  novacron audit --actor client:alice -o json\n",
        audit,
    )
    log.add_argument("--since", type=duration, help="only the last DURATION (e.g. 1h)")
    log.add_argument("--actor", help="only this actor (client:NAME, node:ID, token:ID)")
    log.add_argument("--limit", type=int, default=1000, help="newest N (default 1000)")
