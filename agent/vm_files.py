"""A VM's own files on this node, in `<state_dir>/vms/<vm_id>/`: its disk overlay
(agent.images.catalog), its console log, and what a cold or snapshot migration leaves or
brings (agent.hypervisor.libvirt_offline_migration), named here."""

CONSOLE_FILE = "console.log"
SAVE_FILE = "migration.save"  # a snapshot migration's save on the source, until it is deleted
# what the source of a cold or snapshot migration puts into the target's staged directory
INCOMING_DISK = "incoming-disk.qcow2"  # the source's overlay (backing: the source's base path)
INCOMING_SAVE = "incoming.save"  # memory and device state (snapshot only)
INCOMING_DEFINE = "incoming-define.xml"  # the persistent definition, with this node's paths
INCOMING_RESTORE = "incoming-restore.xml"  # the live definition to restore with (snapshot)
