"""`kill -USR1` on a daemon writes where it is: every thread's stack and every asyncio
task's, to its log (shared.logging.dump_stacks_on_sigusr1). A timed-out wait on a daemon in
the tests shows them (lab.processes.wait_until)."""

from __future__ import annotations

from pathlib import Path

from lab.processes import free_port, start_controller, wait_until
from tests.integration.test_systemd_notify import wait_log


def test_the_controller_dumps_its_threads_and_tasks_on_sigusr1(tmp_path: Path) -> None:
    controller = start_controller(tmp_path, f"127.0.0.1:{free_port()}", "--metrics-listen", "")
    try:
        wait_log(controller, "controller listening", 1, 60)
        dump = controller.stacks(wait_s=10.0)
        assert "Current thread" in dump and "most recent call first" in dump  # the threads
        wait_until(lambda: "end of the asyncio tasks" in controller.log_tail(), 10, "the tasks")
        tasks = controller.log_tail(2000)
        assert "Exception in callback" not in tasks, tasks
        assert "controller/runner.py" in tasks, tasks  # the core's event loop, where it waits
        assert controller.alive()  # a dump, not a crash
    finally:
        controller.stop()
