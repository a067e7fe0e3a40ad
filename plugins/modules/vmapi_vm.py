#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
module: vmapi_vm
short_description: Rename, start, stop and reboot a VM through VMAPI, waiting for its job
version_added: 0.1.0
description:
  - Sets the alias of a VM (VMAPI C(POST /vms/:uuid?action=update)). If VMAPI
    rejects the alias as a C(Duplicate), the alias counts as done, as
    manta-reshard does when it renames a detached peer, and a warning says so.
  - Starts, stops or reboots a VM (C(action=start|stop|reboot)) only when its
    state asks for it, sending C(idempotent=true) so that a state change
    racing with ours does not fail the job.
  - Every action returns a workflow job; with O(wait=true) (the default) the
    module polls C(GET /jobs/:uuid) until it succeeds, fails (reporting the
    job's last C(chain_results) error) or O(wait_timeout) passes.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.triton_api
  - manta.ops.triton_api.vmapi
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  uuid:
    description: Uuid of the VM (for a Manta zone, also its SAPI instance uuid).
    type: str
    required: true
  alias:
    description: The alias the VM must have.
    type: str
  state:
    description:
      - V(present) only applies O(alias).
      - V(running) starts the VM if it is stopped; V(stopped) stops it if it
        is running.
      - V(restarted) reboots a running VM (or starts a stopped one). Without
        O(restart_marker) it does so on every run, like
        M(ansible.builtin.service) C(state=restarted). With O(restart_marker)
        it reboots at most once per marker.
    type: str
    choices: [present, running, stopped, restarted]
    default: present
  restart_marker:
    description:
      - Makes O(state=restarted) idempotent. The reboot job also sets VM
        C(internal_metadata["manta_ops:restart_marker"]) to this value
        (VMAPI allows C(update.set_internal_metadata) with start and reboot);
        a VM that already carries the marker is not rebooted again.
    type: str
  wait:
    description: Wait for each job to finish.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait for one job.
    type: int
    default: 3600
  poll_interval:
    description: Seconds between two polls of a job.
    type: float
    default: 5
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: Rename a peer after moving it to shard 3 (a Duplicate alias counts as done)
  manta.ops.vmapi_vm:
    uuid: "{{ peer_uuid }}"
    alias: "3.postgres.{{ domain }}-{{ peer_uuid[:8] }}"

- name: Stop a zone and wait for the job
  manta.ops.vmapi_vm:
    uuid: "{{ zone_uuid }}"
    state: stopped

- name: Reboot each electric-moray zone once for this reshard plan
  manta.ops.vmapi_vm:
    uuid: "{{ item }}"
    state: restarted
    restart_marker: "reshard-{{ plan_uuid }}"
  loop: "{{ em_zones }}"
"""

RETURN = r"""
vm:
  description: The VM after the change (predicted in check mode).
  returned: success
  type: dict
  contains:
    uuid: {description: VM uuid, type: str, returned: success}
    alias: {description: Alias, type: str, returned: success}
    state: {description: VM state, type: str, returned: success, sample: running}
    server_uuid: {description: Compute node, type: str, returned: success}
    image_uuid: {description: Image the VM runs, type: str, returned: success}
    brand: {description: Brand, type: str, returned: success}
jobs:
  description: The VMAPI jobs started by this run, with their final execution state.
  returned: success
  type: list
  elements: dict
  sample: [{"uuid": "8e1f...", "task": "stop", "execution": "succeeded", "error": null}]
alias_duplicate:
  description: True when VMAPI rejected the alias as Duplicate and it was counted as done.
  returned: success
  type: bool
diff:
  description: Alias and state before and after.
  returned: when diff mode is on
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import vmapi as V
from ansible_collections.manta.ops.plugins.module_utils.http_api import (
    ApiError, check_requests, client_kwargs, fail_api, require_url, triton_argument_spec)
from ansible_collections.manta.ops.plugins.module_utils.sapi import is_uuid

MARKER_KEY = "manta_ops:restart_marker"


def vm_view(vm):
    return {k: vm.get(k) for k in ("uuid", "alias", "state", "server_uuid", "image_uuid", "brand")}


def plan_power(vm_state, want, marker, have_marker):
    """The VMAPI action needed to go from vm_state to want (None if none)."""
    if want == "running":
        return None if vm_state == "running" else "start"
    if want == "stopped":
        return None if vm_state == "stopped" else "stop"
    if want == "restarted":
        if marker is not None and have_marker == marker:
            return None
        return "reboot" if vm_state == "running" else "start"
    return None


def main():
    spec = triton_argument_spec("vmapi")
    spec.update(
        uuid=dict(type="str", required=True),
        alias=dict(type="str"),
        state=dict(type="str", default="present", choices=["present", "running", "stopped", "restarted"]),
        restart_marker=dict(type="str"),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=3600),
        poll_interval=dict(type="float", default=5),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    if not is_uuid(p["uuid"]):
        module.fail_json(msg=f"uuid must be a VM UUID, got {p['uuid']!r}")
    if p["alias"] is not None and not p["alias"].strip():
        module.fail_json(msg="alias must not be empty")
    if p["restart_marker"] is not None and p["state"] != "restarted":
        module.fail_json(msg=f"restart_marker only applies to state=restarted, not state={p['state']}")
    if p["wait_timeout"] <= 0 or p["poll_interval"] <= 0:
        module.fail_json(msg="wait_timeout and poll_interval must be positive")
    check_requests(module)
    client = V.VmapiClient(require_url(module, "vmapi"), **client_kwargs(module))
    uuid = p["uuid"]

    try:
        vm = client.get_vm_or_none(uuid)
    except ApiError as exc:
        fail_api(module, exc, f"cannot read VM {uuid}")
    if vm is None:
        module.fail_json(msg=f"no VMAPI VM {uuid}: expected an existing VM, found none (404)", changed=False)
    if vm.get("state") in ("destroyed", "failed"):
        module.fail_json(msg=f"VM {uuid} is {vm.get('state')}; expected a running or stopped VM",
                         changed=False, vm=vm_view(vm))

    before = vm_view(vm)
    predicted = dict(before)
    result = dict(changed=False, jobs=[], alias_duplicate=False)

    def run_job(action, body=None, what=None, **query):
        """POST the action, record its job, wait for it. Returns False if
        VMAPI rejected the alias as Duplicate (only for action=update)."""
        what = what or f"{action} VM {uuid}"
        try:
            accepted = client.action(uuid, action, body=body, **query)
        except ApiError as exc:
            if action == "update" and exc.has_field_error("alias", "Duplicate"):
                return False
            fail_api(module, exc, f"VMAPI could not {what}", **result)
        result["changed"] = True
        summary = {"uuid": accepted["job_uuid"], "task": action, "execution": "queued", "error": None}
        result["jobs"].append(summary)
        if p["wait"]:
            try:
                job = client.wait_job(accepted["job_uuid"], timeout=p["wait_timeout"],
                                      interval=p["poll_interval"])
                summary.update(V.job_summary(job), task=action)
            except V.JobError as exc:
                if exc.job:
                    summary.update(V.job_summary(exc.job), task=action)
                module.fail_json(msg=f"{exc} (while trying to {what}; expected the job to succeed)",
                                 **result)
            except ApiError as exc:
                fail_api(module, exc, f"cannot follow VMAPI job {accepted['job_uuid']} ({what})", **result)
        return True

    def record_marker(marker):
        """Make sure the VM carries the restart marker. VMAPI sets it with the
        reboot job (update.set_internal_metadata); if this VMAPI did not,
        add it with POST /vms/:uuid/internal_metadata and wait for that job."""
        try:
            cur = client.get_vm(uuid)
        except ApiError as exc:
            fail_api(module, exc, f"cannot re-read VM {uuid}", **result)
        if (cur.get("internal_metadata") or {}).get(MARKER_KEY) == marker:
            return
        try:
            accepted = client.request("POST", f"/vms/{uuid}/internal_metadata", body={MARKER_KEY: marker},
                                      expect=(200, 202), idempotent=True)
            job = client.wait_job(accepted["job_uuid"], timeout=p["wait_timeout"], interval=p["poll_interval"])
            result["jobs"].append(dict(V.job_summary(job), task="set_internal_metadata"))
        except (ApiError, V.JobError, KeyError, TypeError) as exc:
            module.fail_json(msg=f"VM {uuid} was restarted but its restart marker could not be recorded: {exc}",
                             **result)

    # --- alias
    if p["alias"] is not None and vm.get("alias") != p["alias"]:
        predicted["alias"] = p["alias"]
        if module.check_mode:
            result["changed"] = True
        elif not run_job("update", body={"alias": p["alias"]},
                         what=f"rename VM {uuid} to {p['alias']!r}"):
            result["alias_duplicate"] = True
            predicted["alias"] = vm.get("alias")
            module.warn(f"VMAPI reports alias {p['alias']!r} of VM {uuid} as Duplicate; counting it as done")

    # --- power state
    have_marker = (vm.get("internal_metadata") or {}).get(MARKER_KEY)
    action = plan_power(vm.get("state"), p["state"], p["restart_marker"], have_marker)
    if action and vm.get("state") not in ("running", "stopped"):
        module.fail_json(msg=f"VM {uuid} is {vm.get('state')!r}; expected running or stopped before "
                             f"it can be {p['state']} (action {action})", **result)
    if action:
        predicted["state"] = V.ACTION_TO[action]
        if module.check_mode:
            result["changed"] = True
        else:
            body = {}
            if p["restart_marker"] is not None:
                body["update"] = {"set_internal_metadata": {MARKER_KEY: p["restart_marker"]}}
            run_job(action, body=body, idempotent="true")
            if p["restart_marker"] is not None and p["wait"]:
                record_marker(p["restart_marker"])

    if result["changed"] and not module.check_mode and p["wait"]:
        try:
            vm = client.get_vm(uuid)
        except ApiError as exc:
            fail_api(module, exc, f"cannot re-read VM {uuid}", **result)
        result["vm"] = vm_view(vm)
        if action and vm.get("state") != V.ACTION_TO[action]:
            module.fail_json(msg=f"VMAPI job for {action} succeeded but VM {uuid} is {vm.get('state')!r}, "
                                 f"expected {V.ACTION_TO[action]!r}", **result)
    else:
        result["vm"] = predicted
    if module._diff:
        result["diff"] = {"before": {"alias": before["alias"], "state": before["state"]},
                          "after": {"alias": result["vm"]["alias"], "state": result["vm"]["state"]}}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
