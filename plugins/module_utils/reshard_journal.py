# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""The reshard journal: one JSON document per plan, kept in ZooKeeper.

Layout::

    /manta_ops/reshard/plans/<plan id>     the plan document (compact JSON)

The document (``v: 1``)::

    {"v": 1, "plan": "<uuid>", "created": ISO, "updated": ISO,
     "state": "active" | "completed" | "aborted",
     "shard": "1.moray.<domain>", "new_shard": "3.moray.<domain>",
     "inputs": {"vnodes": "<ranges>" | {"z": "<zlib+base64 ranges>"}, "vnode_count": n,
                "servers": [...], "split": ..., ...},
     "phase": "<phase running or due next>" | null,
     "phases": {"<name>": {"start": ISO, "start_ts": float, "end": ISO, "end_ts": float,
                            "runs": n, "status": "running" | "done"}},
     "props": {...},            # what later phases need (peers, ring images, swaps...)
     "events": [{"t": ISO, "what": "..."}]}     # the last EVENTS_MAX notes

Every write is a compare-and-swap on the znode version (re-read and re-apply
on BadVersion), so two writers can never lose each other's changes. Readers
never write; check mode only reads.

The pure functions (``new_plan``, ``phase_start``, ``phase_end``,
``summary``, ``render_text``) carry no ZooKeeper dependency and are unit tested.
"""
from __future__ import annotations

import base64
import copy
import datetime
import json
import time
import zlib

from ansible_collections.manta.ops.plugins.module_utils.zk import (
    BadVersionError, NodeExistsError, NoNodeError)

ROOT = "/manta_ops/reshard"
PLANS = ROOT + "/plans"
VERSION = 1
EVENTS_MAX = 200
CAS_ATTEMPTS = 25
STATES = ("active", "completed", "aborted")

# The phases of a reshard, in order, with what each does and where it comes
# from (reference/reshard.md section 1 numbers, RFD 103 steps).
PHASES = [
    ("validate", "check every input, the APIs, the PostgreSQL versions and the locks (§1 phase 1)"),
    ("critical_section_enter", "take the reshard lock: one plan at a time (§1 phase 5)"),
    ("freeze_cluster", "freeze the old cluster with reason 'reshard plan <id>' (§1 phase 2)"),
    ("pg_dump_lock", "take the shared /pg_dump_lock and wait for running dumps (RFD 103 steps 5-6)"),
    ("create_sentinel_bucket", "sentinel table on the old shard and canary objects through electric-moray "
                               "(§1 phase 3, RFD 103 step 2)"),
    ("create_manatee_peers", "new peers as asyncs of the old cluster, copy with progress and ETA, "
                             "sentinel read on each (§1 phase 4)"),
    ("create_morays", "morays of the new shard, before any write is blocked (§1 phase 12, RFD 103 note)"),
    ("build_rings", "transitional ring (ro on moving vnodes) and final ring (moving vnodes on the new "
                    "pnode), uploaded to IMGAPI (§1 phase 6)"),
    ("stage_rings", "both rings downloaded and verified next to every electric-moray ring (§3.4 download)"),
    ("block_writes", "transitional ring on every electric-moray, rolling: writes to moving vnodes blocked "
                     "(replaces §1 phases 7-8)"),
    ("detach_peers", "sentinel flushed to every new peer, sitters disabled tail first (§1 phase 9)"),
    ("establish_cluster", "the new cluster's first state, frozen, written before its sitters restart "
                          "(§1 phase 11, manatee.md §5.4)"),
    ("reconfigure_peers", "SAPI metadata and alias, VMAPI alias, reprovision of the new peers (§1 phase 10)"),
    ("verify_new_shard", "new cluster healthy, sentinel through the new moray read on the new async "
                         "(§1 phases 11-12)"),
    ("install_ring", "new shard in INDEX_MORAY_SHARDS, HASH_RING_IMAGE compare-and-swap, final ring on "
                     "every electric-moray, rolling (§1 phases 13-16)"),
    ("verify_canaries", "canary objects read and written through electric-moray on the new shard "
                        "(RFD 103 step 9)"),
    ("sapi_cleanup", "plan tags removed from the new peers and morays (§1 phase 17)"),
    ("critical_section_exit", "release the reshard lock (§1 phase 18)"),
    ("delete_data", "rows each shard no longer owns deleted, throttled and verified (§1 phase 19, §4)"),
    ("unfreeze_cluster", "unfreeze only the freezes this plan set (§1 phase 20)"),
    ("pg_dump_unlock", "release this plan's hold on /pg_dump_lock (RFD 103 step 11)"),
    ("final_verify", "canaries through electric-moray, every moved row on exactly one shard, report"),
]
PHASE_NAMES = [p for p, dummy in PHASES]
PHASE_DOC = dict(PHASES)
# The phases that run while writes to the moving vnodes are blocked.
WINDOW_PHASES = ["block_writes", "detach_peers", "establish_cluster", "reconfigure_peers",
                 "verify_new_shard", "install_ring"]


class JournalError(Exception):
    """The journal could not be read or written as asked."""


# ---- time --------------------------------------------------------------------------

def now_iso(ts=None):
    ts = time.time() if ts is None else ts
    d = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def parse_iso(text):
    if not text:
        return None
    try:
        d = datetime.datetime.strptime(text.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        try:
            d = datetime.datetime.strptime(text.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S%z")
        except ValueError:
            return None
    return d.timestamp()


def fmt_duration(seconds):
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s"


# ---- vnode lists ---------------------------------------------------------------------

def ranges_text(vnodes):
    """Sorted unique ints -> ``"0-3,7,9-10"``."""
    vs = sorted(set(int(v) for v in vnodes))
    out = []
    i = 0
    while i < len(vs):
        j = i
        while j + 1 < len(vs) and vs[j + 1] == vs[j] + 1:
            j += 1
        out.append(str(vs[i]) if i == j else f"{vs[i]}-{vs[j]}")
        i = j + 1
    return ",".join(out)


def parse_ranges(text):
    out = []
    for part in str(text or "").replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part[1:]:
            a, b = part.split("-", 1) if not part.startswith("-") else (part, part)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def pack_vnodes(vnodes, limit=20000):
    """A compact, ZooKeeper-sized form of a vnode list: ranges text, or (when long) a
    zlib-compressed bitmap, base64 (500,000 alternate vnodes of a 1M ring take a few hundred bytes)."""
    text = ranges_text(vnodes)
    if len(text) <= limit:
        return text
    vs = sorted(set(int(v) for v in vnodes))
    n = vs[-1] + 1
    bits = bytearray((n + 7) // 8)
    for v in vs:
        bits[v >> 3] |= 1 << (v & 7)
    return {"bitmap": base64.b64encode(zlib.compress(bytes(bits), 9)).decode(), "n": n, "count": len(vs)}


def unpack_vnodes(packed):
    if packed is None:
        return []
    if isinstance(packed, list):
        return sorted(int(v) for v in packed)
    if isinstance(packed, dict):
        if "bitmap" in packed:
            bits = zlib.decompress(base64.b64decode(packed["bitmap"]))
            return [i for i in range(int(packed["n"])) if bits[i >> 3] >> (i & 7) & 1]
        return parse_ranges(zlib.decompress(base64.b64decode(packed["z"])).decode())
    return parse_ranges(packed)


# ---- the document (pure) ----------------------------------------------------------------

def new_plan(plan_id, shard, new_shard, inputs, now=None):
    t = now if now is not None else time.time()
    return {
        "v": VERSION, "plan": plan_id, "created": now_iso(t), "updated": now_iso(t),
        "state": "active", "shard": shard, "new_shard": new_shard,
        "inputs": copy.deepcopy(inputs or {}), "phase": PHASE_NAMES[0],
        "phases": {}, "props": {}, "events": [{"t": now_iso(t), "what": "plan created"}],
    }


def _event(doc, what, t):
    doc.setdefault("events", []).append({"t": now_iso(t), "what": what})
    if len(doc["events"]) > EVENTS_MAX:
        doc["events"] = doc["events"][-EVENTS_MAX:]


def check_phase(phase):
    if phase not in PHASE_DOC:
        raise JournalError(f"unknown phase {phase!r}; the phases are: {', '.join(PHASE_NAMES)}")
    return phase


def phase_start(doc, phase, now=None):
    """Mark ``phase`` running (a re-run after a crash counts one more run)."""
    check_phase(phase)
    t = now if now is not None else time.time()
    ph = doc.setdefault("phases", {}).setdefault(phase, {})
    if ph.get("status") == "done":
        return doc
    if not ph.get("start"):
        ph["start"] = now_iso(t)
        ph["start_ts"] = t
    ph["runs"] = int(ph.get("runs") or 0) + 1
    ph["last_run"] = now_iso(t)
    ph["status"] = "running"
    doc["phase"] = phase
    doc.pop("paused_before", None)
    _event(doc, f"{phase}: started" + (f" (run {ph['runs']})" if ph["runs"] > 1 else ""), t)
    return doc


def phase_end(doc, phase, now=None, props=None, note=None):
    check_phase(phase)
    t = now if now is not None else time.time()
    ph = doc.setdefault("phases", {}).setdefault(phase, {})
    if not ph.get("start"):
        ph["start"] = now_iso(t)
        ph["start_ts"] = t
        ph["runs"] = int(ph.get("runs") or 0) + 1
    if ph.get("status") != "done":
        ph["end"] = now_iso(t)
        ph["end_ts"] = t
        ph["status"] = "done"
        if note:
            ph["note"] = note
        _event(doc, f"{phase}: done" + (f" ({note})" if note else ""), t)
    if props:
        doc.setdefault("props", {}).update(copy.deepcopy(props))
    i = PHASE_NAMES.index(phase)
    nxt = next((p for p in PHASE_NAMES[i + 1:] if doc["phases"].get(p, {}).get("status") != "done"),
               None)
    doc["phase"] = nxt
    if nxt is None:
        doc["state"] = "completed"
        doc["completed"] = now_iso(t)
    return doc


def done_phases(doc):
    return [p for p in PHASE_NAMES if (doc or {}).get("phases", {}).get(p, {}).get("status") == "done"]


def window(doc):
    """The measured write-blocked window: from the first electric-moray serving the
    transitional ring to the last one serving the final ring (swap records in props)."""
    props = (doc or {}).get("props") or {}
    swaps = props.get("em_swaps") or {}
    t_first = [(s.get("transitional") or {}).get("serving_ts") for s in swaps.values()]
    t_first = [t for t in t_first if t]
    f_last = [(s.get("final") or {}).get("serving_ts") for s in swaps.values()]
    f_last = [t for t in f_last if t]
    ems = props.get("electric_morays") or list(swaps)
    out = {"start": None, "end": None, "seconds": None, "open": False,
           "electric_morays": len(ems)}
    if t_first:
        out["start_ts"] = min(t_first)
        out["start"] = now_iso(out["start_ts"])
    all_final = bool(ems) and all(((swaps.get(e) or {}).get("final") or {}).get("serving_ts")
                                  for e in ems)
    if f_last and all_final:
        out["end_ts"] = max(f_last)
        out["end"] = now_iso(out["end_ts"])
    if out.get("start_ts") and out.get("end_ts"):
        out["seconds"] = round(out["end_ts"] - out["start_ts"], 3)
    elif out.get("start_ts"):
        out["open"] = True
        out["seconds_so_far"] = round(time.time() - out["start_ts"], 3)
    return out


def summary(doc, now=None):
    """A JSON-able status of a plan: phases with durations, current phase, window."""
    t = now if now is not None else time.time()
    rows = []
    for i, (name, what) in enumerate(PHASES, 1):
        ph = (doc.get("phases") or {}).get(name) or {}
        st = ph.get("status") or ("pending" if doc.get("state") == "active" else "not run")
        dur = None
        if ph.get("start_ts") is not None and ph.get("end_ts") is not None:
            dur = ph["end_ts"] - ph["start_ts"]
        elif ph.get("start_ts") is not None and st == "running":
            dur = t - ph["start_ts"]
        rows.append({"n": i, "phase": name, "status": st, "start": ph.get("start"),
                     "end": ph.get("end"), "seconds": round(dur, 3) if dur is not None else None,
                     "runs": ph.get("runs", 0), "window": name in WINDOW_PHASES,
                     "note": ph.get("note"), "what": what})
    created = parse_iso(doc.get("created"))
    end = parse_iso(doc.get("completed")) if doc.get("completed") else None
    return {
        "plan": doc.get("plan"), "state": doc.get("state"), "shard": doc.get("shard"),
        "new_shard": doc.get("new_shard"), "phase": doc.get("phase"),
        "phase_number": PHASE_NAMES.index(doc["phase"]) + 1 if doc.get("phase") in PHASE_DOC else None,
        "phase_count": len(PHASES), "paused_before": doc.get("paused_before"),
        "created": doc.get("created"), "completed": doc.get("completed"), "aborted": doc.get("aborted"),
        "elapsed_seconds": round((end or t) - created, 3) if created else None,
        "phases": rows, "window": window(doc),
        "vnodes_moving": len(unpack_vnodes((doc.get("inputs") or {}).get("vnodes"))),
        "progress": (doc.get("props") or {}).get("progress"),
        "last_events": (doc.get("events") or [])[-8:],
    }


def render_text(summ, locks=None):
    """The human status: RFD 103 "Outputs" (phases, current phase, locks, time per phase, window)."""
    lines = [f"plan {summ['plan']}  {summ['shard']} -> {summ['new_shard']}  "
             f"state {summ['state']}  vnodes moving {summ['vnodes_moving']}"]
    if summ.get("state") == "aborted":
        lines.append(f"aborted {summ.get('aborted') or ''} before phase {summ.get('phase') or '?'} "
                     f"({summ.get('phase_number') or '?'}/{summ['phase_count']}); rolled back by reshard_abort.yml")
    elif summ.get("phase"):
        lines.append(f"current phase: {summ['phase']} ({summ['phase_number']}/{summ['phase_count']})"
                     + ("  [paused before it]" if summ.get("paused_before") else ""))
    elif summ.get("state") == "completed":
        lines.append(f"completed {summ.get('completed')} in {fmt_duration(summ.get('elapsed_seconds'))}")
    w = summ["window"]
    if w.get("seconds") is not None:
        lines.append(f"write-blocked window (moving vnodes only): {w['seconds']:.2f}s "
                     f"({w['start']} -> {w['end']})")
    elif w.get("open"):
        lines.append(f"write-blocked window OPEN since {w['start']} "
                     f"({fmt_duration(w.get('seconds_so_far'))} so far)")
    for lk in locks or []:
        lines.append(f"lock {lk.get('path')}: " + (", ".join(
            h.get("owner", "?") for h in lk.get("holders") or []) or "free"))
    lines.append(f"{'#':>2}  {'phase':<24} {'status':<8} {'time':>9}  runs")
    for r in summ["phases"]:
        mark = "*" if r["window"] else " "
        lines.append(f"{r['n']:>2}{mark} {r['phase']:<24} {r['status']:<8} "
                     f"{fmt_duration(r['seconds']):>9}  {r['runs'] or ''}")
    lines.append("(* = inside the write-blocked window for the moving vnodes)")
    prog = summ.get("progress")
    if prog and summ.get("state") == "active":
        lines.append(f"progress: {prog.get('text') if isinstance(prog, dict) else prog}")
    return "\n".join(lines)


# ---- ZooKeeper I/O ------------------------------------------------------------------------

def plan_path(plan_id):
    if not isinstance(plan_id, str) or not plan_id or "/" in plan_id:
        raise JournalError(f"plan id {plan_id!r} is not valid (expected a uuid)")
    return f"{PLANS}/{plan_id}"


def decode(raw, where):
    try:
        doc = json.loads(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw)
    except ValueError as exc:
        raise JournalError(f"{where} is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise JournalError(f"{where} is not a v{VERSION} reshard journal document")
    return doc


def encode(doc):
    doc["updated"] = now_iso()
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def load(zk, plan_id):
    """(doc, version) or (None, None)."""
    path = plan_path(plan_id)
    raw, stat = zk.get_or_none(path)
    if raw is None:
        return None, None
    return decode(raw, path), stat.version


def list_plans(zk):
    out = []
    for name in sorted(zk.children(PLANS)):
        try:
            doc, dummy = load(zk, name)
        except JournalError:
            continue
        if doc:
            out.append(doc)
    return out


def find_active(zk, shard=None, new_shard=None):
    """Active plans touching ``shard`` or ``new_shard`` (as old or new shard)."""
    names = {n for n in (shard, new_shard) if n}
    out = []
    for doc in list_plans(zk):
        if doc.get("state") != "active":
            continue
        if not names or names & {doc.get("shard"), doc.get("new_shard")}:
            out.append(doc)
    return out


def create(zk, doc):
    path = plan_path(doc["plan"])
    zk.ensure_path(PLANS)
    try:
        zk.create(path, encode(doc))
    except NodeExistsError:
        raise JournalError(f"plan {doc['plan']} already exists at {path}") from None
    return load(zk, doc["plan"])


def update(zk, plan_id, mutate):
    """Compare-and-swap ``mutate(doc_copy) -> doc`` into the plan's znode. Returns the new doc."""
    path = plan_path(plan_id)
    for dummy in range(CAS_ATTEMPTS):
        raw, stat = zk.get_or_none(path)
        if raw is None:
            raise JournalError(f"no reshard plan {plan_id} (expected znode {path})")
        doc = decode(raw, path)
        new = mutate(copy.deepcopy(doc))
        if new is None or new == doc:
            return doc
        try:
            # a retried set after a lost connection may find its own write: BadVersion, re-read, no-op
            zk.set(path, encode(new), version=stat.version)
        except BadVersionError:
            time.sleep(0.02)
            continue
        except NoNodeError:
            raise JournalError(f"plan {plan_id} was deleted while being updated") from None
        return new
    raise JournalError(f"plan {plan_id}: lost {CAS_ATTEMPTS} compare-and-swap races on {path}")


