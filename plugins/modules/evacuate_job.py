#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: evacuate_job
short_description: Create, check, pause, resume, throttle and report a storage-node evacuation job
version_added: 0.1.0
description:
  - An evacuation job is the durable record of moving every object copy off a set of storage
    nodes. It lives in a PostgreSQL job store (see O(job_dsn)) so that it survives the controller,
    a killed play or an AWX container, and every later run resumes it.
  - With O(state=present) the module resolves the operator's node names (O(evacuate)) against the
    inventory, creates the job store schema and the job when missing, stores the throttles and
    options given, and, with O(preflight=true), checks before anything is changed that every node
    is known, that destinations exist and have room under O(max_fill_percent).
  - O(state=paused) pauses the job (a running play stops at its next round boundary);
    O(state=active) resumes it.
  - O(throttle) changes the throttles of the job; a running play picks them up at its next round
    (copy concurrency, bytes per second per node) or within seconds (metadata rows per second).
  - With O(report=true) the result holds the job's progress (per node objects and bytes done,
    skipped, in error and remaining, rates, ETA, reasons with example keys) and, with
    O(metrics_file), the same figures are written as Prometheus text for node_exporter's
    textfile collector.
author:
  - manta.ops developers (@manta-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.evacuate
  - manta.ops.evacuate.job_store
  - manta.ops.evacuate.throttle
attributes:
  check_mode:
    support: full
    details: Nothing is written (no schema, job, state or metrics file); the result says what would change.
  diff_mode:
    support: full
    details: The job's state, throttles and options before and after.
  platform:
    platforms: posix
options:
  job:
    description:
      - Job name. Default C(evacuate-<storage id>) for one node, C(evacuate-<n>-nodes-<hash>)
        for several (the same set of nodes always gives the same name, so a re-run resumes).
    type: str
  evacuate:
    description:
      - The nodes to evacuate as the operator wrote them, a list or a comma-separated string of
        inventory host names, storage ids (V(3.stor.example.com)), short ids (V(3.stor)) or
        inventory group names.
      - Required when the job does not exist yet; when it exists it must name the same nodes.
    type: list
    elements: str
  storage_hosts:
    description:
      - The inventory's storage nodes, a dict from inventory host name to its variables
        (C(manta_storage_id), C(datacenter), C(storage_url), C(storage_root)), that is the
        C(hostvars) of the C(storage) group, to resolve O(evacuate) and to know the destinations.
    type: dict
    default: {}
  inventory_groups:
    description: The inventory's C(groups), so that O(evacuate) may name a group.
    type: dict
    default: {}
  domain:
    description: The Manta domain, to expand short ids (V(3.stor) to V(3.stor.<domain>)).
    type: str
  state:
    description:
      - V(present) makes sure the job exists; its pause state is not changed.
      - V(paused) pauses it (with O(pause_reason)); V(active) resumes a paused job.
      - V(complete) marks it finished (the play does this after a clean verification scan).
    type: str
    choices: [present, paused, active, complete]
    default: present
  pause_reason:
    description: Why the job is paused (shown by the status playbook and in the metrics).
    type: str
    default: paused by an operator
  options:
    description:
      - Job options to record (for example V(max_fill_percent), V(same_datacenter),
        V(source_preference)); they are reported and reused by later runs that do not give them.
    type: dict
    default: {}
  retry_skipped:
    description: Put every skipped object back to pending, so this run retries it.
    type: bool
    default: false
  preflight:
    description:
      - Check, before any change, that each node to evacuate has a heartbeat record, that at
        least one destination is in rotation with room under O(max_fill_percent), that the
        destinations' combined room exceeds what the evacuated nodes hold, and with
        O(same_datacenter) that each evacuated node's datacenter has a destination.
    type: bool
    default: false
  max_fill_percent:
    description: Fill ceiling of destinations for the preflight check.
    type: float
    default: 90
  same_datacenter:
    description: Only destinations in each evacuated node's own datacenter are eligible.
    type: bool
    default: false
  rotation_lag:
    description: Seconds after which a heartbeat is stale (storinfo's C(lag)); for the preflight.
    type: float
    default: 60
  max_duration:
    description:
      - Time budget of the run about to start (V(3600), V(90m), V(8h)). Checked here, before any
        change; the result gives RV(budget_seconds) and RV(deadline).
    type: str
  run_id:
    description: An id for this run, recorded in the job's event log with O(state=present).
    type: str
  report:
    description: Return the job's progress (RV(progress), RV(lines)).
    type: bool
    default: false
  rate_window:
    description: Seconds over which rates (and so ETAs) are measured.
    type: float
    default: 600
  all_jobs:
    description:
      - Report every job of the job store (RV(jobs), RV(lines)); O(metrics_file) then holds them all.
        Changes nothing.
    type: bool
    default: false
  must_exist:
    description: Fail instead of creating the job when it does not exist.
    type: bool
    default: false
  metrics_file:
    description:
      - Write the progress as Prometheus text metrics to this file (atomically), for
        node_exporter's textfile collector (C(--collector.textfile.directory)). Implies O(report).
    type: path
notes:
  - The job store's tables are described in docs/evacuate.md ("Job store").
seealso:
  - module: manta.ops.evacuate_scan
  - module: manta.ops.evacuate_plan
  - module: manta.ops.evacuate_copy
  - module: manta.ops.evacuate_metadata
  - module: manta.ops.storage_node_readonly
"""

EXAMPLES = r"""
- name: Open (or resume) the job for 3.stor, after checking there is room for it
  manta.ops.evacuate_job:
    evacuate: 3.stor
    domain: "{{ manta_domain }}"
    storage_hosts: "{{ dict(groups['storage'] | zip(groups['storage'] | map('extract', hostvars))) }}"
    inventory_groups: "{{ groups }}"
    preflight: true
    throttle: {copy_concurrency: 16, max_bytes_per_sec: 200000000, metadata_rows_per_sec: 2000}
  delegate_to: localhost
  run_once: true
  register: job

- name: Slow it down while it runs (applies at the next round)
  manta.ops.evacuate_job:
    job: evacuate-3.stor.us-east.example.com
    throttle: {max_bytes_per_sec: 50000000}

- name: Pause it
  manta.ops.evacuate_job:
    job: evacuate-3.stor.us-east.example.com
    state: paused
    pause_reason: peak traffic

- name: Progress, and metrics for node_exporter
  manta.ops.evacuate_job:
    job: evacuate-3.stor.us-east.example.com
    report: true
    metrics_file: /var/lib/node_exporter/textfile/manta_evacuate.prom
"""

RETURN = r"""
job:
  description: The job record (after the change; as it would be in check mode).
  returned: always
  type: dict
  sample: {job: evacuate-3.stor.lab.manta.test, state: active, throttle: {copy_concurrency: 16},
           nodes: [{storage_id: 3.stor.lab.manta.test, datacenter: lab-dc3}]}
nodes:
  description: The evacuated nodes, resolved (host, storage_id, datacenter, storage_url, storage_root).
  returned: always
  type: list
  elements: dict
created:
  description: Whether the job (or the job store schema) was created.
  returned: always
  type: bool
retried:
  description: Skipped objects put back to pending (O(retry_skipped)).
  returned: always
  type: int
preflight:
  description: What the preflight checked (nodes, destinations with headroom, bytes to move).
  returned: when O(preflight=true)
  type: dict
progress:
  description: Progress per node and in total, reasons with examples, rates, ETA.
  returned: when O(report=true) or O(metrics_file) is set
  type: dict
lines:
  description: The progress as the status table operators read.
  returned: when O(report=true) or O(metrics_file) is set
  type: list
  elements: str
budget_seconds:
  description: O(max_duration) in seconds (0 for none).
  returned: always
  type: float
deadline:
  description: When the run must end, seconds since the epoch (0 for none).
  returned: always
  type: float
jobs:
  description: Progress of every job (O(all_jobs=true)).
  returned: when O(all_jobs=true)
  type: list
  elements: dict
metrics_changed:
  description: Whether the metrics file content changed (timestamps aside).
  returned: when O(metrics_file) is set
  type: bool
"""

import copy
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import evacuate_args as A
from ansible_collections.manta.ops.plugins.module_utils import evacuate_common as C
from ansible_collections.manta.ops.plugins.module_utils import evacuate_report as R
from ansible_collections.manta.ops.plugins.module_utils import storage_nodes as SN
from ansible_collections.manta.ops.plugins.module_utils.evacuate_store import JobStore

THROTTLE_KEYS = ("copy_concurrency", "max_bytes_per_sec", "metadata_rows_per_sec")
DEFAULT_THROTTLE = {"copy_concurrency": 8, "max_bytes_per_sec": 0, "metadata_rows_per_sec": 0}


def check_throttle(t):
    out = {}
    for k, v in (t or {}).items():
        if k not in THROTTLE_KEYS:
            raise C.EvacError(f"throttle key {k!r} is not known; valid keys: {', '.join(THROTTLE_KEYS)}")
        try:
            v = int(float(v)) if v is not None and v != "" else 0
        except (TypeError, ValueError):
            raise C.EvacError(f"throttle {k} must be a number, got {v!r}") from None
        if v < 0 or (k == "copy_concurrency" and v > 1024):
            raise C.EvacError(f"throttle {k} must be between 0 and "
                              f"{1024 if k == 'copy_concurrency' else 'any'}; got {v}")
        out[k] = v
    return out


def preflight(ctx, nodes, storage_hosts, p):
    """Checks before any change. Raises EvacError naming the problem."""
    beats = SN.read_heartbeats(ctx.shard_conn(ctx.storage_shard()))
    evac_ids = {n["storage_id"] for n in nodes}
    missing = [n["storage_id"] for n in nodes if n["storage_id"] not in beats]
    if missing:
        raise C.EvacError(f"no manta_storage heartbeat record for {', '.join(missing)}: Manta does "
                          f"not know these nodes (known: {', '.join(sorted(beats)) or 'none'})")
    dests = []
    for host, hv in storage_hosts.items():
        sid = (hv or {}).get("manta_storage_id") or host
        if sid in evac_ids:
            continue
        rec = beats.get(sid)
        if rec is None:
            dests.append({"storage_id": sid, "usable": False, "why": "no heartbeat record"})
            continue
        view = SN.destination_view(rec, p["max_fill_percent"], p["rotation_lag"])
        view["usable"] = bool(view["in_rotation"] and view["headroom"] > 0)
        view["why"] = None if view["usable"] else (
            "heartbeat stale (not in rotation)" if not view["in_rotation"] else
            f"full: {view['percent_used']}% used, max_fill_percent {p['max_fill_percent']}")
        view["datacenter"] = view.get("datacenter") or (hv or {}).get("datacenter")
        dests.append(view)
    usable = [d for d in dests if d["usable"]]
    to_move = sum(SN.capacity(beats[n["storage_id"]], 100)["used"] for n in nodes)
    room = sum(d["headroom"] for d in usable)
    result = {"destinations": dests, "usable_destinations": len(usable), "bytes_on_nodes": to_move,
              "headroom_bytes": room}
    if not dests:
        raise C.EvacError("the inventory has no storage node to copy to (every storage node is "
                          "being evacuated)")
    if not usable:
        raise C.EvacError("every destination is full or out of rotation: "
                          + "; ".join(f"{d['storage_id']}: {d['why']}" for d in dests)
                          + f". Free space, raise max_fill_percent ({p['max_fill_percent']}) or add nodes.")
    if to_move > room:
        raise C.EvacError(f"the destinations cannot take what the nodes hold: about "
                          f"{R.human_bytes(to_move)} to move, {R.human_bytes(room)} of room under "
                          f"max_fill_percent {p['max_fill_percent']} on "
                          f"{', '.join(d['storage_id'] for d in usable)}")
    if p["same_datacenter"]:
        bad = [n for n in nodes if not any(d["datacenter"] == n["datacenter"] for d in usable)]
        if bad:
            raise C.EvacError("same_datacenter: no eligible destination in the datacenter of "
                              + ", ".join(f"{n['storage_id']} ({n['datacenter']})" for n in bad)
                              + "; usable destinations: "
                              + ", ".join(f"{d['storage_id']} ({d['datacenter']})" for d in usable))
    return result


def main():
    spec = A.argument_spec(
        "connection", "job_store", "throttle",
        job=dict(type="str"),
        evacuate=dict(type="list", elements="str"),
        storage_hosts=dict(type="dict", default={}),
        inventory_groups=dict(type="dict", default={}),
        domain=dict(type="str"),
        state=dict(type="str", default="present", choices=["present", "paused", "active", "complete"]),
        pause_reason=dict(type="str", default="paused by an operator"),
        options=dict(type="dict", default={}),
        retry_skipped=dict(type="bool", default=False),
        preflight=dict(type="bool", default=False),
        max_fill_percent=dict(type="float", default=90.0),
        same_datacenter=dict(type="bool", default=False),
        rotation_lag=dict(type="float", default=60.0),
        run_id=dict(type="str"),
        max_duration=dict(type="str"),
        report=dict(type="bool", default=False),
        rate_window=dict(type="float", default=600.0),
        metrics_file=dict(type="path"),
        all_jobs=dict(type="bool", default=False),
        must_exist=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    C.require_psycopg2(module)
    p = module.params
    if not 0 < p["max_fill_percent"] <= 100:
        module.fail_json(msg=f"max_fill_percent must be in (0, 100], got {p['max_fill_percent']}")
    ctx = C.Context(p)
    result = dict(changed=False, created=False, retried=0, nodes=[], budget_seconds=0.0,
                  deadline=0.0)
    with C.module_errors(module, ctx, result, "evacuate_job", expected=(SN.NodeError,)):
        budget = C.parse_duration(p["max_duration"]) or 0.0
        result.update(budget_seconds=budget, deadline=(time.time() + budget) if budget else 0.0)
        C.check_schema_name(p["job_schema"])
        throttle = check_throttle(p["throttle"])
        if p["all_jobs"]:
            store = JobStore(ctx.job_conn(), p["job_schema"])
            jobs = [R.progress(store, j["job"], rate_window=p["rate_window"])
                    for j in store.list_jobs()]
            result["jobs"] = jobs
            result["lines"] = [ln for j in jobs for ln in R.render(j)] or [
                f"no evacuation job in the job store ({ctx.job_store_location()})"]
            if p["metrics_file"]:
                text = R.prometheus(jobs)
                result["metrics_changed"] = R.write_textfile(p["metrics_file"], text,
                                                             check_mode=module.check_mode)
            ctx.close()
            module.exit_json(**result)
        nodes = []
        if p["evacuate"]:
            known = ()
            try:
                known = tuple(SN.read_heartbeats(ctx.shard_conn(ctx.storage_shard())))
            except C.EvacError:
                raise
            nodes = SN.resolve_nodes(p["evacuate"], p["storage_hosts"], p["inventory_groups"],
                                     p["domain"], known)
        job = p["job"] or (C.default_job_name([n["storage_id"] for n in nodes]) if nodes else None)
        if not job:
            raise C.EvacError("give job (the name of an existing job) or evacuate (the nodes to "
                              "evacuate)")
        C.check_job_name(job)
        result["job_name"] = job
        store = JobStore(ctx.job_conn(), p["job_schema"])
        before = store.get_job(job)
        if before is None and p["must_exist"]:
            existing = [j["job"] for j in store.list_jobs()]
            raise C.EvacError(f"no job {job!r} in the job store ({ctx.job_store_location()}); "
                              f"existing jobs: {', '.join(existing) or 'none'}")
        if before is None and not nodes:
            existing = [j["job"] for j in store.list_jobs()]
            raise C.EvacError(f"no job {job!r} in the job store ({ctx.job_store_location()}); "
                              f"existing jobs: {', '.join(existing) or 'none'}. Give evacuate "
                              "to create one")
        node_view = [{"storage_id": n["storage_id"], "datacenter": n["datacenter"]} for n in nodes]
        if before is not None and nodes:
            had = sorted(n["storage_id"] for n in before["nodes"])
            if had != sorted(n["storage_id"] for n in nodes):
                raise C.EvacError(f"job {job} evacuates {', '.join(had)}, not "
                                  f"{', '.join(sorted(n['storage_id'] for n in nodes))}; use the "
                                  "same nodes, or another job name")
        if not nodes and before is not None:
            nodes = [dict(n, host=None) for n in before["nodes"]]
        result["nodes"] = nodes
        if p["preflight"]:
            result["preflight"] = preflight(ctx, nodes, p["storage_hosts"], p)

        # ---- desired state --------------------------------------------------------------
        after = copy.deepcopy(before) if before else {
            "job": job, "nodes": node_view, "state": "active", "pause_reason": None,
            "throttle": dict(DEFAULT_THROTTLE), "options": {}}
        after["throttle"] = dict(after.get("throttle") or {}, **throttle)
        after["options"] = dict(after.get("options") or {}, **(p["options"] or {}))
        if p["state"] == "paused":
            if after["state"] != "paused" or after.get("pause_reason") != p["pause_reason"]:
                after["state"], after["pause_reason"] = "paused", p["pause_reason"]
        elif p["state"] == "active":
            after["state"], after["pause_reason"] = "active", None
        elif p["state"] == "complete":
            after["state"], after["pause_reason"] = "complete", None
        keys = ("state", "pause_reason", "throttle", "options", "nodes")
        b_view = {k: (before or {}).get(k) for k in keys} if before else {}
        a_view = {k: after.get(k) for k in keys}
        changed = before is None or b_view != a_view
        if module._diff:
            result["diff"] = {"before": b_view, "after": a_view}
        retried = 0
        if not module.check_mode:
            if store.ensure_schema():
                result["created"] = True
            if before is None:
                store.create_job(job, node_view, after["throttle"], after["options"])
                result["created"] = True
            if changed and before is not None:
                store.update_job(job, state=after["state"], pause_reason=after["pause_reason"],
                                 throttle=after["throttle"], options=after["options"])
                if before.get("state") != after["state"]:
                    store.event(job, after["state"] if after["state"] != "active" else "resumed",
                                {"reason": after.get("pause_reason")})
                if before.get("throttle") != after["throttle"]:
                    store.event(job, "throttle", after["throttle"])
            if p["state"] == "complete" and (before or {}).get("state") != "complete":
                store.set_now(job, "finished_at")
            if p["retry_skipped"]:
                retried = store.retry_skipped(job)
            if p["run_id"] and p["state"] == "present":
                store.event(job, "run", {"run_id": p["run_id"]})
            result["job"] = store.get_job(job)
        else:
            if before is None:
                result["created"] = True
            elif p["retry_skipped"]:
                retried = store.retry_skipped(job, check_mode=True)
            result["job"] = after
        result["retried"] = retried
        changed = changed or retried > 0
        result["changed"] = changed
        if (p["report"] or p["metrics_file"]) and store.exists() and store.get_job(job):
            prog = R.progress(store, job, rate_window=p["rate_window"])
            result["progress"] = prog
            result["lines"] = R.render(prog)
            if p["metrics_file"]:
                result["metrics_changed"] = R.write_textfile(p["metrics_file"], R.prometheus(prog),
                                                             check_mode=module.check_mode)
                result["metrics_file"] = p["metrics_file"]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
