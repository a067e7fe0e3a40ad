# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""One planning round of an evacuation, and the check-mode simulation of a whole job.

A round (:func:`plan_round`):

1. objects assigned in an earlier round whose result never came back go back
   to pending (keeping their destination as the preferred one);
2. the evacuated nodes must still be out of rotation (a re-enabled minnow
   pauses the job: new objects could land there again);
3. destinations = the inventory's other storage nodes whose heartbeat is
   fresh, whose web server answers and that have headroom under
   ``max_fill_percent`` (minus what this job already placed on them);
4. each destination's share of the round is what it can move in
   ``round_seconds`` at its throttle and measured rates;
5. pending copies are placed (:class:`~.evacuate_plan.Planner`), recorded
   in the job store in one transaction, and each destination's tasks are
   written to ``<work_dir>/<job>/round-<N>/<dest>.json`` for the copy step.

The check-mode simulation (:func:`simulate`) places every copy the job would
move (from the job store if the scan is done, else from a scan streamed
straight into the planner, storing nothing) with no round limits, and
reports objects, bytes, fill after the move, what cannot be placed and why,
and an estimated duration.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.urls import open_url

from ansible_collections.manta.ops.plugins.module_utils import evacuate_copy as EC
from ansible_collections.manta.ops.plugins.module_utils import evacuate_estimate as EE
from ansible_collections.manta.ops.plugins.module_utils import evacuate_plan as EP
from ansible_collections.manta.ops.plugins.module_utils import storage_nodes as SN

DEFAULT_COPY_CONCURRENCY = 8


def web_alive(url, timeout=3.0):
    try:
        with open_url(url.rstrip("/") + "/", timeout=timeout) as r:
            return r.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except Exception:  # noqa: BLE001 - anything = not serving
        return False


def inventory_nodes(storage_hosts):
    """{storage_id: {host, datacenter, url, root}} from the inventory's storage hostvars."""
    out = {}
    for host, hv in (storage_hosts or {}).items():
        hv = hv or {}
        sid = hv.get("manta_storage_id") or host
        out[sid] = {"host": host, "datacenter": hv.get("datacenter"),
                    "url": (hv.get("storage_url") or f"http://{sid}").rstrip("/"),
                    "root": hv.get("storage_root") or "/manta"}
    return out


def build_destinations(beats, inv, evac_ids, max_fill, lag, reserved, exclude=(),
                       check_web=True, now=None):
    """(usable Dest list, {sid: why unusable})."""
    cands, unusable = {}, {}
    for sid, n in inv.items():
        if sid in evac_ids:
            continue
        if sid in exclude:
            unusable[sid] = "excluded for this round (failed in the previous round)"
            continue
        rec = beats.get(sid)
        if rec is None:
            unusable[sid] = "no heartbeat record"
            continue
        if not SN.in_rotation(rec, lag, now):
            unusable[sid] = f"heartbeat {SN.age_seconds(rec, now):.0f}s old (out of rotation)"
            continue
        try:
            cap = SN.capacity(rec, max_fill)
        except SN.NodeError as exc:
            unusable[sid] = str(exc)
            continue
        head = cap["headroom"] - int(reserved.get(sid, 0))
        if head <= 0:
            unusable[sid] = (f"full: {cap['percent_used']}% used (+{reserved.get(sid, 0)} bytes "
                             f"placed by this job), max_fill_percent {max_fill}")
            continue
        cands[sid] = (n, rec, cap, head)
    if check_web and cands:
        with ThreadPoolExecutor(max_workers=min(16, len(cands))) as pool:
            alive = dict(zip(cands, pool.map(lambda s: web_alive(cands[s][0]["url"]), cands)))
    else:
        alive = {s: True for s in cands}
    dests = []
    for sid, (n, rec, cap, head) in cands.items():
        if not alive.get(sid):
            unusable[sid] = f"its web server {n['url']} does not answer"
            continue
        dests.append(EP.Dest(sid, rec.get("datacenter") or n["datacenter"], head, url=n["url"],
                             before=cap))
    return dests, unusable


