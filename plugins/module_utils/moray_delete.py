# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Delete the rows of given vnodes from a shard at PostgreSQL speed, resumably, then verify.

This is the reshard service's ``delete_data`` (reshard.md §4) rebuilt to be
fast and safe to leave running:

* **Tables**: every table with a ``_vnode`` column (or the ones asked for),
  ``manta_directory_counts`` first (its rows are what libmanta's trigger on
  ``manta`` would otherwise update for each deleted entry), then the others
  in name order; one table is finished before the next starts.
* **Batches keyed by** ``_id``, then ``_idx`` (extended ids, when the table has
  a valid ``<t>__idx_idx``), then ``_key`` for any row with neither. Each
  DELETE removes at most ``batch_size`` rows, chosen by a sub-select::

      WITH batch AS (SELECT <col> FROM t WHERE <which rows> LIMIT n),
           gone  AS (DELETE FROM t WHERE <col> IN (SELECT ...) AND _vnode = ANY(v) RETURNING 1)
      SELECT count(gone), count(batch), max(batch)

  and is its own transaction (autocommit), so killing the job at any moment
  loses at most one batch's worth of work and leaves nothing half-done.
* **Two plans**, chosen per table (``strategy=auto``) from the census:

  - ``vnode``: for a small share of the table. Work units are groups of
    vnodes holding about ``batch_size`` rows together; the batch sub-select is
    ordered by ``_vnode`` so that the planner walks Moray's ``<t>__vnode_idx``
    and stops after n live rows (an unordered ``LIMIT n`` lets it pick a table
    scan that re-reads every earlier batch's dead rows: quadratic on a big,
    scattered vnode). Cost is proportional to the rows deleted.
  - ``id_range``: for a large share (>= 20% of the table, e.g. half the
    vnodes after a split). The ``_id`` span of the victims is cut into ranges
    walked in ``_id`` order (keyset pagination on ``<t>__id_idx``) with a hashed
    ``_vnode = ANY(...)`` filter. Every row of the table is read once, which
    is what a single ``DELETE ... WHERE _vnode = ANY(...)`` does, but in
    bounded batches spread over several connections.

* **Connections**: ``connections`` workers, each with its own connection to
  the primary, take units from a shared queue. Throttles (batch size, pause,
  connections, rows/s ceiling; module_utils/throttle.py) are re-read between
  batches; a shrinking pool hands unfinished units back to the queue.
* **Resuming**: the progress file records, per table, the vnodes finished
  (``done``) and, for ``id_range``, the finished ranges. A rerun of the same
  request (same shard, owner, vnodes, tables) skips them; a finished
  (verified) run or a different request starts afresh. A vnode recorded as
  finished that holds rows again makes the run fail before deleting anything:
  something still writes it (an electric-moray with an old ring?).
* **Verification**: after the deletes, one census of the requested vnodes
  over every table; any row left fails loudly, naming table, vnode and rows.
