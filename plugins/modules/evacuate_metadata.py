#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: evacuate_metadata
short_description: Record a round's copy results and point the metadata at the verified copies
version_added: 0.1.0
description:
  - Reads the results files of a round (fetched from the destinations) into the job store.
    Verified copies become C(copied), failed ones C(skipped) with their reason, transient failures
    go back to C(pending). A destination whose copy task failed has its copies put back to pending.
  - Then, for every copy recorded C(copied) (this round's and any left by an earlier, interrupted
    run), replaces the evacuated node by the destination in the object's C(sharks), straight on the
    shard's primary, batched per shard in one transaction, etag-conditional; a row a client wrote
    meanwhile is read again and the swap re-applied only if it is still the same object naming the
    node; a newer write is never overwritten, and nothing is ever deleted.
  - Shards are updated in parallel, each at most at the job's C(metadata_rows_per_sec) (read again
    every few seconds, so a throttle change applies while it runs). Shards marked C(readOnly) in
    SAPI C(INDEX_MORAY_SHARDS) (a reshard's write block) are left for a later round.
  - When a destination paused itself on transient errors, the job is paused with its reason.
author:
  - manta.ops developers (@manta-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.evacuate
  - manta.ops.evacuate.job_store
attributes:
  check_mode:
    support: full
    details: Reads the results and reports what would be recorded and updated; writes nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  job:
    description: The job name.
    type: str
    required: true
  round:
    description: The round whose results are read.
    type: int
  results:
    description: Results files of the round on the controller (missing files are ignored).
    type: list
    elements: path
    default: []
  failed_destinations:
    description: Storage ids whose copy task failed or was unreachable this round; their copies go back to pending.
    type: list
    elements: str
    default: []
  batch_size:
    description: Rows per transaction on a shard.
    type: int
    default: 500
  apply:
    description: Update the metadata (V(false) only records the results).
    type: bool
    default: true
  deadline:
    description: Time (seconds since the epoch) after which no new batch starts.
    type: float
  shard_dsns:
    description: DSN per shard instead of ZooKeeper. Never shown.
    type: dict
notes:
  - Why PostgreSQL directly and not moray is explained in docs/evacuate.md ("Metadata writes").
seealso:
  - module: manta.ops.evacuate_copy
  - module: manta.ops.evacuate_plan
"""

EXAMPLES = r"""
- name: Record the round and repoint the metadata
  manta.ops.evacuate_metadata:
    job: "{{ job.job_name }}"
    round: "{{ plan.round }}"
    results: "{{ plan.hosts | map('regex_replace', '^(.*)$', work_dir ~ '/results/\\1.json') | list }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
recorded:
  description: Results recorded, by fate (copied, skipped, pending).
  returned: always
  type: dict
metadata:
  description: Metadata outcomes (done, skipped and errors by reason, conflicts re-applied) and per-shard rows, seconds and rows/s.
  returned: always
  type: dict
deferred_shards:
  description: Shards left alone because SAPI marks them read-only.
  returned: always
  type: list
  elements: str
paused:
  description: The job was paused because a destination paused itself (reason).
  returned: always
  type: str
"""

import collections
import json
import os
import threading
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import evacuate_args as A
from ansible_collections.manta.ops.plugins.module_utils import evacuate_common as C
from ansible_collections.manta.ops.plugins.module_utils import evacuate_metadata as M
from ansible_collections.manta.ops.plugins.module_utils import storage_nodes as SN
from ansible_collections.manta.ops.plugins.module_utils.evacuate_store import JobStore


def fates_from_results(rows):
    out = []
    for oid, status, reason, detail, _nbytes, fetched, _src in rows:
        if status == "copied":
            out.append((oid, "copied", reason, None, bool(fetched)))
        elif status == "skipped":
            out.append((oid, "skipped", reason, detail, None))
        elif status == "not_attempted":
            out.append((oid, "pending", "not_attempted", detail, None))
        else:
            out.append((oid, "pending", reason, detail, None))
    return out


def main():
    spec = A.argument_spec(
        "connection", "job_store",
        job=dict(type="str", required=True),
        round=dict(type="int"),
        results=dict(type="list", elements="path", default=[]),
        failed_destinations=dict(type="list", elements="str", default=[]),
        batch_size=dict(type="int", default=500),
        apply=dict(type="bool", default=True),
        deadline=dict(type="float"),
        shard_dsns=dict(type="dict", no_log=True),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    C.require_psycopg2(module)
    p = module.params
    if p["batch_size"] < 1:
        module.fail_json(msg=f"batch_size must be >= 1, got {p['batch_size']}")
    ctx = C.Context(p)
    result = dict(changed=False, recorded={}, metadata={}, deferred_shards=[], paused=None)
    with C.module_errors(module, ctx, result, "evacuate_metadata"):
        C.check_job_name(p["job"])
        store = JobStore(ctx.job_conn(), p["job_schema"])
        job = store.get_job(p["job"])
        if job is None:
            raise C.EvacError(f"no job {p['job']!r} in the job store")
        dest_dcs = {}
        recorded = collections.Counter()
        pauses = []
        busy = 0.0
        # ---- 1. results ------------------------------------------------------------------
        for path in p["results"]:
            if not os.path.exists(path):
                continue
            with open(path, "r", encoding="utf-8") as fh:
                data = json.load(fh)
            if data.get("job") != p["job"] or (p["round"] and data.get("round") != p["round"]):
                module.warn(f"{path} is for job {data.get('job')} round {data.get('round')}; ignored")
                continue
            fates = fates_from_results(data.get("results") or [])
            st = data.get("stats") or {}
            busy = max(busy, st.get("seconds") or 0)
            if st.get("paused"):
                pauses.append(f"{data.get('dest')}: {st['paused']}")
            if module.check_mode:
                for f in fates:
                    recorded[f[1]] += 1
            else:
                recorded.update(store.record_copy_results(p["job"], data.get("round"),
                                                          data.get("dest"), fates, st))
        if p["failed_destinations"] and p["round"]:
            if not module.check_mode:
                n = store.fail_destination(p["job"], p["round"], p["failed_destinations"],
                                           "destination_failed",
                                           "the copy task failed on the destination")
                recorded["pending"] += n
        result["recorded"] = dict(recorded)
        if pauses and not module.check_mode:
            reason = "automatic pause, transient errors: " + " | ".join(pauses)
            store.update_job(p["job"], state="paused", pause_reason=reason[:2000])
            store.event(p["job"], "paused", {"reason": reason, "automatic": True})
            result["paused"] = reason
        # ---- 2. metadata -----------------------------------------------------------------
        copied = store.shards_with(p["job"], "copied")
        md = {"done": 0, "already_swapped": 0, "conflicts": 0, "skipped": {}, "error": {},
              "refreshed": 0, "shards": {}}
        if module.check_mode or not p["apply"]:
            md["would_update"] = dict(copied)
            if module.check_mode and recorded:
                md["would_update"]["(after recording this round)"] = recorded.get("copied", 0)
        else:
            try:
                ro = {s["host"] for s in ctx.index_shards(None) if s["read_only"]} \
                    if p.get("sapi_url") else set()
            except C.EvacError:
                ro = set()
            result["deferred_shards"] = sorted(s for s in copied if s in ro)
            for n in job.get("nodes") or []:
                dest_dcs[n["storage_id"]] = n.get("datacenter")
            lock = threading.Lock()
            throttle = job.get("throttle") or {}
            rate = M.LiveRate(throttle.get("metadata_rows_per_sec") or None)
            errors = []

            def run_shard(shard):
                w = M.ShardWriter(shard, lambda: ctx.shard_conn(shard, fresh=True), dest_dcs,
                                  batch_size=p["batch_size"], rate=rate)
                try:
                    while True:
                        if p["deadline"] and time.time() >= p["deadline"]:
                            break
                        with lock:
                            rows = store.copied_rows(p["job"], shard, max(p["batch_size"] * 4, 2000))
                        if not rows:
                            break
                        fates = w.apply(rows)
                        plain = [f for f in fates if f[1] != "refresh"]
                        refresh = []
                        for f in fates:
                            if f[1] == "refresh":
                                v = f[2]
                                sh = json.dumps([[s.get("datacenter"), s.get("manta_storage_id")]
                                                 for s in v.get("sharks") or [] if isinstance(s, dict)],
                                                separators=(",", ":"))
                                refresh.append((f[0], v.get("objectId"), v.get("owner"),
                                                v.get("creator") or v.get("owner"),
                                                int(v.get("contentLength") or 0), v.get("contentMD5"), sh))
                        with lock:
                            store.set_fates(p["job"], plain, ("copied",))
                            store.refresh_rows(p["job"], refresh)
                            for f in plain:
                                if f[1] == "done":
                                    md["done"] += 1
                                    if f[2] == "already_swapped":
                                        md["already_swapped"] += 1
                                else:
                                    md[f[1]][f[2]] = md[f[1]].get(f[2], 0) + 1
                            md["refreshed"] += len(refresh)
                except Exception as exc:  # noqa: BLE001
                    errors.append((shard, exc))
                finally:
                    w.close()
                    with lock:
                        md["conflicts"] += w.stats["conflicts"]
                        md["shards"][shard] = {
                            "rows": w.stats["rows"], "updated": w.stats["updated"],
                            "conflicts": w.stats["conflicts"], "batches": w.stats["batches"],
                            "seconds": round(w.stats["seconds"], 3),
                            "rows_per_second": round(w.stats["rows"] / w.stats["seconds"], 1)
                            if w.stats["seconds"] else 0.0}

            # Destination datacenters: from their heartbeat records (the plan only
            # places copies on nodes that have one).
            beats = SN.read_heartbeats(ctx.shard_conn(ctx.storage_shard()))
            for sid, rec in beats.items():
                dest_dcs.setdefault(sid, rec.get("datacenter"))
            threads = [threading.Thread(target=run_shard, args=(s,), name=f"md-{s}")
                       for s in sorted(copied) if s not in ro]
            t0 = time.monotonic()
            for th in threads:
                th.start()
            last = time.monotonic()
            while any(th.is_alive() for th in threads):
                for th in threads:
                    th.join(timeout=0.5)
                if time.monotonic() - last > 2.0:
                    last = time.monotonic()
                    with lock:
                        j = store.get_job(p["job"]) or {}
                    rate.set((j.get("throttle") or {}).get("metadata_rows_per_sec") or None)
            md_secs = time.monotonic() - t0
            busy += md_secs
            if errors:
                shard, exc = errors[0]
                module.warn(f"metadata updates on {shard} stopped: {exc}; the copies stay "
                            "recorded and are applied by the next round or run")
                md["errors"] = [f"{s}: {e}" for s, e in errors]
            if p["round"]:
                started = store.round_started(p["job"], p["round"])
                md["round_seconds"] = round(time.time() - started, 3) if started else None
                md["busy_seconds"] = round(busy, 3)
                store.finish_round(p["job"], p["round"], md)
        result["metadata"] = md
        result["changed"] = bool(recorded) or md.get("done", 0) > 0 or bool(
            md.get("skipped")) or bool(md.get("error")) or md.get("refreshed", 0) > 0
    module.exit_json(**result)


if __name__ == "__main__":
    main()
