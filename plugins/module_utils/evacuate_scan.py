# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Find every object copy on the evacuated nodes: a streaming scan of each
index shard's ``manta`` table on its live primary.

Per shard and id column (``_id``, then ``_idx`` where moray's extended ids
exist), the scan walks fixed windows of ids (keyset, never OFFSET), so every
query is short, touches a bounded slice of the ``_id`` index, holds no
snapshot open for hours, and the last id done is a resume point::

    SELECT _id, _key, _etag, _value FROM manta
     WHERE _id > $lo AND _id <= $lo + chunk AND type = 'object'
       AND _value LIKE ANY ('{%"3.stor.example.com"%, ...}')      -- server-side pre-filter

The pre-filter drops the rows that cannot match inside PostgreSQL. Every row it
keeps is then parsed and checked exactly (``sharks[].manta_storage_id`` equal
to an evacuated node), so a storage id that appears elsewhere in the value
(a header, a key) is never mistaken for a copy. With more evacuated nodes
than ``max_like_patterns`` the pre-filter is the equivalent JSON test in SQL.

``parallel`` fetch connections per shard keep the next windows' queries
running in PostgreSQL while the previous window is parsed and stored, so the
server's filtering and the client's parsing overlap; windows are consumed in
id order, so the stored watermark is always a valid resume point.

:func:`classify` decides each matching copy's initial fate: ``pending``, or
``skipped`` (``mpu_part``, ``zero_byte``), or ``error`` (``bad_manta_object``,
``duplicate_shark``).
"""
from __future__ import annotations

import json
import queue
import threading
import time

from ansible_collections.manta.ops.plugins.module_utils.evacuate_common import (
    EvacError, is_mpu_part, psycopg2, sql)

DEFAULT_CHUNK = 10000
DEFAULT_MAX_LIKE = 16


def like_escape(text):
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def like_patterns(nodes):
    """``%"<id>"%`` per node: a quoted storage id anywhere in ``_value``
    (robust to whitespace in hand-written JSON)."""
    return ['%"' + like_escape(n) + '"%' for n in nodes]


def id_columns(conn):
    """``["_id"]``, plus ``"_idx"`` where the table has moray's extended ids."""
    with conn.cursor() as cur:
        cur.execute("SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = 'manta' "
                    "AND column_name IN ('_id', '_idx')")
        cols = {r[0] for r in cur.fetchall()}
    conn.rollback()
    if "_id" not in cols:
        raise EvacError("this database has no manta table with an _id column (is it a moray "
                        "database? expected columns _id, _key, _value, _etag, type)")
    return ["_id"] + (["_idx"] if "_idx" in cols else [])


def max_id(conn, col):
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT max({}) FROM manta").format(sql.Identifier(col)))
        v = cur.fetchone()[0]
    conn.rollback()
    return int(v or 0)


def window_query(col, nodes, max_like=DEFAULT_MAX_LIKE):
    """(query, extra params) for one id window [lo, hi].

    Up to 3 nodes: ``_value LIKE ANY``. From 4: the same patterns on the tail of the
    value from its first ``"sharks":`` (where the top-level array must be; the
    whole value when there is none), so each extra node costs a pass over ~150
    bytes instead of the whole value. Above ``max_like`` nodes: the JSON test in SQL.
    The pre-filter may keep rows that do not match (the exact check drops them);
    it never drops one that does."""
    c = sql.Identifier(col)
    if len(nodes) <= 3:
        filt = sql.SQL("_value LIKE ANY (%s)")
        extra = [like_patterns(nodes)]
    elif len(nodes) <= max_like:
        filt = sql.SQL("substr(_value, strpos(_value, '\"sharks\":')) LIKE ANY (%s)")
        extra = [like_patterns(nodes)]
    else:
        filt = sql.SQL("EXISTS (SELECT 1 FROM json_array_elements(_value::json -> 'sharks') e "
                       "WHERE e ->> 'manta_storage_id' = ANY (%s))")
        extra = [list(nodes)]
    q = sql.SQL("SELECT {c}, _key, _etag, _value FROM manta WHERE {c} > %s AND {c} <= %s "
                "AND type = 'object' AND ").format(c=c) + filt
    return q, extra


