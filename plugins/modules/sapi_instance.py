#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
module: sapi_instance
short_description: Create, find, reprovision and delete SAPI instances (Manta zones)
version_added: 0.1.0
description:
  - Creates a SAPI instance of a service (SAPI C(POST /instances), which
    provisions the zone through VMAPI), idempotent by O(tags) and
    O(server_uuid) (plus O(shard) if given). An instance that already matches
    is adopted, not created again. The instance uuid is chosen by the module
    before the call, so O(alias) can contain it.
  - Reprovisions an instance onto an image (SAPI C(PUT /instances/:uuid/upgrade)),
    at most once per O(marker), or, without a marker, only if its VM does not
    already run that image.
  - Deletes instances (SAPI C(DELETE /instances/:uuid), which destroys the zone).
  - Finds instances by service, shard (C(metadata.SHARD)), tags and server.
  - When O(vmapi_url) (or E(MANTA_VMAPI_URL)) is known, server and image are
    taken from VMAPI (SAPI params go stale after a reprovision or a
    migration), creation is sent with C(async=true) and the VMAPI job is
    polled, and an interrupted reprovision can be resolved from the VM's
    job list.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.triton_api
  - manta.ops.triton_api.sapi
  - manta.ops.triton_api.vmapi
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  state:
    description:
      - V(present) creates the instance unless one matches.
      - V(absent) deletes the instance O(uuid), or every instance that matches
        the find options (which then must include O(tags), O(shard) or
        O(server_uuid), so that a bare service name can never delete a whole
        service).
      - V(reprovisioned) reprovisions one instance onto O(image_uuid).
      - V(query) changes nothing and returns the matching instances.
    type: str
    choices: [present, absent, reprovisioned, query]
    default: present
  application:
    description: Name or uuid of the application the O(service) belongs to.
    type: str
    default: manta
  service:
    description:
      - Name or uuid of the service. Required unless O(uuid) is given with
        O(state=absent) or O(state=reprovisioned).
    type: str
  uuid:
    description:
      - With O(state=present), the uuid to give the new instance (by default a
        fresh random uuid), and an instance with this uuid counts as a match.
      - Otherwise, the instance to act on, instead of finding it.
    type: str
  server_uuid:
    description:
      - Compute node for a new instance (C(params.server_uuid)), and a find
        criterion.
    type: str
  image_uuid:
    description:
      - Image of a new instance (C(params.image_uuid)), or the image to
        reprovision onto (required with O(state=reprovisioned)).
    type: str
  alias:
    description:
      - C(params.alias) of a new instance. V({uuid}) and V({uuid8}) are
        replaced with the instance uuid and its first 8 characters, for
        example V(3.postgres.lab.example.com-{uuid8}).
    type: str
  params:
    description:
      - Other params of a new instance (for example C(networks), C(ram)).
        O(server_uuid), O(image_uuid), O(alias) and O(tags) take precedence.
    type: dict
    default: {}
  metadata:
    description: Metadata of a new instance (for example C(SHARD), C(SERVICE_NAME)).
    type: dict
    default: {}
  tags:
    description:
      - Tags of a new instance (C(params.tags), merged over O(params) tags),
        and a find criterion; every tag given must be present with that value
        (compared as strings).
      - This is the identity that makes O(state=present) idempotent, as
        manta-reshard does with C(manta_reshard_plan). O(state=present) needs
        O(tags) or O(uuid).
    type: dict
    default: {}
  shard:
    description: Find criterion, C(metadata.SHARD) (compared as a string).
    type: str
  master:
    description: Send C(master=true) on create, as the Manta tools do (multi-DC SAPI).
    type: bool
    default: false
  marker:
    description:
      - With O(state=reprovisioned), reprovision at most once per marker (for
        example V(<plan uuid>-primary)). The module records
        C({marker, state, image_uuid, started_at, finished_at}) in the
        instance metadata key O(marker_key), C(state=pending) before the
        upgrade call and C(state=done) after it succeeds; a run that finds
        its marker done changes nothing.
      - If a run finds its marker C(pending) (an earlier run was interrupted
        during the upgrade), it looks up the VM's reprovision jobs in VMAPI
        (needs O(vmapi_url)); a job started since then that succeeded
        completes the marker without another reprovision, a running one is
        waited for, and otherwise the reprovision is made again.
      - Without a marker, the instance is reprovisioned only if its VM
        (VMAPI, so O(vmapi_url) is then required) runs another image.
    type: str
  marker_key:
    description: Instance metadata key holding the reprovision marker.
    type: str
    default: MANTA_OPS_REPROVISION
  wait:
    description:
      - Wait for provisioning to finish. With O(vmapi_url), creation is sent
        with C(async=true) and the VMAPI job is polled; without it, the SAPI
        call itself blocks until the zone is provisioned.
      - With V(false) and O(vmapi_url), the module returns right after SAPI
        accepts the instance, with RV(job_uuid). Reprovision and delete
        always wait (SAPI offers no asynchronous form).
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait for provisioning, reprovisioning or deletion of one instance.
    type: int
    default: 3600
  poll_interval:
    description: Seconds between two polls of a VMAPI job.
    type: float
    default: 5
