# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""What moray_vnode_rows_info reports: a shard's census, seen through the ring, and a split plan.

* ``census``: rows/bytes per table, the top-N vnodes (RFD 103 step 1) and,
  on request, every vnode (moray_census).
* ``ownership`` (with a ring): how many of the shard's rows sit in vnodes
  the ring gives to *another* shard (ghost rows left by an earlier split
  whose cleanup has not run), and how many of the shard's own vnodes hold
  no rows.
* ``plan`` (with a ring): the split (moray_split_plan), over the vnodes the
  ring gives to the shard, weighted by their rows or bytes; or the figures
  of an explicit vnode list, after checking every listed vnode belongs to
  the shard.
"""
from __future__ import annotations

from ansible_collections.manta.ops.plugins.module_utils import moray_census, moray_pg, moray_ring, moray_tables
from ansible_collections.manta.ops.plugins.module_utils import moray_split_plan
from ansible_collections.manta.ops.plugins.module_utils.fash.vnodes import ranges


def ownership(census, topology, shard):
    p = moray_ring.pnode(shard)
    mine = set(topology.vnodes_of(p))
    bv = census.by_vnode()
    foreign = sorted(v for v, e in bv.items() if v not in mine and e["rows"])
    empty_own = sorted(v for v in mine if not bv.get(v, {}).get("rows"))
    by_owner = {}
    for v in foreign:
        try:
            owner = topology.pnode_of(v)
        except Exception:       # a _vnode outside the ring's range
            owner = "(not in ring)"
        e = by_owner.setdefault(owner, {"vnodes": 0, "rows": 0})
        e["vnodes"] += 1
        e["rows"] += bv[v]["rows"]
    return {
        "pnode": p,
        "owned_vnodes": len(mine),
        "owned_vnodes_without_rows": len(empty_own),
        "rows_in_owned_vnodes": sum(e["rows"] for v, e in bv.items() if v in mine),
        "rows_in_other_vnodes": sum(bv[v]["rows"] for v in foreign),
        "other_vnodes": len(foreign),
        "other_vnode_ranges": ranges(foreign) if len(foreign) <= 5000 else None,
        "other_vnodes_by_owner": by_owner,
    }


def report(shard, target, tables=None, vnodes=None, bytes_mode="sampled", top=20, per_vnode=False,
           ring=None, ring_path=None, plan=None, connect_timeout=10, statement_timeout=600.0,
           list_limit=None):
    """Result dict for moray_vnode_rows_info. ``plan`` is the module's plan option (dict) or None."""
    conn = None
    try:
        conn = moray_pg.connect(target, connect_timeout, statement_timeout)
        with moray_pg.step(f"reading the tables of shard {shard}", statement_timeout):
            ident = moray_pg.require_primary(conn, target)
            infos = moray_tables.discover(conn, tables, database=ident["database"])
        order = [infos[n] for n in sorted(infos)]
        with moray_pg.step(f"counting rows per vnode on shard {shard}", statement_timeout):
            census = moray_census.take(conn, shard, order, vnodes=vnodes, bytes_mode=bytes_mode)
    finally:
        moray_pg.close_quietly(conn)
    out = {"database": ident, "table_info": [t.to_result() for t in order],
           "census": census.to_result(top=top, per_vnode=per_vnode)}
    if ring is not None:
        out["ownership"] = ownership(census, ring, shard)
    if plan:
        p = moray_ring.pnode(shard)
        own = ring.vnodes_of(p)
        bv = census.by_vnode()
        rows = {v: bv[v]["rows"] for v in own if v in bv}
        nbytes = {v: bv[v]["bytes"] for v in own if v in bv}
        if plan.get("vnodes") is not None:
            moved = moray_ring.parse_vnodes(plan["vnodes"], ring, what="plan.vnodes")
            moray_ring.require_owned(ring, moved, shard, ring_path,
                                     "a split can only move vnodes of the shard being split")
            if len(moved) >= len(own):
                raise moray_split_plan.PlanError(
                    f"plan.vnodes lists all {len(own)} vnodes of {shard}; a split must leave it "
                    "at least one")
            result = moray_split_plan.evaluate(shard, own, moved, rows, nbytes, plan.get("balance") or "rows")
        else:
            result = moray_split_plan.plan_split(shard, own, rows, nbytes, target=plan.get("target") or "half",
                                                 fraction=plan.get("fraction"),
                                                 new_shards=plan.get("new_shards"),
                                                 measure=plan.get("balance") or "rows")
        out["plan"] = result.to_result(list_limit=list_limit)
    return out
