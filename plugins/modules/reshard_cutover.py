#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: reshard_cutover
short_description: Run the reshard phases inside the write-blocked window, journaled one by one
version_added: 0.1.0
description:
  - C(checkpoint_peers), run before the window opens, has the new peers take a restartpoint (after a checkpoint
    on the old primary that they are proven to have replayed), so that their restart under the new shard does
    not replay a long stretch of WAL inside the window.
  - Runs, in one process so that no time is lost between them, the reshard phases that sit between the
    transitional ring and the final ring, C(detach_peers), C(establish_cluster), C(reconfigure_peers),
    C(verify_new_shard) and C(switch_sapi) (the SAPI half of C(install_ring)). Writes to the moving vnodes are
    blocked meanwhile, so every wait polls every 50 ms and the three peers are reconfigured in parallel.
  - Each phase is journaled (start, end, what later phases need) with M(manta.ops.reshard_journal)'s document,
    is skipped when the journal says it is done, and otherwise starts by discovering the real state, so a
    run killed at any point is completed by the next one.
  - C(detach_peers) proves with a sentinel that every new peer has every write made before the block, then
    disables the new peers' sitters tail first (async, sync, primary), recording the new primary's WAL position
    and each peer's manatee object.
  - C(establish_cluster) writes the new shard's first state (generation 1, frozen with the plan's reason,
    initWal = the recorded WAL position) with M(manta.ops.manatee_cluster)'s logic, before the peers restart.
  - C(reconfigure_peers) moves the peers to the new shard in SAPI (SERVICE_NAME, SHARD, MANATEE_SHARD_PATH,
    alias), renames the VMs in VMAPI and reprovisions each onto its image at most once (marker in its metadata,
    as M(manta.ops.sapi_instance) does).
  - C(verify_new_shard) waits for the new cluster to be healthy, writes a sentinel through one of the new
    shard's morays, reads it back through every one of them and reads it straight from the new async. The morays
    are found as production finds them, not in an inventory - SAPI instances of the C(moray) service whose
    C(SERVICE_NAME) is the new shard, each one's address from its VMAPI VM (C(manta) nic) and its port from
    its instance metadata C(MORAY_PORT), else O(moray_port) - once when the process starts (before the window),
    and again if none of them answers.
  - C(switch_sapi) appends the new shard to C(INDEX_MORAY_SHARDS) and compare-and-swaps C(HASH_RING_IMAGE) from
    the plan's transitional (or old) image to its final image; any other value stops the reshard.