"""
from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import math
import os
import socket
import threading
import time

from ansible_collections.manta.ops.plugins.module_utils import moray_census, moray_pg, progress
from ansible_collections.manta.ops.plugins.module_utils.fash.vnodes import parse_vnodes, ranges
from ansible_collections.manta.ops.plugins.module_utils.moray_pg import psycopg2, sql
from ansible_collections.manta.ops.plugins.module_utils.moray_tables import key_columns

STRATEGIES = ("auto", "vnode", "id_range")
ID_RANGE_MIN_SHARE = 0.2        # auto: id_range when the victims are >= 20% of the table
MAX_GROUP_VNODES = 1000         # vnodes per vnode-unit
MAX_RANGES = 4096
MIN_RANGE_ROWS = 10000
PROGRESS_FORMAT = 1
RECONNECT_ATTEMPTS = 3


class DeleteError(Exception):
    """The delete could not be completed; what was deleted is recorded in the progress file."""

    def __init__(self, msg, table=None, vnode=None):
        super().__init__(msg)
        self.table = table
        self.vnode = vnode


class VerifyError(DeleteError):
    """Rows remain for deleted vnodes."""

    def __init__(self, msg, leftovers):
        super().__init__(msg, leftovers[0]["table"] if leftovers else None,
                         leftovers[0]["vnode"] if leftovers else None)
        self.leftovers = leftovers


class ResumeError(DeleteError):
    """The progress file and the database disagree in a way that needs an operator."""


# ---- units and statements ---------------------------------------------------------------------

class Unit:
    __slots__ = ("table", "column", "kind", "vnodes", "lo", "hi", "cursor", "index", "expected")

    def __init__(self, table, column, kind, vnodes, lo=None, hi=None, index=None, expected=0):
        self.table = table
        self.column = column
        self.kind = kind            # "vnodes" | "range"
        self.vnodes = vnodes        # list of ints
        self.lo = lo
        self.hi = hi                # None: open-ended
        self.cursor = lo
        self.index = index
        self.expected = expected

    def describe(self):
        if self.kind == "range":
            hi = "" if self.hi is None else self.hi
            return f"{self.table} {self.column} [{self.cursor}, {hi}) of {len(self.vnodes)} vnodes"
        return f"{self.table} by {self.column}, vnodes {ranges(self.vnodes)}"


def _pass_condition(table, column):
    if column == "_id":
        return sql.SQL("_id IS NOT NULL")
    if column == "_idx":
        return sql.SQL("_id IS NULL AND _idx IS NOT NULL") if table.has_id else sql.SQL("_idx IS NOT NULL")
    if table.has_id and table.extended_ids:
        return sql.SQL("_id IS NULL AND _idx IS NULL")
    if table.has_id:
        return sql.SQL("_id IS NULL")
    return sql.SQL("TRUE")


def vnode_batch_sql(table, column):
    """One bounded DELETE of the rows of a vnode group, keyed by ``column``."""
    col = sql.Identifier(column)
    return sql.SQL(
        "WITH batch AS (SELECT {col} AS k FROM {t} WHERE _vnode = ANY(%(v)s::bigint[]) AND {cond} "
        "ORDER BY _vnode LIMIT %(n)s), "
        "gone AS (DELETE FROM {t} WHERE {col} IN (SELECT k FROM batch) "
        "AND _vnode = ANY(%(v)s::bigint[]) AND {cond} RETURNING 1) "
        "SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM batch), NULL::text"
    ).format(col=col, t=table.ident(), cond=_pass_condition(table, column))


def range_batch_sql(table, column, open_ended):
    """One bounded DELETE walking ``column`` upward inside [lo, hi) (keyset pagination).

    The sub-select finds the ``n``-th victim id from ``lo`` on (an index scan
    of ``<t>_<column>_idx`` that stops after n matches); the DELETE then takes
    the id range [lo, that id] with the same vnode filter, i.e. the same rows,
    by a plain range scan (as cheap per row as one big DELETE).
    """
    col = sql.Identifier(column)
    upper = sql.SQL("") if open_ended else sql.SQL(" AND {col} < %(hi)s").format(col=col)
    return sql.SQL(
        "WITH batch AS (SELECT {col} AS k FROM {t} WHERE {col} >= %(lo)s{upper} "
        "AND _vnode = ANY(%(v)s::bigint[]) ORDER BY {col} LIMIT %(n)s), "
        "lim AS (SELECT max(k) AS m, count(*) AS c FROM batch), "
        "gone AS (DELETE FROM {t} WHERE {col} >= %(lo)s AND {col} <= (SELECT m FROM lim) "
        "AND _vnode = ANY(%(v)s::bigint[]) RETURNING 1) "
        "SELECT (SELECT count(*) FROM gone), (SELECT c FROM lim), (SELECT m FROM lim)::text"
    ).format(col=col, t=table.ident(), upper=upper)


def single_delete_sql(table):
    """The baseline: RFD 103's one unbatched statement (used by the benchmark only)."""
    return sql.SQL("DELETE FROM {t} WHERE _vnode = ANY(%(v)s::bigint[])").format(t=table.ident())


def choose_strategy(strategy, table, victims):
    if strategy != "auto":
        if strategy == "id_range" and not table.has_id:
            return "vnode"
        return strategy
    if not table.has_id:
        return "vnode"
    est = max(int(table.estimated_rows or 0), victims)
    return "id_range" if est and victims / float(est) >= ID_RANGE_MIN_SHARE else "vnode"


def group_vnodes(rows_by_vnode, batch_size):
    """Vnodes (ascending) packed into groups of about ``batch_size`` rows (a bigger vnode alone)."""
    groups = []
    cur, cur_rows = [], 0
    for v in sorted(rows_by_vnode):
        n = rows_by_vnode[v]
        if cur and (cur_rows + n > batch_size or len(cur) >= MAX_GROUP_VNODES):
            groups.append((cur, cur_rows))
            cur, cur_rows = [], 0
        cur.append(v)
        cur_rows += n
    if cur:
        groups.append((cur, cur_rows))
    return groups