def classify(key, mid, etag, raw, nodes):
    """Rows to store for one candidate ``manta`` row.

    Returns a list of tuples (key, node, mid, object_id, owner, path_owner, size,
    md5, etag, sharks_json, status, reason, detail), one per evacuated node the
    object really names in ``sharks`` (empty when the pre-filter matched
    something else).
    """
    try:
        v = json.loads(raw)
    except (TypeError, ValueError) as exc:
        hits = [n for n in nodes if f'"{n}"' in (raw or "")]
        return [(key, n, mid, None, None, None, 0, None, etag, None, "error", "bad_manta_object",
                 f"_value is not JSON: {exc}"[:300]) for n in hits]
    if not isinstance(v, dict):
        return []
    sharks = v.get("sharks")
    if not isinstance(sharks, list):
        return []
    ids = [s.get("manta_storage_id") if isinstance(s, dict) else None for s in sharks]
    matched = [n for n in nodes if n in ids]
    if not matched:
        return []
    compact = json.dumps([[s.get("datacenter"), s.get("manta_storage_id")] if isinstance(s, dict)
                          else [None, None] for s in sharks], separators=(",", ":"))
    owner = v.get("owner")
    creator = v.get("creator")
    path_owner = creator or owner
    oid = v.get("objectId")
    size = v.get("contentLength")
    md5 = v.get("contentMD5")
    out = []
    for n in matched:
        status, reason, detail = "pending", None, None
        if not isinstance(oid, str) or not oid or not isinstance(path_owner, str) or not path_owner:
            status, reason = "error", "bad_manta_object"
            detail = "objectId or owner/creator missing"
        elif ids.count(n) > 1:
            status, reason = "error", "duplicate_shark"
            detail = f"{n} appears {ids.count(n)} times in sharks"
        elif is_mpu_part(key):
            status, reason = "skipped", "mpu_part"
        elif isinstance(size, (int, float)) and not isinstance(size, bool) and size == 0:
            status, reason = "skipped", "zero_byte"
        elif not isinstance(md5, str) or not md5:
            status, reason = "error", "bad_manta_object"
            detail = "no contentMD5 to verify a copy against"
        elif not isinstance(size, (int, float)) or isinstance(size, bool) or size < 0:
            status, reason = "error", "bad_manta_object"
            detail = f"contentLength {size!r} is not a byte count"
        out.append((key, n, mid, oid if isinstance(oid, str) else None,
                    owner if isinstance(owner, str) else None,
                    path_owner if isinstance(path_owner, str) else None,
                    int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) else 0,
                    md5 if isinstance(md5, str) else None, (etag or "").strip(), compact,
                    status, reason, detail))
    return out


class ShardScan:
    """Scan one shard (all its id columns), handing matches to ``sink``.

    ``connect()`` returns a new connection to the shard primary (called for the
    fetch thread). ``sink(col, rows, last_id, ids_covered, seconds, done, max_id)``
    stores one window's results; it is called in id order, so its ``last_id``
    is a valid resume point. ``start`` maps col -> id to resume after.
    """

    def __init__(self, shard, connect, nodes, sink, start=None, chunk=DEFAULT_CHUNK,
                 deadline=None, max_like=DEFAULT_MAX_LIKE, done_cols=(), rows_per_sec=None,
                 parallel=2):
        self.parallel = max(1, int(parallel))
        self.shard = shard
        self.connect = connect
        self.nodes = list(nodes)
        self.sink = sink
        self.start = dict(start or {})
        self.chunk = max(100, int(chunk))
        self.deadline = deadline
        self.max_like = max_like
        self.done_cols = set(done_cols)
        self.rows_per_sec = rows_per_sec
        self.stats = {"shard": shard, "windows": 0, "matched": 0, "ids": 0, "seconds": 0.0,
                      "complete": False, "stopped": None, "columns": {}}

    def run(self):
        t0 = time.monotonic()
        conn = self.connect()
        try:
            cols = id_columns(conn)
            complete = True
            for col in cols:
                if col in self.done_cols:
                    continue
                if not self._scan_col(conn, col):
                    complete = False
                    break
            self.stats["complete"] = complete
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
            self.stats["seconds"] = round(time.monotonic() - t0, 3)
        return self.stats

    def _scan_col(self, conn, col):
        top = max_id(conn, col)
        lo = int(self.start.get(col) or 0)
        q, extra = window_query(col, self.nodes, self.max_like)
        qtext = q.as_string(conn)
        cstats = self.stats["columns"].setdefault(col, {"from": lo, "max_id": top, "matched": 0})
        finished = True
        while True:
            ok = self._scan_range(qtext, extra, col, lo, top, cstats)
            if not ok:
                finished = False
                break
            # New rows may have arrived meanwhile (ids only grow): follow the end once more.
            new_top = max_id(conn, col)
            if new_top <= top:
                break
            lo, top = top, new_top
            cstats["max_id"] = top
        if finished:
            self.sink(col, [], max(top, cstats.get("to", lo)), 0, 0.0, True, top)
        return finished

    def _scan_range(self, qtext, extra, col, lo, top, cstats):
        """Windows (lo, top] fetched by ``parallel`` connections, consumed in order."""
        cond = threading.Condition()
        ready = {}
        state = {"next": lo, "consumed": lo, "stop": False, "err": None}
        ahead = self.chunk * (self.parallel + 2)

        def fetch():
            fconn = None
            try:
                fconn = self.connect()
                while True:
                    with cond:
                        while (not state["stop"] and state["next"] < top
                               and state["next"] - state["consumed"] >= ahead):
                            cond.wait(0.5)
                        if state["stop"] or state["next"] >= top:
                            return
                        a = state["next"]
                        b = min(a + self.chunk, top)
                        state["next"] = b
                    t = time.monotonic()
                    with fconn.cursor() as cur:
                        cur.execute(qtext, [a, b] + extra)
                        rows = cur.fetchall()
                    fconn.rollback()
                    with cond:
                        ready[a] = (b, rows, time.monotonic() - t)
                        cond.notify_all()
            except Exception as exc:  # noqa: BLE001 - handed to the consumer
                with cond:
                    state["err"] = state["err"] or exc
                    state["stop"] = True
                    cond.notify_all()
            finally:
                if fconn is not None:
                    try:
                        fconn.close()
                    except Exception:  # noqa: BLE001
                        pass

        threads = [threading.Thread(target=fetch, name=f"scan-{self.shard}-{col}-{i}", daemon=True)
                   for i in range(self.parallel)]
        for th in threads:
            th.start()
        a = lo
        ok = True
        try:
            while a < top:
                with cond:
                    while a not in ready and not state["err"]:
                        cond.wait(0.5)
                    if state["err"]:
                        break
                    b, rows, qsecs = ready.pop(a)
                t = time.monotonic()
                out = []
                nodes = self.nodes
                for mid, key, etag, raw in rows:
                    out.extend(classify(key, mid, etag, raw, nodes))
                self.sink(col, out, b, b - a, qsecs + (time.monotonic() - t), False, top)
                self.stats["windows"] += 1
                self.stats["matched"] += len(out)
                self.stats["ids"] += b - a
                cstats["matched"] += len(out)
                cstats["to"] = b
                with cond:
                    state["consumed"] = b
                    cond.notify_all()
                if self.rows_per_sec:
                    time.sleep(max(0.0, (b - a) / float(self.rows_per_sec)
                                   - (time.monotonic() - t) - qsecs / self.parallel))
                a = b
                if self.deadline is not None and time.time() >= self.deadline and a < top:
                    ok = False
                    self.stats["stopped"] = "max_duration"
                    break
        finally:
            with cond:
                state["stop"] = True
                cond.notify_all()
            for th in threads:
                th.join(timeout=30)
        e = state["err"]
        if e is not None:
            if psycopg2 is not None and isinstance(e, psycopg2.Error):
                raise EvacError(f"scan of {self.shard} ({col}) failed: "
                                f"{str(e).strip().splitlines()[0]}") from None
            raise e
        return ok


