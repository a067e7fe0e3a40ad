#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: reshard_abort
short_description: Find an unfinished reshard plan, check it can be rolled back, and remove its new shard's state
version_added: 0.1.0
description:
  - The discovery half of rolling back a reshard plan (role M(manta.ops.reshard_abort)); the changes themselves are
    made with the collection's other modules.
  - V(assess) finds the unfinished plan in the journal (an active plan, or an aborted one whose roll back did
    not finish), then reads what it left behind, SAPI C(HASH_RING_IMAGE) and C(INDEX_MORAY_SHARDS), the SAPI
    instances tagged with the plan, its ring images in IMGAPI, the ring each electric-moray serves, the new
    shard's znodes and election, the old shard's freeze, the reshard lock and C(/pg_dump_lock), and whether a
    cutover worker of the plan still runs. It returns the assessment and the list of what is left to undo.
  - The point of no return is the compare-and-swap of C(HASH_RING_IMAGE) to the plan's final ring. A plan past
    it (C(HASH_RING_IMAGE) is the final ring, an electric-moray serves or holds it, or the journal has
    C(install_ring) done or a later phase started) cannot be rolled back without losing the writes the moved
    vnodes took on the new shard; V(assess) then fails, before any change, saying why and what to do instead
    (unless O(refuse_past_point_of_no_return=false)).
  - V(wait_workers) waits until no cutover worker of the plan runs (one left by a killed controller finishes
    first), so that nothing moves the ring while it is rolled back.
  - V(remove_shard_state) deletes C(/manatee/<new shard>) (state, history, election), once no sitter is left
    in its election (the new peers' instances must be deleted first). It refuses a shard that is not the
    plan's new shard and a plan past the point of no return.
  - With no unfinished plan, V(assess) returns RV(found=false) and changes nothing.
options:
  action:
    description: What to do.
    type: str
    choices: [assess, wait_workers, remove_shard_state]
    default: assess
  plan:
    description: The plan id. Default the one unfinished plan (matching O(shard) and O(new_shard) when given).
    type: str
  shard:
    description: Only a plan splitting or creating this shard (full name, V(1.moray) or V(1)).
    type: str
  new_shard:
    description: Only a plan creating this shard (full name, V(3.moray) or V(3)).
    type: str
  electric_morays:
    description: The electric-moray processes whose ring is checked, C({host, status_url}) each.
    type: list
    elements: dict
    default: []
  refuse_past_point_of_no_return:
    description: With V(assess), fail (changing nothing) when the plan is past the point of no return.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for a running cutover worker (V(wait_workers)) or for the new shard's sitters
      to leave its election (V(remove_shard_state)).
    type: float
    default: 300
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.zookeeper
  - manta.ops.triton_api
  - manta.ops.triton_api.sapi
  - manta.ops.triton_api.imgapi
attributes:
  check_mode:
    support: full
    details: V(assess) and V(wait_workers) only read; V(remove_shard_state) reports the znodes it would delete.
  diff_mode:
    support: full
    details: V(remove_shard_state) shows the new shard's znodes before and after.
  platform:
    platforms: posix
requirements: [kazoo, requests]
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: Find the unfinished plan and what it left behind (fails past the point of no return)
  manta.ops.reshard_abort:
    action: assess
    shard: 1.moray.us-east.example.com
    electric_morays:
      - {host: electric-moray-1, status_url: "http://10.0.0.21:4021/status"}
      - {host: electric-moray-2, status_url: "http://10.0.0.22:4021/status"}
  register: abort

- name: Remove the new shard's manatee state once its peers are deleted
  manta.ops.reshard_abort:
    action: remove_shard_state
    plan: "{{ abort.plan }}"
    new_shard: "{{ abort.assessment.new_shard }}"
"""

RETURN = r"""
found:
  description: Whether an unfinished plan was found.
  returned: always
  type: bool
plan:
  description: The plan id (null when none was found).
  returned: always
  type: str
document:
  description: The plan's journal document.
  returned: when found
  type: dict
assessment:
  description:
    - What the plan left behind, read from the real state. Keys include C(hash_ring_image), C(old_image),
      C(transitional_image), C(final_image), C(index_has_new_shard), C(instances) (tagged with the plan),
      C(ring_images), C(electric_morays) (C(host), C(image) served), C(new_shard_znodes), C(new_shard_election),
      C(old_shard_freeze), C(old_shard_frozen_by_plan), C(locks), C(reshard_lock_ours), C(pg_dump_lock_ours),
      C(worker_running), C(point_of_no_return) (C(passed), C(reasons)), C(canaries), C(freeze_reason).
  returned: when found
  type: dict
todo:
  description: What the roll back still has to do, in order (empty when nothing is left).
  returned: when found
  type: list
  elements: str
waited:
  description: Seconds waited for a cutover worker (V(wait_workers)).
  returned: for wait_workers
  type: float
removed:
  description: The znodes deleted (or, in check mode, that would be).
  returned: for remove_shard_state
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import reshard_abort as ra
from ansible_collections.manta.ops.plugins.module_utils import reshard_common as rc
from ansible_collections.manta.ops.plugins.module_utils import reshard_journal as rj
from ansible_collections.manta.ops.plugins.module_utils.http_api import (
    ApiError, check_requests, client_kwargs, require_url, triton_argument_spec)
from ansible_collections.manta.ops.plugins.module_utils.zk import (
    Zk, ZkError, require_kazoo, zk_argument_spec)


def main():
    spec = zk_argument_spec()
    spec.update(triton_argument_spec("sapi", "imgapi"))
    spec.update(
        action=dict(type="str", default="assess", choices=["assess", "wait_workers", "remove_shard_state"]),
        plan=dict(type="str"),
        shard=dict(type="str"),
        new_shard=dict(type="str"),
        electric_morays=dict(type="list", elements="dict", default=[]),
        refuse_past_point_of_no_return=dict(type="bool", default=True),
        timeout=dict(type="float", default=300),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_kazoo(module)
    check_requests(module)
    p = module.params
    if p["timeout"] <= 0:
        module.fail_json(msg=f"timeout must be a positive number of seconds, got {p['timeout']}")
    ems = []
    for i, e in enumerate(p["electric_morays"]):
        if not isinstance(e, dict) or not str(e.get("status_url") or "").startswith(("http://", "https://")):
            module.fail_json(msg=f"electric_morays[{i}] must be a mapping with an http(s) status_url "
                                 f"(and a host name), got {e!r}")
        ems.append((e.get("host") or e["status_url"], e["status_url"]))
    if p["plan"]:
        try:
            rj.plan_path(p["plan"])
        except rj.JournalError as exc:
            module.fail_json(msg=f"plan: {exc}")
    from ansible_collections.manta.ops.plugins.module_utils.imgapi import ImgapiClient
    from ansible_collections.manta.ops.plugins.module_utils.sapi import SapiClient
    kw = client_kwargs(module)
    sapi = SapiClient(require_url(module, "sapi", "to read the plan's SAPI state"), **kw)
    imgapi = ImgapiClient(require_url(module, "imgapi", "to find the plan's ring images"), **kw)
    result = {"changed": False, "found": False, "plan": None}
    try:
        app = sapi.find_application("manta")
        md = (app or {}).get("metadata") or {}
        domain = md.get("DOMAIN_NAME")
        shard = rc.full_shard(p["shard"], domain) if p["shard"] else None
        new_shard = rc.full_shard(p["new_shard"], domain) if p["new_shard"] else None
        with Zk(p["zk_servers"], p["zk_timeout"]) as zk:
            doc, err = ra.select(rj.list_plans(zk), p["plan"], shard, new_shard)
            if err:
                module.fail_json(msg=err, **result)
            if doc is None:
                result["msg"] = ("no unfinished reshard plan" + (f" {p['plan']}" if p["plan"] else "")
                                 + (f" for {shard or new_shard}" if (shard or new_shard) else "")
                                 + ": nothing to abort")
                module.exit_json(**result)
            result.update(found=True, plan=doc["plan"], document=doc)
            a = ra.assess(zk, doc, sapi=sapi, imgapi=imgapi, ems=ems, app_uuid=(app or {}).get("uuid"))
            result.update(assessment=a, todo=a["todo"])
            passed = a["point_of_no_return"]["passed"]
            if p["action"] == "assess":
                if passed and p["refuse_past_point_of_no_return"]:
                    module.fail_json(msg=ra.refusal(doc, a["point_of_no_return"]["reasons"]), **result)
                module.exit_json(**result)
            if passed:
                module.fail_json(msg=ra.refusal(doc, a["point_of_no_return"]["reasons"]), **result)
            if p["action"] == "wait_workers":
                result["waited"] = ra.wait_workers(zk, doc["plan"], p["timeout"]) if not module.check_mode else 0
                module.exit_json(**result)
            # remove_shard_state
            if new_shard and new_shard != doc["new_shard"]:
                module.fail_json(msg=f"new_shard {new_shard} is not plan {doc['plan']}'s new shard "
                                     f"({doc['new_shard']}); refusing to remove its state", **result)
            removed = ra.remove_shard_state(zk, doc["new_shard"], p["timeout"], check_mode=module.check_mode)
            result.update(changed=bool(removed), removed=removed)
            if module._diff:
                result["diff"] = {"before": {"znodes": removed}, "after": {"znodes": []}}
    except ApiError as exc:
        module.fail_json(msg=f"reshard abort: {exc}", **result)
    except (ZkError, rj.JournalError, ra.AbortError) as exc:
        module.fail_json(msg=f"reshard abort: {exc}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