def range_layout(lo, hi, victims, batch_size, connections=1):
    """(count, width) of the id ranges for a span [lo, hi] holding ``victims`` rows."""
    per = max(batch_size * 4, MIN_RANGE_ROWS)
    count = int(math.ceil(victims / float(per)))
    count = max(count, min(4 * max(1, connections), int(math.ceil(victims / float(batch_size)))))
    count = max(1, min(MAX_RANGES, count, hi - lo + 1))
    width = int(math.ceil((hi - lo + 1) / float(count)))
    return count, width


def run_key(shard, owner_shard, vnodes, tables):
    text = "|".join([shard, owner_shard or "", ranges(vnodes), ",".join(sorted(tables or []))])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


# ---- the deleter -----------------------------------------------------------------------------

class Deleter:
    """Runs the units of each table over a pool of connections, writing progress as it goes."""

    def __init__(self, target, shard, tables, vnodes, throttle, connect_timeout=10,
                 statement_timeout=600.0, strategy="auto", progress_path=None, state=None,
                 progress_interval=1.0, header=None):
        if strategy not in STRATEGIES:
            raise DeleteError(f"strategy {strategy!r} is not valid; valid: {', '.join(STRATEGIES)}")
        self.target = target
        self.shard = shard
        self.tables = tables                    # ordered list of TableInfo
        self.vnodes = list(vnodes)
        self.throttle = throttle
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.strategy = strategy
        self.progress_path = progress_path
        self.progress_interval = progress_interval
        self.state = state or {}
        self.header = dict(header or {})
        self.done = {t.name: set() for t in tables}
        self.range_done = {}                    # table -> col -> set(index)
        self.range_plan = {}                    # table -> col -> {"lo","width","count"}
        self.strategies = {}
        self.table_rows = {t.name: 0 for t in tables}
        self.table_total = {t.name: 0 for t in tables}
        self.table_status = {t.name: "pending" for t in tables}
        self.meter = None
        self.status = "running"
        self.error = None
        self.phase = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._queue = collections.deque()
        self._workers = {}
        self._failure = None
        self._outstanding = {}                  # (table, vnode) -> passes left
        self._range_left = {}                   # (table, col) -> ranges left
        self._range_vnodes = {}                 # (table, col) -> vnodes with rows in that pass
        self._last_write = 0.0
        self._load_state()

    # ---- state ------------------------------------------------------------------------
    def _load_state(self):
        st = self.state
        for t in self.tables:
            text = (st.get("done") or {}).get(t.name)
            if text:
                try:
                    self.done[t.name] = set(parse_vnodes(text, allow_duplicates=True))
                except Exception:
                    self.done[t.name] = set()
            for col, rp in ((st.get("ranges") or {}).get(t.name) or {}).items():
                try:
                    self.range_plan.setdefault(t.name, {})[col] = {
                        "lo": int(rp["lo"]), "width": int(rp["width"]), "count": int(rp["count"])}
                    self.range_done.setdefault(t.name, {})[col] = set(
                        parse_vnodes(rp.get("done") or [], allow_duplicates=True))
                except (KeyError, TypeError, ValueError, Exception):
                    self.range_plan.get(t.name, {}).pop(col, None)

    def check_reappeared(self, census):
        """Fail before deleting when a vnode finished by an earlier attempt holds rows again."""
        bad = [(t, v, census.rows_of(t, v)) for t in self.done for v in sorted(self.done[t])
               if census.rows_of(t, v)]
        if bad:
            t, v, n = bad[0]
            raise ResumeError(
                f"{n} rows reappeared in table {t} vnode {v} on shard {self.shard} after an earlier "
                f"attempt of this delete had emptied it (progress file {self.progress_path})"
                + (f"; {len(bad)} (table, vnode) pairs in all" if len(bad) > 1 else "")
                + ": something still writes rows of these vnodes to this shard (an electric-moray "
                "with an old ring?). Nothing was deleted. Find the writer; to delete them anyway, "
                "move the progress file away and rerun", table=t, vnode=v)

    def snapshot(self):
        out = dict(self.header)
        snap = self.meter.snapshot() if self.meter else {}
        out.update(snap)
        out.update({
            "format": PROGRESS_FORMAT,
            "status": self.status,
            "error": self.error,
            "phase": self.phase,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "updated": progress.utc_now(),
            "throttle": self.throttle.settings,
            "throttle_file": self.throttle.path,
            "throttle_error": self.throttle.error,
            "connections_active": len(self._workers),
            "tables": {t.name: {"rows_total": self.table_total[t.name], "rows_done": self.table_rows[t.name],
                                "strategy": self.strategies.get(t.name), "status": self.table_status[t.name]}
                       for t in self.tables},
            "done": {t: ranges(sorted(vs)) for t, vs in self.done.items()},
            "ranges": {t: {c: dict(p, done=ranges(sorted(self.range_done.get(t, {}).get(c, ()))))
                           for c, p in cols.items()} for t, cols in self.range_plan.items()},
        })
        return out

    def write_progress(self, force=False):
        if not self.progress_path:
            return
        now = time.monotonic()
        if not force and now - self._last_write < self.progress_interval:
            return
        self._last_write = now
        with self._lock:
            data = self.snapshot()
        progress.write_json(self.progress_path, data)

    # ---- planning -----------------------------------------------------------------------
    def plan(self, census):
        """Units for every table, skipping finished work. Also marks empty pairs finished."""
        settings = self.throttle.settings
        bs, conns = settings["batch_size"], settings["connections"]
        plan = []
        for t in self.tables:
            name = t.name
            rows = {v: n for v, n in census.rows[name].items() if n}
            self.table_total[name] = sum(rows.values())
            for v in self.vnodes:
                if v not in rows:
                    self.done[name].add(v)
            if not rows:
                self.table_status[name] = "done"
                self.strategies[name] = None
                continue
            strategy = choose_strategy(self.strategy, t, self.table_total[name])
            self.strategies[name] = strategy
            passes = census.passes[name]
            units = []
            for v in rows:
                self._outstanding[(name, v)] = 0
            for col in key_columns(t):
                by_v = {v: p[col] for v, p in passes.items() if p.get(col)}
                if not by_v:
                    continue
                for v in by_v:
                    self._outstanding[(name, v)] += 1
                span = census.spans[name].get(col)
                if strategy == "id_range" and col in ("_id", "_idx") and span:
                    units += self._range_units(t, col, span, by_v, bs, conns)
                else:
                    for group, n in group_vnodes(by_v, bs):
                        units.append(Unit(name, col, "vnodes", group, expected=n))
            plan.append((t, units))
        return plan

    def _range_units(self, t, col, span, by_v, bs, conns):
        name = t.name
        lo, hi = int(span[0]), int(span[1])
        victims = sum(by_v.values())
        stored = self.range_plan.get(name, {}).get(col)
        if stored and lo >= stored["lo"]:
            rlo, width, count = stored["lo"], stored["width"], stored["count"]
            done = self.range_done.setdefault(name, {}).setdefault(col, set())
        else:
            count, width = range_layout(lo, hi, victims, bs, conns)
            rlo = lo
            self.range_plan.setdefault(name, {})[col] = {"lo": rlo, "width": width, "count": count}
            done = self.range_done.setdefault(name, {}).setdefault(col, set())
            done.clear()
        vlist = sorted(by_v)
        self._range_vnodes[(name, col)] = vlist
        units = []
        for i in range(count):
            if i in done:
                continue
            a = rlo + i * width
            b = None if i == count - 1 else rlo + (i + 1) * width
            units.append(Unit(name, col, "range", vlist, lo=a, hi=b, index=i,
                              expected=int(victims / float(count))))
        self._range_left[(name, col)] = len(units)
        if not units:                       # every range done but rows remain: walk again
            done.clear()
            self.range_plan[name][col] = {"lo": lo, "width": hi - lo + 1, "count": 1}
            units.append(Unit(name, col, "range", vlist, lo=lo, hi=None, index=0, expected=victims))
            self._range_left[(name, col)] = 1
        return units

    # ---- bookkeeping ----------------------------------------------------------------------
    def _finish_pass(self, table, vnodes):
        for v in vnodes:
            key = (table, v)
            left = self._outstanding.get(key, 0) - 1
            self._outstanding[key] = left
            if left <= 0:
                self.done[table].add(v)

    def _unit_done(self, unit):
        with self._lock:
            if unit.kind == "range":
                self.range_done.setdefault(unit.table, {}).setdefault(unit.column, set()).add(unit.index)
                key = (unit.table, unit.column)
                self._range_left[key] -= 1
                if self._range_left[key] == 0:
                    self._finish_pass(unit.table, self._range_vnodes[key])
            else:
                self._finish_pass(unit.table, unit.vnodes)

    def _record(self, unit, deleted):
        with self._lock:
            self.table_rows[unit.table] += deleted
        if deleted:
            self.meter.add(deleted)

    # ---- workers ----------------------------------------------------------------------------
    def _connect(self):
        return moray_pg.connect(self.target, self.connect_timeout, self.statement_timeout)

    def _statement(self, tables, unit):
        t = tables[unit.table]
        if unit.kind == "range":
            return range_batch_sql(t, unit.column, unit.hi is None)
        return vnode_batch_sql(t, unit.column)

    def _run_unit(self, conn, unit, slot, tables):
        stmt = self._statement(tables, unit)
        cur = conn.cursor()
        while True:
            if self._stop.is_set():
                return False
            self.throttle.refresh()
            s = self.throttle.settings
            if slot >= s["connections"]:
                return False
            n = s["batch_size"]
            delay = self.throttle.reserve(n)
            if delay > 0 and not self.throttle.wait(delay, self._stop):
                self.throttle.refund(n)
                continue
            params = {"v": unit.vnodes, "n": n}
            if unit.kind == "range":
                params["lo"] = unit.cursor
                if unit.hi is not None:
                    params["hi"] = unit.hi
            cur.execute(stmt, params)
            deleted, found, last = cur.fetchone()
            self.throttle.refund(n - deleted)
            self._record(unit, deleted)
            if found < n:
                return True
            if unit.kind == "range":
                unit.cursor = int(last) + 1
            if deleted and s["pause_ms"]:
                self.throttle.wait(s["pause_ms"] / 1000.0, self._stop)

    def _worker(self, slot, tables):
        conn = None
        attempts = 0
        try:
            while not self._stop.is_set():
                if slot >= self.throttle.settings["connections"]:
                    return
                with self._lock:
                    unit = self._queue.popleft() if self._queue else None
                if unit is None:
                    return
                try:
                    if conn is None:
                        conn = self._connect()
                    finished = self._run_unit(conn, unit, slot, tables)
                    attempts = 0
                except psycopg2.errors.QueryCanceled:
                    raise DeleteError(
                        f"statement_timeout ({self.statement_timeout}s) hit while deleting from "
                        f"{unit.describe()}: lower batch_size or raise statement_timeout, then rerun "
                        "to resume", table=unit.table, vnode=unit.vnodes[0]) from None
                except (psycopg2.errors.DeadlockDetected, psycopg2.errors.SerializationFailure):
                    with self._lock:
                        self._queue.appendleft(unit)
                    continue
                except (psycopg2.OperationalError, psycopg2.InterfaceError, moray_pg.MorayPgError) as exc:
                    with self._lock:
                        self._queue.appendleft(unit)
                    moray_pg.close_quietly(conn)
                    conn = None
                    attempts += 1
                    if attempts > RECONNECT_ATTEMPTS:
                        raise DeleteError(
                            f"lost the connection to the primary of {self.shard} while deleting from "
                            f"{unit.describe()} ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc}) "
                            f"{attempts} times; rerun to resume", table=unit.table,
                            vnode=unit.vnodes[0]) from None
                    self._stop.wait(2 ** (attempts - 1))
                    continue
                except psycopg2.Error as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise DeleteError(f"PostgreSQL error while deleting from {unit.describe()}: {first}",
                                      table=unit.table, vnode=unit.vnodes[0]) from None
                if finished:
                    self._unit_done(unit)
                else:
                    with self._lock:
                        self._queue.appendleft(unit)
        except BaseException as exc:  # noqa: B902 - handed to the coordinator
            with self._lock:
                if self._failure is None:
                    self._failure = exc
            self._stop.set()
        finally:
            moray_pg.close_quietly(conn)
            with self._lock:
                self._workers.pop(slot, None)

    def _run_units(self, units, tables):
        with self._lock:
            self._queue.extend(units)
        while True:
            self.throttle.refresh()
            want = self.throttle.settings["connections"]
            with self._lock:
                failed = self._failure is not None
                pending = len(self._queue)
                active = len(self._workers)
                free = [s for s in range(want) if s not in self._workers]
            if failed:
                break
            if pending == 0 and active == 0:
                break
            for slot in free[:pending]:
                th = threading.Thread(target=self._worker, args=(slot, tables), daemon=True)
                with self._lock:
                    self._workers[slot] = th
                th.start()
            self.write_progress()
            time.sleep(0.05)
        for th in list(self._workers.values()):
            th.join()
        if self._failure is not None:
            raise self._failure

    def run(self, census):
        """Delete everything the census found; returns {table: rows deleted}."""
        plan = self.plan(census)
        total = sum(self.table_total.values())
        self.meter = progress.RateMeter(total=total)
        tables = {t.name: t for t in self.tables}
        self.write_progress(force=True)
        try:
            for t, units in plan:
                self.phase = f"deleting from {t.name}"
                self.table_status[t.name] = "running"
                self._run_units(units, tables)
                self.table_status[t.name] = "done"
                for v in self.vnodes:
                    self.done[t.name].add(v)
                self.write_progress(force=True)
        except BaseException as exc:
            self._stop.set()
            self.status = "failed"
            self.error = str(exc)
            self.write_progress(force=True)
            raise
        return dict(self.table_rows)