def rates(throttle, measured):
    conc = int(throttle.get("copy_concurrency") or DEFAULT_COPY_CONCURRENCY)
    m = dict(EE.DEFAULTS)
    m.update({k: v for k, v in (measured or {}).items() if v is not None})
    spo = m["seconds_per_object"] + m["write_overhead_per_object"]
    obj_rate = conc / spo
    bw = m["bytes_per_second"]
    if throttle.get("max_bytes_per_sec"):
        bw = min(bw, float(throttle["max_bytes_per_sec"]))
    return obj_rate, bw


def source_shares(assignments, throttle):
    """{dest: {source: bytes/s}}: each source's max_bytes_per_sec split among the
    destinations reading from it (by first source), in proportion to their bytes."""
    limit = throttle.get("max_bytes_per_sec")
    if not limit:
        return {}
    per = {}
    for _row, dest, srcs in assignments:
        if srcs:
            per.setdefault(srcs[0], {}).setdefault(dest, 0)
            per[srcs[0]][dest] += int(_row.get("size") or 0)
    out = {}
    for src, dests in per.items():
        tot = float(sum(dests.values())) or 1.0
        for d, b in dests.items():
            out.setdefault(d, {})[src] = max(64 * 1024, int(limit * b / tot))
    return out


def write_assignment(path, job, round_no, dest, root, sources, source_limits, tasks):
    data = {"job": job, "round": round_no, "dest": dest, "root": root, "sources": sources,
            "source_bytes_per_sec": source_limits, "tasks": tasks}
    EC.write_json_atomic(path, data)
    return path