class Journal:
    """Convenience wrapper used by the phase modules: start/end/props in one call each."""

    def __init__(self, zk, plan_id, check_mode=False):
        self.zk = zk
        self.plan = plan_id
        self.check_mode = check_mode
        self.doc, dummy = load(zk, plan_id) if plan_id else (None, None)

    @property
    def props(self):
        return (self.doc or {}).get("props") or {}

    def done(self, phase):
        return ((self.doc or {}).get("phases") or {}).get(phase, {}).get("status") == "done"

    def _apply(self, fn):
        if self.check_mode or not self.plan:
            self.doc = fn(copy.deepcopy(self.doc)) if self.doc else self.doc
            return self.doc
        self.doc = update(self.zk, self.plan, fn)
        return self.doc

    def start(self, phase):
        return self._apply(lambda d: phase_start(d, phase))

    def end(self, phase, props=None, note=None):
        return self._apply(lambda d: phase_end(d, phase, props=props, note=note))

    def set_props(self, props, event=None):
        def fn(d):
            d.setdefault("props", {}).update(copy.deepcopy(props))
            if event:
                _event(d, event, time.time())
            return d
        return self._apply(fn)

    def merge_prop(self, key, sub, value):
        """props[key][sub] = value (for per-item records such as em_swaps)."""
        def fn(d):
            d.setdefault("props", {}).setdefault(key, {})[sub] = copy.deepcopy(value)
            return d
        return self._apply(fn)

    def event(self, what):
        return self._apply(lambda d: (_event(d, what, time.time()), d)[1])
