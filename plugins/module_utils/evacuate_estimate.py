# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""How long an evacuation will take, from the plan, the throttles and measured rates.

The model (docs/evacuate.md "Estimates"), every term reported separately:

* **scan**: measured (check mode really scans), counted twice: the run scans,
  and a verification scan at the end proves nothing is left;
* **copy**: per destination, ``max(objects / object_rate, bytes / byte_rate)``
  where ``object_rate = copy_concurrency / seconds_per_object`` and
  ``byte_rate = min(max_bytes_per_sec, measured bytes/s)``; destinations work in
  parallel, ``forks`` at a time; a source's ``max_bytes_per_sec`` caps what all
  destinations read from it; everything is also capped by what this
  controller measured for the whole set of concurrent streams;
* **metadata**: per shard ``rows / min(metadata_rows_per_sec, measured rows/s)``,
  shards in parallel, after each round's copies;
* **overhead**: the read-only wait (``lag`` minus half a heartbeat interval),
  and the play's own tasks: ``PLAY_TASKS_FIXED`` task executions per run plus
  ``PLAY_TASKS_PER_ROUND`` per round, at the seconds per task the check-mode run
  measured on this controller and inventory (the defaults below otherwise);
* when every destination is this very machine (the lab), its CPUs bound the copy
  (``cpu_seconds_per_object``/``_per_mib``, measured by bench/evacuate_copy_bench.py).