# ---- the whole operation --------------------------------------------------------------------

class ProgressLock:
    """An exclusive lock next to the progress file (``<progress_file>.lock``), so two runs
    never share one.

    The holder writes who it is into the lock file (pid, host, time, ``holder``
    details) so that a run that cannot take the lock names it. ``wait`` seconds
    (0: fail at once) are spent polling for the holder to finish; ``waited``
    says how long it took.
    """

    POLL = 0.25

    def __init__(self, path, wait=0.0, holder=None):
        self.path = path + ".lock" if path else None
        self.wait = float(wait or 0)
        self.holder = dict(holder or {})
        self.fh = None
        self.waited = 0.0

    def _try(self):
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def __enter__(self):
        if not self.path:
            return self
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self.fh = open(self.path, "a+")
        start = time.monotonic()
        deadline = start + max(0.0, self.wait)
        while not self._try():
            if time.monotonic() >= deadline:
                self.waited = _seconds(start)
                self.fh.close()
                self.fh = None
                raise DeleteError(self._held_msg())
            time.sleep(min(self.POLL, max(0.0, deadline - time.monotonic())))
        self.waited = _seconds(start)
        doc = dict(self.holder, pid=os.getpid(), host=socket.gethostname(), since=progress.utc_now())
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(json.dumps(doc, sort_keys=True) + "\n")
        self.fh.flush()
        return self

    def _held_msg(self):
        who = describe_lock_holder(self.path)
        waited = (f"; waited {self.waited:.1f}s (lock_wait {self.wait:g}s) for it to finish"
                  if self.wait > 0 else "")
        return (f"another run holds {self.path}: a delete for this progress file is already "
                f"running ({who}){waited}. Watch its progress file "
                f"{self.path[:-len('.lock')]}, wait for it (lock_wait: seconds), or give "
                "another progress_file")

    def __exit__(self, *exc):
        if self.fh is not None:
            try:
                self.fh.truncate(0)  # free again: the file names no holder
            except OSError:
                pass
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


