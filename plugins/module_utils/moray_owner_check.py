# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""The rule that protects a delete: the owner shard must hold the rows before the source loses them.

After a reshard both shards hold the moved vnodes' rows; the shard that no
longer owns a vnode deletes its copy. Deleting is only safe if the owner
really has the rows (right DSN, copy complete, not the same database).

Rule (per table and per vnode, counted on both primaries by the census):

    owner_rows >= ceil(source_rows * min_ratio)      for every (table, vnode)
                                                      with source_rows > 0

``min_ratio`` defaults to 1.0: the owner holds at least as many rows as the
copy about to be deleted. Rows written to the owner since the split only add
to its count; rows deleted there since (user deletes, GC) lower it, and then
the operator can lower ``min_ratio`` or force after looking at the reported
deficits. A table the owner does not have counts as 0 rows there. Pairs with
no rows left on the source are not checked (so a resumed or repeated run is
never refused). The two connections must reach different databases.
"""
from __future__ import annotations

import math

SHOWN = 10


class OwnerCheckError(Exception):
    """The owner does not (visibly) hold the rows about to be deleted; nothing was changed."""


def compare(source, owner, min_ratio=1.0, limit=50):
    """Result dict of the rule above, from two censuses of the same vnodes."""
    deficits = []
    checked = 0
    src_total = own_total = 0
    for table, vnode, n in source.nonzero():
        checked += 1
        have = owner.rows_of(table, vnode) if table in owner.rows else 0
        src_total += n
        own_total += have
        if have < math.ceil(n * min_ratio):
            deficits.append({"table": table, "vnode": vnode, "source_rows": n, "owner_rows": have})
    return {
        "ok": not deficits,
        "rule": f"owner_rows >= ceil(source_rows * {min_ratio}) for every (table, vnode) with rows on the source",
        "min_ratio": min_ratio,
        "pairs_checked": checked,
        "source_rows": src_total,
        "owner_rows": own_total,
        "deficit_count": len(deficits),
        "deficits": deficits[:limit],
    }


def same_database(a, b):
    """True when two identities (moray_pg.identity) are the same server and database."""
    return a.get("server") == b.get("server") and a.get("database") == b.get("database") \
        and a.get("system_identifier") == b.get("system_identifier")


def refusal(result, shard, owner_shard):
    """The message for a failed check."""
    shown = "; ".join(f"{d['table']} vnode {d['vnode']}: {d['source_rows']} rows on {shard}, "
                      f"{d['owner_rows']} on {owner_shard}" for d in result["deficits"][:SHOWN])
    more = result["deficit_count"] - min(SHOWN, len(result["deficits"]))
    return (f"refusing to delete: owner shard {owner_shard} does not hold the rows about to be deleted "
            f"from {shard} for {result['deficit_count']} (table, vnode) pair(s) (rule: "
            f"{result['rule']}): {shown}" + (f"; and {more} more" if more > 0 else "")
            + ". Copy the data to the owner first; if the owner lost rows legitimately since the "
            "split (deletes), lower owner_min_ratio or set force=true")