Rates come, best first, from: this job's earlier rounds; a probe (check mode
fetches a sample of the objects it would copy from their sources, at the
planned concurrency, writing nothing); the defaults.
"""
from __future__ import annotations

import math

DEFAULTS = {
    "seconds_per_object": 0.004,       # one stream: request, first byte, fsync, rename, HEAD
    "write_overhead_per_object": 0.0015,  # fsync + rename + HEAD on the destination (probe cannot see it)
    "bytes_per_second": 100e6,         # one destination, all streams
    "metadata_rows_per_second": 5000.0,
    "round_overhead_seconds": 9.0,     # the round's Ansible tasks on a small inventory
    "run_overhead_seconds": 25.0,      # job set-up, read-only, verification bookkeeping
    "heartbeat_interval": 5.0,         # minnow's; the read-only wait is lag - interval / 2
    # CPU one copy costs where destinations share one machine (the lab): per object and
    # per MiB (request, MD5, two memory copies, fsync, rename, HEAD); from bench/evacuate_copy_bench.py
    "cpu_seconds_per_object": 0.0009,
    "cpu_seconds_per_mib": 0.0035,
}
# Task executions of playbooks/evacuate.yml outside the rounds, and per round (the play's
# shape; the per-task cost itself is measured by the check-mode run).
PLAY_TASKS_FIXED = 24
PLAY_TASKS_PER_ROUND = 12


def _lpt(times, slots):
    """Makespan of independent jobs on ``slots`` parallel slots (longest first)."""
    if not times:
        return 0.0
    slots = max(1, int(slots))
    load = [0.0] * min(slots, len(times))
    for t in sorted(times, reverse=True):
        i = load.index(min(load))
        load[i] += t
    return max(load)


def estimate(per_dest, per_shard_rows, throttle, measured=None, scan_seconds=0.0,
             forks=5, round_seconds=300.0, rotation_lag=60.0, per_source_bytes=None,
             seconds_per_task=None, shared_cpus=None):
    """``per_dest``: {dest: (objects, bytes)}; ``per_shard_rows``: {shard: rows};
    ``throttle``: copy_concurrency, max_bytes_per_sec, metadata_rows_per_sec;
    ``measured``: optional overrides of :data:`DEFAULTS` plus ``aggregate_objects_per_second``
    / ``aggregate_bytes_per_second`` (what the controller saw for all streams at once).
    Returns {"seconds": total, "components": {...}, "model": {...}}."""
    m = dict(DEFAULTS)
    m.update({k: v for k, v in (measured or {}).items() if v is not None})
    conc = max(1, int(throttle.get("copy_concurrency") or 8))
    bw_cap = throttle.get("max_bytes_per_sec") or None
    md_cap = throttle.get("metadata_rows_per_sec") or None
    spo = m["seconds_per_object"] + m["write_overhead_per_object"]
    obj_rate = conc / spo
    byte_rate = m["bytes_per_second"] if not bw_cap else min(bw_cap, m["bytes_per_second"])
    dest_times = {}
    for d, (objs, nbytes) in per_dest.items():
        dest_times[d] = max(objs / obj_rate, nbytes / byte_rate if byte_rate else 0.0)
    copy = _lpt(list(dest_times.values()), forks)
    tot_objs = sum(o for o, dummy in per_dest.values())
    tot_bytes = sum(b for dummy, b in per_dest.values())
    agg_o = m.get("aggregate_objects_per_second")
    agg_b = m.get("aggregate_bytes_per_second")
    active = min(max(1, len(per_dest)), max(1, int(forks)))
    if agg_o:
        copy = max(copy, tot_objs / agg_o)
    if agg_b:
        copy = max(copy, tot_bytes / agg_b)
    if bw_cap and per_source_bytes:
        copy = max([copy] + [b / float(bw_cap) for b in per_source_bytes.values()])
    if shared_cpus:
        # every destination (and source) on this one machine: its CPUs bound the whole copy
        cpu = tot_objs * m["cpu_seconds_per_object"] + tot_bytes / 1048576.0 * m["cpu_seconds_per_mib"]
        copy = max(copy, cpu / float(shared_cpus))
    md_rate = m["metadata_rows_per_second"] if not md_cap else min(md_cap, m["metadata_rows_per_second"])
    metadata = max([r / md_rate for r in per_shard_rows.values()] or [0.0])
    rounds = max(1, math.ceil(copy / float(round_seconds))) if tot_objs else 0
    wait = max(0.0, rotation_lag - m["heartbeat_interval"] / 2.0)
    if seconds_per_task:
        # measured on this controller and inventory by the check-mode run itself
        m["run_overhead_seconds"] = seconds_per_task * PLAY_TASKS_FIXED
        m["round_overhead_seconds"] = seconds_per_task * PLAY_TASKS_PER_ROUND
    overhead = m["run_overhead_seconds"] + wait + max(rounds, 1) * m["round_overhead_seconds"]
    total = 2 * scan_seconds + copy + metadata + overhead
    return {
        "seconds": round(total, 1),
        "components": {"scan": round(2 * scan_seconds, 2), "copy": round(copy, 2),
                       "metadata": round(metadata, 2), "overhead": round(overhead, 2),
                       "rounds": rounds},
        "model": {"copy_concurrency": conc, "seconds_per_object": round(spo, 5),
                  "objects_per_second_per_destination": round(obj_rate, 1),
                  "bytes_per_second_per_destination": round(byte_rate, 1),
                  "metadata_rows_per_second": round(md_rate, 1), "parallel_destinations": active,
                  "aggregate_objects_per_second": agg_o, "aggregate_bytes_per_second": agg_b,
                  "shared_cpus": shared_cpus,
                  "round_overhead_seconds": m["round_overhead_seconds"],
                  "run_overhead_seconds": m["run_overhead_seconds"],
                  "rotation_lag": rotation_lag, "read_only_wait": round(wait, 1),
                  "seconds_per_task": round(seconds_per_task, 3) if seconds_per_task else None,
                  "sources": m.get("rate_source", "defaults")},
        "per_destination_seconds": {d: round(t, 2) for d, t in dest_times.items()},
    }


def measured_from_rounds(rounds):
    """Rates seen in earlier rounds of a job: per-object seconds and bytes/s per
    destination stream, metadata rows/s, and round overhead."""
    objs = secs = nbytes = 0.0
    conc = []
    md_rows = md_secs = 0.0
    overheads = []
    for r in rounds or []:
        for st in (r.get("copy") or {}).values():
            if not isinstance(st, dict):
                continue
            o = (st.get("by_status") or {}).get("copied", 0)
            s = st.get("seconds") or 0
            if o and s:
                objs += o
                secs += s
                nbytes += st.get("bytes_fetched") or 0
                conc.append(st.get("concurrency") or 1)
        md = r.get("metadata") or {}
        for sh in (md.get("shards") or {}).values():
            md_rows += sh.get("rows") or 0
            md_secs += sh.get("seconds") or 0
        if md.get("round_seconds") and md.get("busy_seconds") is not None:
            overheads.append(max(0.0, md["round_seconds"] - md["busy_seconds"]))
    out = {}
    if objs and secs:
        c = sum(conc) / len(conc)
        out["seconds_per_object"] = secs * c / objs
        out["write_overhead_per_object"] = 0.0
        if nbytes:
            out["bytes_per_second"] = nbytes / secs
        out["rate_source"] = "earlier rounds"
    if md_rows and md_secs:
        out["metadata_rows_per_second"] = md_rows / md_secs
    if overheads:
        out["round_overhead_seconds"] = sum(overheads) / len(overheads)
    return out
