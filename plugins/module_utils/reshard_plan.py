# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Plan a reshard: gather the facts, validate every input, choose the vnodes, estimate.

``gather(ctx)`` reads (never writes) SAPI, VMAPI, IMGAPI (the current ring),
ZooKeeper (states, locks, the journal) and PostgreSQL (versions, census).
``validate(inputs, facts)`` is pure: it returns the errors (each naming the
input and what would be valid), the warnings and the derived plan values.
``rehearsal(...)`` builds the check-mode report: what moves, rows and bytes,
the ring diff, every SAPI change, what gets created, and the estimates.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import time
import uuid as uuidlib

from ansible_collections.manta.ops.plugins.module_utils import reshard_common as rc
from ansible_collections.manta.ops.plugins.module_utils import reshard_journal as rj
from ansible_collections.manta.ops.plugins.module_utils import reshard_rows as rr
from ansible_collections.manta.ops.plugins.module_utils.reshard_ring import batch_size

DEFAULT_RATES = {
    # used only when no completed plan in the journal gives measured figures
    "copy_bytes_per_s": 50 * 1024 * 1024,   # base backup / zfs restore
    "peer_overhead_s": 3.0,                 # provisioning a peer zone
    "em_restart_s": 2.5,                    # one electric-moray stop + start
    "detach_s": 0.6,                        # one sitter disable + leave
    "reprovision_s": 2.5,                   # the three reprovisions, in parallel
    "establish_s": 2.0,                     # new cluster up and writable
    "delete_query_s": 0.01,                 # one delete batch, server side
}


# ---- ring image -------------------------------------------------------------------------

def extract_ring(tarball, dest):
    """Extract the archive member ``hash_ring/`` (files only) into ``dest``."""
    os.makedirs(dest, exist_ok=True)
    n = 0
    with tarfile.open(tarball, "r:*") as tf:
        for m in tf.getmembers():
            parts = m.name.lstrip("./").split("/")
            if len(parts) != 2 or parts[0] != "hash_ring" or not parts[1] or not m.isfile():
                continue
            if parts[1] in (".", ".."):
                continue
            src = tf.extractfile(m)
            with open(os.path.join(dest, parts[1]), "wb") as out:
                shutil.copyfileobj(src, out)
            n += 1
    if n == 0:
        raise rc.ReshardError(f"{tarball}: the image has no hash_ring/ directory")
    return dest


def load_ring_image(imgapi, image_uuid, workdir):
    """Download a ring image and read its topology. Returns (Topology, stamp or None)."""
    from ansible_collections.manta.ops.plugins.module_utils.fash import read_topology
    # scratch under workdir when it exists, else the system temp dir (check mode creates nothing)
    tmp = tempfile.mkdtemp(prefix="manta-reshard-ring-",
                           dir=workdir if workdir and os.path.isdir(workdir) else None)
    try:
        tgz = os.path.join(tmp, "ring.tar.gz")
        imgapi.download_file(image_uuid, tgz)
        d = extract_ring(tgz, os.path.join(tmp, "hash_ring"))
        stamp = None
        sp = os.path.join(d, "manta_hash_ring_stamp.json")
        if os.path.exists(sp):
            import json
            try:
                with open(sp) as fh:
                    stamp = json.load(fh)
            except ValueError:
                stamp = None
        return read_topology(d, snapshot=False), stamp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- validation (pure) -------------------------------------------------------------------

def parse_vnodes_input(raw):
    """The ``vnodes`` input: list of ints/strings or "1,2,5-9"; returns (list, error)."""
    from ansible_collections.manta.ops.plugins.module_utils.fash.vnodes import parse_vnodes
    from ansible_collections.manta.ops.plugins.module_utils.fash.errors import RingInputError
    if raw is None or raw == "" or raw == []:
        return None, None
    try:
        return parse_vnodes(raw if not isinstance(raw, (list, tuple)) else list(raw)), None
    except RingInputError as exc:
        return None, f"vnodes: {exc}"


