# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Vnode census: rows (and bytes of ``_value``) per vnode, over the sharded tables of a shard.

This is RFD 103 step 1 (``select _vnode, count(*) from manta group by _vnode
order by count desc``) done for every sharded table, with sizes.

One aggregate query per table::

    SELECT _vnode, count(*) [, sum(octet_length(_value))] [, breakdown...]
      FROM public.<table> WHERE _vnode IS NOT NULL [AND _vnode = ANY(<vnodes>)]
     GROUP BY _vnode

* Rows are always exact. Without bytes the query is covered by Moray's
  partial index ``<table>__vnode_idx (_vnode) WHERE _vnode IS NOT NULL``, so
  the planner may answer it with an (parallel) index-only scan, about as fast
  as ``count(*)``; with a vnode list it probes that index.
* Bytes (``octet_length(_value)``, the stored length, never decompressed) need
  the heap. ``bytes="exact"`` reads all of it (about 2.5x a ``count(*)``);
  ``bytes="sampled"`` (the default) counts rows from the index as above and
  reads a page sample (``TABLESAMPLE SYSTEM``, sized for ~50,000 rows,
  REPEATABLE so reruns agree): each vnode's bytes are its exact rows times
  its sampled mean row size, shrunk towards the table's mean when the vnode
  has few sampled rows. Tables under 50,000 rows, and censuses of a vnode
  list, are always exact. ``bytes="none"`` skips them.
* ``breakdown=True`` (what the deleter asks for) also counts, per vnode, the
  rows that must be deleted by each key column (``_id``; ``_idx`` for extended
  ids; ``_key`` for rows with neither), and the ``_id``/``_idx`` span, from
  which the id-range delete plan is made.
