# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Rows per vnode on a moray shard: census, balanced split, throttled verified delete.

* ``sharded_tables(conn)``: every table of the moray database with a
  ``_vnode`` column (the sharded buckets); non-sharded buckets (``_vnode``
  NULL everywhere, e.g. ``manta_reshard_sentinel``, ``manta_storage``) are
  never touched by a delete because their rows have no vnode.
* ``census(conn)``: rows and bytes per vnode per table (RFD 103 step 1,
  ``select _vnode, count(*) ... group by _vnode``), plus the database size.
* ``balanced_split(counts, vnodes, fraction)``: which vnodes to move so the
  new shard gets ``fraction`` of the rows (and about that fraction of the
  vnodes), keeping at least one vnode on each side.
* ``Deleter``: reshard.md section 4 -- per table (``manta_directory_counts``
  first, so libmanta's directory-count trigger has nothing to update), ghost
  vnodes processed in parallel over ``connections`` connections to the
  primary, ``DELETE ... WHERE _key IN (SELECT _key ... WHERE _vnode = v
  LIMIT batch)`` (the primary key, an index) until a batch deletes nothing,
  ``pause`` seconds after every non-empty batch; then a verification that no
  row of a ghost vnode is left in any table.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

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


class Deleter:
    """Delete the rows of ``ghosts`` (vnodes this shard no longer owns) from every sharded table.

    ``connect()`` returns a new autocommit psycopg2 connection to the primary.
    ``progress(doc)`` is called after every batch (throttled to ``report_every`` s).
    ``done_tables`` are skipped (resuming per table).
    """

    def __init__(self, connect, ghosts, batch_size=1000, pause=0.05, connections=4,
                 progress=None, report_every=2.0, done_tables=(), on_table_done=None,
                 stop=None, per_table=None):
        if batch_size < 1 or connections < 1 or pause < 0:
            raise RowsError("batch_size and connections must be >= 1, pause >= 0")
        self.connect = connect
        self.ghosts = sorted(set(int(v) for v in ghosts))
        self.batch = int(batch_size)
        self.pause = float(pause)
        self.conns = int(connections)
        self.progress = progress
        self.report_every = report_every
        self.done_tables = set(done_tables or ())
        self.on_table_done = on_table_done
        self.stop = stop
        self.per_table = per_table or {}
        self.lock = threading.Lock()
        self.deleted = {}
        self.batches = 0
        self.started = None
        self._last_report = 0.0
        self.current = None

    def _report(self, force=False):
        if not self.progress:
            return
        now = time.monotonic()
        if not force and now - self._last_report < self.report_every:
            return
        self._last_report = now
        total = sum(self.deleted.values())
        el = now - self.started if self.started else 0
        self.progress({"table": self.current, "deleted": total, "by_table": dict(self.deleted),
                       "batches": self.batches, "seconds": round(el, 2),
                       "rows_per_second": round(total / el, 1) if el > 0 else None})

    def _vnode(self, table, vnode, conn):
        q = sql.SQL("DELETE FROM {t} WHERE _key IN (SELECT _key FROM {t} WHERE _vnode = %s LIMIT %s)"
                    ).format(t=sql.Identifier(table))
        n_total = 0
        with conn.cursor() as cur:
            while True:
                if self.stop is not None and self.stop.is_set():
                    return n_total
                cur.execute(q, (vnode, self.batch))
                n = cur.rowcount or 0
                with self.lock:
                    self.deleted[table] = self.deleted.get(table, 0) + n
                    self.batches += 1
                self._report()
                if n == 0:
                    return n_total
                n_total += n
                if self.pause:
                    time.sleep(self.pause)

    def _table(self, table, pool):
        self.current = table
        self.deleted.setdefault(table, 0)
        queue = list(self.per_table[table]) if table in self.per_table else list(self.ghosts)
        qlock = threading.Lock()

        def worker(conn):
            while True:
                with qlock:
                    if not queue:
                        return
                    v = queue.pop(0)
                self._vnode(table, v, conn)

        with ThreadPoolExecutor(max_workers=len(pool)) as ex:
            for f in [ex.submit(worker, c) for c in pool]:
                f.result()

    def run(self, tables):
        self.started = time.monotonic()
        pool = [self.connect() for _ in range(self.conns)]
        try:
            for t in tables:
                if t in self.done_tables:
                    continue
                self._table(t, pool)
                if self.stop is not None and self.stop.is_set():
                    break
                if self.on_table_done:
                    self.on_table_done(t)
            self._report(force=True)
        finally:
            for c in pool:
                try:
                    c.close()
                except Exception:  # noqa: BLE001
                    pass
        return dict(self.deleted)


def leftovers(conn, tables, ghosts):
    """[(table, vnode)] of ghost vnodes that still have a row (reshard.md §4 step 5)."""
    found = []
    ghosts = sorted(set(int(v) for v in ghosts))
    if not ghosts:
        return found
    with conn.cursor() as cur:
        for t in tables:
            cur.execute(sql.SQL("SELECT DISTINCT _vnode FROM {} WHERE _vnode = ANY(%s)").format(
                sql.Identifier(t)), (ghosts,))
            found.extend((t, int(r[0])) for r in cur.fetchall())
    return found


def vnodes_present(conn, tables):
    """Every distinct non-NULL _vnode over the tables."""
    out = set()
    with conn.cursor() as cur:
        for t in tables:
            cur.execute(sql.SQL("SELECT DISTINCT _vnode FROM {} WHERE _vnode IS NOT NULL").format(
                sql.Identifier(t)))
            out.update(int(r[0]) for r in cur.fetchall())
    return out