def check_servers(servers, known, count=3):
    """(resolved servers, errors). ``servers``: uuids or hostnames; ``known``: manta_servers."""
    errors = []
    by = {}
    for s in known or []:
        by[s.get("uuid")] = s
        if s.get("hostname"):
            by[s["hostname"]] = s
    out = []
    for item in servers or []:
        s = by.get(item)
        if s is None:
            errors.append(f"servers: {item!r} is not a known compute node; valid: "
                          + ", ".join(f"{x.get('uuid')} ({x.get('hostname')}, {x.get('datacenter')})"
                                      for x in known or []))
            continue
        out.append(s)
    if errors:
        return out, errors
    if len(out) != count:
        errors.append(f"servers: {len(out)} given; a new shard needs exactly {count} servers, one per "
                      "new peer (primary, sync, async)")
    uuids = [s["uuid"] for s in out]
    if len(set(uuids)) != len(uuids):
        errors.append(f"servers: {', '.join(uuids)} repeats a server; each new peer needs its own server")
    dcs = sorted({s.get("datacenter") for s in out})
    if out and len(dcs) not in (1, 3):
        errors.append(f"servers: the servers span {len(dcs)} datacenters ({', '.join(map(str, dcs))}); "
                      "use 1 datacenter, or 3 (one peer in each)")
    return out, errors


def auto_servers(known, avoid=(), count=3):
    """Three servers: one per datacenter when there are 3 or more datacenters, else
    the least-used servers of one datacenter; servers in ``avoid`` go last."""
    known = list(known or [])
    dcs = []
    for s in known:
        if s.get("datacenter") not in dcs:
            dcs.append(s.get("datacenter"))
    rank = {u: i for i, u in enumerate(avoid)}

    def key(s):
        return (s["uuid"] in rank, s.get("hostname") or s["uuid"])
    if len(dcs) >= count:
        out = []
        for dc in dcs[:count]:
            out.append(sorted([s for s in known if s.get("datacenter") == dc], key=key)[0])
        return out
    for dc in dcs:
        cands = sorted([s for s in known if s.get("datacenter") == dc], key=key)
        if len(cands) >= count:
            return cands[:count]
    return sorted(known, key=key)[:count]