def scan_shards(shards, connect_for, nodes, sink_for, starts=None, chunk=DEFAULT_CHUNK,
                deadline=None, max_like=DEFAULT_MAX_LIKE, done=None, rows_per_sec=None,
                parallel=2):
    """Scan several shards in parallel (one thread each). Returns per-shard stats;
    raises the first failure after every thread has stopped."""
    results, errors = {}, {}

    def one(shard):
        try:
            s = ShardScan(shard, lambda: connect_for(shard), nodes, sink_for(shard),
                          start=(starts or {}).get(shard), chunk=chunk, deadline=deadline,
                          max_like=max_like, done_cols=(done or {}).get(shard, ()),
                          rows_per_sec=rows_per_sec, parallel=parallel)
            results[shard] = s.run()
        except Exception as exc:  # noqa: BLE001
            errors[shard] = exc

    threads = [threading.Thread(target=one, args=(s,), name=f"scan-{s}") for s in shards]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        shard, exc = sorted(errors.items())[0]
        if isinstance(exc, EvacError):
            raise exc
        raise EvacError(f"scan of shard {shard} failed: {exc!r}") from exc
    return results


class StoreSink:
    """Hands one shard's windows to the job store on a thread of its own (its own
    connection), in order, so parsing the next window overlaps storing this one.

    ``store`` is a JobStore with a connection used by this sink only. Call
    ``sink`` as ShardScan's sink, then ``close()`` (raises what the writer hit).
    """

    def __init__(self, store, job, pass_no, shard, depth=2):
        self.store = store
        self.job = job
        self.pass_no = pass_no
        self.shard = shard
        self.q = queue.Queue(maxsize=depth)
        self.err = None
        self.new = 0
        self.updated = 0
        self.th = threading.Thread(target=self._run, name=f"store-{shard}", daemon=True)
        self.th.start()

    def _run(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.err is not None:
                continue
            col, rows, last_id, ids, seconds, finished, max_id = item
            try:
                ins, upd = self.store.store_scanned(
                    self.job, self.pass_no, self.shard, col, rows, last_id, ids, seconds,
                    done=finished, max_id=max_id, fresh=(self.pass_no == 1 and col == "_id"))
                self.new += ins
                self.updated += upd
            except Exception as exc:  # noqa: BLE001 - re-raised by sink/close
                self.err = exc

    def sink(self, col, rows, last_id, ids, seconds, finished, max_id):
        if self.err is not None:
            raise self.err
        self.q.put((col, rows, last_id, ids, seconds, finished, max_id))

    def close(self):
        self.q.put(None)
        self.th.join()
        try:
            self.store.conn.close()
        except Exception:  # noqa: BLE001
            pass
        if self.err is not None:
            raise self.err