"""
from __future__ import annotations

import time

from ansible_collections.manta.ops.plugins.module_utils.moray_pg import sql
from ansible_collections.manta.ops.plugins.module_utils.moray_tables import key_columns

DEFAULT_TOP = 20
BYTES_MODES = ("sampled", "exact", "none")
SAMPLE_ROWS = 50000
SHRINK_ROWS = 5          # pseudo-rows of the table mean added to each vnode's sampled mean
SAMPLE_SEED = 20170901


def _pass_conditions(table):
    """SQL conditions selecting the rows each key column deletes (disjoint, covering)."""
    cols = key_columns(table)
    conds = {}
    if "_id" in cols:
        conds["_id"] = sql.SQL("_id IS NOT NULL")
    if "_idx" in cols:
        conds["_idx"] = sql.SQL("_id IS NULL AND _idx IS NOT NULL")
    if table.has_id and table.extended_ids:
        conds["_key"] = sql.SQL("_id IS NULL AND _idx IS NULL")
    elif table.has_id:
        conds["_key"] = sql.SQL("_id IS NULL")
    else:
        conds["_key"] = sql.SQL("TRUE")
    return conds


def _query(table, vnodes, with_bytes, breakdown):
    cols = [sql.SQL("_vnode"), sql.SQL("count(*)")]
    if with_bytes:
        if table.has_value:
            cols.append(sql.SQL("coalesce(sum(octet_length(_value)), 0)::bigint"))
        else:
            cols.append(sql.SQL("0::bigint"))
    conds = _pass_conditions(table)
    if breakdown:
        for name in ("_idx", "_key"):
            if name in conds:
                cols.append(sql.SQL("count(*) FILTER (WHERE {})").format(conds[name]))
            else:
                cols.append(sql.SQL("0::bigint"))
        if table.has_id:
            cols.append(sql.SQL("min(_id)::bigint, max(_id)::bigint"))
        else:
            cols.append(sql.SQL("NULL::bigint, NULL::bigint"))
        if "_idx" in conds:
            cols.append(sql.SQL("min(_idx) FILTER (WHERE {c})::bigint, max(_idx) FILTER (WHERE {c})::bigint")
                        .format(c=conds["_idx"]))
        else:
            cols.append(sql.SQL("NULL::bigint, NULL::bigint"))
    where = [sql.SQL("_vnode IS NOT NULL")]
    params = []
    if vnodes is not None:
        where.append(sql.SQL("_vnode = ANY(%s::bigint[])"))
        params.append(list(vnodes))
    q = sql.SQL("SELECT {cols} FROM {t} WHERE {where} GROUP BY _vnode").format(
        cols=sql.SQL(", ").join(cols), t=table.ident(), where=sql.SQL(" AND ").join(where))
    return q, params


def _sample_query(table, percent):
    return sql.SQL(
        "SELECT _vnode, count(*), coalesce(sum(octet_length(_value)), 0)::bigint "
        "FROM {t} TABLESAMPLE SYSTEM (%s) REPEATABLE (%s) WHERE _vnode IS NOT NULL GROUP BY _vnode"
    ).format(t=table.ident()), [percent, SAMPLE_SEED]


def sampled_bytes(rows, sample):
    """{vnode: estimated bytes} from exact ``rows`` {v: n} and ``sample`` {v: (rows, bytes)}."""
    sn = sum(rows_b[0] for rows_b in sample.values())
    sb = sum(rows_b[1] for rows_b in sample.values())
    mean = sb / float(sn) if sn else 0.0
    out = {}
    for v, n in rows.items():
        vn, vb = sample.get(v, (0, 0))
        out[v] = int(round(n * (vb + SHRINK_ROWS * mean) / (vn + SHRINK_ROWS)))
    return out


class Census:
    """Row counts (and bytes) per table and vnode, with totals and a top-N view."""

    def __init__(self, shard, tables, with_bytes=True, vnodes=None):
        self.shard = shard
        self.tables = list(tables)
        self.with_bytes = with_bytes
        self.bytes_method = {}                         # table -> "exact" | "sampled N%" | "none"
        self.vnodes = None if vnodes is None else sorted(set(vnodes))
        self.rows = {t: {} for t in self.tables}       # table -> vnode -> rows
        self.bytes = {t: {} for t in self.tables}      # table -> vnode -> bytes
        self.passes = {t: {} for t in self.tables}     # table -> vnode -> {col: rows}
        self.spans = {t: {} for t in self.tables}      # table -> col -> [min, max]
        self.elapsed = {}

    # ---- building ------------------------------------------------------------
    def add(self, table, vnode, rows, nbytes=0, passes=None, spans=None):
        vnode = int(vnode)
        self.rows[table][vnode] = self.rows[table].get(vnode, 0) + int(rows)
        if nbytes:
            self.bytes[table][vnode] = self.bytes[table].get(vnode, 0) + int(nbytes)
        if passes is not None:
            self.passes[table][vnode] = {k: int(v) for k, v in passes.items() if v}
        for col, (lo, hi) in (spans or {}).items():
            if lo is None:
                continue
            cur = self.spans[table].get(col)
            self.spans[table][col] = [min(cur[0], lo), max(cur[1], hi)] if cur else [int(lo), int(hi)]

    # ---- queries ---------------------------------------------------------------
    def table_rows(self, table):
        return sum(self.rows.get(table, {}).values())

    def table_bytes(self, table):
        return sum(self.bytes.get(table, {}).values())

    @property
    def total_rows(self):
        return sum(self.table_rows(t) for t in self.tables)

    @property
    def total_bytes(self):
        return sum(self.table_bytes(t) for t in self.tables)

    def by_vnode(self):
        """{vnode: {"rows", "bytes", "tables": {table: rows}}} over every table."""
        out = {}
        for t in self.tables:
            for v, n in self.rows[t].items():
                e = out.setdefault(v, {"rows": 0, "bytes": 0, "tables": {}})
                e["rows"] += n
                e["bytes"] += self.bytes[t].get(v, 0)
                e["tables"][t] = n
        return out

    def weights(self, measure="rows"):
        """{vnode: rows or bytes} summed over tables."""
        return {v: e[measure] for v, e in self.by_vnode().items()}

    def nonzero(self):
        """[(table, vnode, rows)] for every (table, vnode) holding rows, in table then vnode order."""
        return [(t, v, self.rows[t][v]) for t in self.tables for v in sorted(self.rows[t])
                if self.rows[t][v]]

    def rows_of(self, table, vnode):
        return self.rows.get(table, {}).get(vnode, 0)

    def top(self, n=DEFAULT_TOP, measure="rows"):
        """The runbook's view: vnodes by rows (or bytes), descending; ties by vnode."""
        bv = self.by_vnode()
        order = sorted(bv.items(), key=lambda kv: (-kv[1][measure], kv[0]))
        return [{"vnode": v, "rows": e["rows"], "bytes": e["bytes"], "tables": e["tables"]}
                for v, e in order[:max(0, n)]]

    def per_table(self):
        return [{"name": t, "rows": self.table_rows(t),
                 "bytes": self.table_bytes(t) if self.with_bytes else None,
                 "bytes_method": self.bytes_method.get(t, "exact" if self.with_bytes else "none"),
                 "vnodes": sum(1 for n in self.rows[t].values() if n),
                 "seconds": round(self.elapsed.get(t, 0.0), 3)} for t in self.tables]

    def counts_map(self):
        """{table: {"<vnode>": rows}} with only the vnodes that hold rows (JSON-ready)."""
        return {t: {str(v): n for v, n in sorted(self.rows[t].items()) if n} for t in self.tables}

    def to_result(self, top=DEFAULT_TOP, per_vnode=False):
        bv = self.by_vnode()
        out = {
            "shard": self.shard,
            "tables": self.per_table(),
            "rows": self.total_rows,
            "bytes": self.total_bytes if self.with_bytes else None,
            "vnodes_with_rows": sum(1 for e in bv.values() if e["rows"]),
            "top": self.top(top),
            "seconds": round(sum(self.elapsed.values()), 3),
        }
        if self.vnodes is not None:
            out["vnodes_requested"] = len(self.vnodes)
        if per_vnode:
            out["per_vnode"] = [{"vnode": v, "rows": e["rows"], "bytes": e["bytes"], "tables": e["tables"]}
                                for v, e in sorted(bv.items())]
        return out


