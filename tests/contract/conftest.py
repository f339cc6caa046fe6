"""The contract tiers' shared fixtures: two edge nodes for migration (migration_pair)."""

from tests.contract.migration_pair import nodes as nodes
from tests.contract.migration_pair import pair as pair
