#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: evacuate_scan
short_description: Find every object copy on the nodes of an evacuation job, on the live shard primaries
version_added: 0.1.0
description:
  - Scans the C(manta) table of every index shard on its current primary (found in ZooKeeper)
    for object records whose C(sharks) name a node of the job, and records each copy to move in
    the job store with its shard, key, C(_etag), objectId, creator-or-owner, size and MD5.
  - The scan walks C(_id) (then C(_idx) where moray's extended ids exist) in windows of
    O(chunk) ids, with a server-side pre-filter (C(_value LIKE) for one node, the storage ids
    cut out of the value and tested against the set of nodes for more) and an exact check of
    the parsed C(sharks) on the rows it keeps. The matches are COPYed into the job store in
    batches, with the progress, so a killed scan resumes after the last stored batch, and
    shards are scanned in parallel.
  - Run it after the nodes are read-only (out of the pickers' rotation), so no new object can
    land on them afterwards; the live primary then gives current C(_etag)s (no clone, no stale
    snapshot).
  - MPU part records and zero-byte objects are recorded as skipped with their reason, malformed
    records as errors; they are reported, never silently dropped.
  - O(phase=verify) runs a verification pass, once the job has nothing left in flight. Any
    copy found again (a lost update, a snaplink made meanwhile) goes back to pending; a pass
    that finds nothing left marks the job complete.
author:
  - manta.ops developers (@manta-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.evacuate
  - manta.ops.evacuate.job_store
attributes:
  check_mode:
    support: full
    details: Nothing is scanned or written; the result lists the shards and their approximate
      row counts. The check-mode plan (M(manta.ops.evacuate_plan)) performs the scan itself.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  job:
    description: The job (created by M(manta.ops.evacuate_job)).
    type: str
    required: true
  phase:
    description:
      - V(initial) scans once (resuming an interrupted scan, doing nothing when it is complete).
      - V(verify) starts (or resumes) a verification pass.
    type: str
    choices: [initial, verify]
    default: initial
  shards:
    description: Index shards to scan (default every host of SAPI C(INDEX_MORAY_SHARDS)).
    type: list
    elements: str
  shard_dsns:
    description:
      - Optional libpq connection strings per shard (shard name to DSN), instead of finding the
        primaries in ZooKeeper. Never shown.
    type: dict
  chunk:
    description: Ids per window. Each window is one short query on the primary.
    type: int
    default: 10000
  max_like_patterns:
    description:
      - Up to this many evacuated nodes the pre-filter is C(_value LIKE ANY(...)), one pattern per
        node; with more, one pass that cuts the storage ids out of the value and tests them against
        the set of nodes (the same cost per row for 2 nodes or 90).
    type: int
    default: 1
  parallel:
    description:
      - Concurrent window queries per shard (each on its own connection to the primary), and as
        many connections storing the matches in the job store.
    type: int
    default: 3
  max_rows_per_sec:
    description: Scan at most this many ids per second per shard (V(0) unlimited), to spare a busy primary.
    type: int
    default: 0
  max_duration:
    description: Stop cleanly (progress saved) after this long, for example V(3600) or V(8h).
    type: str
  deadline:
    description: Stop cleanly at this time (seconds since the epoch); the play passes its own deadline.
    type: float
seealso:
  - module: manta.ops.evacuate_job
  - module: manta.ops.evacuate_plan
"""

EXAMPLES = r"""
- name: Find the copies on the job's nodes (resumes an interrupted scan)
  manta.ops.evacuate_scan:
    job: "{{ job.job_name }}"
  delegate_to: localhost
  run_once: true

- name: Verify nothing is left once everything was moved
  manta.ops.evacuate_scan:
    job: "{{ job.job_name }}"
    phase: verify
"""

RETURN = r"""
pass_number:
  description: The scan pass number (1 for the initial scan, 2 and up for verifications).
  returned: always
  type: int
complete:
  description: Whether the pass covered every shard to its end.
  returned: always
  type: bool
matched:
  description: Copies on the job's nodes found by this run of the module.
  returned: always
  type: int
new:
  description: Of those, copies not seen before.
  returned: always
  type: int
open_after:
  description: Copies still to move (pending, assigned or copied) once the pass ended.
  returned: always
  type: int
job_complete:
  description: A verification pass found nothing left to move and the job is now complete.
  returned: always
  type: bool
shards:
  description: Per shard, ids covered, matches, seconds and rate.
  returned: always
  type: dict
seconds:
  description: Wall time of the scan.
  returned: always
  type: float
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import evacuate_args as A
from ansible_collections.manta.ops.plugins.module_utils import evacuate_common as C
from ansible_collections.manta.ops.plugins.module_utils import evacuate_scan as S
from ansible_collections.manta.ops.plugins.module_utils.evacuate_store import JobStore


def main():
    spec = A.argument_spec(
        "connection", "job_store",
        job=dict(type="str", required=True),
        phase=dict(type="str", default="initial", choices=["initial", "verify"]),
        shards=dict(type="list", elements="str"),
        shard_dsns=dict(type="dict", no_log=True),
        chunk=dict(type="int", default=S.DEFAULT_CHUNK),
        max_like_patterns=dict(type="int", default=S.DEFAULT_MAX_LIKE),
        max_rows_per_sec=dict(type="int", default=0),
        parallel=dict(type="int", default=3),
        max_duration=dict(type="str"),
        deadline=dict(type="float"),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    C.require_psycopg2(module)
    p = module.params
    if p["chunk"] < 100:
        module.fail_json(msg=f"chunk must be at least 100 ids, got {p['chunk']}")
    ctx = C.Context(p)
    result = dict(changed=False, matched=0, new=0, complete=False, job_complete=False, shards={},
                  open_after=0)
    with C.module_errors(module, ctx, result, "evacuate_scan"):
        C.check_job_name(p["job"])
        store = JobStore(ctx.job_conn(), p["job_schema"])
        job = store.get_job(p["job"])
        if job is None and module.check_mode:
            job = {"nodes": [], "scan_pass": 0}
        elif job is None:
            raise C.EvacError(f"no job {p['job']!r} in the job store ({ctx.job_store_location()}); "
                              "create it with manta.ops.evacuate_job first")
        nodes = [n["storage_id"] for n in job["nodes"]]
        shards = [s["host"] for s in ctx.index_shards(p["shards"])]
        deadline = p["deadline"]
        md = C.parse_duration(p["max_duration"])
        if md:
            deadline = min(deadline or float("inf"), time.time() + md)
        cur_pass = int(job.get("scan_pass") or 0)
        prog = store.scan_progress(p["job"], cur_pass) if cur_pass and store.exists() else []
        pass_done = bool(prog) and all(r["done"] for r in prog) and \
            {r["shard"] for r in prog} >= set(shards)
        if p["phase"] == "initial":
            if cur_pass >= 1 and (cur_pass > 1 or pass_done):
                result.update(pass_number=1, complete=True, msg="the initial scan is complete")
                result["open_after"] = sum(store.shards_with(p["job"], s).get(sh, 0)
                                           for s in C.OPEN_STATUSES for sh in shards)
                ctx.close()
                module.exit_json(**result)
            pass_no = 1
        else:
            if cur_pass < 1 or (cur_pass == 1 and not pass_done):
                raise C.EvacError("the initial scan is not complete; run phase=initial first")
            pass_no = cur_pass if (cur_pass >= 2 and not pass_done) else cur_pass + 1
        result["pass_number"] = pass_no
        if module.check_mode:
            est = {}
            for sh in shards:
                conn = ctx.shard_conn(sh)
                with conn.cursor() as cur:
                    cur.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'manta'")
                    row = cur.fetchone()
                conn.rollback()
                est[sh] = {"approximate_rows": int(row[0]) if row else None}
            result.update(shards=est, changed=True,
                          msg=f"would scan pass {pass_no} of {len(shards)} shards for "
                              f"{len(nodes)} nodes")
            ctx.close()
            module.exit_json(**result)

        if pass_no != cur_pass:
            store.update_job(p["job"], scan_pass=pass_no)
            if pass_no == 1 and not job.get("started_at"):
                store.set_now(p["job"], "started_at")
            store.event(p["job"], "scan_started", {"pass": pass_no, "shards": shards})
        starts, done = {}, {}
        conns = {}
        for sh in shards:
            conn = ctx.shard_conn(sh)
            cols = S.id_columns(conn)
            for col in cols:
                st = store.start_scan(p["job"], pass_no, sh, col, S.max_id(conn, col))
                starts.setdefault(sh, {})[col] = st["last_id"]
                if st["done"]:
                    done.setdefault(sh, set()).add(col)
            conns[sh] = cols
        counts = {"new": 0, "updated": 0}
        open_count = sum(store.shards_with(p["job"], s).get(sh, 0)
                         for s in C.OPEN_STATUSES for sh in shards)

        def new_store():
            return JobStore(ctx.new_job_conn(), p["job_schema"])

        sinks = {sh: S.StoreSink(new_store(), p["job"], pass_no, sh, writers=p["parallel"],
                                 new_store=new_store)
                 for sh in shards}

        def sink_for(shard):
            return sinks[shard].sink

        def connect_for(shard):
            return ctx.shard_conn(shard, fresh=True)

        t0 = time.monotonic()
        try:
            stats = S.scan_shards(shards, connect_for, nodes, sink_for, starts=starts,
                                  chunk=p["chunk"], deadline=deadline,
                                  max_like=p["max_like_patterns"], done=done,
                                  rows_per_sec=p["max_rows_per_sec"] or None,
                                  parallel=p["parallel"])
        finally:
            errs = []
            for sk in sinks.values():
                try:
                    sk.close()
                except Exception as exc:  # noqa: BLE001
                    errs.append(exc)
                counts["new"] += sk.new
                counts["updated"] += sk.updated
            if errs:
                raise C.EvacError(f"storing the scan's matches failed: {errs[0]}")
        secs = time.monotonic() - t0
        for sh, st in stats.items():
            st["ids_per_second"] = round(st["ids"] / st["seconds"], 1) if st["seconds"] else None
        complete = all(st["complete"] for st in stats.values())
        open_before = open_count
        result.update(shards=stats, matched=sum(st["matched"] for st in stats.values()),
                      new=counts["new"], complete=complete, seconds=round(secs, 3))
        open_after = sum(store.shards_with(p["job"], s).get(sh, 0)
                         for s in C.OPEN_STATUSES for sh in shards)
        result["open_after"] = open_after
        # Changed: copies found that were not known, or known ones to move again. A
        # verification pass that finds nothing new only keeps its own bookkeeping.
        result["changed"] = counts["new"] > 0 or open_after > open_before
        if pass_no >= 2 and open_after > 0 and job.get("state") == "complete":
            store.update_job(p["job"], state="active", pause_reason=None)
            store.event(p["job"], "reopened", {"pass": pass_no, "open": open_after})
            result["changed"] = True
        store.event(p["job"], "scan", {"pass": pass_no, "complete": complete,
                                       "matched": result["matched"], "new": counts["new"],
                                       "seconds": round(secs, 3)})
        if complete and pass_no >= 2:
            store.set_now(p["job"], "verified_at")
            if open_after == 0:
                j = store.get_job(p["job"])
                if j["state"] != "complete":
                    store.update_job(p["job"], state="complete", pause_reason=None)
                    store.set_now(p["job"], "finished_at")
                    store.event(p["job"], "complete", {"pass": pass_no})
                    result["changed"] = True
                result["job_complete"] = True
        if not complete:
            result["msg"] = "stopped at the time budget; the next run resumes the scan"
    module.exit_json(**result)


if __name__ == "__main__":
    main()