def validate(inputs, facts):
    """(errors, warnings, derived). Pure."""
    errors, warnings = list(facts.get("errors") or []), list(facts.get("warnings") or [])
    d = {}
    domain = facts.get("domain")
    shard = inputs.get("shard")
    new_shard = inputs.get("new_shard")
    resume = facts.get("resume")            # the active plan for this shard pair, if any
    index_hosts = facts.get("index_hosts") or []

    if not shard:
        errors.append("shard is required: the full name of the shard to split, e.g. 1.moray.%s" % domain)
    elif shard not in index_hosts:
        errors.append(f"shard {shard!r} is not in INDEX_MORAY_SHARDS; valid: {', '.join(index_hosts)}")
    if new_shard and shard and new_shard == shard:
        errors.append(f"new_shard {new_shard!r} is the shard being split; name a new shard")
    name_problem = rc.check_new_shard_name(new_shard, domain)
    if name_problem:
        errors.append(name_problem)
    elif not resume:
        used = facts.get("new_shard_uses") or []
        if used:
            errors.append(f"new_shard {new_shard!r} is already in use: " + "; ".join(used))
    if inputs.get("split") not in (None, "", "none", "balanced"):
        errors.append(f"split {inputs.get('split')!r} is not valid; use split=balanced (choose the vnodes "
                      "from a census of rows) or give vnodes=...")
    pb = inputs.get("pause_before")
    if pb and pb not in rj.PHASE_DOC:
        errors.append(f"pause_before {pb!r} is not a phase; valid: {', '.join(rj.PHASE_NAMES)}")

    # -- which vnodes move
    topo_vnodes = facts.get("shard_vnodes")           # vnodes the shard owns in the current ring
    vcount = facts.get("vnode_count")
    vn, verr = parse_vnodes_input(inputs.get("vnodes"))
    if verr:
        errors.append(verr)
    split = inputs.get("split") or "none"
    if resume:
        planned = rj.unpack_vnodes((resume.get("inputs") or {}).get("vnodes"))
        if vn is not None and sorted(vn) != planned:
            errors.append(f"vnodes: plan {resume['plan']} for {shard} -> {new_shard} is in progress with "
                          f"{len(planned)} vnodes ({rj.ranges_text(planned)[:200]}); re-run with the same "
                          "vnodes (or none) to resume it, or abort it first")
        d["vnodes"] = planned
    elif vn is not None and split == "balanced":
        errors.append("vnodes and split=balanced are mutually exclusive: give one of them")
    elif vn is not None:
        if topo_vnodes is not None:
            own = set(topo_vnodes)
            bad_range = [v for v in vn if vcount is not None and not 0 <= v < vcount]
            if bad_range:
                errors.append(f"vnodes: {rj.ranges_text(bad_range)[:200]} out of range; the ring has vnodes "
                              f"0..{vcount - 1}")
            foreign = [v for v in vn if v not in own and v not in bad_range]
            if foreign:
                errors.append(f"vnodes: {rj.ranges_text(foreign)[:200]} do not belong to {shard} "
                              f"(it owns {len(own)} vnodes: {rj.ranges_text(own)[:120]}...)")
            if not foreign and not bad_range and len(set(vn)) >= len(own):
                errors.append(f"vnodes: all {len(own)} vnodes of {shard} would move; at least one must stay")
        if not vn:
            errors.append("vnodes: the list is empty; give at least one vnode to move")
        d["vnodes"] = sorted(set(vn))
    elif split == "balanced":
        counts = {v: c[0] for v, c in ((facts.get("census") or {}).get("vnodes") or {}).items()}
        if topo_vnodes is None:
            pass
        elif facts.get("census") is None:
            errors.append("split=balanced needs a census of the shard's rows, which could not be taken: "
                          + str(facts.get("census_error")))
        else:
            try:
                d["vnodes"] = rr.balanced_split(counts, topo_vnodes, float(inputs.get("split_fraction") or 0.5))
            except rr.RowsError as exc:
                errors.append(f"split: {exc}")
    else:
        errors.append("vnodes is required (e.g. vnodes=0,106,943 or vnodes=0-99), or split=balanced to "
                      "choose them from a census of the shard's rows")

    # -- servers for the new peers
    if resume:
        d["servers"] = (resume.get("inputs") or {}).get("servers") or []
        if inputs.get("servers"):
            given, dummy = check_servers(inputs["servers"], facts.get("servers"))
            if [s["uuid"] for s in given] != [s["uuid"] for s in d["servers"]]:
                errors.append(f"servers: plan {resume['plan']} is in progress on servers "
                              f"{', '.join(s['uuid'] for s in d['servers'])}; re-run with the same servers")
    else:
        if inputs.get("servers"):
            srv, serr = check_servers(inputs["servers"], facts.get("servers"))
            errors.extend(serr)
        else:
            srv = auto_servers(facts.get("servers"), avoid=facts.get("old_servers") or [])
            dummy, serr = check_servers([s["uuid"] for s in srv], facts.get("servers"))
            errors.extend(f"{e} (chosen automatically; give servers=...)" for e in serr)
        d["servers"] = [{"uuid": s["uuid"], "hostname": s.get("hostname"),
                         "datacenter": s.get("datacenter")} for s in srv]

    # -- PostgreSQL versions
    versions = facts.get("pg_versions") or {}
    distinct = sorted(set(v for v in versions.values() if v))
    if len(distinct) > 1:
        errors.append("PostgreSQL versions differ across the peers of " + str(shard) + ": "
                      + ", ".join(f"{k}={v}" for k, v in sorted(versions.items()))
                      + "; every peer must run the same version before a reshard")
    allowed = inputs.get("pg_versions") or []
    if distinct and allowed and distinct[0] not in allowed and str(distinct[0]).split(".", maxsplit=1)[0] not in allowed:
        errors.append(f"PostgreSQL {distinct[0]} on {shard} is not in pg_versions ({', '.join(allowed)})")
    d["pg_version"] = distinct[0] if distinct else None

    # -- the lock and other plans (a completed plan has nothing left to do: no conflict)
    holder = facts.get("lock_holder")
    my = resume["plan"] if resume else inputs.get("plan")
    done = bool(resume and resume.get("state") == "completed")
    if holder and holder != f"plan:{my}" and not done:
        errors.append(f"another reshard holds the reshard lock: {holder} ({facts.get('lock_info') or ''}); "
                      "wait for it to finish (playbooks/reshard_status.yml shows it)")
    for other in ([] if done else facts.get("other_plans") or []):
        if resume and other["plan"] == resume["plan"]:
            continue
        errors.append(f"another reshard is active on these shards: plan {other['plan']} "
                      f"({other.get('shard')} -> {other.get('new_shard')}, phase {other.get('phase')})")
    if facts.get("storage_shard") and shard == facts.get("storage_shard"):
        warnings.append(f"{shard} is also the storage (admin) shard: its non-sharded tables "
                        "(manta_storage...) are copied to the new shard and not deleted there (RFD 103: "
                        "'no plans to split the admin shard')")
    base = facts.get("base_peers") or []
    if base and len(base) != 3 and not resume:
        warnings.append(f"{shard} has {len(base)} base peers (expected 3)")
    return errors, warnings, d


# ---- estimates and the rehearsal report -------------------------------------------------------

