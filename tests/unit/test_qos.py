from __future__ import annotations

import pytest

from agent.qos import UplinkClasses, postcopy_cap_mbit
from shared.errors import InvalidArgument


def test_uplink_classes_put_control_first_and_cap_migration() -> None:
    cmds = [" ".join(c) for c in UplinkClasses("eth0", 1000, 300).commands()]
    assert cmds[0] == "tc qdisc add dev eth0 root handle 1: htb default 20"
    assert any("classid 1:10 htb rate 100mbit ceil 1000mbit prio 0" in c for c in cmds)
    assert any("classid 1:30 htb rate 300mbit ceil 300mbit prio 2" in c for c in cmds)
    assert any("match ip dport 7700 0xffff flowid 1:10" in c for c in cmds)
    assert any("match ip dport 49152 0xffc0 flowid 1:30" in c for c in cmds)
    assert any("match ip dport 16509 0xffff flowid 1:30" in c for c in cmds)


@pytest.mark.parametrize(("link", "bulk"), [(0, 1), (100, 0), (100, 200)])
def test_bad_rates_are_refused(link: float, bulk: float) -> None:
    with pytest.raises(InvalidArgument):
        UplinkClasses("eth0", link, bulk)


def test_postcopy_rate_stays_below_the_migration_class() -> None:
    assert postcopy_cap_mbit(10) == 8
    assert postcopy_cap_mbit(300) == 240
    assert postcopy_cap_mbit(1) == 1  # never 0, which would mean "uncapped"
    assert postcopy_cap_mbit(0) == 0  # no class: nothing to stay below
