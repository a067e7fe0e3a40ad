#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: evacuate_plan
short_description: Choose a destination and sources for each object copy of an evacuation round
version_added: 0.1.0
description:
  - Places the job's pending object copies on destination storage nodes for one round and writes,
    per destination, the file of tasks that M(manta.ops.evacuate_copy) runs on that node.
  - "Rules: never a node that already holds the object; never a datacenter that already holds a
    copy unless it is the evacuated node's own; destinations must be in rotation (fresh
    heartbeat), answer HTTP and have room under O(max_fill_percent) after what the job already
    placed on them; the evacuated node's own datacenter first, then the others; bytes spread over
    the eligible nodes in proportion to their free space."
  - "Sources, best first: by default another copy (in the destination's datacenter first), then
    the evacuated node itself (it is healthy, only read-only)."
  - Each destination gets what it can move in O(round_seconds) at the job's throttles and the
    rates measured in earlier rounds; what does not fit waits for the next round.
  - Copies assigned in an earlier round whose result never came back (a killed run, a failed
    destination) go back to pending first, keeping their destination when it is still eligible
    (the copy there is then verified, not fetched again).
  - The job pauses itself when an evacuated node is back in rotation.
  - In check mode nothing is written. The module places every copy of the job (reading the job
    store when its scan is done, otherwise scanning the shards itself without storing anything)
    and reports objects, bytes, each destination's fill after the move, the copies that cannot
    be placed and why, and an estimated duration from the throttles and measured rates (a probe
    reads a sample of the objects from their sources, writing nothing).
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
    details: Whole-job simulation and estimate; nothing is written anywhere.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  job:
    description: The job name.
    type: str
    required: true
  nodes:
    description:
      - The evacuated nodes (C(storage_id), C(datacenter)); only needed in check mode when the job
        does not exist yet (M(manta.ops.evacuate_job) returns them).
    type: list
    elements: dict
  storage_hosts:
    description:
      - The inventory's storage nodes (inventory host name to C(manta_storage_id), C(datacenter),
        C(storage_url), C(storage_root)). Destinations are those not evacuated; every one of them
        gives the URL its copies are read from.
    type: dict
    required: true
  work_dir:
    description: Directory on the controller for the per-destination task files.
    type: path
    default: /var/tmp/manta-evacuate
  round:
    description: Round number (default the next one of the job).
    type: int
  round_seconds:
    description: The time a round should take; sizes each destination's share.
    type: float
    default: 300
  round_max_objects:
    description: At most this many copies are planned in one round (all destinations).
    type: int
    default: 200000
  max_fill_percent:
    description: A destination takes copies only while it stays at or under this fill.
    type: float
    default: 90
  same_datacenter:
    description: Only destinations in the evacuated node's own datacenter (the tech review's simple strategy).
    type: bool
    default: false
  source_preference:
    description:
      - V(other_copy) reads from another copy first (in the destination's datacenter first), then the
        evacuated node. V(evacuated_node) reads from the evacuated node first. V(same_datacenter) reads
        from a copy in the destination's datacenter first, whichever node holds it.
    type: str
    choices: [other_copy, evacuated_node, same_datacenter]
    default: other_copy
  rotation_lag:
    description: A heartbeat older than this many seconds is out of rotation (storinfo's C(lag)).
    type: float
    default: 60
  max_attempts:
    description: A copy that failed transiently this many times is skipped (V(too_many_attempts)).
    type: int
    default: 3
  exclude_destinations:
    description: Storage ids not to use in this round (for example destinations that failed the previous one).
    type: list
    elements: str
    default: []
  check_destinations:
    description: GET each destination's web server root before using it.
    type: bool
    default: true
  deadline:
    description: Time (seconds since the epoch) the run must end by; rounds are sized to fit.
    type: float
  run_id:
    description: Recorded with the round.
    type: str
  shards:
    description: Check mode, scanning itself; index shards (default SAPI C(INDEX_MORAY_SHARDS)).
    type: list
    elements: str
  shard_dsns:
    description: Check mode, scanning itself; DSN per shard instead of ZooKeeper. Never shown.
    type: dict
  probe_objects:
    description: Check mode; how many objects to read from their sources to measure rates (V(0) none).
    type: int
    default: 50
  forks:
    description: Check mode; destinations copying at once (Ansible C(forks)), for the estimate.
    type: int
    default: 5
  seconds_per_task:
    description:
      - Check mode; what one task of the play costs on this controller and inventory (the play
        measures it on its way to this task), for the estimate's overhead.
    type: float
seealso:
  - module: manta.ops.evacuate_copy
  - module: manta.ops.evacuate_metadata
"""

EXAMPLES = r"""
- name: Plan the next round
  manta.ops.evacuate_plan:
    job: "{{ job.job_name }}"
    storage_hosts: "{{ evacuate_storage_hosts }}"
    work_dir: /var/tmp/manta-evacuate
  delegate_to: localhost
  run_once: true
  register: plan

- name: What would an evacuation of 3.stor do, and how long would it take?
  manta.ops.evacuate_plan:
    job: evacuate-3.stor.us-east.example.com
    nodes: [{storage_id: 3.stor.us-east.example.com, datacenter: us-east-3}]
    storage_hosts: "{{ evacuate_storage_hosts }}"
  check_mode: true
  register: preview
"""

RETURN = r"""
round:
  description: The round number.
  returned: success, not in check mode
  type: int
assignments:
  description: Per destination inventory host, its task file, object and byte counts, root and URL.
  returned: success, not in check mode
  type: dict
hosts:
  description: Inventory hosts that have copies to make this round.
  returned: success, not in check mode
  type: list
  elements: str
skipped_by_reason:
  description: Copies skipped while planning, by reason.
  returned: success, not in check mode
  type: dict
deferred:
  description: Copies that fit nowhere this round (destinations' shares full) and wait for the next.
  returned: success, not in check mode
  type: int
open:
  description: Copies still to move (pending, assigned, copied) after planning.
  returned: success, not in check mode
  type: int
done:
  description: Nothing is left to move (the play then runs the verification scan).
  returned: success, not in check mode
  type: bool
work:
  description: This round has copies to make or metadata to update.
  returned: success, not in check mode
  type: bool
paused:
  description: The job is paused (by an operator, or automatically); nothing was planned.
  returned: always
  type: bool
pause_reason:
  description: Why the job is paused.
  returned: when paused
  type: str
unusable_destinations:
  description: Storage nodes not used, and why (out of rotation, full, web server down, excluded).
  returned: success
  type: dict
report:
  description:
    - Check mode only. Objects and bytes per node and to move, skips and unplaceable copies by reason
      with example keys, each destination's fill before and after, updates per shard, the probe, and
      the C(estimate) in RV(report) (seconds, with its scan, copy, metadata and overhead components).
  returned: check mode
  type: dict
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import evacuate_args as A
from ansible_collections.manta.ops.plugins.module_utils import evacuate_common as C
from ansible_collections.manta.ops.plugins.module_utils import evacuate_estimate as EE
from ansible_collections.manta.ops.plugins.module_utils import evacuate_round as ER
from ansible_collections.manta.ops.plugins.module_utils import evacuate_scan as S
from ansible_collections.manta.ops.plugins.module_utils import storage_nodes as SN
from ansible_collections.manta.ops.plugins.module_utils.evacuate_store import JobStore

ROW_FIELDS = ("key", "node", "mid", "object_id", "owner", "path_owner", "size", "md5", "etag",
              "sharks", "status", "reason", "detail")


def stored_rows(store, job):
    """Open and skipped rows of a job, as planner rows (check mode, scan done)."""
    with store.conn.cursor("evac_sim") as cur:
        cur.itersize = 5000
        cur.execute(store.q("SELECT oid, shard, key, node, object_id, path_owner, size, md5, sharks, "
                            "dest, status, reason, detail FROM {o} WHERE job = %s AND status IN "
                            "('pending', 'assigned', 'copied', 'skipped', 'error') ORDER BY oid",
                            o="objects"), (job,))
        for r in cur:
            row = dict(zip(("oid", "shard", "key", "node", "object_id", "path_owner", "size", "md5",
                            "sharks", "dest", "status", "reason", "detail"), r))
            if row["status"] in ("assigned", "copied"):
                row["status"] = "pending"
            row["siblings"] = None
            yield row
    store.conn.rollback()


def scanned_rows(ctx, shards, nodes, p, timing):
    """Scan the shards now (check mode), yielding planner rows; nothing is stored."""
    import queue
    import threading
    q = queue.Queue(maxsize=20)
    done = object()
    err = []

    def sink_for(shard):
        def sink(col, rows, last_id, ids, seconds, finished, max_id):
            for r in rows:
                d = dict(zip(ROW_FIELDS, r))
                d["shard"] = shard
                d["oid"] = None
                d["siblings"] = None
                q.put(d)
        return sink

    def run():
        t0 = time.monotonic()
        try:
            S.scan_shards(shards, lambda sh: ctx.shard_conn(sh, fresh=True), nodes, sink_for,
                          chunk=p["chunk"] if "chunk" in p else S.DEFAULT_CHUNK)
        except Exception as exc:  # noqa: BLE001
            err.append(exc)
        finally:
            timing["scan_seconds"] = time.monotonic() - t0
            q.put(done)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    while True:
        item = q.get()
        if item is done:
            break
        yield item
    th.join()
    if err:
        raise err[0]


def main():
    spec = A.argument_spec(
        "connection", "job_store", "throttle",
        job=dict(type="str", required=True),
        nodes=dict(type="list", elements="dict"),
        storage_hosts=dict(type="dict", required=True),
        work_dir=dict(type="path", default="/var/tmp/manta-evacuate"),
        round=dict(type="int"),
        round_seconds=dict(type="float", default=300.0),
        round_max_objects=dict(type="int", default=200000),
        max_fill_percent=dict(type="float", default=90.0),
        same_datacenter=dict(type="bool", default=False),
        source_preference=dict(type="str", default="other_copy",
                               choices=["other_copy", "evacuated_node", "same_datacenter"]),
        rotation_lag=dict(type="float", default=60.0),
        max_attempts=dict(type="int", default=3),
        exclude_destinations=dict(type="list", elements="str", default=[]),
        check_destinations=dict(type="bool", default=True),
        deadline=dict(type="float"),
        run_id=dict(type="str"),
        shards=dict(type="list", elements="str"),
        shard_dsns=dict(type="dict", no_log=True),
        probe_objects=dict(type="int", default=50),
        forks=dict(type="int", default=5),
        seconds_per_task=dict(type="float"),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    C.require_psycopg2(module)
    p = module.params
    if not 0 < p["max_fill_percent"] <= 100:
        module.fail_json(msg=f"max_fill_percent must be in (0, 100], got {p['max_fill_percent']}")
    if p["round_seconds"] <= 0 or p["round_max_objects"] < 1 or p["max_attempts"] < 1:
        module.fail_json(msg="round_seconds must be > 0, round_max_objects and max_attempts >= 1")
    ctx = C.Context(p)
    result = dict(changed=False, paused=False)
    with C.module_errors(module, ctx, result, "evacuate_plan", expected=(SN.NodeError, ValueError)):
        C.check_job_name(p["job"])
        inv = ER.inventory_nodes(p["storage_hosts"])
        if not inv:
            raise C.EvacError("storage_hosts is empty: pass the inventory's storage nodes")
        store = JobStore(ctx.job_conn(), p["job_schema"])
        job = store.get_job(p["job"])
        beats = SN.read_heartbeats(ctx.shard_conn(ctx.storage_shard()))
        if module.check_mode:
            nodes = (job or {}).get("nodes") or p["nodes"]
            if not nodes:
                raise C.EvacError(f"no job {p['job']!r} and no nodes given: in check mode pass "
                                  "nodes (as manta.ops.evacuate_job returns them)")
            throttle = dict((job or {}).get("throttle") or {})
            throttle.update({k: v for k, v in (p["throttle"] or {}).items() if v is not None})
            timing = {"scan_seconds": 0.0}
            scan_done = False
            measured = {}
            if job is not None:
                prog = store.scan_progress(p["job"], 1)
                scan_done = bool(prog) and all(r["done"] for r in prog)
                if scan_done:
                    timing["scan_seconds"] = max(r["seconds"] for r in prog)
                measured = EE.measured_from_rounds(store.rounds(p["job"], limit=10))
            if scan_done:
                rows = stored_rows(store, p["job"])
            else:
                shards = [s["host"] for s in ctx.index_shards(p["shards"])]
                rows = scanned_rows(ctx, shards, [n["storage_id"] for n in nodes], p, timing)
            since = {sid: (rec.get("timestamp") or 0) / 1000.0 for sid, rec in beats.items()}
            reserved = store.reserved_bytes(since) if job is not None else {}
            report = ER.simulate(rows, nodes, inv, beats, p, reserved=reserved,
                                 scan_seconds=lambda: timing["scan_seconds"], measured=measured,
                                 throttle=throttle, forks=p["forks"])
            report["scan_source"] = "job store" if scan_done else "live scan (nothing stored)"
            result.update(report=report, changed=report["objects_to_move"] > 0,
                          paused=(job or {}).get("state") == "paused")
            ctx.close()
            module.exit_json(**result)

        if job is None:
            raise C.EvacError(f"no job {p['job']!r}; create it with manta.ops.evacuate_job")
        prog = store.scan_progress(p["job"], 1)
        if not prog or not all(r["done"] for r in prog):
            raise C.EvacError(f"job {p['job']}: the initial scan is not complete; run "
                              "manta.ops.evacuate_scan first")
        round_no = p["round"] or store.next_round(p["job"])
        out = ER.plan_round(store, p["job"], inv, beats, p, round_no, run_id=p["run_id"])
        result.update(out)
        result["changed"] = bool(out.get("assignments")) or bool(out.get("skipped_by_reason")) \
            or bool(out.get("requeued")) or (out.get("pause_reason") or "").startswith("evacuated node back")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