options:
  plan:
    description: The plan id.
    type: str
    required: true
  steps:
    description: The steps to run, in order.
    type: list
    elements: str
    required: true
  end_phase:
    description: A phase to mark done (with O(end_props)) before the first step, e.g. C(block_writes).
    type: str
  end_props:
    description: Props journaled with O(end_phase).
    type: dict
    default: {}
  shard:
    description: The old shard (full name).
    type: str
    required: true
  new_shard:
    description: The new shard (full name).
    type: str
    required: true
  new_short:
    description: The new shard's short name (C(SHARD)).
    type: str
    required: true
  domain:
    description: C(DOMAIN_NAME) (for the alias C(<short>.postgres.<domain>-<uuid8>)).
    type: str
    required: true
  app_uuid:
    description: The manta application's uuid.
    type: str
    required: true
  freeze_reason:
    description: The freeze reason of the new cluster (C(reshard plan <id>)).
    type: str
    required: true
  zone_svcadm:
    description:
      - Command template that controls a service in another zone, with C({zone}), C({action}) and C({service}),
        e.g. V(manta-oneach -z {zone} 'svcadm {action} {service}').
    type: str
    required: true
  moray_port:
    description: Port of a moray zone whose SAPI instance metadata publishes no C(MORAY_PORT) (haproxy in front
      of the zone's moray processes).
    type: int
    default: 2020
  pause_before:
    description: Stop cleanly before this step (a phase name).
    type: str
  test_hold:
    description: Test hook; the process kills itself (SIGKILL) inside this step, after its first change.
    type: str
  wait_transitional:
    description:
      - Before the first step, wait until every listed electric-moray (a mapping of name to status URL) serves
        C(image) (the transitional ring), and journal when each began serving it (C(props.em_swaps)). Lets this
        task start in the background before the transitional ring is rolled out.
    type: dict
  timeout:
    description: Seconds allowed for each wait.
    type: float
    default: 300
  catchup_timeout:
    description: Seconds allowed for the sentinel to reach every new peer.
    type: float
    default: 600
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.zookeeper
  - manta.ops.zookeeper.manatee_postgres
  - manta.ops.triton_api
  - manta.ops.triton_api.sapi
  - manta.ops.triton_api.vmapi
attributes:
  check_mode:
    support: full
    details: Reports the steps that would run; nothing is written.
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: Detach, establish, reconfigure, verify, switch SAPI
  manta.ops.reshard_cutover:
    plan: "{{ reshard.plan }}"
    steps: [detach_peers, establish_cluster, reconfigure_peers, verify_new_shard, switch_sapi]
    shard: "{{ reshard.shard }}"
    new_shard: "{{ reshard.new_shard }}"
    new_short: "{{ reshard.new_short }}"
    domain: "{{ reshard.domain }}"
    app_uuid: "{{ reshard.app_uuid }}"
    freeze_reason: "reshard plan {{ reshard.plan }}"
    zone_svcadm: "manta-oneach -z {zone} 'svcadm {action} {service}'"
"""

RETURN = r"""
ran:
  description: The steps run by this call, with their results.
  returned: always
  type: dict
already_done:
  description: Steps the journal already had as done.
  returned: always
  type: list
paused:
  description: True when O(pause_before) stopped the run.
  returned: always
  type: bool
timings:
  description: Seconds spent in each part.
  returned: always
  type: dict
plan:
  description: The journal document after the run.
  returned: always
  type: dict
"""

import time
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import reshard_cutover as rco
from ansible_collections.manta.ops.plugins.module_utils import reshard_journal as rj
from ansible_collections.manta.ops.plugins.module_utils.http_api import (
    ApiError, check_requests, client_kwargs, require_url, triton_argument_spec)
from ansible_collections.manta.ops.plugins.module_utils.manatee_pg import pg_argument_spec
from ansible_collections.manta.ops.plugins.module_utils.zk import (
    Zk, ZkError, require_kazoo, zk_argument_spec)

STEPS = ["checkpoint_peers", "detach_peers", "establish_cluster", "reconfigure_peers", "verify_new_shard",
         "switch_sapi"]
PHASE_OF = {"switch_sapi": "install_ring", "checkpoint_peers": "block_writes"}


def main():
    spec = zk_argument_spec()
    spec.update(pg_argument_spec())
    spec.update(triton_argument_spec("sapi", "vmapi"))
    spec.update(
        plan=dict(type="str", required=True),
        steps=dict(type="list", elements="str", required=True),
        end_phase=dict(type="str"),
        end_props=dict(type="dict", default={}),
        shard=dict(type="str", required=True),
        new_shard=dict(type="str", required=True),
        new_short=dict(type="str", required=True),
        domain=dict(type="str", required=True),
        app_uuid=dict(type="str", required=True),
        freeze_reason=dict(type="str", required=True),
        zone_svcadm=dict(type="str", required=True),
        moray_port=dict(type="int", default=2020),
        pause_before=dict(type="str"),
        test_hold=dict(type="str"),
        timeout=dict(type="float", default=300),
        catchup_timeout=dict(type="float", default=600),
        wait_transitional=dict(type="dict"),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_kazoo(module)
    check_requests(module)
    p = module.params
    bad = [s for s in p["steps"] if s not in STEPS]
    if bad:
        module.fail_json(msg=f"unknown steps {bad}; valid: {', '.join(STEPS)}")
    from ansible_collections.manta.ops.plugins.module_utils.sapi import SapiClient
    from ansible_collections.manta.ops.plugins.module_utils.vmapi import VmapiClient
    kw = client_kwargs(module)
    sapi = SapiClient(require_url(module, "sapi"), **kw)
    vmapi = VmapiClient(require_url(module, "vmapi"), **kw)
    res = {"changed": False, "ran": {}, "already_done": [], "paused": False, "timings": {}}
    t_all = time.monotonic()
    try:
        with Zk(p["zk_servers"], p["zk_timeout"]) as zk:
            j = rj.Journal(zk, p["plan"], check_mode=module.check_mode)
            if j.doc is None:
                if module.check_mode:
                    res["ran"] = {s: "would run" for s in p["steps"]}
                    module.exit_json(**res)
                module.fail_json(msg=f"no reshard plan {p['plan']} in the journal")
            co = rco.Cutover(zk, j, p, sapi=sapi, vmapi=vmapi, check_mode=module.check_mode)
            if not module.check_mode:
                res["timings"]["worker_lock_wait"] = round(co.worker_lock(p["timeout"] * 4), 3)
                j.doc, dummy = rj.load(zk, p["plan"])          # fresh, after the lock
            if "verify_new_shard" in p["steps"] and not module.check_mode and not j.done("verify_new_shard"):
                # found now, before the window opens (verify_new_shard finds them again if none answers)
                t0 = time.monotonic()
                co.morays = co.discover_morays()
                res["timings"]["discover_morays"] = round(time.monotonic() - t0, 3)
            wt = p.get("wait_transitional") or {}
            if wt and not module.check_mode and not j.done("block_writes"):
                t0 = time.monotonic()
                names = dict(wt.get("status_urls") or {})
                served = co.wait_transitional(list(names.values()), wt["image"], p["timeout"])
                res["timings"]["wait_transitional"] = round(time.monotonic() - t0, 3)
                swaps = dict(j.props.get("em_swaps") or {})
                for name, url in names.items():
                    rec = dict(swaps.get(name) or {})
                    tr = dict(rec.get("transitional") or {})
                    tr.setdefault("serving_ts", served.get(url))
                    tr.setdefault("image", wt["image"])
                    rec["transitional"] = tr
                    swaps[name] = rec
                p["end_props"] = dict(p["end_props"] or {}, em_swaps=swaps)
            if p["end_phase"] and not j.done(p["end_phase"]):
                j.end(p["end_phase"], props=p["end_props"])
                res["changed"] = True
            elif p["end_phase"] and p["end_props"]:
                j.set_props(p["end_props"])
            for step in p["steps"]:
                phase = PHASE_OF.get(step, step)
                if j.done(phase):
                    res["already_done"].append(step)
                    continue
                if step == "checkpoint_peers":
                    # part of block_writes, before any electric-moray is touched: not a phase of its own
                    if module.check_mode:
                        res["ran"][step] = "would run"
                        continue
                    t0 = time.monotonic()
                    res["ran"][step] = co.checkpoint_peers()
                    res["timings"][step] = round(time.monotonic() - t0, 3)
                    j.event(f"new peers checkpointed ({res['timings'][step]}s)")
                    continue
                if p["pause_before"] == phase:
                    if not module.check_mode:
                        def mark(d, ph=phase):
                            d["paused_before"] = ph
                            d["phase"] = ph
                            rj._event(d, f"paused before {ph}", time.time())
                            return d
                        j._apply(mark)
                    res["paused"] = True
                    break
                if module.check_mode:
                    res["ran"][step] = "would run"
                    continue
                j.start(phase)
                res["changed"] = True
                t0 = time.monotonic()
                out = getattr(co, step)()
                res["timings"][step] = round(time.monotonic() - t0, 3)
                res["ran"][step] = out
                if step == "switch_sapi":
                    j.set_props(out, event="SAPI switched to the final ring")
                else:
                    j.end(phase, props=out)
            res["plan"] = j.doc
    except (rco.CutoverError, rj.JournalError, ZkError) as exc:
        res["timings"]["total"] = round(time.monotonic() - t_all, 3)
        module.fail_json(msg=f"reshard cutover: {exc}", **res)
    except ApiError as exc:
        res["timings"]["total"] = round(time.monotonic() - t_all, 3)
        module.fail_json(msg=f"reshard cutover: {exc}", **res)
    except Exception as exc:  # noqa: BLE001
        module.fail_json(msg=f"reshard cutover failed: {exc}", exception=traceback.format_exc(), **res)
    res["timings"].update(co.timings)
    res["timings"]["total"] = round(time.monotonic() - t_all, 3)
    module.exit_json(**res)


if __name__ == "__main__":
    main()