_NO_INDEX = ("SET LOCAL enable_indexscan = off", "SET LOCAL enable_indexonlyscan = off",
             "SET LOCAL enable_bitmapscan = off")


def _execute(cur, q, params, full_scan):
    """Run one census query; ``full_scan`` reads the table instead of the _vnode index.

    After a mass delete the index still lists every deleted row and the planner
    cannot know they are dead: an index scan then visits each dead heap tuple
    (about 5x slower than one parallel sequential scan for half a table).
    """
    if not full_scan:
        cur.execute(q, params)
        return cur.fetchall()
    autocommit = cur.connection.autocommit
    cur.connection.autocommit = False
    try:
        for stmt in _NO_INDEX:
            cur.execute(stmt)
        cur.execute(q, params)
        rows = cur.fetchall()
        cur.connection.commit()
        return rows
    except BaseException:
        cur.connection.rollback()
        raise
    finally:
        cur.connection.autocommit = autocommit


def take(conn, shard, tables, vnodes=None, with_bytes=True, breakdown=False, bytes_mode=None, full_scan=()):
    """Run the census on ``conn`` for ``tables`` (TableInfo, in order) and return a :class:`Census`.

    ``vnodes`` (an iterable of ints) limits it to those vnodes; every listed
    vnode then counts as 0 where it has no rows. ``bytes_mode`` is one of
    BYTES_MODES (default: "exact" when ``with_bytes`` else "none"; "sampled"
    falls back to "exact" with a vnode list, with ``breakdown``, and for
    tables under SAMPLE_ROWS rows). Tables named in ``full_scan`` are read
    with a (parallel) sequential scan instead of an index (see _execute).
    """
    if bytes_mode is None:
        bytes_mode = "exact" if with_bytes else "none"
    if bytes_mode not in BYTES_MODES:
        raise ValueError(f"bytes {bytes_mode!r} is not valid; valid: {', '.join(BYTES_MODES)}")
    with_bytes = bytes_mode != "none"
    census = Census(shard, [t.name for t in tables], with_bytes=with_bytes, vnodes=vnodes)
    cur = conn.cursor()
    for table in tables:
        sample = bytes_mode == "sampled" and census.vnodes is None and not breakdown and table.has_value
        t0 = time.monotonic()
        q, params = _query(table, census.vnodes, with_bytes and not sample, breakdown)
        rows = _execute(cur, q, params, table.name in full_scan)
        if sample:
            exact_rows = {r[0]: r[1] for r in rows}
            n = sum(exact_rows.values())
            if n <= SAMPLE_ROWS:
                q, params = _query(table, None, True, False)
                cur.execute(q, params)
                rows = cur.fetchall()
                census.bytes_method[table.name] = "exact"
                sample = False
            else:
                percent = round(min(100.0, 100.0 * SAMPLE_ROWS / n), 4)
                q, params = _sample_query(table, percent)
                cur.execute(q, params)
                est = sampled_bytes(exact_rows, {r[0]: (r[1], r[2]) for r in cur.fetchall()})
                census.bytes_method[table.name] = f"sampled {percent}% of pages"
                for v, cnt in exact_rows.items():
                    census.add(table.name, v, cnt, est.get(v, 0))
        else:
            census.bytes_method[table.name] = "exact" if with_bytes else "none"
        if not sample:
            for row in rows:
                i = 2
                vnode, nrows = row[0], row[1]
                nbytes = 0
                if with_bytes:
                    nbytes = row[i]
                    i += 1
                passes = spans = None
                if breakdown:
                    n_idx, n_key, id_lo, id_hi, idx_lo, idx_hi = row[i:i + 6]
                    passes = {"_id": nrows - n_idx - n_key if table.has_id else 0, "_idx": n_idx, "_key": n_key}
                    spans = {"_id": (id_lo, id_hi), "_idx": (idx_lo, idx_hi)}
                census.add(table.name, vnode, nrows, nbytes, passes, spans)
        census.elapsed[table.name] = time.monotonic() - t0
    return census
