"""The lab's state file: what `up` created, written as it goes so `down` can undo a crashed `up`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_STATE_DIR = Path("/run/novacron-lab")
STATE_FILE = "state.json"


@dataclass
class ProcessRecord:
    name: str
    pid: int
    start_time: int | None


@dataclass
class LabState:
    topology: str = ""  # its name
    topology_file: str = ""
    subnet: str = ""
    controller_address: str = ""
    images_dir: str = ""
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    libvirtd: dict[str, str] = field(default_factory=dict)  # site -> base dir
    conditions: dict[str, str] = field(default_factory=dict)  # site -> failed/partitioned; else up
    ready: bool = False

    def save(self, state_dir: Path) -> None:
        """Atomically (write + rename), so a crash never leaves half a file."""
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, state_dir / STATE_FILE)

    @classmethod
    def load(cls, state_dir: Path) -> LabState | None:
        try:
            data = json.loads((state_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        data["processes"] = [ProcessRecord(**p) for p in data.get("processes", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})
