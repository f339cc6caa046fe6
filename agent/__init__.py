"""novacron-agent: runs on every edge node, executes the controller's commands locally."""

__version__ = "0.1.0"
