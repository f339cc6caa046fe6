"""The controller's decisions as one pure state machine: events in, instructions out.

No `async`, no protobuf, no store and no clock in here (tests/unit/test_layering.py checks it):
`controller.runner` feeds events and executes the instructions. Start at `machine.py`; the
picture is in docs/architecture.md.
"""

from controller.core.machine import ControllerCore
from controller.core.migration import MigrationReport
from controller.core.state import FleetState, Orphan, Settings

__all__ = ["ControllerCore", "FleetState", "MigrationReport", "Orphan", "Settings"]