notes:
  - SAPI validates the service, image and server only when it provisions; a
    bad O(image_uuid) or O(server_uuid) is reported as the provisioning
    error (C(ProvisionFailedError)), and SAPI removes the failed instance.
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: Add a postgres peer for the reshard plan on each plan server (re-run safe)
  manta.ops.sapi_instance:
    service: postgres
    server_uuid: "{{ item }}"
    image_uuid: "{{ postgres_image }}"
    alias: "1.postgres.{{ domain }}-{{ '{uuid8}' }}"
    metadata:
      SHARD: "1"
      SERVICE_NAME: "1.moray.{{ domain }}"
      MANATEE_SHARD_PATH: "/manatee/1.moray.{{ domain }}"
    tags:
      manta_role: postgres
      manta_reshard_plan: "{{ plan_uuid }}"
  loop: "{{ plan_servers }}"

- name: Find the peers of shard 1 made for this plan
  manta.ops.sapi_instance:
    state: query
    service: postgres
    shard: "1"
    tags: {manta_reshard_plan: "{{ plan_uuid }}"}
  register: peers

- name: Reprovision the new primary onto its own image, once
  manta.ops.sapi_instance:
    state: reprovisioned
    uuid: "{{ new_primary }}"
    image_uuid: "{{ postgres_image }}"
    marker: "{{ plan_uuid }}-primary"

- name: Remove a peer
  manta.ops.sapi_instance:
    state: absent
    uuid: "{{ peer_uuid }}"
"""

RETURN = r"""
instance:
  description:
    - The instance created, adopted, reprovisioned or deleted (the one match
      for V(query)), as C({uuid, service_uuid, alias, server_uuid,
      image_uuid, tags, shard, type, vm_state}). Server and image come from
      VMAPI when it is known. Null if there is none.
  returned: success
  type: dict
  sample: {"uuid": "b3c1...", "alias": "1.postgres.lab-b3c1...", "server_uuid": "5e1e...", "tags": {"manta_role": "postgres"}}
instances:
  description: All matching instances (same shape as RV(instance)).
  returned: success
  type: list
  elements: dict
created:
  description: True when this run created the instance (false when it adopted one).
  returned: state is present
  type: bool
job_uuid:
  description: VMAPI job of the provision (with O(wait=false) or when it was polled).
  returned: when a provision job was started
  type: str
marker:
  description: The reprovision marker record after the run.
  returned: state is reprovisioned and O(marker) is set
  type: dict
  sample: {"marker": "plan-primary", "state": "done", "image_uuid": "0c1a...", "started_at": "2026-01-01T00:00:00Z"}
diff:
  description: The instance (or its image and marker) before and after.
  returned: when diff mode is on
  type: dict
