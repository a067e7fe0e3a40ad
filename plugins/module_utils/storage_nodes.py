# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Storage nodes ("sharks"): their minnow heartbeats, capacity, and names.

* :func:`read_heartbeats` reads bucket ``manta_storage`` (one record per node,
  written every few seconds by minnow, reference/evacuate.md §1.4) straight
  from the storage shard's PostgreSQL.
* :func:`capacity` is the space a destination may still take under a
  ``max_fill_percent`` (the rebalancer's §3.4 formula, in bytes instead of
  floored MiB, so small objects are charged too).
* :func:`in_rotation`: a node whose heartbeat is younger than ``lag`` seconds
  is in the pickers' rotation (storinfo and muskie drop older records).
* :func:`resolve_nodes` turns what an operator typed (``3.stor``, a full
  storage id, an inventory host or a group) into inventory storage nodes,
  with errors that name what is valid.
"""
from __future__ import annotations

import json
import time

MIB = 1024 * 1024
BUCKET = "manta_storage"


class NodeError(Exception):
    """Bad node names or unusable heartbeat data; the message lists what is valid."""


def read_heartbeats(conn):
    """{manta_storage_id: record} from the manta_storage bucket (a read-only query)."""
    out = {}
    with conn.cursor() as cur:
        cur.execute("SELECT _key, _value FROM manta_storage")
        rows = cur.fetchall()
    conn.rollback()
    for key, raw in rows:
        try:
            v = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if not isinstance(v, dict):
            continue
        sid = v.get("manta_storage_id") or key
        out[sid] = v
    return out


def age_seconds(record, now=None):
    ts = (record or {}).get("timestamp")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return None
    now = time.time() if now is None else now
    return max(0.0, now - ts / 1000.0)


def in_rotation(record, lag, now=None):
    a = age_seconds(record, now)
    return a is not None and a < lag


def capacity(record, max_fill_percent):
    """Bytes: total, used, available, the max-fill ceiling and the headroom
    under it (before this job's own reservations).

    total comes from statvfs (blocks x frsize) when present, otherwise from
    ``availableMB / (1 - percentUsed/100)`` as the rebalancer computes it.
    A node already above ``max_fill_percent`` has no headroom.
    """
    rec = record or {}
    st = rec.get("statvfs") or {}
    avail_mb = rec.get("availableMB")
    pct = rec.get("percentUsed")
    total = used = avail = None
    try:
        frsize = int(st.get("frsize") or st.get("bsize") or 0)
        if frsize and st.get("blocks") is not None:
            total = int(st["blocks"]) * frsize
            avail = int(st.get("bavail", st.get("bfree", 0))) * frsize
            used = max(0, total - int(st.get("bfree", st.get("bavail", 0))) * frsize)
    except (TypeError, ValueError):
        total = None
    if total is None:
        if not isinstance(avail_mb, (int, float)) or not isinstance(pct, (int, float)):
            raise NodeError(f"heartbeat of {rec.get('manta_storage_id')} has no usable "
                            f"availableMB/percentUsed/statvfs: {rec!r}")
        if pct >= 100:
            total = avail_mb * MIB
        else:
            total = int(avail_mb * MIB / (1 - pct / 100.0))
        avail = int(avail_mb * MIB)
        used = max(0, total - avail)
    ceiling = int(total * float(max_fill_percent) / 100.0)
    headroom = max(0, ceiling - used)
    if isinstance(pct, (int, float)) and pct > max_fill_percent:
        headroom = 0
    headroom = min(headroom, avail if avail is not None else headroom)
    return {"total": total, "used": used, "available": avail, "ceiling": ceiling,
            "headroom": headroom,
            "percent_used": round(100.0 * used / total, 2) if total else 100.0}


def full_id(name, domain):
    """``3.stor`` -> ``3.stor.<domain>`` (sharkspotter's expansion)."""
    if domain and not name.endswith("." + domain) and name.count(".") <= 1:
        return f"{name}.{domain}"
    return name


def split_names(requested):
    out = []
    items = requested if isinstance(requested, list) else [requested]
    for item in items:
        if item is None:
            continue
        for part in str(item).replace(" ", ",").split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def resolve_nodes(requested, storage_hosts, groups=None, domain=None, known_ids=()):
    """Resolve operator input to inventory storage nodes.

    ``storage_hosts``: {inventory host: {manta_storage_id, datacenter, ...}}
    (the ``storage`` group). ``groups``: {group: [hosts]} (all groups).
    ``known_ids``: storage ids Manta knows (heartbeats), to tell "not in the
    inventory" from "unknown". Returns [{host, storage_id, datacenter, ...}]
    in input order, or raises NodeError naming every bad name.
    """
    names = split_names(requested)
    if not names:
        raise NodeError("evacuate is empty: name the storage nodes to evacuate, for example "
                        "-e evacuate=3.stor.<domain> (or a group of storage nodes)")
    groups = groups or {}
    by_id = {}
    for host, hv in storage_hosts.items():
        sid = (hv or {}).get("manta_storage_id") or host
        by_id[sid] = host
    valid = sorted(by_id)
    out, errors = [], []

    def add(host):
        hv = storage_hosts[host] or {}
        sid = hv.get("manta_storage_id") or host
        if all(o["host"] != host for o in out):
            out.append({"host": host, "storage_id": sid, "datacenter": hv.get("datacenter"),
                        "storage_url": hv.get("storage_url") or f"http://{sid}",
                        "storage_root": hv.get("storage_root") or "/manta"})

    for name in names:
        if name in storage_hosts:
            add(name)
            continue
        if name in groups and name not in ("all", "ungrouped"):
            members = groups.get(name) or []
            bad = [h for h in members if h not in storage_hosts]
            if bad or not members:
                errors.append(f"group {name!r} " + (f"holds hosts that are not storage nodes: "
                                                    f"{', '.join(sorted(bad))}" if bad else "is empty"))
                continue
            for h in members:
                add(h)
            continue
        sid = full_id(name, domain)
        if sid in by_id:
            add(by_id[sid])
        elif sid in set(known_ids) or name in set(known_ids):
            errors.append(f"{sid} is a storage node Manta knows (it has a manta_storage record) but "
                          "it is not in the inventory's storage group; add it to the inventory "
                          "(its minnow must be stopped and its zone reached)")
        else:
            errors.append(f"unknown storage node {name!r}")
    if errors:
        raise NodeError("; ".join(errors) + ". Valid storage nodes in the inventory: "
                        + (", ".join(valid) or "none"))
    return out


def destination_view(record, max_fill_percent, lag, now=None):
    """What the planner needs to know about one candidate destination."""
    cap = capacity(record, max_fill_percent)
    return {"storage_id": record.get("manta_storage_id"), "datacenter": record.get("datacenter"),
            "heartbeat_age": age_seconds(record, now), "in_rotation": in_rotation(record, lag, now),
            "timestamp": record.get("timestamp"), **cap}
