"""`novacron events` (cli/events.py): its request and how each event is printed."""

from __future__ import annotations

import json

import pytest

from cli.events import line, request_of, row
from cli.parser import build_parser
from shared.pb.v1 import edge_api_pb2 as api


def args(*argv: str) -> api.WatchEventsRequest:
    return request_of(build_parser().parse_args(["events", *argv]))


def test_the_request_takes_kinds_repeated_or_comma_separated_and_an_optional_replay() -> None:
    plain = args()
    assert not plain.follow and list(plain.kinds) == [] and not plain.HasField("replay")
    watch = args("-w", "--kind", "alert,node.condition", "--kind", " migration ", "-n", "0")
    assert watch.follow and list(watch.kinds) == ["alert", "node.condition", "migration"]
    assert watch.HasField("replay") and watch.replay == 0


def test_a_negative_replay_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["events", "-n", "-1"])
    assert exited.value.code == 2 and "-n/--replay" in capsys.readouterr().err


def event() -> api.ControllerEvent:
    e = api.ControllerEvent(
        seq=7,
        kind="alert.firing",
        severity="critical",
        subject="node edge-a",
        message="node edge-a is lost: \x1b[2Jsilent",
        key="NodeLost:node edge-a",
        fields={"alertname": "NodeLost"},
    )
    e.at.FromSeconds(1_800_000_000)
    e.since.FromSeconds(1_800_000_000)
    return e


def test_watch_lines_are_one_per_event_and_escape_control_characters() -> None:
    text = line(event(), "table")
    assert text.count("\n") == 1 and "\x1b" not in text and "\\x1b[2J" in text
    assert text.startswith("2027-01-15T08:00:00Z  critical  alert.firing")
    as_json = json.loads(line(event(), "json"))
    assert as_json["key"] == "NodeLost:node edge-a" and as_json["seq"] == 7
    assert as_json["since"] == "2027-01-15T08:00:00Z" and as_json["fields"]["alertname"]
    assert line(event(), "yaml").startswith("---\n")
    assert row(event())[:3] == ["2027-01-15T08:00:00Z", "critical", "alert.firing"]
