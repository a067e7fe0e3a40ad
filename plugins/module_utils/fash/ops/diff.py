# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Diff of two rings, computed vnode by vnode (correct whatever the order of /PNODE/<p> lists).

node-fash's ``diff`` merges the ``/PNODE/<p>`` lists assuming they are sorted,
so a remapped ring shows false differences against its own deserialized copy
(fash.md §5.3, §7 item 4). Here the comparison is on the vnode -> pnode map
and the vnode data, and the result groups moved vnodes by (source,
destination) with counts and compact ranges, so a 333,334-vnode move is a
few lines.
"""
from __future__ import annotations

import os

from ..errors import RingInputError
from ..jsenc import js_dumps
from ..topology import Topology
from ..vnodes import ranges


def as_topology(ring):
    """A :class:`Topology` from a Topology, an open LevelRing, a ring directory or a JSON file."""
    if isinstance(ring, Topology):
        return ring
    if hasattr(ring, "topology"):
        return ring.topology()
    if isinstance(ring, (str, os.PathLike)):
        from ..leveldb_store import read_topology
        path = os.fspath(ring)
        if os.path.isdir(path):
            return read_topology(path)
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                return Topology.from_json(fh.read())
        raise RingInputError("ring %s is neither a LevelDB directory nor a JSON topology file" % path)
    raise RingInputError("cannot compare %r: expected a Topology, a LevelRing or a path" % (ring,))


def diff_rings(a, b, with_vnodes=True):
    """Differences from ring ``a`` to ring ``b``.

    Returns::

        {"changed": bool,
         "vnode_count": N,
         "moved_count": int,
         "moved": [{"from": p, "to": q, "count": n, "ranges": "0-3,7", "vnodes": [...]}, ...],
         "data_changed_count": int,
         "data": [{"before": 1, "after": "ro", "count": n, "ranges": "...", "vnodes": [...]}, ...],
         "pnodes_added": [...], "pnodes_removed": [...],
         "counts": {pnode: {"before": n, "after": m}},  # pnodes whose count changed
         "algorithm_changed": bool}

    ``with_vnodes=False`` leaves out the ``vnodes`` lists (ranges stay).
    """
    ta, tb = as_topology(a), as_topology(b)
    if ta.vnode_count != tb.vnode_count:
        raise RingInputError("the rings have different vnode counts (%d and %d); they cannot be compared vnode "
                             "by vnode" % (ta.vnode_count, tb.vnode_count))
    oa, ob = ta._owner, tb._owner
    na, nb = ta._names, tb._names
    moved = {}
    if oa != ob or na != nb:
        # translate ids of b into names only where they differ
        for v in range(ta.vnode_count):
            pa, pb = na[oa[v]], nb[ob[v]]
            if pa != pb:
                key = (pa, pb)
                lst = moved.get(key)
                if lst is None:
                    lst = moved[key] = []
                lst.append(v)
    moved_out = []
    for (src, dst), vs in sorted(moved.items()):
        item = {"from": src, "to": dst, "count": len(vs), "ranges": ranges(vs)}
        if with_vnodes:
            item["vnodes"] = vs
        moved_out.append(item)
    da, db = ta._data, tb._data
    groups = {}
    for v in sorted(set(da) | set(db)):
        x, y = da.get(v, 1), db.get(v, 1)
        ex, ey = js_dumps(x), js_dumps(y)
        if ex != ey:
            key = (ex, ey)
            g = groups.get(key)
            if g is None:
                g = groups[key] = (x, y, [])
            g[2].append(v)
    data_out = []
    for _key, (x, y, vs) in sorted(groups.items()):
        item = {"before": x, "after": y, "count": len(vs), "ranges": ranges(vs)}
        if with_vnodes:
            item["vnodes"] = vs
        data_out.append(item)
    pa, pb = ta.pnodes(), tb.pnodes()
    added = [p for p in pb if p not in set(pa)]
    removed = [p for p in pa if p not in set(pb)]
    ca, cb = ta.counts(), tb.counts()
    counts = {}
    for p in pa + added:
        x, y = ca.get(p, 0), cb.get(p, 0)
        if x != y or p in added or p in removed:
            counts[p] = {"before": x if p in ca else None, "after": y if p in cb else None}
    algo_changed = ta.algorithm != tb.algorithm
    moved_count = sum(len(vs) for vs in moved.values())
    data_count = sum(len(g[2]) for g in groups.values())
    return {
        "changed": bool(moved_count or data_count or added or removed or algo_changed),
        "vnode_count": ta.vnode_count,
        "moved_count": moved_count,
        "moved": moved_out,
        "data_changed_count": data_count,
        "data": data_out,
        "pnodes_added": added,
        "pnodes_removed": removed,
        "counts": counts,
        "algorithm_changed": algo_changed,
    }


def node_style_diff(a, b):
    """node-fash ``diff``'s output shape, computed correctly: ``{pnode: {"removed": [...], "added": [...]}}``.

    Only pnodes with differences appear; vnode lists are ascending. Data is
    ignored, as node-fash does.
    """
    ta, tb = as_topology(a), as_topology(b)
    out = {}
    pa, pb = ta.pnodes(), tb.pnodes()
    seen = []
    for p in pa + pb:
        if p in seen:
            continue
        seen.append(p)
        in_a, in_b = ta.has_pnode(p), tb.has_pnode(p)
        va = ta.vnodes_of(p) if in_a else []
        vb = tb.vnodes_of(p) if in_b else []
        if not in_a:
            out[p] = {"added": vb}
        elif not in_b:
            out[p] = {"removed": va}
        else:
            sa, sb = set(va), set(vb)
            rem = [v for v in va if v not in sb]
            add = [v for v in vb if v not in sa]
            if rem or add:
                entry = {}
                if rem:
                    entry["removed"] = rem
                if add:
                    entry["added"] = add
                out[p] = entry
    return out


def summarize_diff(d, max_lines=50):
    """Human text of a :func:`diff_rings` result: one line per (source -> destination) and data change."""
    lines = []
    for m in d["moved"]:
        lines.append("move %d vnodes %s -> %s: %s" % (m["count"], m["from"], m["to"], _clip(m["ranges"])))
    for g in d["data"]:
        lines.append("data %s -> %s on %d vnodes: %s"
                     % (js_dumps(g["before"]), js_dumps(g["after"]), g["count"], _clip(g["ranges"])))
    for p in d["pnodes_added"]:
        lines.append("add pnode %s" % p)
    for p in d["pnodes_removed"]:
        lines.append("remove pnode %s" % p)
    if d.get("algorithm_changed"):
        lines.append("algorithm changed")
    if len(lines) > max_lines:
        lines = lines[:max_lines] + ["... %d more lines" % (len(lines) - max_lines)]
    return lines


def _clip(text, limit=160):
    return text if len(text) <= limit else text[:limit] + "..."
