# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Find every object copy on the evacuated nodes: a streaming scan of each
index shard's ``manta`` table on its live primary.

Per shard and id column (``_id``, then ``_idx`` where moray's extended ids
exist), the scan walks fixed windows of ids (keyset, never OFFSET), so every
query is short, touches a bounded slice of the ``_id`` index, holds no
snapshot open for hours, and the last id done is a resume point::

    SELECT _id, _key, _etag, _value FROM manta
     WHERE _id > $lo AND _id <= $lo + chunk AND type = 'object' AND <pre-filter>

The pre-filter drops the rows that cannot match inside PostgreSQL (see
:func:`window_query`): for one node (up to ``max_like_patterns``) ``_value LIKE
'%"<id>"%'``; for more, one pass that cuts the storage ids out of the value
(text after each ``"manta_storage_id"``) and tests them against the set of
nodes, a hashed ``= ANY`` whose cost does not grow with the number of nodes.
Every row it keeps is then parsed and checked exactly
(``sharks[].manta_storage_id`` equal to an evacuated node), so a storage id
that appears elsewhere in the value (a header, a key) is never mistaken for a
copy. The parse is orjson's when it is installed (about 4x the standard
library's on a manta value), the standard library's otherwise or when orjson
refuses a value (NaN, lone surrogates), so the outcome never depends on it.

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

try:  # optional: a faster exact parse (requirements.txt pins it); same results either way
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the controller's Python
    _orjson = None

DEFAULT_CHUNK = 10000
# Up to this many nodes the pre-filter is one LIKE per node over the value; with more,
# the storage-id extraction (its cost does not depend on the number of nodes).
DEFAULT_MAX_LIKE = 1
# Storage ids the extraction reads per row; a row naming "manta_storage_id" more often
# falls back to the LIKE test (so nothing is ever dropped that names a node).
EXTRACT_SHARKS = 3
MAX_BIGINT = (1 << 63) - 1
SID_KEY = '"manta_storage_id"'


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


def _storage_id_at(k):
    """SQL for the text after the (k-1)-th ``"manta_storage_id"`` of ``_value``, up to the
    next quote once the separator (whitespace, colon, opening quote) is trimmed: the
    storage id when that occurrence is a key with a string value."""
    return sql.SQL("split_part(ltrim(split_part(_value, {key}, {k}), {trim}), '\"', 1)").format(
        key=sql.Literal(SID_KEY), k=sql.Literal(int(k)), trim=sql.Literal(' \t\n\r:"'))


def window_query(col, nodes, max_like=DEFAULT_MAX_LIKE):
    """(query, extra params) for one id window [lo, hi].

    Up to ``max_like`` nodes: ``_value LIKE ANY`` (``%"<id>"%`` per node). With more:
    the storage id after each of the first :data:`EXTRACT_SHARKS` occurrences of
    ``"manta_storage_id"`` (``split_part`` passes, which search like ``strpos``)
    ``= ANY`` the nodes, which PostgreSQL hashes from 9 elements on, so the cost per
    row is the same for 2 nodes or 90; a row with more occurrences than that is
    tested with the LIKE patterns (a usual row, two copies, costs three passes). Whitespace around the colon is allowed, as in
    the LIKE form. Both assume what moray writes (``JSON.stringify``): storage ids
    and that key are not spelled with ``\\u`` escapes. The pre-filter may keep
    rows that do not match (the exact check drops them); it never drops one that does."""
    c = sql.Identifier(col)
    if len(nodes) <= max_like:
        filt = sql.SQL("_value LIKE ANY (%s)")
        extra = [like_patterns(nodes)]
    else:
        # id 1 OR id 2 OR (a 3rd occurrence AND (id 3 OR (a 4th AND LIKE))): a row naming
        # the key twice (two copies, the usual case) costs three split_part passes
        def more(k):
            return sql.SQL("split_part(_value, {key}, {k}) <> ''").format(
                key=sql.Literal(SID_KEY), k=sql.Literal(k))
        filt = sql.SQL("(") + more(EXTRACT_SHARKS + 2) + sql.SQL(" AND _value LIKE ANY (%s))")
        for k in range(EXTRACT_SHARKS + 1, 1, -1):
            filt = sql.SQL("({} = ANY (%s) OR ").format(_storage_id_at(k)) + filt + sql.SQL(")")
            if k >= 4:
                filt = sql.SQL("(") + more(k) + sql.SQL(" AND ") + filt + sql.SQL(")")
        extra = [list(nodes)] * EXTRACT_SHARKS + [like_patterns(nodes)]
    q = sql.SQL("SELECT {c}, _key, _etag, _value FROM manta WHERE {c} > %s AND {c} <= %s "
                "AND type = 'object' AND ").format(c=c) + filt
    return q, extra