def plan_round(store, job, inv, beats, p, round_no, run_id=None, now=None):
    """Plan one round; returns the module result (see evacuate_plan RETURN)."""
    j = store.get_job(job)
    throttle = j.get("throttle") or {}
    evac = {n["storage_id"]: n.get("datacenter") for n in j["nodes"]}
    out = {"round": round_no, "paused": False, "complete": j["state"] == "complete",
           "assignments": {}, "hosts": [], "skipped_by_reason": {}, "deferred": 0, "requeued": 0}
    if j["state"] == "paused":
        out.update(paused=True, pause_reason=j.get("pause_reason"))
        return out
    out["requeued"] = store.requeue_stale(job, round_no)
    back = [f"{sid} (heartbeat {SN.age_seconds(beats[sid], now):.0f}s old)" for sid in evac
            if sid in beats and SN.in_rotation(beats[sid], p["rotation_lag"], now)]
    if back:
        reason = ("evacuated node back in rotation: " + ", ".join(back)
                  + "; its minnow runs again, so new objects may land on it. Make it read-only "
                    "(manta.ops.storage_node_readonly) and resume the job")
        store.update_job(job, state="paused", pause_reason=reason)
        store.event(job, "paused", {"reason": reason, "automatic": True})
        out.update(paused=True, pause_reason=reason)
        return out
    since = {sid: (rec.get("timestamp") or 0) / 1000.0 for sid, rec in beats.items()}
    reserved = store.reserved_bytes(since)
    dests, unusable = build_destinations(beats, inv, set(evac), p["max_fill_percent"],
                                         p["rotation_lag"], reserved,
                                         exclude=set(p.get("exclude_destinations") or ()),
                                         check_web=p.get("check_destinations", True), now=now)
    out["unusable_destinations"] = unusable
    measured = EE.measured_from_rounds(store.rounds(job, limit=10))
    obj_rate, bw = rates(throttle, measured)
    rsecs = float(p["round_seconds"])
    if p.get("deadline"):
        rsecs = max(5.0, min(rsecs, (p["deadline"] - time.time()) * 0.7))
    for d in dests:
        d.round_objects_limit = max(1, int(obj_rate * rsecs))
        d.round_bytes_limit = max(1, int(bw * rsecs))
    planner = EP.Planner(dests, evac, same_datacenter=p["same_datacenter"],
                         source_preference=p["source_preference"],
                         node_dcs={sid: n["datacenter"] for sid, n in inv.items()})
    rows = store.pending_rows(job, int(p["round_max_objects"]))
    too_many = [r for r in rows if r["attempts"] >= p["max_attempts"]]
    rows = [r for r in rows if r["attempts"] < p["max_attempts"]]
    assignments, skips, deferred = ([], [], []) if not dests else EP.plan_rows(planner, rows)
    if not dests and rows:
        deferred = rows
    skip_rows = [(r["oid"], "skipped", reason, detail) for r, reason, detail in skips]
    skip_rows += [(r["oid"], "skipped", "too_many_attempts",
                   f"{r['attempts']} attempts; last: {r.get('dest') or '?'}") for r in too_many]
    shares = source_shares(assignments, throttle)
    per_dest = {}
    for row, dest, srcs in assignments:
        per_dest.setdefault(dest, []).append(row)
    planned = {"assigned": len(assignments), "skipped": len(skip_rows), "deferred": len(deferred),
               "destinations": {d: {"objects": len(r), "bytes": sum(int(x["size"] or 0) for x in r)}
                                for d, r in per_dest.items()},
               "round_seconds": rsecs, "objects_per_second_per_destination": round(obj_rate, 1),
               "bytes_per_second_per_destination": round(bw, 1)}
    if assignments or skip_rows:
        store.begin_round(job, round_no, run_id, planned,
                          [(r["oid"], d, json.dumps(s)) for r, d, s in assignments], skip_rows)
    tasks_by_dest = {}
    for row, dest, srcs in assignments:
        tasks_by_dest.setdefault(dest, []).append(
            [row["oid"], row["path_owner"], row["object_id"], int(row["size"] or 0), row["md5"], srcs])
    src_urls = {sid: n["url"] for sid, n in inv.items()}
    for dest, tasks in tasks_by_dest.items():
        n = inv[dest]
        fname = os.path.join(p["work_dir"], job, f"round-{round_no}", f"{dest}.json")
        needed = {s for t in tasks for s in t[5]}
        write_assignment(fname, job, round_no, dest, n["root"],
                         {s: src_urls.get(s, f"http://{s}") for s in needed},
                         shares.get(dest, {}), tasks)
        out["assignments"][n["host"]] = {"storage_id": dest, "file": fname, "objects": len(tasks),
                                         "bytes": sum(t[3] for t in tasks),
                                         "verify_url": n["url"], "root": n["root"]}
        out["hosts"].append(n["host"])
    for _oid, _st, reason, _d in skip_rows:
        out["skipped_by_reason"][reason] = out["skipped_by_reason"].get(reason, 0) + 1
    out["deferred"] = len(deferred)
    counts = store.counts(job)
    openc = sum(c.get(s, [0, 0])[0] for c in counts.values() for s in ("pending", "assigned", "copied"))
    copied = sum(c.get("copied", [0, 0])[0] for c in counts.values())
    out.update(open=openc, copied_waiting=copied,
               done=(openc == 0), throttle=throttle,
               work=bool(assignments) or copied > 0)
    if rows and not dests:
        out["warning"] = ("no usable destination this round: "
                          + "; ".join(f"{k}: {v}" for k, v in sorted(unusable.items())))
    return out