def describe_lock_holder(lock_path):
    """Who holds a progress lock, from what the holder wrote into the lock file."""
    try:
        with open(lock_path, "r", encoding="utf-8") as fh:
            doc = json.loads(fh.read() or "null")
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or "pid" not in doc:
        return "holder unknown: the lock file names none"
    bits = [f"pid {doc['pid']} on {doc.get('host', '?')}"]
    if doc.get("shard"):
        bits.append(f"shard {doc['shard']}")
    if doc.get("vnode_count") is not None:
        bits.append(f"{doc['vnode_count']} vnodes")
    if doc.get("since"):
        bits.append(f"since {doc['since']}")
    return "held by " + ", ".join(bits)


def leftovers(census):
    return [{"table": t, "vnode": v, "rows": n} for t, v, n in census.nonzero()]


def verify(conn, shard, tables, vnodes, full_scan=()):
    """Census of ``vnodes``; raises VerifyError listing every (table, vnode) with rows left.

    ``full_scan``: tables where a large share was just deleted (id_range), read
    sequentially rather than through an index full of dead entries."""
    after = moray_census.take(conn, shard, tables, vnodes=vnodes, with_bytes=False, full_scan=full_scan)
    left = leftovers(after)
    if left:
        shown = "; ".join(f"table {x['table']} vnode {x['vnode']}: {x['rows']} rows" for x in left[:10])
        raise VerifyError(
            f"verification failed on shard {shard}: rows remain for deleted vnodes in "
            f"{len(left)} (table, vnode) pair(s): {shown}"
            + (f"; and {len(left) - 10} more" if len(left) > 10 else "")
            + ". Something (a trigger, or a writer with an old ring) recreated them; find it before "
            "rerunning", left)
    return after


