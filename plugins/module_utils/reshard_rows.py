# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Rows per vnode on a moray shard, for planning a reshard: census and balanced split.

* ``sharded_tables(conn)``: every table of the moray database with a
  ``_vnode`` column (the sharded buckets); non-sharded buckets (``_vnode``
  NULL everywhere, e.g. ``manta_reshard_sentinel``, ``manta_storage``) are
  never touched by a delete because their rows have no vnode.
* ``census(conn)``: rows and bytes per vnode per table (RFD 103 step 1,
  ``select _vnode, count(*) ... group by _vnode``), plus the database size.
* ``balanced_split(counts, vnodes, fraction)``: which vnodes to move so the
  new shard gets ``fraction`` of the rows (and about that fraction of the
  vnodes), keeping at least one vnode on each side.

The delete itself (reshard.md §4) is manta.ops.moray_vnode_rows.
"""
from __future__ import annotations

try:
    from psycopg2 import sql
    HAS_PSYCOPG2 = True
except ImportError:  # pragma: no cover
    sql = None
    HAS_PSYCOPG2 = False

COUNTS_TABLE = "manta_directory_counts"
EXCLUDED = ("manta_reshard_sentinel",)


class RowsError(Exception):
    pass


def sharded_tables(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "JOIN pg_attribute a ON a.attrelid = c.oid "
                    "WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attname = '_vnode' "
                    "AND NOT a.attisdropped")
        names = sorted(r[0] for r in cur.fetchall() if r[0] not in EXCLUDED)
    if COUNTS_TABLE in names:
        names.remove(COUNTS_TABLE)
        names.insert(0, COUNTS_TABLE)
    return names


def census(conn, tables=None, with_bytes=True):
    """{"tables": {t: {vnode: [rows, bytes]}}, "vnodes": {vnode: [rows, bytes]},
    "rows", "bytes", "db_bytes"}. Vnodes are ints; rows with NULL _vnode are not counted."""
    tables = tables if tables is not None else sharded_tables(conn)
    out = {"tables": {}, "vnodes": {}, "rows": 0, "bytes": 0, "db_bytes": None}
    size = sql.SQL("sum(pg_column_size(t.*))") if with_bytes else sql.SQL("0")
    with conn.cursor() as cur:
        for t in tables:
            cur.execute(sql.SQL("SELECT _vnode, count(*), {} FROM {} t WHERE _vnode IS NOT NULL "
                                "GROUP BY _vnode").format(size, sql.Identifier(t)))
            per = {}
            for v, n, b in cur.fetchall():
                per[int(v)] = [int(n), int(b or 0)]
                agg = out["vnodes"].setdefault(int(v), [0, 0])
                agg[0] += int(n)
                agg[1] += int(b or 0)
                out["rows"] += int(n)
                out["bytes"] += int(b or 0)
            out["tables"][t] = per
        cur.execute("SELECT pg_database_size(current_database())")
        out["db_bytes"] = int(cur.fetchone()[0])
    return out


def balanced_split(counts, vnodes, fraction=0.5):
    """Vnodes to move so the moved rows are ``fraction`` of the shard's rows.

    ``counts``: {vnode: rows}; ``vnodes``: every vnode the shard owns.
    Busy vnodes are placed first (largest first, each on the side that is
    further below its row target); empty vnodes then even out the vnode
    counts. At least one vnode moves and at least one stays.
    """
    vnodes = sorted(set(int(v) for v in vnodes))
    if len(vnodes) < 2:
        raise RowsError(f"a shard with {len(vnodes)} vnode(s) cannot be split; it needs at least 2")
    if not 0 < fraction < 1:
        raise RowsError(f"split fraction must be between 0 and 1, got {fraction}")
    total = sum(int(counts.get(v, 0)) for v in vnodes)
    want_rows = total * fraction
    want_n = max(1, min(len(vnodes) - 1, round(len(vnodes) * fraction)))
    busy = sorted((v for v in vnodes if counts.get(v, 0) > 0), key=lambda v: (-counts[v], v))
    empty = [v for v in vnodes if counts.get(v, 0) <= 0]
    move, moved_rows = [], 0
    kept_rows = 0
    for v in busy:
        r = counts[v]
        # put v where the relative deficit is larger
        if (want_rows - moved_rows) >= ((total - want_rows) - kept_rows):
            move.append(v)
            moved_rows += r
        else:
            kept_rows += r
    need = want_n - len(move)
    if need > 0:
        move.extend(empty[:need])
    move = sorted(set(move))
    if not move:
        move = [vnodes[0]]
    if len(move) >= len(vnodes):
        move = move[:-1] if len(move) > 1 else move
        keep = sorted(set(vnodes) - set(move))
        if not keep:
            raise RowsError("the split would move every vnode")
    return move


def split_summary(counts_bytes, vnodes, moving):
    """Rows and bytes of the moving set, the staying set, and per moving vnode."""
    moving = set(moving)
    out = {"moving": {"vnodes": 0, "rows": 0, "bytes": 0}, "staying": {"vnodes": 0, "rows": 0, "bytes": 0},
           "per_vnode": {}}
    for v in vnodes:
        rows, byts = (counts_bytes.get(v) or [0, 0])
        side = out["moving"] if v in moving else out["staying"]
        side["vnodes"] += 1
        side["rows"] += rows
        side["bytes"] += byts
        if v in moving:
            out["per_vnode"][v] = {"rows": rows, "bytes": byts}
    return out