def simulate(rows_iter, nodes, inv, beats, p, reserved=None, scan_seconds=0.0, measured=None,
             throttle=None, forks=5, now=None):
    """``scan_seconds`` may be a callable, read once ``rows_iter`` is exhausted."""
    """Check mode: place every copy with no round limits; report and estimate."""
    throttle = throttle or {}
    evac = {n["storage_id"]: n.get("datacenter") for n in nodes}
    dests, unusable = build_destinations(beats, inv, set(evac), p["max_fill_percent"],
                                         p["rotation_lag"], reserved or {},
                                         check_web=p.get("check_destinations", True), now=now)
    planner = EP.Planner(dests, evac, same_datacenter=p["same_datacenter"],
                         source_preference=p["source_preference"],
                         node_dcs={sid: n["datacenter"] for sid, n in inv.items()})
    per_node = {sid: {"objects": 0, "bytes": 0, "to_move": 0, "bytes_to_move": 0}
                for sid in evac}
    reasons = {}
    per_shard = {}
    per_source = {}
    sample = []
    examples = 3

    def note(row, status, reason, detail=None):
        key = (row["node"], status, reason)
        r = reasons.setdefault(key, {"node": row["node"], "status": status, "reason": reason,
                                     "objects": 0, "bytes": 0, "examples": [], "detail": detail})
        r["objects"] += 1
        r["bytes"] += int(row.get("size") or 0)
        if len(r["examples"]) < examples:
            r["examples"].append(row["key"])

    batch = []

    def flush():
        if not batch:
            return
        a, s, d = EP.plan_rows(planner, batch)
        for row, dest, srcs in a:
            pn = per_node[row["node"]]
            pn["to_move"] += 1
            pn["bytes_to_move"] += int(row["size"] or 0)
            per_shard[row["shard"]] = per_shard.get(row["shard"], 0) + 1
            if srcs:
                per_source[srcs[0]] = per_source.get(srcs[0], 0) + int(row["size"] or 0)
            if len(sample) < p.get("probe_objects", 50):
                sample.append([row.get("oid"), row["path_owner"], row["object_id"],
                               int(row["size"] or 0), row["md5"], srcs])
        for row, reason, detail in s:
            note(row, "skipped", reason, detail)
        for row in d:
            note(row, "skipped", "no_usable_destination")
        batch.clear()

    for row in rows_iter:
        pn = per_node.setdefault(row["node"], {"objects": 0, "bytes": 0, "to_move": 0,
                                               "bytes_to_move": 0})
        pn["objects"] += 1
        pn["bytes"] += int(row.get("size") or 0)
        if row.get("status", "pending") != "pending":
            note(row, row["status"], row.get("reason"), row.get("detail"))
            continue
        if len(batch) >= 5000 and (batch[-1]["shard"], batch[-1]["key"]) != (row["shard"], row["key"]):
            flush()     # copies of one key stay in one batch
        batch.append(row)
    flush()
    fill = EP.fill_report(dests)
    conc = int(throttle.get("copy_concurrency") or DEFAULT_COPY_CONCURRENCY)
    probe = None
    measured = dict(measured or {})
    if sample and p.get("probe_objects", 50) > 0 and not measured.get("rate_source"):
        src_urls = {sid: n["url"] for sid, n in inv.items()}
        streams = conc * max(1, min(len([d for d in dests if d.planned_objects]), forks))
        probe = EC.probe(sample, src_urls, concurrency=min(streams, len(sample)))
        if probe["seconds_per_object"]:
            measured["seconds_per_object"] = probe["seconds_per_object"]
            measured["rate_source"] = "probe"
    if callable(scan_seconds):
        scan_seconds = scan_seconds()
    from urllib.parse import urlsplit
    hosts = {urlsplit(d.url or "").hostname for d in dests if d.planned_objects}
    shared = (os.cpu_count() or 1) if hosts and hosts <= {"127.0.0.1", "localhost", "::1"} else None
    est = EE.estimate({d.id: (d.planned_objects, d.planned_bytes) for d in dests if d.planned_objects},
                      per_shard, throttle, measured=measured, scan_seconds=scan_seconds,
                      forks=forks, round_seconds=p["round_seconds"],
                      rotation_lag=p["rotation_lag"], per_source_bytes=per_source,
                      seconds_per_task=p.get("seconds_per_task"), shared_cpus=shared)
    unplaced = [r for r in reasons.values()
                if r["reason"] in ("object_already_on_dest_shark", "object_already_in_datacenter",
                                   "destination_insufficient_space", "no_destination_in_datacenter",
                                   "no_usable_destination")]
    return {
        "nodes": per_node,
        "objects": sum(v["objects"] for v in per_node.values()),
        "bytes": sum(v["bytes"] for v in per_node.values()),
        "objects_to_move": sum(v["to_move"] for v in per_node.values()),
        "bytes_to_move": sum(v["bytes_to_move"] for v in per_node.values()),
        "reasons": sorted(reasons.values(), key=lambda r: (r["node"], r["status"], -r["objects"])),
        "unplaceable": unplaced,
        "unplaceable_objects": sum(r["objects"] for r in unplaced),
        "destinations": fill,
        "unusable_destinations": unusable,
        "per_shard_updates": per_shard,
        "probe": probe,
        "estimate": est,
        "scan_seconds": round(scan_seconds, 3),
    }
