"""novacron-controller: placement, desired state and the agents' sessions."""

__version__ = "0.1.0"
