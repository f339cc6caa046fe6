"""A VM's own files on this node, in `<state_dir>/vms/<vm_id>/`: its disk overlay
(agent.images.catalog) and its console log, named here."""

CONSOLE_FILE = "console.log"
