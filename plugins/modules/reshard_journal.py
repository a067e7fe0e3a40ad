#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: reshard_journal
short_description: Read and write the journal of a reshard plan in ZooKeeper
version_added: 0.1.0
description:
  - Every reshard plan has one JSON document at C(/manta_ops/reshard/plans/<plan id>) in ZooKeeper holding its
    inputs, the phase it is in, the start and end time of every phase, and everything later phases need
    (new peers, ring images, electric-moray ring swaps with their times, delete progress). Plans are created
    by M(manta.ops.reshard_plan).
  - Writes are compare-and-swap on the znode version, so concurrent writers never lose a change.
  - V(phase_start) marks a phase running (a re-run after a crash counts one more run and keeps the first start
    time); with O(pause_before) equal to the phase it instead records the pause and returns RV(paused).
  - V(phase_end) marks it done (merging O(props)) and moves the plan to the next phase that is not done; after
    the last one the plan is C(completed).
  - V(status) returns the plan with a summary (phases, durations, current phase, the measured write-blocked
    window) and its text rendering; V(list) returns every plan's summary.
  - In check mode nothing is written; the result shows the document as it would be.
options:
  plan:
    description: The plan id. For V(status) without it, the most recent active plan (else the most recent one).
    type: str
  action:
    description: What to do.
    type: str
    choices: [status, list, phase_start, phase_end, props, event, abort]
    default: status
  phase:
    description: The phase for V(phase_start) and V(phase_end).
    type: str
  props:
    description: Keys to merge into the plan's props (V(phase_end), V(props)).
    type: dict
    default: {}
  note:
    description: A note recorded with V(phase_end), or the text of V(event).
    type: str
  pause_before:
    description: With V(phase_start), stop before this phase instead of starting it.
    type: str
  shard:
    description: With V(status) and no O(plan), the most recent plan touching this shard.
    type: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.zookeeper
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: Start a phase (or pause before it)
  manta.ops.reshard_journal:
    plan: "{{ reshard_plan_id }}"
    action: phase_start
    phase: build_rings
    pause_before: "{{ pause_before | default(omit) }}"
  register: j

- name: Show the status of the latest plan
  manta.ops.reshard_journal:
    action: status
  register: st
"""

RETURN = r"""
plan:
  description: The plan document after the action.
  returned: when a plan was found
  type: dict
summary:
  description: Phases with status and durations, current phase, the window, progress.
  returned: when a plan was found
  type: dict
text:
  description: The human status.
  returned: for status
  type: str
paused:
  description: True when O(pause_before) stopped the plan before O(phase).
  returned: for phase_start
  type: bool
plans:
  description: Summaries of every plan (V(list)).
  returned: for list
  type: list
done_phases:
  description: The phases that are done.
  returned: when a plan was found
  type: list
"""

import copy
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import reshard_journal as rj
from ansible_collections.manta.ops.plugins.module_utils.zk import (
    Zk, ZkError, require_kazoo, zk_argument_spec)


def pick_plan(plans, shard=None):
    cands = [p for p in plans if not shard or shard in (p.get("shard"), p.get("new_shard"))]
    if not cands:
        return None
    active = [p for p in cands if p.get("state") == "active"]
    pool = active or cands
    return sorted(pool, key=lambda p: p.get("updated") or p.get("created") or "")[-1]


def main():
    spec = zk_argument_spec()
    spec.update(
        plan=dict(type="str"),
        action=dict(type="str", default="status",
                    choices=["status", "list", "phase_start", "phase_end", "props", "event", "abort"]),
        phase=dict(type="str"),
        props=dict(type="dict", default={}),
        note=dict(type="str"),
        pause_before=dict(type="str"),
        shard=dict(type="str"),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_kazoo(module)
    p = module.params
    act = p["action"]
    if act in ("phase_start", "phase_end") and not p["phase"]:
        module.fail_json(msg=f"action={act} needs phase; the phases are: {', '.join(rj.PHASE_NAMES)}")
    for opt in ("phase", "pause_before"):
        if p[opt] and p[opt] not in rj.PHASE_DOC:
            module.fail_json(msg=f"{opt} {p[opt]!r} is not a phase; valid: {', '.join(rj.PHASE_NAMES)}")
    if act not in ("status", "list") and not p["plan"]:
        module.fail_json(msg=f"action={act} needs plan")
    result = {"changed": False}
    try:
        with Zk(p["zk_servers"], p["zk_timeout"]) as zk:
            if act == "list":
                plans = rj.list_plans(zk)
                result["plans"] = [rj.summary(d) for d in plans]
                module.exit_json(**result)
            if act == "status":
                if p["plan"]:
                    doc, dummy = rj.load(zk, p["plan"])
                else:
                    doc = pick_plan(rj.list_plans(zk), p["shard"])
                if doc is None:
                    result.update(plan=None, summary=None, text="no reshard plan"
                                  + (f" {p['plan']}" if p["plan"] else ""), done_phases=[])
                    module.exit_json(**result)
                summ = rj.summary(doc)
                result.update(plan=doc, summary=summ, text=rj.render_text(summ),
                              done_phases=rj.done_phases(doc))
                module.exit_json(**result)

            doc, dummy = rj.load(zk, p["plan"])
            if doc is None:
                if module.check_mode:
                    # a rehearsal of a plan that does not exist yet: nothing to record
                    result.update(plan=None, summary=None, done_phases=[], paused=False)
                    module.exit_json(**result)
                module.fail_json(msg=f"no reshard plan {p['plan']} in the journal "
                                     f"({rj.plan_path(p['plan'])})")

            def mutate(d):
                if act == "phase_start":
                    if p["pause_before"] and p["pause_before"] == p["phase"] \
                            and d.get("phases", {}).get(p["phase"], {}).get("status") != "done":
                        d["paused_before"] = p["phase"]
                        d["phase"] = p["phase"]
                        rj._event(d, f"paused before {p['phase']}", time.time())
                        return d
                    return rj.phase_start(d, p["phase"])
                if act == "phase_end":
                    return rj.phase_end(d, p["phase"], props=p["props"], note=p["note"])
                if act == "props":
                    d.setdefault("props", {}).update(copy.deepcopy(p["props"]))
                    if p["note"]:
                        rj._event(d, p["note"], time.time())
                    return d
                if act == "event":
                    rj._event(d, p["note"] or "(event)", time.time())
                    return d
                if act == "abort":
                    d["state"] = "aborted"
                    d["aborted"] = rj.now_iso()
                    rj._event(d, "aborted" + (f": {p['note']}" if p["note"] else ""), time.time())
                    return d
                return d

            if module.check_mode:
                new = mutate(copy.deepcopy(doc))
            else:
                new = rj.update(zk, p["plan"], mutate)
            result["changed"] = new != doc
            summ = rj.summary(new)
            result.update(plan=new, summary=summ, done_phases=rj.done_phases(new),
                          paused=bool(act == "phase_start" and new.get("paused_before") == p["phase"]))
    except (ZkError, rj.JournalError) as exc:
        module.fail_json(msg=f"reshard journal: {exc}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
