# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Point the metadata at the new copies: moray semantics, without moray's
per-request overhead.

For a batch of verified copies of one shard, in ONE transaction on the
shard's primary:

1. read the current rows (``SELECT _key, _etag, _value ... WHERE _key = ANY``);
2. for each object still naming the evacuated node, with the same
   ``objectId`` and ``contentMD5`` as the copy that was verified, replace that
   ``sharks`` entry by ``{"datacenter": <dest dc>, "manta_storage_id": <dest>}``
   (order and every other field kept), and serialise the value as moray
   does (``JSON.stringify``: compact, UTF-8): the new ``_etag`` is the
   upper-case hex CRC32 of that text, ``_mtime`` now in ms;
3. one ``UPDATE manta ... FROM (VALUES ...) WHERE _key = v.key AND _etag =
   v.old_etag`` writes them all (etag-conditional: a row a client changed in
   between is not touched);
4. the rows that lost the race are read again ``FOR UPDATE`` and the swap is
   re-applied to their current value when it still names the node and is the
   same object; a newer write is never overwritten.

Fates: ``done`` (swapped, or already swapped by an earlier run that died
before recording it), ``skipped/object_deleted``, ``skipped/object_changed``
(overwritten by a client; if the new version still names the node the row
goes back to ``pending`` with the new object's fields), ``error/duplicate_shark``,
``error/dest_already_in_sharks``. Nothing is ever deleted.

Why straight to PostgreSQL instead of moray ``batch``: moray ``batch`` is
one transaction too, but one etag conflict rolls back the whole batch, and
each put is a separate round trip inside moray; the rebalancer had to fall
back to one ``putObject`` per object (docs/evacuate.md "Metadata writes").
The writes here are exactly what moray's putObject writes (same columns,
same etag function), conditional the same way. Index columns are untouched
(dirname, name, owner, objectid, type do not change). Shards marked
``readOnly`` in SAPI (a reshard's write block) are left alone until they are
writable again.
"""
from __future__ import annotations

import json
import threading
import time
import zlib

from ansible_collections.manta.ops.plugins.module_utils.evacuate_common import (
    EvacError, psycopg2)


def value_string(value):
    """Moray's ``_value``: JSON.stringify of the value (compact, UTF-8)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def etag_of(text):
    """Moray's ``_etag``: upper-case hex CRC32 of the ``_value`` text."""
    return "%08X" % (zlib.crc32(text.encode("utf-8")) & 0xFFFFFFFF)


def decide(raw, rows, dest_dcs):
    """What to do with one key, given its current ``_value`` text (None when the
    row is gone) and the job rows (node, dest, object_id, md5) for it.

    Returns (new_value_dict or None, fates) where fates are
    (oid, status, reason, detail) and, for a changed object still naming a node,
    (oid, "refresh", value) so the caller can re-plan it.
    """
    fates = []
    if raw is None:
        return None, [(r["oid"], "skipped", "object_deleted", "the key no longer exists")
                      for r in rows]
    try:
        v = json.loads(raw)
        sharks = v.get("sharks")
        if not isinstance(sharks, list):
            raise ValueError("no sharks array")
    except (ValueError, AttributeError) as exc:
        return None, [(r["oid"], "error", "bad_manta_object", f"current _value: {exc}")
                      for r in rows]
    ids = [s.get("manta_storage_id") if isinstance(s, dict) else None for s in sharks]
    changed = False
    for r in rows:
        same = v.get("objectId") == r["object_id"] and v.get("contentMD5") == r["md5"]
        node, dest = r["node"], r["dest"]
        if not same:
            if node in ids:
                fates.append((r["oid"], "refresh", v))
            else:
                fates.append((r["oid"], "skipped", "object_changed",
                              f"now objectId {v.get('objectId')}, which is not on {node}"))
            continue
        n = ids.count(node)
        if n == 0:
            if dest in ids:
                fates.append((r["oid"], "done", "already_swapped", None))
            else:
                fates.append((r["oid"], "skipped", "object_changed",
                              f"sharks no longer name {node} (now {', '.join(map(str, ids))})"))
            continue
        if n > 1:
            fates.append((r["oid"], "error", "duplicate_shark", f"{node} appears {n} times"))
            continue
        if dest in ids:
            fates.append((r["oid"], "error", "dest_already_in_sharks",
                          f"{dest} is already in sharks next to {node}"))
            continue
        i = ids.index(node)
        sharks[i] = {"datacenter": dest_dcs.get(dest), "manta_storage_id": dest}
        ids[i] = dest
        changed = True
        fates.append((r["oid"], "done", None, None))
    return (v if changed else None), fates


class ShardWriter:
    """Apply verified copies to one shard, in batches, at most ``rate()`` rows/s."""

    def __init__(self, shard, connect, dest_dcs, batch_size=500, rate=None, max_conflict_rounds=3,
                 parallel=2):
        self.shard = shard
        self.connect = connect
        self.dest_dcs = dest_dcs
        self.batch_size = max(1, int(batch_size))
        self.rate = rate or (lambda: None)
        self.max_conflict_rounds = max_conflict_rounds
        self.parallel = max(1, int(parallel))
        self.local = threading.local()
        self.conns = []
        self.lock = threading.Lock()
        self.has_txn_snap = None
        self.stats = {"rows": 0, "updated": 0, "conflicts": 0, "batches": 0, "seconds": 0.0,
                      "done": 0, "skipped": 0, "error": 0, "refresh": 0}

    @property
    def conn(self):
        c = getattr(self.local, "conn", None)
        if c is None or c.closed:
            c = self.local.conn = self.connect()
            with self.lock:
                self.conns.append(c)
        return c

    def _cols(self):
        if self.has_txn_snap is None:
            with self.conn.cursor() as cur:
                cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = "
                            "current_schema() AND table_name = 'manta' AND column_name = '_txn_snap'")
                self.has_txn_snap = cur.fetchone() is not None
            self.conn.rollback()
        return self.has_txn_snap

    def apply(self, rows):
        """rows: dicts oid, key, node, dest, object_id, md5. Returns fates (in order).

        Batches run on ``parallel`` connections; the rate limit is for the shard
        as a whole. The copies of one key are always in the same batch."""
        limit = self.rate()
        n = self.batch_size if not limit else max(1, min(self.batch_size, int(limit)))
        batches = []
        i = 0
        while i < len(rows):
            j = min(i + n, len(rows))
            while j < len(rows) and rows[j]["key"] == rows[j - 1]["key"]:
                j += 1
            batches.append(rows[i:j])
            i = j
        t0 = time.monotonic()
        pace = {"next": t0}
        plock = threading.Lock()

        def one(batch):
            lim = self.rate()
            if lim:
                with plock:
                    start = pace["next"]
                    pace["next"] = max(start, time.monotonic()) + len(batch) / float(lim)
                time.sleep(max(0.0, start - time.monotonic()))
            t = time.monotonic()
            f = self._batch(batch)
            with self.lock:
                self.stats["batches"] += 1
                self.stats["rows"] += len(batch)
                self.stats["busy"] = self.stats.get("busy", 0.0) + time.monotonic() - t
            return f

        self._cols()
        if self.parallel == 1 or len(batches) == 1:
            res = [one(b) for b in batches]
        else:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(max_workers=self.parallel) as pool:
                res = list(pool.map(one, batches))
        self.stats["seconds"] += time.monotonic() - t0
        return [f for r in res for f in r]

    def _batch(self, batch):
        by_key = {}
        for r in batch:
            by_key.setdefault(r["key"], []).append(r)
        keys = list(by_key)
        fates = {}
        txn_snap = ", _txn_snap = NULL" if self._cols() else ""
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT _key, _etag, _value FROM manta WHERE _key = ANY(%s)", (keys,))
                current = {k: (e, val) for k, e, val in cur.fetchall()}
                todo = keys
                for attempt in range(self.max_conflict_rounds + 1):
                    updates = []
                    for k in todo:
                        etag, raw = current.get(k, (None, None))
                        newv, kf = decide(raw, by_key[k], self.dest_dcs)
                        for f in kf:
                            fates[f[0]] = f
                        if newv is not None:
                            text = value_string(newv)
                            updates.append((k, (etag or "").strip(), text, etag_of(text)))
                    if not updates:
                        break
                    now = int(time.time() * 1000)
                    res = psycopg2.extras.execute_values(
                        cur, "UPDATE manta AS m SET _value = v.val, _etag = v.etag, _mtime = %d%s "
                             "FROM (VALUES %%s) AS v(key, old, val, etag) "
                             "WHERE m._key = v.key AND m._etag = v.old RETURNING m._key"
                             % (now, txn_snap),
                        updates, template="(%s, %s, %s, %s)", page_size=len(updates), fetch=True)
                    won = {r[0] for r in res}
                    with self.lock:
                        self.stats["updated"] += len(won)
                    lost = [u[0] for u in updates if u[0] not in won]
                    if not lost:
                        break
                    with self.lock:
                        self.stats["conflicts"] += len(lost)
                    if attempt == self.max_conflict_rounds:
                        for k in lost:
                            for r in by_key[k]:
                                fates[r["oid"]] = (r["oid"], "error", "metadata_update_failed",
                                                   "etag conflicts on every attempt")
                        break
                    # Someone wrote these rows between our read and our update: read
                    # them again under a row lock and decide again on what is there now.
                    cur.execute("SELECT _key, _etag, _value FROM manta WHERE _key = ANY(%s) "
                                "FOR UPDATE", (lost,))
                    current = {k: (e, val) for k, e, val in cur.fetchall()}
                    todo = lost
            self.conn.commit()
        except psycopg2.Error as exc:
            try:
                self.conn.rollback()
            except psycopg2.Error:
                pass
            if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) or \
                    getattr(exc, "pgcode", "") in ("25006", "57P01", "57014"):
                # Connection lost, read-only (a failover), or timeout: leave the rows
                # 'copied'; the next pass (or run) applies them.
                self.local.conn = None
                raise EvacError(f"shard {self.shard}: metadata batch not applied "
                                f"({str(exc).strip().splitlines()[0]}); it will be retried") from None
            raise EvacError(f"shard {self.shard}: {str(exc).strip().splitlines()[0]}") from None
        out = []
        for r in batch:
            f = fates.get(r["oid"]) or (r["oid"], "error", "metadata_update_failed", "no decision")
            with self.lock:
                self.stats[f[1] if f[1] in self.stats else "error"] += 1
            out.append(f)
        return out

    def close(self):
        for c in self.conns:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        self.conns = []


class LiveRate:
    """A value shared with worker threads and refreshed by the caller."""

    def __init__(self, value):
        self.lock = threading.Lock()
        self.value = value

    def __call__(self):
        with self.lock:
            return self.value

    def set(self, value):
        with self.lock:
            self.value = value
