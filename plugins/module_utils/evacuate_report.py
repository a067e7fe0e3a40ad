# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Progress of an evacuation job, as data, as text and as Prometheus metrics.

Per evacuated node: objects and bytes done, skipped, in error, remaining
(pending + assigned + copied); the rate over the last ``rate_window`` seconds
(objects/s, bytes/s, from the ``done_at`` of each object, so it is the rate at
which metadata really moved); the ETA (remaining / rate, the larger of the
object and byte estimates); skip and error counts by reason with example keys.

The metrics file is the Prometheus text exposition format, written
atomically (temporary file + rename) so that node_exporter's textfile
collector never reads half a file.
"""
from __future__ import annotations

import os
import time

OPEN = ("pending", "assigned", "copied")


def progress(store, job, rate_window=600.0, examples=3):
    j = store.get_job(job)
    if j is None:
        return None
    counts = store.counts(job)
    reasons = store.reasons(job, examples=examples)
    rates = store.recent_rates(job, rate_window)
    nodes = {}
    node_list = [n.get("storage_id") for n in j.get("nodes") or []]
    for n in sorted(set(node_list) | set(counts)):
        c = counts.get(n, {})

        def g(*sts):
            return [sum(c.get(s, [0, 0])[0] for s in sts), sum(c.get(s, [0, 0])[1] for s in sts)]
        done, skipped, error, remaining = g("done"), g("skipped"), g("error"), g(*OPEN)
        total = g(*c.keys()) if c else [0, 0]
        r = rates.get(n)
        ops = bps = None
        if r and r[2] > 0:
            ops = r[0] / max(r[2], 1.0)
            bps = r[1] / max(r[2], 1.0)
        eta = None
        if remaining[0] == 0:
            eta = 0
        elif ops:
            eta = remaining[0] / ops
            if bps and remaining[1]:
                eta = max(eta, remaining[1] / bps)
        nodes[n] = {
            "objects": {"total": total[0], "done": done[0], "skipped": skipped[0],
                        "error": error[0], "remaining": remaining[0],
                        **{s: c.get(s, [0, 0])[0] for s in OPEN}},
            "bytes": {"total": total[1], "done": done[1], "skipped": skipped[1],
                      "error": error[1], "remaining": remaining[1]},
            "rate": {"objects_per_second": round(ops, 2) if ops else 0.0,
                     "bytes_per_second": round(bps, 1) if bps else 0.0,
                     "window_seconds": rate_window},
            "eta_seconds": round(eta, 1) if eta is not None else None,
            "percent_done": round(100.0 * done[0] / total[0], 2) if total[0] else 100.0,
        }
    tot = {k: sum(v["objects"][k] for v in nodes.values())
           for k in ("total", "done", "skipped", "error", "remaining")}
    totb = {k: sum(v["bytes"][k] for v in nodes.values())
            for k in ("total", "done", "skipped", "error", "remaining")}
    etas = [v["eta_seconds"] for v in nodes.values()]
    eta = None if any(e is None for e in etas) else max(etas or [0])
    rounds = store.rounds(job, limit=5)
    return {
        "job": job, "state": j["state"], "pause_reason": j.get("pause_reason"),
        "throttle": j.get("throttle") or {}, "options": j.get("options") or {},
        "created_at": j.get("created_at"), "started_at": j.get("started_at"),
        "finished_at": j.get("finished_at"), "verified_at": j.get("verified_at"),
        "scan_pass": j.get("scan_pass"), "runs": j.get("runs"),
        "nodes": nodes, "objects": tot, "bytes": totb, "eta_seconds": eta,
        "rate": {"objects_per_second": round(sum(v["rate"]["objects_per_second"]
                                                 for v in nodes.values()), 2),
                 "bytes_per_second": round(sum(v["rate"]["bytes_per_second"]
                                               for v in nodes.values()), 1)},
        "reasons": reasons,
        "last_rounds": [{"round": r["round"], "started_at": r.get("started_at"),
                         "finished_at": r.get("finished_at"),
                         "planned": (r.get("planned") or {}).get("assigned"),
                         "metadata": r.get("metadata")} for r in rounds],
    }


def human_bytes(n):
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} PiB"


def human_seconds(s):
    if s is None:
        return "unknown"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def render(p):
    """The status table operators read (one line per node, then reasons)."""
    if p is None:
        return ["no such job"]
    lines = [f"job {p['job']}: {p['state']}"
             + (f" (paused: {p['pause_reason']})" if p["state"] == "paused" else "")
             + f", {p['objects']['done']}/{p['objects']['total']} objects done, "
               f"{human_bytes(p['bytes']['done'])}/{human_bytes(p['bytes']['total'])}, "
               f"ETA {human_seconds(p['eta_seconds'])}"]
    lines.append(f"{'node':<34} {'done':>9} {'skipped':>8} {'error':>6} {'remaining':>9} "
                 f"{'bytes done':>11} {'bytes left':>11} {'obj/s':>8} {'B/s':>10} {'ETA':>8}")
    for n, v in sorted(p["nodes"].items()):
        o, b, r = v["objects"], v["bytes"], v["rate"]
        lines.append(f"{n:<34} {o['done']:>9} {o['skipped']:>8} {o['error']:>6} "
                     f"{o['remaining']:>9} {human_bytes(b['done']):>11} "
                     f"{human_bytes(b['remaining']):>11} {r['objects_per_second']:>8} "
                     f"{human_bytes(r['bytes_per_second']) + '/s':>10} "
                     f"{human_seconds(v['eta_seconds']):>8}")
    for r in p["reasons"]:
        lines.append(f"  {r['node']}: {r['status']} {r['reason']}: {r['objects']} objects, "
                     f"{human_bytes(r['bytes'])}; e.g. {', '.join(r['examples'])}"
                     + (f" ({r['detail']})" if r.get("detail") else ""))
    t = p.get("throttle") or {}
    if t:
        lines.append("  throttles: " + ", ".join(f"{k}={v}" for k, v in sorted(t.items())))
    return lines


def _esc(v):
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus(progs, now=None):
    """Text exposition (version 0.0.4) of one progress dict or a list of them
    (one HELP/TYPE block per metric, samples of every job under it)."""
    now = time.time() if now is None else now
    if isinstance(progs, dict):
        progs = [progs]
    progs = [p for p in progs if p]
    metrics = {}
    order = []

    def metric(name, help_, typ, samples):
        if name not in metrics:
            metrics[name] = (help_, typ, [])
            order.append(name)
        metrics[name][2].extend(samples)

    statuses = ("done", "skipped", "error", "pending", "assigned", "copied")
    for p in progs:
        job = p["job"]
        nodes = sorted(p["nodes"].items())
        metric("manta_evacuate_objects", "Object copies of the job by evacuated node and status.",
               "gauge", [({"job": job, "node": n, "status": s}, v["objects"].get(s, 0))
                         for n, v in nodes for s in statuses])
        metric("manta_evacuate_bytes", "Bytes of the job by evacuated node and status "
               "(remaining = pending + assigned + copied).", "gauge",
               [({"job": job, "node": n, "status": s}, v["bytes"].get(s, 0))
                for n, v in nodes for s in ("done", "skipped", "error", "remaining")])
        metric("manta_evacuate_objects_per_second", "Objects whose metadata moved per second "
               "(recent window).", "gauge",
               [({"job": job, "node": n}, v["rate"]["objects_per_second"]) for n, v in nodes])
        metric("manta_evacuate_bytes_per_second", "Bytes moved per second (recent window).",
               "gauge", [({"job": job, "node": n}, v["rate"]["bytes_per_second"]) for n, v in nodes])
        metric("manta_evacuate_eta_seconds", "Estimated seconds left at the recent rate "
               "(-1: unknown).", "gauge",
               [({"job": job, "node": n}, v["eta_seconds"] if v["eta_seconds"] is not None else -1)
                for n, v in nodes])
        metric("manta_evacuate_reason_objects", "Skipped and errored objects by reason.", "gauge",
               [({"job": job, "node": r["node"], "status": r["status"], "reason": r["reason"]},
                 r["objects"]) for r in p["reasons"]])
        metric("manta_evacuate_paused", "1 while the job is paused.", "gauge",
               [({"job": job}, 1 if p["state"] == "paused" else 0)])
        metric("manta_evacuate_complete", "1 once every copy is done or accounted for and a "
               "verification scan found nothing left.", "gauge",
               [({"job": job}, 1 if p["state"] == "complete" else 0)])
        metric("manta_evacuate_throttle", "Current throttles (0: unlimited).", "gauge",
               [({"job": job, "name": k},
                 v if isinstance(v, (int, float)) and not isinstance(v, bool) else 0)
                for k, v in sorted((p.get("throttle") or {}).items())])
        last = [r for r in p.get("last_rounds") or [] if r.get("metadata")]
        md = (last[0]["metadata"] or {}) if last else {}
        metric("manta_evacuate_metadata_updates_per_second",
               "Metadata updates per second per shard in the last round.", "gauge",
               [({"job": job, "shard": sh}, v.get("rows_per_second", 0))
                for sh, v in sorted((md.get("shards") or {}).items())])
        metric("manta_evacuate_last_update_timestamp_seconds", "When these figures were computed.",
               "gauge", [({"job": job}, round(now, 3))])
    out = []
    for name in order:
        help_, typ, samples = metrics[name]
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {typ}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{lab}}} {value}")
    return "\n".join(out) + "\n" if out else ""


def write_textfile(path, text, check_mode=False):
    """Write atomically; True when the content changed (or would)."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            old = fh.read()
    except OSError:
        old = None

    def strip(t):
        return "\n".join(l for l in (t or "").splitlines()
                         if not l.startswith("manta_evacuate_last_update_timestamp_seconds"))
    changed = old is None or strip(old) != strip(text)
    if check_mode:
        return changed
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return changed