def _seconds(t0):
    return round(time.monotonic() - t0, 3)


def delete_vnode_rows(shard, target, vnodes, tables=None, owner_shard=None, owner_target=None,
                      owner_min_ratio=1.0, force=False, throttle=None, strategy="auto",
                      progress_path=None, check_mode=False, connect_timeout=10,
                      statement_timeout=600.0, progress_interval=1.0, warn=None, lock_wait=0.0):
    """The whole operation: lock the progress file, discover, count, check the owner, delete, verify.

    The progress file's lock is taken first (not in check mode), waiting up to
    ``lock_wait`` seconds for another run that holds it, so that everything
    after it (the census in particular) sees the shard as that run left it.

    Returns the module result (without ``changed``/``diff``). Raises
    MorayPgError, TableError, OwnerCheckError, ResumeError, DeleteError or
    VerifyError; every error raised before the first DELETE leaves the shard
    untouched.
    """
    holder = {"shard": shard, "owner_shard": owner_shard, "vnode_count": len(set(vnodes))}
    lock = ProgressLock(None if check_mode else progress_path, wait=lock_wait, holder=holder)
    with lock:
        result = _delete_vnode_rows(
            shard, target, vnodes, tables=tables, owner_shard=owner_shard,
            owner_target=owner_target, owner_min_ratio=owner_min_ratio, force=force,
            throttle=throttle, strategy=strategy, progress_path=progress_path,
            check_mode=check_mode, connect_timeout=connect_timeout,
            statement_timeout=statement_timeout, progress_interval=progress_interval, warn=warn)
    result["seconds"]["lock_wait"] = lock.waited
    return result


