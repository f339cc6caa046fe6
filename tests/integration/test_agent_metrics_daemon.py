"""The novacron-agent daemon serves /metrics from its start, before libvirt answers: while it
waits for libvirtd (boot order) a scrape says so (novacron_agent_libvirt_up 0) with the
process's own figures; a port in use stops the start with the key named."""

from __future__ import annotations

import urllib.error
from pathlib import Path

from lab.processes import free_port, start_agent, wait_until
from tests.metrics_check import promtool_check, samples, scrape, value

NO_LIBVIRTD = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"


def test_metrics_answer_while_libvirtd_is_away(tmp_path: Path) -> None:
    port = free_port()
    agent = start_agent(
        tmp_path,
        f"127.0.0.1:{free_port()}",
        "edge-m",
        NO_LIBVIRTD,
        tmp_path / "images",
        "--metrics-listen",
        f"127.0.0.1:{port}",
    )
    text = ""

    def answered() -> bool:
        nonlocal text
        try:
            text = scrape(port)
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    try:
        wait_until(answered, 30, "the agent's /metrics", [agent])
        promtool_check(text)
        assert value(text, "novacron_agent_libvirt_up") == 0.0
        assert value(text, "novacron_agent_info", node="edge-m") == 1.0
        assert (value(text, "process_resident_memory_bytes") or 0) > 0
        assert "novacron_agent_vms" not in samples(text)
        assert agent.alive()  # still waiting for libvirtd, not dead

        second = start_agent(
            tmp_path / "second",
            f"127.0.0.1:{free_port()}",
            "edge-n",
            NO_LIBVIRTD,
            tmp_path / "images",
            "--metrics-listen",
            f"127.0.0.1:{port}",
        )
        try:
            assert second.process.wait(30) == 2
            assert f"agent.metrics_listen: cannot listen on 127.0.0.1:{port}" in second.log_tail()
        finally:
            second.stop()
    finally:
        agent.stop()