"""

import uuid as uuidlib

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import sapi as S
from ansible_collections.manta.ops.plugins.module_utils import sapi_reprovision as R
from ansible_collections.manta.ops.plugins.module_utils import vmapi as V
from ansible_collections.manta.ops.plugins.module_utils.http_api import (
    ApiError, check_requests, client_kwargs, fail_api, require_url, triton_argument_spec)


class Runner:
    def __init__(self, module):
        self.module = module
        self.p = module.params
        kw = client_kwargs(module)
        self.sapi = S.SapiClient(require_url(module, "sapi"), **kw)
        self.vmapi = V.VmapiClient(self.p["vmapi_url"], **kw) if self.p.get("vmapi_url") else None
        if self.vmapi is not None:
            require_url(module, "vmapi")
        self.result = dict(changed=False)
        self._vms = {}

    # ------------------------------------------------------------ helpers
    def fail(self, msg, **kw):
        self.module.fail_json(msg=msg, **(self.result | kw))

    def api_fail(self, exc, what):
        if isinstance(exc, ApiError) and exc.api_message and "\n" in exc.api_message:
            exc = ApiError(exc.service, exc.method, exc.path, status=exc.status, code=exc.code,
                           api_message=R.trim_message(exc.api_message), request_id=exc.request_id,
                           errors=exc.errors, expected=exc.expected)
        fail_api(self.module, exc, what, **self.result)

    def vm(self, uuid):
        """The VMAPI VM of an instance (None without VMAPI or if absent)."""
        if self.vmapi is None:
            return None
        if uuid not in self._vms:
            try:
                self._vms[uuid] = self.vmapi.get_vm_or_none(uuid)
            except ApiError as exc:
                self.api_fail(exc, f"cannot read VM {uuid}")
        return self._vms[uuid]

    def view(self, inst):
        return S.instance_view(inst, self.vm(inst["uuid"]) if inst else None)

    def service(self, required=True):
        p = self.p
        if not p["service"]:
            if required:
                self.fail(f"service is required with state={p['state']}"
                          + ("" if p["state"] in ("present", "query") else " unless uuid is given"))
            return None
        try:
            app = self.sapi.find_application(p["application"]) if p["application"] else None
            if p["application"] and app is None:
                self.fail(f"no SAPI application {p['application']!r}: expected one, found none")
            svc = self.sapi.find_service(p["service"], app["uuid"] if app else None)
        except LookupError as exc:
            self.fail(str(exc))
        except ApiError as exc:
            self.api_fail(exc, f"cannot look up SAPI service {p['service']!r}")
        if svc is None:
            self.fail(f"no SAPI service {p['service']!r} in application {p['application']!r}: "
                      "expected one, found none")
        return svc

    def get_instance(self, uuid):
        try:
            return self.sapi.get_object_or_none("instance", uuid)
        except ApiError as exc:
            self.api_fail(exc, f"cannot read SAPI instance {uuid}")

    def find(self, svc):
        """Instances of ``svc`` matching shard, tags and server."""
        p = self.p
        try:
            insts = [i for i in self.sapi.list_instances(svc["uuid"]) if i.get("service_uuid") == svc["uuid"]]
        except ApiError as exc:
            self.api_fail(exc, f"cannot list instances of service {svc['name']}")
        out = []
        for inst in insts:
            if not S.instance_matches(inst, shard=p["shard"], tags=p["tags"]):
                continue
            if p["server_uuid"] and not S.instance_matches(inst, server_uuid=p["server_uuid"],
                                                           vm=self.vm(inst["uuid"])):
                continue
            out.append(inst)
        return sorted(out, key=lambda i: i["uuid"])

    def wait_job(self, job_uuid, what):
        try:
            return self.vmapi.wait_job(job_uuid, timeout=self.p["wait_timeout"],
                                       interval=self.p["poll_interval"])
        except V.JobError as exc:
            self.fail(f"{exc} ({what})", job=V.job_summary(exc.job))
        except ApiError as exc:
            self.api_fail(exc, f"cannot follow VMAPI job {job_uuid} ({what})")

    # ------------------------------------------------------------ states
    def query(self):
        svc = self.service()
        found = self.find(svc)
        views = [self.view(i) for i in found]
        self.result.update(instances=views, instance=views[0] if len(views) == 1 else None)

    def present(self):
        p = self.p
        if not p["tags"] and not p["uuid"]:
            self.fail("state=present needs tags (the identity that finds the instance again on a "
                      "re-run) or uuid; without them every run would create another instance")
        svc = self.service()
        match = None
        if p["uuid"]:
            match = self.get_instance(p["uuid"])
            if match is not None and match.get("service_uuid") != svc["uuid"]:
                self.fail(f"SAPI instance {p['uuid']} exists but belongs to service "
                          f"{match.get('service_uuid')}, expected {svc['name']} ({svc['uuid']})")
        if match is None and p["tags"]:
            found = self.find(svc)
            if len(found) > 1:
                self.fail(f"{len(found)} instances of {svc['name']} match tags {p['tags']}"
                          + (f" on server {p['server_uuid']}" if p["server_uuid"] else "")
                          + f": {', '.join(i['uuid'] for i in found)}; expected at most one",
                          instances=[self.view(i) for i in found])
            match = found[0] if found else None
        if match is not None:
            vm = self.vm(match["uuid"])
            if vm is not None and vm.get("state") in ("failed", "destroyed"):
                self.fail(f"SAPI instance {match['uuid']} exists but its VM is {vm.get('state')}; "
                          "delete it (state=absent) and run again", instance=self.view(match))
            view = self.view(match)
            self.result.update(created=False, instance=view, instances=[view])
            if self.module._diff:
                self.result["diff"] = {"before": view, "after": view}
            return

        uuid = p["uuid"] or str(uuidlib.uuid4())
        params = dict(p["params"] or {})
        tags = dict(params.get("tags") or {})
        tags.update(p["tags"] or {})
        if tags:
            params["tags"] = tags
        if p["server_uuid"]:
            params["server_uuid"] = p["server_uuid"]
        if p["image_uuid"]:
            params["image_uuid"] = p["image_uuid"]
        if p["alias"]:
            try:
                params["alias"] = S.format_alias(p["alias"], uuid)
            except ValueError as exc:
                self.fail(str(exc))
        body = {"service_uuid": svc["uuid"], "uuid": uuid, "params": params,
                "metadata": dict(p["metadata"] or {})}
        if p["master"]:
            body["master"] = True
        predicted = S.instance_view({"uuid": uuid, "service_uuid": svc["uuid"], "params": params,
                                     "metadata": body["metadata"], "type": svc.get("type")})
        self.result.update(changed=True, created=True, instance=predicted, instances=[predicted])
        if self.module._diff:
            self.result["diff"] = {"before": {}, "after": predicted}
        if self.module.check_mode:
            return
        use_async = self.vmapi is not None
        try:
            created = self.sapi.create_instance(
                body, async_=use_async,
                timeout=None if use_async else float(p["wait_timeout"]))
        except ApiError as exc:
            if exc.code == "Timeout" and self.get_instance(uuid) is not None:
                self.fail(f"SAPI did not answer within {p['wait_timeout']}s while provisioning "
                          f"instance {uuid}; it exists and may still be provisioning (run again to adopt it)")
            self.result.update(changed=False)
            self.api_fail(exc, f"SAPI could not create an instance of {svc['name']}")
        job_uuid = (created or {}).get("job_uuid") if isinstance(created, dict) else None
        if job_uuid:
            self.result["job_uuid"] = job_uuid
            if p["wait"]:
                self.wait_job(job_uuid, f"provisioning instance {uuid} of {svc['name']}")
        self._vms.pop(uuid, None)
        inst = self.get_instance(uuid)
        if inst is None:
            self.fail(f"SAPI accepted instance {uuid} but it does not exist afterwards "
                      "(the provision failed and SAPI removed it)")
        view = self.view(inst)
        self.result.update(instance=view, instances=[view])
        if self.module._diff:
            self.result["diff"] = {"before": {}, "after": view}

    def targets(self):
        """The instance(s) an absent/reprovisioned run acts on."""
        p = self.p
        if p["uuid"]:
            inst = self.get_instance(p["uuid"])
            return [inst] if inst is not None else []
        svc = self.service()
        if p["state"] == "absent" and not (p["tags"] or p["shard"] or p["server_uuid"]):
            self.fail("state=absent without uuid needs tags, shard or server_uuid to choose "
                      f"instances; refusing to delete every instance of {svc['name']}")
        return self.find(svc)

    def absent(self):
        found = self.targets()
        views = [self.view(i) for i in found]
        self.result.update(instances=views, instance=views[0] if len(views) == 1 else None,
                           changed=bool(found))
        if self.module._diff:
            self.result["diff"] = {"before": {"instances": views}, "after": {"instances": []}}
        if self.module.check_mode:
            return
        for inst in found:
            try:
                self.sapi.delete_instance(inst["uuid"], timeout=float(self.p["wait_timeout"]))
            except ApiError as exc:
                self.api_fail(exc, f"SAPI could not delete instance {inst['uuid']}")

    def reprovisioned(self):
        p = self.p
        if not p["image_uuid"] or not S.is_uuid(p["image_uuid"]):
            self.fail(f"state=reprovisioned needs image_uuid (an image UUID), got {p['image_uuid']!r}")
        if not p["marker"] and self.vmapi is None:
            self.fail("state=reprovisioned needs a marker, or vmapi_url (MANTA_VMAPI_URL) to compare "
                      "the VM's image; without either a re-run would reprovision again")
        found = self.targets()
        if len(found) != 1:
            what = f"instance {p['uuid']}" if p["uuid"] else f"instances of {p['service']} matching the find options"
            self.fail(f"state=reprovisioned needs exactly one instance; found {len(found)} {what}"
                      + (f": {', '.join(i['uuid'] for i in found)}" if found else ""),
                      instances=[self.view(i) for i in found])
        inst = found[0]
        uuid = inst["uuid"]
        self.result["instance"] = self.view(inst)
        try:
            out = R.reprovision(self.sapi, self.vmapi, inst, p["image_uuid"], marker=p["marker"],
                                marker_key=p["marker_key"], vm=self.vm(uuid),
                                check_mode=self.module.check_mode, wait_timeout=p["wait_timeout"],
                                poll_interval=p["poll_interval"])
        except R.ReprovisionError as exc:
            self.take(exc.result)
            self.fail(str(exc), **exc.extra)
        except R.ReprovisionApiError as exc:
            self.take(exc.result)
            self.api_fail(exc.cause, exc.what)
        self.take(out)
        if not out["changed"] or self.module.check_mode or out["resolved_pending"]:
            return
        self._vms.pop(uuid, None)
        inst = self.get_instance(uuid)
        self.result["instance"] = self.view(inst)
        vm = self.vm(uuid)
        if vm is not None and vm.get("image_uuid") != p["image_uuid"]:
            self.fail(f"SAPI reprovisioned instance {uuid} but VMAPI shows image {vm.get('image_uuid')}, "
                      f"expected {p['image_uuid']}")

    def take(self, out):
        """Copy a reprovision outcome (module_utils.sapi_reprovision) into the result."""
        if not out:
            return
        self.result.update(changed=out["changed"], marker=out["marker"])
        if out["resolved_pending"]:
            self.result["resolved_pending"] = True
        if self.module._diff:
            self.result["diff"] = {"before": out["before"], "after": out["after"]}


def main():
    spec = triton_argument_spec("sapi", "vmapi")
    spec.update(
        state=dict(type="str", default="present", choices=["present", "absent", "reprovisioned", "query"]),
        application=dict(type="str", default="manta"),
        service=dict(type="str"),
        uuid=dict(type="str"),
        server_uuid=dict(type="str"),
        image_uuid=dict(type="str"),
        alias=dict(type="str"),
        params=dict(type="dict", default={}),
        metadata=dict(type="dict", default={}),
        tags=dict(type="dict", default={}),
        shard=dict(type="str"),
        master=dict(type="bool", default=False),
        marker=dict(type="str"),
        marker_key=dict(type="str", default=S.DEFAULT_MARKER_KEY, no_log=False),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=3600),
        poll_interval=dict(type="float", default=5),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    for opt in ("uuid", "server_uuid", "image_uuid"):
        if p[opt] is not None and not S.is_uuid(p[opt]):
            module.fail_json(msg=f"{opt} must be a UUID, got {p[opt]!r}")
    if p["marker"] is not None and p["state"] != "reprovisioned":
        module.fail_json(msg=f"marker only applies to state=reprovisioned, not state={p['state']}")
    if p["wait_timeout"] <= 0 or p["poll_interval"] <= 0:
        module.fail_json(msg="wait_timeout and poll_interval must be positive")
    if p["state"] == "query" and not p["service"]:
        module.fail_json(msg="state=query needs service")
    check_requests(module)
    runner = Runner(module)
    getattr(runner, p["state"])()
    module.exit_json(**runner.result)


if __name__ == "__main__":
    main()