def history_rates(plans):
    """Measured rates from the most recent completed plan, if any."""
    done = [p for p in plans if p.get("state") == "completed" and (p.get("props") or {}).get("measured")]
    done.sort(key=lambda p: p.get("completed") or "")
    if not done:
        return {}, None
    return dict(done[-1]["props"]["measured"]), done[-1]["plan"]


def estimates(census_summary, db_bytes, ems, rates, delete_cfg, measured=None):
    r = dict(DEFAULT_RATES)
    r.update(rates or {})
    m = measured or {}
    peers = 3
    copy_rate = r["copy_bytes_per_s"]
    copy_s = peers * (r["peer_overhead_s"] + (db_bytes or 0) / float(copy_rate))
    if m.get("copy_phase_s") and m.get("copy_db_bytes"):
        # the last plan's whole copy phase (3 peers), scaled up by the size when bigger
        copy_s = m["copy_phase_s"] * max(1.0, (db_bytes or 0) / float(m["copy_db_bytes"]))
        copy_rate = m["copy_db_bytes"] / float(m["copy_phase_s"])
    # inside the window: the transitional swaps of every batch after the first, then every final swap
    # (batches of max(1, N/3) routers, reshard_ring.batch_size)
    batches = -(-max(1, ems) // batch_size(max(1, ems)))
    model_window = ((2 * batches - 1) * r["em_restart_s"] + 3 * r["detach_s"] + r["reprovision_s"]
                    + r["establish_s"])
    window_s = m.get("window_s") or model_window
    batch = int(delete_cfg.get("batch_size", 1000))
    pause = float(delete_cfg.get("pause", 0.05))
    conns = int(delete_cfg.get("connections", 4))
    per_s = m.get("delete_rows_per_s") or conns * batch / (pause + r["delete_query_s"] + batch * 2e-5)
    moving_rows = census_summary["moving"]["rows"] if census_summary else 0
    staying_rows = census_summary["staying"]["rows"] if census_summary else 0
    # both shards delete in parallel: the larger side dominates
    delete_s = max(moving_rows, staying_rows) / per_s if per_s else None
    return {"copy_seconds": round(copy_s, 1), "window_seconds": round(window_s, 1),
            "window_model_seconds": round(model_window, 1), "delete_seconds": round(delete_s or 0, 1),
            "delete_rows_per_second": round(per_s, 1), "copy_bytes_per_second": copy_rate,
            "source": "measured by plan %s" % m.get("plan") if m.get("plan") else "model defaults"}


def human_bytes(n):
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


def rehearsal_text(reh):
    L = []
    p = reh["plan"]
    L.append(f"REHEARSAL of reshard plan {p['plan']}: {p['shard']} -> {p['new_shard']}")
    mv = reh["moving"]
    L.append(f"vnodes moving: {mv['count']} of {reh['shard_vnodes']} ({mv['ranges'][:300]})")
    s = reh.get("split")
    if s:
        L.append(f"rows moving: {s['moving']['rows']} ({human_bytes(s['moving']['bytes'])}); staying: "
                 f"{s['staying']['rows']} ({human_bytes(s['staying']['bytes'])})")
        top = sorted(s["per_vnode"].items(), key=lambda kv: -kv[1]["rows"])[:15]
        if top:
            L.append("  busiest moving vnodes: " + ", ".join(
                f"{v}:{x['rows']} rows/{human_bytes(x['bytes'])}" for v, x in top))
    rd = reh["ring_diff"]
    L.append(f"ring: transitional {rd['transitional_ro']} vnodes 'ro'; final moves {rd['moved']} vnodes "
             f"{rd['from']} -> {rd['to']}; pnode counts after: "
             + ", ".join(f"{k}={v}" for k, v in rd["pnode_counts_after"].items()))
    L.append("SAPI changes:")
    for c in reh["sapi_changes"]:
        L.append(f"  - {c}")
    L.append("would create:")
    for c in reh["creates"]:
        L.append(f"  - {c}")
    e = reh["estimates"]
    L.append(f"estimates ({e['source']}): copy {rj.fmt_duration(e['copy_seconds'])}, write-blocked window "
             f"{rj.fmt_duration(e['window_seconds'])} (moving vnodes only), delete "
             f"{rj.fmt_duration(e['delete_seconds'])} at {e['delete_rows_per_second']:.0f} rows/s")
    for w in reh.get("warnings") or []:
        L.append(f"warning: {w}")
    return "\n".join(L)


def new_plan_id():
    return str(uuidlib.uuid4())


def now():
    return time.time()
