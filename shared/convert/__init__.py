"""The one place where protobuf messages become domain objects and back: the domain types
(`shared.convert.domain`, `shared.convert.mesh`) and the agent's commands and results
(`shared.convert.commands`).
Import this package (`from shared import convert`), not its modules."""

from shared.convert.commands import *  # noqa: F403
from shared.convert.commands import __all__ as _commands
from shared.convert.domain import *  # noqa: F403
from shared.convert.domain import __all__ as _domain
from shared.convert.mesh import *  # noqa: F403
from shared.convert.mesh import __all__ as _mesh

__all__ = [*_domain, *_mesh, *_commands]