def prepare_window(conn, qtext, extra):
    """Prepare the window query on ``conn`` once; returns the statement that runs one
    window (params: lo, hi). The node lists make the query text long, and planning it
    (parsing the arrays, estimating each ``= ANY``) cost ~7 ms a window with 90 nodes,
    more than executing it: one generic plan serves every window."""
    with conn.cursor() as cur:
        asis = psycopg2.extensions.AsIs
        body = cur.mogrify(qtext, [asis("$1"), asis("$2")] + list(extra)).decode()
        if conn.server_version >= 120000:
            cur.execute("SET plan_cache_mode = force_generic_plan")
        cur.execute("PREPARE evac_window (bigint, bigint) AS " + body)
    conn.commit()
    return "EXECUTE evac_window (%s, %s)"


def loads(raw):
    """The value's JSON: orjson's parse when it takes it, else the standard library's
    (which also decides the values orjson refuses: NaN, Infinity, lone surrogates)."""
    if _orjson is not None:
        try:
            return _orjson.loads(raw)
        except (TypeError, ValueError):
            pass
    return json.loads(raw)


def _compact_sharks(sharks):
    pairs = [[s.get("datacenter"), s.get("manta_storage_id")] if isinstance(s, dict)
             else [None, None] for s in sharks]
    if _orjson is not None:
        try:
            return _orjson.dumps(pairs).decode()
        except (TypeError, ValueError):
            pass
    return json.dumps(pairs, separators=(",", ":"))


