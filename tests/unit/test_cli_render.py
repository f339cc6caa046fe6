"""Pure helpers of the CLI output: enum names, data conversion, tables, ages, spinner."""

from __future__ import annotations

import io
from concurrent import futures
from typing import Any

import pytest

from cli import progress
from cli.render import age, describe, dump, enum_name, list_data, table, to_data
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import types_pb2 as pb


@pytest.mark.parametrize(
    ("enum", "number", "name"),
    [
        (pb.VMState.DESCRIPTOR, pb.VM_STATE_RUNNING, "running"),
        (pb.NodeCondition.DESCRIPTOR, pb.NODE_CONDITION_NOT_READY, "not_ready"),
        (pb.EdgeType.DESCRIPTOR, pb.EDGE_TYPE_MEC, "mec"),
        (pb.DesiredState.DESCRIPTOR, pb.DESIRED_STATE_UNSPECIFIED, "unspecified"),
        (pb.VMState.DESCRIPTOR, 99, "99"),
    ],
)
def test_enum_name(enum: Any, number: int, name: str) -> None:
    assert enum_name(enum, number) == name


def test_to_data_converts_nested_enums_maps_and_int64() -> None:
    node = pb.Node(
        info=pb.NodeInfo(node_id="n", edge_type=pb.EDGE_TYPE_CDN, labels={"a": "b"}),
        images=[pb.ImageInfo(name="img", size_bytes=2**40)],
    )
    data = to_data(node)
    assert data["info"]["edge_type"] == "cdn"
    assert data["info"]["labels"] == {"a": "b"}
    assert data["images"][0]["size_bytes"] == 2**40
    assert data["condition"] == "unspecified"
    assert "last_heartbeat" not in data  # unset message fields stay absent


def test_to_data_map_values_and_timestamps() -> None:
    status = api.Status(vms_by_state={"running": 3})
    assert to_data(status)["vms_by_state"] == {"running": 3}
    vm = pb.VM(id="x")
    vm.created_at.FromSeconds(0)
    assert to_data(vm)["created_at"] == "1970-01-01T00:00:00Z"


def test_list_data_and_dump_roundtrip() -> None:
    data = list_data([pb.VM(id="a"), pb.VM(id="b")])
    assert [i["id"] for i in data["items"]] == ["a", "b"]
    assert dump(data, "json").endswith("\n")
    assert "- id: a" in dump({"items": [{"id": "a"}]}, "yaml")
    with pytest.raises(ValueError):
        dump(data, "xml")


def test_table_aligns_columns() -> None:
    assert table(["A", "LONGER"], [["xyz", "1"], ["q", ""]]) == "A     LONGER\nxyz   1\nq\n"


def test_describe_block() -> None:
    text = describe([("Name", "x"), ("Labels", {"b": "2", "a": "1"}), ("Images", [])])
    assert text == "Name: x\nLabels:\n  a=1\n  b=2\nImages:  <none>\n"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-3, "0s"),
        (42, "42s"),
        (150, "2m30s"),
        (600, "10m"),
        (7200, "120m"),
        (4 * 3600, "4h"),
        (3 * 86400, "3d"),
    ],
)
def test_age(seconds: float, text: str) -> None:
    assert age(seconds) == text


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_spinner_draws_and_clears_on_tty() -> None:
    future: futures.Future[int] = futures.Future()
    future.set_result(1)
    stream = _Tty()
    progress.wait(future, "deploying", stream, clock=lambda: 5.0)  # type: ignore[arg-type]
    assert stream.getvalue() == "\r| deploying 0s" + progress.CLEAR_LINE


def test_spinner_silent_off_tty() -> None:
    future: futures.Future[int] = futures.Future()
    future.set_result(1)
    stream = io.StringIO()
    progress.wait(future, "deploying", stream)  # type: ignore[arg-type]
    assert stream.getvalue() == ""
