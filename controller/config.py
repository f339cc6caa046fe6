"""Controller configuration: the `controller:` block of a YAML file, env, then flags."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shared.config import Seconds, build, env_overrides, read_yaml
from shared.errors import ConfigError

ENV_PREFIX = "NOVACRON_CONTROLLER"


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    listen: str = "127.0.0.1:7700"
    state_dir: Path = Path("/var/lib/novacron/controller")
    heartbeat_interval: Seconds = Seconds(5.0)
    command_timeout: Seconds = Seconds(30.0)
    deploy_timeout: Seconds = Seconds(120.0)
    insecure: bool = False
    controller_id: str = ""
    log_level: str = "info"

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval", "command_timeout", "deploy_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"controller.{name}: must be > 0")
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"controller.listen: expected HOST:PORT, got {self.listen!r}")


def load_config(path: Path | None, flags: dict[str, Any]) -> ControllerConfig:
    """File < environment (NOVACRON_CONTROLLER_<KEY>) < flags that were given."""
    raw: dict[str, Any] = read_yaml(path, "controller") if path else {}
    raw.update(env_overrides(ENV_PREFIX, ControllerConfig))
    raw.update({k: v for k, v in flags.items() if v is not None})
    return build(ControllerConfig, raw, "controller")


def with_listen(config: ControllerConfig, listen: str) -> ControllerConfig:
    return replace(config, listen=listen)
