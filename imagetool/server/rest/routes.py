"""Every route of the local engine's REST API, in one explicit table.

One row per (method, path template, handler); a ``{name}`` segment of the
template is a path parameter handed to the handler by keyword. The paths and
methods are those of the oVirt REST API guide. ``Router(ROUTES)`` adds the
rows in this order; the router takes the first row whose pattern and method
match, so keep a more specific template before a general one if two ever
overlap. The handlers stay in the module of their service
family; this table is the one place that says which URL reaches which.
"""

from __future__ import annotations

from imagetool.server.rest import (backups, datacenters, disks, exportdomain, hosts,
                                   imagetransfers, jobs, networks, root, snapshots,
                                   storagedomains, templates, vms)
from imagetool.server.rest.router import Handler

ROUTES: tuple[tuple[str, str, Handler], ...] = (
    # The API root: links to every service (root.py)
    ("GET", "", root.api_root),
    # Storage domains, their disks and disk snapshots (storagedomains.py)
    ("GET", "/storagedomains", storagedomains.list_sds),
    ("POST", "/storagedomains", storagedomains.add_sd),
    ("GET", "/storagedomains/{sd_id}", storagedomains.get_sd),
    ("DELETE", "/storagedomains/{sd_id}", storagedomains.remove_sd),
    ("DELETE", "/storagedomains/{sd_id}/disksnapshots/{vol_id}", storagedomains.remove_sd_snapshot),
    ("GET", "/storagedomains/{sd_id}/disks", storagedomains.list_sd_disks),
    ("POST", "/storagedomains/{sd_id}/disks", storagedomains.add_sd_disk),
    ("GET", "/storagedomains/{sd_id}/disks/{disk_id}", storagedomains.get_sd_disk),
    ("GET", "/storagedomains/{sd_id}/disksnapshots", storagedomains.list_sd_snapshots),
    ("GET", "/storagedomains/{sd_id}/disksnapshots/{vol_id}", storagedomains.get_sd_snapshot),
    # Disks and their snapshots (disks.py)
    ("GET", "/disks", disks.list_disks),
    ("POST", "/disks", disks.add_disk),
    ("GET", "/disks/{disk_id}", disks.get_disk),
    ("PUT", "/disks/{disk_id}", disks.update_disk),
    ("DELETE", "/disks/{disk_id}", disks.remove_disk),
    ("POST", "/disks/{disk_id}/copy", disks.copy_disk),
    ("POST", "/disks/{disk_id}/move", disks.move_disk),
    ("POST", "/disks/{disk_id}/sparsify", disks.sparsify_disk),
    ("GET", "/disks/{disk_id}/disksnapshots", disks.list_disk_snapshots),
    ("GET", "/disks/{disk_id}/disksnapshots/{vol_id}", disks.get_disk_snapshot),
    ("DELETE", "/disks/{disk_id}/disksnapshots/{vol_id}", disks.remove_disk_snapshot),
    # Hosts (hosts.py)
    ("GET", "/hosts", hosts.list_hosts),
    ("GET", "/hosts/{host_id}", hosts.get_host),
    # Jobs and their steps (jobs.py)
    ("GET", "/jobs", jobs.list_jobs),
    ("GET", "/jobs/{job_id}", jobs.get_job),
    ("GET", "/jobs/{job_id}/steps", jobs.list_steps),
    ("GET", "/jobs/{job_id}/steps/{step_id}", jobs.get_step),
    # Image transfers and their actions (imagetransfers.py)
    ("GET", "/imagetransfers", imagetransfers.list_transfers),
    ("POST", "/imagetransfers", imagetransfers.add_transfer),
    ("GET", "/imagetransfers/{tid}", imagetransfers.get_transfer),
    ("POST", "/imagetransfers/{tid}/cancel", imagetransfers.cancel_transfer),
    ("POST", "/imagetransfers/{tid}/extend", imagetransfers.extend_transfer),
    ("POST", "/imagetransfers/{tid}/finalize", imagetransfers.finalize_transfer),
    ("POST", "/imagetransfers/{tid}/pause", imagetransfers.pause_transfer),
    ("POST", "/imagetransfers/{tid}/resume", imagetransfers.resume_transfer),
    # VMs, their disk attachments (vms.py) and snapshots (snapshots.py)
    ("GET", "/vms", vms.list_vms),
    ("POST", "/vms", vms.add_vm),
    ("GET", "/vms/{vm_id}", vms.get_vm),
    ("PUT", "/vms/{vm_id}", vms.update_vm),
    ("DELETE", "/vms/{vm_id}", vms.remove_vm),
    ("GET", "/vms/{vm_id}/diskattachments", vms.list_attachments),
    ("POST", "/vms/{vm_id}/diskattachments", vms.add_attachment),
    ("GET", "/vms/{vm_id}/diskattachments/{disk_id}", vms.get_attachment),
    ("DELETE", "/vms/{vm_id}/diskattachments/{disk_id}", vms.remove_attachment),
    ("GET", "/vms/{vm_id}/snapshots", snapshots.list_snapshots),
    ("POST", "/vms/{vm_id}/snapshots", snapshots.add_snapshot),
    ("GET", "/vms/{vm_id}/snapshots/{snap_id}", snapshots.get_snapshot),
    ("DELETE", "/vms/{vm_id}/snapshots/{snap_id}", snapshots.remove_snapshot),
    ("POST", "/vms/{vm_id}/snapshots/{snap_id}/restore", snapshots.restore_snapshot),
    ("GET", "/vms/{vm_id}/snapshots/{snap_id}/disks", snapshots.list_snapshot_disks),
    ("GET", "/vms/{vm_id}/snapshots/{snap_id}/disks/{disk_id}", snapshots.get_snapshot_disk),
    ("PUT", "/vms/{vm_id}/diskattachments/{disk_id}", vms.update_attachment),
    ("POST", "/vms/{vm_id}/previewsnapshot", snapshots.preview_snapshot),
    ("POST", "/vms/{vm_id}/commitsnapshot", snapshots.commit_snapshot),
    ("POST", "/vms/{vm_id}/undosnapshot", snapshots.undo_snapshot),
    # A VM's NICs (vms.py)
    ("GET", "/vms/{vm_id}/nics", vms.list_nics),
    ("POST", "/vms/{vm_id}/nics", vms.add_nic),
    ("GET", "/vms/{vm_id}/nics/{nic_id}", vms.get_nic),
    ("PUT", "/vms/{vm_id}/nics/{nic_id}", vms.update_nic),
    ("DELETE", "/vms/{vm_id}/nics/{nic_id}", vms.remove_nic),
    # Networks and vNIC profiles (networks.py)
    ("GET", "/networks", networks.list_networks),
    ("GET", "/networks/{network_id}", networks.get_network),
    ("GET", "/networks/{network_id}/vnicprofiles", networks.list_network_profiles),
    ("GET", "/vnicprofiles", networks.list_profiles),
    ("GET", "/vnicprofiles/{profile_id}", networks.get_profile),
    # Data centers, their storage domains and clusters (datacenters.py)
    ("GET", "/datacenters/{dc_id}/storagedomains", datacenters.list_dc_sds),
    ("POST", "/datacenters/{dc_id}/storagedomains", datacenters.attach_sd),
    ("GET", "/datacenters/{dc_id}/storagedomains/{sd_id}", datacenters.get_dc_sd),
    ("DELETE", "/datacenters/{dc_id}/storagedomains/{sd_id}", datacenters.detach_sd),
    ("POST", "/datacenters/{dc_id}/storagedomains/{sd_id}/activate", datacenters.activate_sd),
    ("POST", "/datacenters/{dc_id}/storagedomains/{sd_id}/deactivate", datacenters.deactivate_sd),
    ("GET", "/datacenters/{dc_id}/clusters", datacenters.list_dc_clusters),
    ("GET", "/datacenters/{dc_id}/clusters/{cluster_id}", datacenters.get_dc_cluster),
    ("GET", "/datacenters", datacenters.list_dcs),
    ("GET", "/datacenters/{dc_id}", datacenters.get_dc),
    ("GET", "/clusters", datacenters.list_clusters),
    ("GET", "/clusters/{cluster_id}", datacenters.get_cluster),
    # Export storage domains: VM export and import (exportdomain.py)
    ("POST", "/vms/{vm_id}/export", exportdomain.export_vm),
    ("GET", "/storagedomains/{sd_id}/vms", exportdomain.list_sd_vms),
    ("GET", "/storagedomains/{sd_id}/vms/{vm_id}", exportdomain.get_sd_vm),
    ("DELETE", "/storagedomains/{sd_id}/vms/{vm_id}", exportdomain.remove_sd_vm),
    ("POST", "/storagedomains/{sd_id}/vms/{vm_id}/import", exportdomain.import_vm),
    ("GET", "/storagedomains/{sd_id}/vms/{vm_id}/diskattachments", exportdomain.list_sd_vm_attachments),
    ("GET", "/storagedomains/{sd_id}/vms/{vm_id}/diskattachments/{disk_id}", exportdomain.get_sd_vm_attachment),
    # VM backups and checkpoints (backups.py)
    ("GET", "/vms/{vm_id}/backups", backups.list_backups),
    ("POST", "/vms/{vm_id}/backups", backups.add_backup),
    ("GET", "/vms/{vm_id}/backups/{bid}", backups.get_backup),
    ("GET", "/vms/{vm_id}/backups/{bid}/disks", backups.backup_disks),
    ("POST", "/vms/{vm_id}/backups/{bid}/finalize", backups.finalize_backup),
    ("GET", "/vms/{vm_id}/checkpoints", backups.list_checkpoints),
    ("GET", "/vms/{vm_id}/checkpoints/{cid}", backups.get_checkpoint),
    ("GET", "/vms/{vm_id}/checkpoints/{cid}/disks", backups.checkpoint_disks),
    ("DELETE", "/vms/{vm_id}/checkpoints/{cid}", backups.remove_checkpoint),
    # Templates and their disk attachments (templates.py)
    ("GET", "/templates", templates.list_templates),
    ("POST", "/templates", templates.add_template),
    ("GET", "/templates/{template_id}", templates.get_template),
    ("DELETE", "/templates/{template_id}", templates.remove_template),
    ("GET", "/templates/{template_id}/diskattachments", templates.list_attachments),
    ("GET", "/templates/{template_id}/diskattachments/{disk_id}", templates.get_attachment),
)