def classify(key, mid, etag, raw, nodes, nodeset=None):
    """Rows to store for one candidate ``manta`` row.

    Returns a list of tuples (key, node, mid, object_id, owner, path_owner, size,
    md5, etag, sharks_json, status, reason, detail), one per evacuated node the
    object really names in ``sharks`` (empty when the pre-filter matched
    something else), in the order of ``sharks``. ``nodeset``: ``frozenset(nodes)``,
    when the caller has it already.
    """
    try:
        v = loads(raw)
    except (TypeError, ValueError) as exc:
        hits = [n for n in nodes if f'"{n}"' in (raw or "")]
        return [(key, n, mid, None, None, None, 0, None, etag, None, "error", "bad_manta_object",
                 f"_value is not JSON: {exc}"[:300]) for n in hits]
    if not isinstance(v, dict):
        return []
    sharks = v.get("sharks")
    if not isinstance(sharks, list):
        return []
    if nodeset is None:
        nodeset = frozenset(nodes)
    ids = [s.get("manta_storage_id") if isinstance(s, dict) else None for s in sharks]
    matched = [i for i in ids if isinstance(i, str) and i in nodeset]
    if not matched:
        return []
    once = True  # no evacuated node is named twice
    if len(matched) > 1:
        hits = len(matched)
        matched = list(dict.fromkeys(matched))
        once = len(matched) == hits
    compact = _compact_sharks(sharks)
    owner = v.get("owner")
    creator = v.get("creator")
    path_owner = creator or owner
    oid = v.get("objectId")
    size = v.get("contentLength")
    md5 = v.get("contentMD5")
    etag = (etag or "").strip()
    number = isinstance(size, (int, float)) and not isinstance(size, bool)
    if isinstance(oid, str) and oid and isinstance(path_owner, str) and path_owner \
            and isinstance(md5, str) and md5 and number and isinstance(size, int) \
            and 0 < size <= MAX_BIGINT and isinstance(owner, str) and once and not is_mpu_part(key):
        # the common case: a well-formed object with one copy on each named node
        return [(key, n, mid, oid, owner, path_owner, size, md5, etag, compact, "pending", None,
                 None) for n in matched]
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
        elif number and size == 0:
            status, reason = "skipped", "zero_byte"
        elif not isinstance(md5, str) or not md5:
            status, reason = "error", "bad_manta_object"
            detail = "no contentMD5 to verify a copy against"
        elif not number or not 0 <= size <= MAX_BIGINT:
            status, reason = "error", "bad_manta_object"
            detail = f"contentLength {size!r} is not a byte count"
        out.append((key, n, mid, oid if isinstance(oid, str) else None,
                    owner if isinstance(owner, str) else None,
                    path_owner if isinstance(path_owner, str) else None,
                    int(size) if number and 0 <= size <= MAX_BIGINT else 0,
                    md5 if isinstance(md5, str) else None, etag, compact,
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
        self.nodeset = frozenset(self.nodes)
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
                run = prepare_window(fconn, qtext, extra)
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
                        cur.execute(run, [a, b])
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
                nodes, nodeset = self.nodes, self.nodeset
                for mid, key, etag, raw in rows:
                    out.extend(classify(key, mid, etag, raw, nodes, nodeset))
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
    """Hands one shard's windows to the job store on threads of their own (their own
    connections), so parsing the next windows overlaps storing these.

    Consecutive windows are merged into one COPY and one transaction of up to
    ``batch_rows`` matches (handed on earlier when a writer is idle and there are
    ``min_rows``, or when ``max_wait`` seconds passed, or at the column's last
    window), so the per-transaction costs (the commit waits for the sync peer) are
    paid per batch, not per window, and little is left to store when the scan ends.

    With ``writers`` > 1 (``new_store`` makes their JobStores), batches are stored
    by that many connections at once, so the job store's inserts and index updates
    run in as many backends; the watermark then moves in a transaction of its own,
    only over batches that are all stored, so a killed scan resumes after the last
    of those (a batch stored beyond it is stored again: an update, not a copy).
    With one writer, rows and watermark share a transaction.

    ``store`` is a JobStore with a connection used by this sink only. Call
    ``sink`` as ShardScan's sink, then ``close()`` (raises what a writer hit).
    """

    def __init__(self, store, job, pass_no, shard, depth=8, batch_rows=5000, max_wait=2.0,
                 writers=1, new_store=None, min_rows=1000):
        self.store = store
        self.job = job
        self.pass_no = pass_no
        self.shard = shard
        self.batch_rows = batch_rows
        self.min_rows = min_rows
        self.max_wait = max_wait
        self.idle = 0           # writers waiting for a batch
        self.q = queue.Queue(maxsize=depth)
        self.err = None
        self.new = 0
        self.updated = 0
        self.batches = 0
        self.lock = threading.Lock()
        self.seq = 0            # batches handed out
        self.marked = 0         # batches covered by the stored watermark
        self.stored = {}        # seq -> batch, stored but not yet under the watermark
        self.stores = []
        self.wq = None
        self.writers = []
        if writers > 1 and new_store is not None:
            self.wq = queue.Queue(maxsize=writers)
            for i in range(writers):
                st = new_store()
                self.stores.append(st)
                th = threading.Thread(target=self._write, args=(st,), name=f"store-{shard}-{i}",
                                      daemon=True)
                th.start()
                self.writers.append(th)
        self.th = threading.Thread(target=self._run, name=f"store-{shard}", daemon=True)
        self.th.start()

    def _fresh(self, b):
        return self.pass_no == 1 and b["col"] == "_id"

    def _flush(self, b):
        if b is None or self.err is not None:
            return
        if self.wq is not None:
            b["seq"] = self.seq
            self.seq += 1
            self.wq.put(b)
            return
        try:
            ins, upd = self.store.store_scanned(
                self.job, self.pass_no, self.shard, b["col"], b["rows"], b["last_id"], b["ids"],
                b["seconds"], done=b["finished"], max_id=b["max_id"], fresh=self._fresh(b))
            self.new += ins
            self.updated += upd
            self.batches += 1
        except Exception as exc:  # noqa: BLE001 - re-raised by sink/close
            self.err = exc

    def _write(self, st):
        while True:
            with self.lock:
                self.idle += 1
            b = self.wq.get()
            with self.lock:
                self.idle -= 1
            if b is None:
                return
            if self.err is not None:
                continue
            try:
                for attempt in range(3):
                    try:
                        ins, upd = st.store_rows(self.job, self.pass_no, self.shard, b["rows"],
                                                 fresh=self._fresh(b))
                        break
                    except psycopg2.errors.DeadlockDetected:
                        # two writers inserting each other's keys (keys deleted and
                        # created again during the scan): the retry upserts
                        st.conn.rollback()
                        if attempt == 2:
                            raise
                with self.lock:
                    self.new += ins
                    self.updated += upd
                    self.batches += 1
                    self.stored[b["seq"]] = b
                    self._mark()
            except Exception as exc:  # noqa: BLE001 - re-raised by sink/close
                self.err = self.err or exc

    def _mark(self):
        """(under self.lock) Advance the watermark over the stored batches that follow it."""
        run = []
        while self.marked in self.stored:
            run.append(self.stored.pop(self.marked))
            self.marked += 1
        i = 0
        while i < len(run):
            j = i
            while j + 1 < len(run) and run[j + 1]["col"] == run[i]["col"]:
                j += 1
            last = run[j]
            self.store.advance_scan(self.job, self.pass_no, self.shard, last["col"],
                                    last["last_id"], sum(b["ids"] for b in run[i:j + 1]),
                                    sum(len(b["rows"]) for b in run[i:j + 1]),
                                    sum(b["seconds"] for b in run[i:j + 1]),
                                    done=last["finished"], max_id=last["max_id"])
            i = j + 1

    def _run(self):
        b = None  # the batch being gathered
        since = 0.0
        while True:
            try:
                if b is None:
                    item = self.q.get()
                else:
                    item = self.q.get(timeout=max(0.001, since + self.max_wait - time.monotonic()))
            except queue.Empty:
                self._flush(b)
                b = None
                continue
            if item is None:
                self._flush(b)
                return
            if self.err is not None:
                continue
            col, rows, last_id, ids, seconds, finished, max_id = item
            if b is not None and b["col"] != col:
                self._flush(b)
                b = None
            if b is None:
                b = {"col": col, "rows": [], "ids": 0, "seconds": 0.0}
                since = time.monotonic()
            b["rows"].extend(rows)
            b["ids"] += ids
            b["seconds"] += seconds
            b.update(last_id=last_id, finished=finished, max_id=max_id)
            n = len(b["rows"])
            # a full batch, the column's end, or (several writers) one of them is idle:
            # keep the writers busy so that little is left to store when the scan ends
            if finished or n >= self.batch_rows or (self.wq is not None and self.idle
                                                    and n >= self.min_rows):
                self._flush(b)
                b = None

    def sink(self, col, rows, last_id, ids, seconds, finished, max_id):
        if self.err is not None:
            raise self.err
        self.q.put((col, rows, last_id, ids, seconds, finished, max_id))

    def close(self):
        self.q.put(None)
        self.th.join()
        for dummy in self.writers:
            self.wq.put(None)
        for th in self.writers:
            th.join()
        for st in [self.store] + self.stores:
            try:
                st.conn.close()
            except Exception:  # noqa: BLE001
                pass
        if self.err is None and self.stored:
            self.err = EvacError(f"scan of {self.shard}: {len(self.stored)} stored batches never "
                                 "came under the watermark")
        if self.err is not None:
            raise self.err