def _delete_vnode_rows(shard, target, vnodes, tables, owner_shard, owner_target, owner_min_ratio,
                       force, throttle, strategy, progress_path, check_mode, connect_timeout,
                       statement_timeout, progress_interval, warn):
    from ansible_collections.manta.ops.plugins.module_utils import moray_owner_check, moray_tables
    warn = warn or (lambda msg: None)
    t_all = time.monotonic()
    secs = {}
    vnodes = sorted(set(vnodes))
    conn = oconn = None
    step = moray_pg.step
    try:
        conn = moray_pg.connect(target, connect_timeout, statement_timeout)
        with step(f"reading the tables of shard {shard}", statement_timeout):
            ident = moray_pg.require_primary(conn, target)
            infos = moray_tables.discover(conn, tables, database=ident["database"])
        order = [infos[n] for n in moray_tables.delete_order(infos)]
        t0 = time.monotonic()
        with step(f"counting the rows of {len(vnodes)} vnodes on shard {shard}", statement_timeout):
            before = moray_census.take(conn, shard, order, vnodes=vnodes, with_bytes=False, breakdown=True)
        secs["census"] = _seconds(t0)

        result = {
            "shard": shard,
            "database": ident,
            "vnodes": ranges(vnodes),
            "vnode_count": len(vnodes),
            "tables": [t.name for t in order],
            "table_info": [t.to_result() for t in order],
            "rows_before": before.counts_map(),
            "rows_to_delete": before.total_rows,
            "progress_file": progress_path,
            "resumed": False,
            "seconds": secs,
        }

        # -- the owner must hold the rows (before anything is deleted) -------------------
        t0 = time.monotonic()
        if owner_target is not None:
            oconn = moray_pg.connect(owner_target, connect_timeout, statement_timeout,
                                     what="primary of owner shard")
            with step(f"reading owner shard {owner_shard}", statement_timeout):
                oident = moray_pg.require_primary(oconn, owner_target)
            if moray_owner_check.same_database(ident, oident):
                raise moray_owner_check.OwnerCheckError(
                    f"owner shard {owner_shard} ({owner_target.display}) is the same database as "
                    f"shard {shard} ({target.display}): the owner check would compare the rows with "
                    "themselves. Point owner_dsn at the primary of the shard that now owns the vnodes")
            with step(f"counting the rows of {len(vnodes)} vnodes on owner shard {owner_shard}",
                      statement_timeout):
                oinfos = moray_tables.discover(oconn)
                otables = [oinfos[t.name] for t in order if t.name in oinfos]
                ocensus = moray_census.take(oconn, owner_shard, otables, vnodes=vnodes, with_bytes=False)
            moray_pg.close_quietly(oconn)
            oconn = None
            check = moray_owner_check.compare(before, ocensus, owner_min_ratio)
            check.update({"owner_shard": owner_shard, "owner_database": oident, "forced": False})
            if not check["ok"]:
                if not force:
                    raise moray_owner_check.OwnerCheckError(
                        moray_owner_check.refusal(check, shard, owner_shard))
                check["forced"] = True
                warn(moray_owner_check.refusal(check, shard, owner_shard).replace(
                    "refusing to delete", "force=true: deleting anyway although", 1))
        else:
            check = {"ok": None, "skipped": "force=true and no owner shard given: not checked",
                     "forced": True}
        secs["owner_check"] = _seconds(t0)
        result["owner_check"] = check

        # -- resume state ---------------------------------------------------------------------
        key = run_key(shard, owner_shard, vnodes, tables)
        header = {"module": "manta.ops.moray_vnode_rows", "run": key, "shard": shard,
                  "owner_shard": owner_shard, "database": ident, "vnodes": ranges(vnodes),
                  "vnode_count": len(vnodes), "tables_requested": sorted(tables or []),
                  "started": progress.utc_now()}
        state = progress.read_json(progress_path) if progress_path else None
        resumed = False
        if state is not None:
            if state.get("shard") not in (None, shard):
                raise ResumeError(f"progress file {progress_path} belongs to shard "
                                  f"{state.get('shard')}, not {shard}; give another progress_file")
            if state.get("run") == key and state.get("status") not in ("done", None):
                resumed = True
                header["started"] = state.get("started") or header["started"]
                header["attempts"] = int(state.get("attempts") or 1) + 1
            else:
                state = None
        deleter = Deleter(target, shard, order, vnodes, throttle, connect_timeout=connect_timeout,
                          statement_timeout=statement_timeout, strategy=strategy,
                          progress_path=None if check_mode else progress_path,
                          state=state, progress_interval=progress_interval, header=header)
        if resumed:
            deleter.check_reappeared(before)
        result["resumed"] = resumed
        result["skipped_done"] = sum(len(v) for v in deleter.done.values()) if resumed else 0

        if check_mode:
            result["would_delete"] = before.counts_map()
            result["rows_after"] = {t.name: {} for t in order}
            result["throttle"] = throttle.settings
            result["strategy"] = {t.name: (choose_strategy(strategy, t, before.table_rows(t.name))
                                           if before.table_rows(t.name) else None) for t in order}
            secs["total"] = _seconds(t_all)
            return result

        if before.total_rows == 0:
            secs["delete"] = secs["verify"] = 0.0
            if resumed:
                deleter.meter = progress.RateMeter(total=0)
                deleter.status = "done"
                deleter.phase = "verified"
                deleter.write_progress(force=True)
            result.update(deleted={t.name: 0 for t in order}, rows_deleted=0, verified=True,
                          rows_after=before.counts_map(), strategy={t.name: None for t in order},
                          throttle=throttle.settings, throttle_error=throttle.error)
            secs["total"] = _seconds(t_all)
            return result

        t0 = time.monotonic()
        deleted = deleter.run(before)
        secs["delete"] = _seconds(t0)
        deleter.status = "verifying"
        deleter.phase = "verifying"
        deleter.write_progress(force=True)
        t0 = time.monotonic()
        try:
            # a fresh connection: the first one sat idle through a possibly long delete
            moray_pg.close_quietly(conn)
            conn = moray_pg.connect(target, connect_timeout, statement_timeout)
            with step(f"verifying shard {shard}", statement_timeout):
                after = verify(conn, shard, order, vnodes,
                               full_scan={t for t, st in deleter.strategies.items() if st == "id_range"})
        except (VerifyError, moray_pg.MorayPgError) as exc:
            deleter.status = "failed"
            deleter.error = str(exc)
            deleter.write_progress(force=True)
            raise
        secs["verify"] = _seconds(t0)
        deleter.status = "done"
        deleter.phase = "verified"
        snap = deleter.meter.snapshot()
        deleter.write_progress(force=True)
        result.update(
            deleted=deleted,
            rows_deleted=sum(deleted.values()),
            rows_after=after.counts_map(),
            verified=True,
            strategy=deleter.strategies,
            throttle=throttle.settings,
            throttle_error=throttle.error,
            progress={k: snap[k] for k in ("rows_total", "rows_done", "percent", "rows_per_second",
                                           "average_rows_per_second", "elapsed_seconds", "eta_seconds")},
        )
        secs["total"] = _seconds(t_all)
        return result
    finally:
        moray_pg.close_quietly(conn)
        moray_pg.close_quietly(oconn)
