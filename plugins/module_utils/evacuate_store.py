# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""The evacuation job store: one PostgreSQL schema that outlives the controller.

Tables (schema ``manta_evacuate`` by default; docs/evacuate.md "Job store"):

``jobs``
    one row per job: the evacuated nodes, ``state`` (active, paused,
    complete), the pause reason, the throttles (read live by the running
    play), options, start/finish times, the scan pass and its verification.
``objects``
    one row per object copy to move: ``(job, shard, key, node)`` plus what the
    move needs (objectId, path owner (creator or owner), size, contentMD5, the
    ``_etag`` seen by the scan, the sharks), and its fate: ``status``,
    ``reason``, ``detail``, ``dest``, ``sources``, ``round``, ``attempts``,
    timestamps. ``oid`` is a compact id used in assignment and result files.
``scan_progress``
    per (job, pass, shard, id column): the last ``_id``/``_idx`` done, so a
    killed scan resumes where it stopped.
``rounds``
    per round: what was planned, what each destination copied and how fast,
    what the metadata step did: the measured rates behind ETAs and estimates.
``events``
    run log: runs started and ended, pauses, resumes, throttle changes.

Every status change is one set-based statement, conditional on the status
it expects (so a stale result file or a second run cannot move an object
backwards), and writes ``updated_at``.
"""
from __future__ import annotations

import json

from ansible_collections.manta.ops.plugins.module_utils.evacuate_common import (
    EvacError, check_schema_name, psycopg2, sql)

SCHEMA_VERSION = 2
JOB_STATES = ("active", "paused", "complete")


def _ddl(s):
    def t(n):
        return sql.Identifier(s, n)
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(s)),
        sql.SQL("CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, value text)").format(t("meta")),
        sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
            job text PRIMARY KEY,
            nodes jsonb NOT NULL,
            state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused', 'complete')),
            pause_reason text,
            throttle jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            options jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            finished_at timestamptz,
            scan_pass integer NOT NULL DEFAULT 0,
            verified_at timestamptz,
            runs integer NOT NULL DEFAULT 0)""").format(t("jobs")),
        sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
            oid bigserial UNIQUE,
            job text NOT NULL,
            shard text NOT NULL,
            key text NOT NULL,
            node text NOT NULL,
            mid bigint,
            object_id text,
            owner text,
            path_owner text,
            size bigint NOT NULL DEFAULT 0,
            md5 text,
            etag text,
            sharks text,
            status text NOT NULL CHECK (status IN ('pending', 'assigned', 'copied', 'done',
                                                    'skipped', 'error')),
            reason text,
            detail text,
            dest text,
            sources text,
            round integer,
            attempts integer NOT NULL DEFAULT 0,
            fetched boolean,
            scan_pass integer,
            scanned_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            copied_at timestamptz,
            done_at timestamptz,
            PRIMARY KEY (job, shard, key, node))""").format(t("objects")),
        # Partial indexes only: a row the scan inserts as pending touches the primary key,
        # oid and the pending index, nothing else (the scan's insert rate depends on it).
        sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(s, "objects_status_idx")),
        sql.SQL("CREATE INDEX IF NOT EXISTS objects_open_idx ON {} (job, shard, status, dest) "
                "WHERE status IN ('assigned', 'copied')").format(t("objects")),
        sql.SQL("CREATE INDEX IF NOT EXISTS objects_fate_idx ON {} (job, status, reason) "
                "WHERE status IN ('skipped', 'error')").format(t("objects")),
        sql.SQL("CREATE INDEX IF NOT EXISTS objects_copied_idx ON {} (dest, copied_at) "
                "WHERE copied_at IS NOT NULL").format(t("objects")),
        sql.SQL("CREATE INDEX IF NOT EXISTS objects_pending_idx ON {} (job, oid) "
                "WHERE status = 'pending'").format(t("objects")),
        sql.SQL("CREATE INDEX IF NOT EXISTS objects_done_idx ON {} (job, done_at) "
                "WHERE done_at IS NOT NULL").format(t("objects")),
        sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
            job text NOT NULL,
            pass integer NOT NULL,
            shard text NOT NULL,
            col text NOT NULL,
            last_id bigint NOT NULL DEFAULT 0,
            max_id bigint,
            done boolean NOT NULL DEFAULT false,
            rows_scanned bigint NOT NULL DEFAULT 0,
            matched bigint NOT NULL DEFAULT 0,
            seconds double precision NOT NULL DEFAULT 0,
            started_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            PRIMARY KEY (job, pass, shard, col))""").format(t("scan_progress")),
        sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
            job text NOT NULL,
            round integer NOT NULL,
            run text,
            started_at timestamptz NOT NULL DEFAULT now(),
            planned_at timestamptz,
            finished_at timestamptz,
            planned jsonb,
            copy jsonb,
            metadata jsonb,
            PRIMARY KEY (job, round))""").format(t("rounds")),
        sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
            id bigserial PRIMARY KEY,
            job text NOT NULL,
            at timestamptz NOT NULL DEFAULT now(),
            kind text NOT NULL,
            data jsonb)""").format(t("events")),
    ]


class JobStore:
    """All job-store reads and writes. ``conn`` is a psycopg2 connection
    (autocommit off); every public write method commits."""

    def __init__(self, conn, schema="manta_evacuate"):
        self.conn = conn
        self.schema = check_schema_name(schema)

    def t(self, name):
        return sql.Identifier(self.schema, name)

    def q(self, text, **names):
        return sql.SQL(text).format(**{k: self.t(v) for k, v in names.items()})

    # ---- schema -------------------------------------------------------------------------
    def exists(self):
        with self.conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL",
                        (f'"{self.schema}".objects',))
            ok = cur.fetchone()[0]
        self.conn.rollback()
        return ok

    def version(self):
        with self.conn.cursor() as cur:
            cur.execute(self.q("SELECT value FROM {m} WHERE key = 'schema_version'", m="meta"))
            row = cur.fetchone()
        self.conn.rollback()
        return int(row[0]) if row else 0

    def ensure_schema(self, check_mode=False):
        """Create (or upgrade) what is missing. True if anything was (or would be) done."""
        if self.exists() and self.version() >= SCHEMA_VERSION:
            return False
        if check_mode:
            return True
        with self.conn.cursor() as cur:
            # Two first runs racing: serialize on an advisory lock.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.schema + ".ddl",))
            for stmt in _ddl(self.schema):
                cur.execute(stmt)
            cur.execute(self.q("INSERT INTO {m} (key, value) VALUES ('schema_version', %s) "
                               "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", m="meta"),
                        (str(SCHEMA_VERSION),))
        self.conn.commit()
        return True

    # ---- jobs -------------------------------------------------------------------------
    def get_job(self, job):
        if not self.exists():
            return None
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(self.q("SELECT * FROM {j} WHERE job = %s", j="jobs"), (job,))
            row = cur.fetchone()
        self.conn.rollback()
        return _jsonable(dict(row)) if row else None

    def list_jobs(self):
        if not self.exists():
            return []
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(self.q("SELECT * FROM {j} ORDER BY created_at", j="jobs"))
            rows = cur.fetchall()
        self.conn.rollback()
        return [_jsonable(dict(r)) for r in rows]

    def create_job(self, job, nodes, throttle, options):
        with self.conn.cursor() as cur:
            cur.execute(self.q("INSERT INTO {j} (job, nodes, throttle, options) VALUES (%s, %s, %s, %s) "
                               "ON CONFLICT (job) DO NOTHING", j="jobs"),
                        (job, json.dumps(nodes), json.dumps(throttle), json.dumps(options)))
            self._event(cur, job, "created", {"nodes": nodes, "throttle": throttle, "options": options})
        self.conn.commit()

    def update_job(self, job, **fields):
        """Set columns of a job row (jsonb columns take dicts/lists)."""
        if not fields:
            return
        cols, vals = [], []
        for k, v in fields.items():
            if k not in ("nodes", "state", "pause_reason", "throttle", "options", "started_at",
                         "finished_at", "scan_pass", "verified_at", "runs"):
                raise EvacError(f"update_job: unknown column {k}")
            cols.append(sql.SQL("{} = %s").format(sql.Identifier(k)))
            vals.append(json.dumps(v) if k in ("nodes", "throttle", "options") else v)
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("UPDATE {} SET {}, updated_at = now() WHERE job = %s").format(
                self.t("jobs"), sql.SQL(", ").join(cols)), vals + [job])
        self.conn.commit()

    def set_now(self, job, column):
        if column not in ("started_at", "finished_at", "verified_at"):
            raise EvacError(f"set_now: unknown column {column}")
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("UPDATE {} SET {} = now(), updated_at = now() WHERE job = %s").format(
                self.t("jobs"), sql.Identifier(column)), (job,))
        self.conn.commit()

    def event(self, job, kind, data=None):
        with self.conn.cursor() as cur:
            self._event(cur, job, kind, data)
        self.conn.commit()

    def _event(self, cur, job, kind, data):
        cur.execute(self.q("INSERT INTO {e} (job, kind, data) VALUES (%s, %s, %s)", e="events"),
                    (job, kind, json.dumps(data) if data is not None else None))

    def events(self, job, limit=20):
        with self.conn.cursor() as cur:
            cur.execute(self.q("SELECT at, kind, data FROM {e} WHERE job = %s ORDER BY id DESC LIMIT %s",
                               e="events"), (job, limit))
            rows = cur.fetchall()
        self.conn.rollback()
        return [{"at": r[0].isoformat(), "kind": r[1], "data": r[2]} for r in rows]

    # ---- scan ---------------------------------------------------------------------------
    def scan_progress(self, job, pass_no):
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(self.q("SELECT * FROM {s} WHERE job = %s AND pass = %s ORDER BY shard, col",
                               s="scan_progress"), (job, pass_no))
            rows = cur.fetchall()
        self.conn.rollback()
        return [_jsonable(dict(r)) for r in rows]

    def start_scan(self, job, pass_no, shard, col, max_id):
        with self.conn.cursor() as cur:
            cur.execute(self.q("INSERT INTO {s} (job, pass, shard, col, max_id) VALUES (%s, %s, %s, %s, %s) "
                               "ON CONFLICT (job, pass, shard, col) DO UPDATE SET "
                               "max_id = GREATEST({s}.max_id, EXCLUDED.max_id) "
                               "RETURNING last_id, done, rows_scanned, matched, seconds",
                               s="scan_progress"), (job, pass_no, shard, col, max_id))
            row = cur.fetchone()
        self.conn.commit()
        return {"last_id": row[0], "done": row[1], "rows_scanned": row[2], "matched": row[3],
                "seconds": row[4]}

    def store_scanned(self, job, pass_no, shard, col, rows, last_id, scanned, seconds, done=False,
                      max_id=None, fresh=False):
        """Upsert matched rows and advance the scan watermark in one transaction.

        ``rows``: tuples (key, node, mid, object_id, owner, path_owner, size, md5, etag,
        sharks_json, status, reason, detail). Returns (inserted, updated).
        """
        with self.conn.cursor() as cur:
            cur.execute(SCAN_COMMIT)
            ins, upd = self._insert_scanned(cur, job, pass_no, shard, rows, fresh)
            self._advance_scan(cur, job, pass_no, shard, col, last_id, scanned, len(rows), seconds,
                               done, max_id)
        self.conn.commit()
        return ins, upd

    def store_rows(self, job, pass_no, shard, rows, fresh=False):
        """Upsert matched rows (one transaction, no watermark: see :meth:`advance_scan`).
        Storing the same rows twice is harmless (the primary key makes it an update)."""
        with self.conn.cursor() as cur:
            cur.execute(SCAN_COMMIT)
            res = self._insert_scanned(cur, job, pass_no, shard, rows, fresh)
        self.conn.commit()
        return res

    def advance_scan(self, job, pass_no, shard, col, last_id, scanned, matched, seconds, done=False,
                     max_id=None):
        """Move the watermark once every window up to ``last_id`` is stored."""
        with self.conn.cursor() as cur:
            cur.execute(SCAN_COMMIT)
            self._advance_scan(cur, job, pass_no, shard, col, last_id, scanned, matched, seconds,
                               done, max_id)
        self.conn.commit()

    def _advance_scan(self, cur, job, pass_no, shard, col, last_id, scanned, matched, seconds, done,
                      max_id):
        cur.execute(self.q("UPDATE {s} SET last_id = %s, rows_scanned = rows_scanned + %s, "
                           "matched = matched + %s, seconds = seconds + %s, done = %s, "
                           "max_id = COALESCE(%s, max_id), "
                           "finished_at = CASE WHEN %s THEN now() ELSE finished_at END "
                           "WHERE job = %s AND pass = %s AND shard = %s AND col = %s",
                           s="scan_progress"),
                    (last_id, scanned, matched, seconds, done, max_id, done, job, pass_no,
                     shard, col))

    def _insert_scanned(self, cur, job, pass_no, shard, rows, fresh):
        ins = upd = 0
        if not rows:
            return ins, upd
        lines = [_copy_line(r) for r in rows]
        if fresh:
            # First pass over new ids: nothing of this batch can be stored yet, so
            # COPY straight in (falling back to the upsert if a key was seen before
            # after all: a key deleted and created again, a window stored twice).
            suffix = "\t" + "\t".join(_copy_field(x) for x in (job, shard, pass_no)) + "\n"
            cur.execute("SAVEPOINT evac_copy")
            try:
                cur.copy_expert(sql.SQL(
                    "COPY {} (key, node, mid, object_id, owner, path_owner, size, md5, etag, "
                    "sharks, status, reason, detail, job, shard, scan_pass) FROM STDIN").format(
                        self.t("objects")).as_string(cur),
                    _Chunks(lines, suffix), size=1 << 20)
                cur.execute("RELEASE SAVEPOINT evac_copy")
                return len(rows), 0
            except psycopg2.errors.UniqueViolation:
                cur.execute("ROLLBACK TO SAVEPOINT evac_copy")
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS evac_scan_stage ("
                    "key text, node text, mid bigint, object_id text, owner text, "
                    "path_owner text, size bigint, md5 text, etag text, sharks text, "
                    "status text, reason text, detail text) ON COMMIT DELETE ROWS")
        cur.copy_expert("COPY evac_scan_stage FROM STDIN", _Chunks(lines, "\n"), size=1 << 20)
        cur.execute(self.q(UPSERT_SCANNED, o="objects"), {"job": job, "shard": shard,
                                                          "pass": pass_no})
        for (inserted,) in cur.fetchall():
            if inserted:
                ins += 1
            else:
                upd += 1
        return ins, upd

    # ---- planning -----------------------------------------------------------------------
    def requeue_stale(self, job, current_round):
        """Objects assigned in an earlier round whose result never came back (the
        run was killed, or the destination failed): back to pending, keeping
        ``dest`` as the preferred destination (its copy may already be there)."""
        with self.conn.cursor() as cur:
            cur.execute(self.q("UPDATE {o} SET status = 'pending', reason = 'requeued', "
                               "detail = 'no result from round ' || round || ' on ' || dest, "
                               "updated_at = now() WHERE job = %s AND status = 'assigned' "
                               "AND round < %s", o="objects"), (job, current_round))
            n = cur.rowcount
        self.conn.commit()
        return n

    def retry_skipped(self, job, check_mode=False):
        with self.conn.cursor() as cur:
            if check_mode:
                cur.execute(self.q("SELECT count(*) FROM {o} WHERE job = %s AND status = 'skipped'",
                                   o="objects"), (job,))
                n = cur.fetchone()[0]
                self.conn.rollback()
                return n
            cur.execute(self.q("UPDATE {o} SET status = 'pending', reason = 'retry_skipped', "
                               "detail = 'was skipped: ' || coalesce(reason, ''), attempts = 0, "
                               "updated_at = now() WHERE job = %s AND status = 'skipped'",
                               o="objects"), (job,))
            n = cur.rowcount
            if n:
                self._event(cur, job, "retry_skipped", {"objects": n})
        self.conn.commit()
        return n

    def next_round(self, job):
        with self.conn.cursor() as cur:
            cur.execute(self.q("SELECT coalesce(max(round), 0) + 1 FROM {r} WHERE job = %s", r="rounds"),
                        (job,))
            n = cur.fetchone()[0]
        self.conn.rollback()
        return n

    def pending_rows(self, job, limit):
        """Pending rows in placement order, with the destinations already chosen for
        sibling copies of the same key (an object with copies on several evacuated
        nodes)."""
        with self.conn.cursor() as cur:
            cur.execute(self.q(PENDING_ROWS, o="objects"), (job, limit))
            rows = cur.fetchall()
        self.conn.rollback()
        cols = ("oid", "shard", "key", "node", "object_id", "path_owner", "size", "md5", "sharks",
                "dest", "attempts", "siblings")
        return [dict(zip(cols, r)) for r in rows]

    def reserved_bytes(self, job_since):
        """{dest: bytes} this store has placed on destinations and that their heartbeats
        may not show yet: every assigned copy, plus copies made after ``job_since``
        {dest: epoch seconds} (the heartbeat time)."""
        out = {}
        with self.conn.cursor() as cur:
            cur.execute(self.q("SELECT dest, sum(size), min(copied_at) FROM {o} "
                               "WHERE status = 'assigned' AND dest IS NOT NULL GROUP BY dest",
                               o="objects"))
            for dest, b, dummy in cur.fetchall():
                out[dest] = out.get(dest, 0) + int(b or 0)
            cur.execute(self.q("SELECT dest, extract(epoch FROM copied_at)::float8, size FROM {o} "
                               "WHERE status IN ('copied', 'done') AND copied_at > now() - interval "
                               "'15 minutes' AND dest IS NOT NULL", o="objects"))
            for dest, at, size in cur.fetchall():
                if at is not None and at > (job_since.get(dest) or 0) - 60:
                    out[dest] = out.get(dest, 0) + int(size or 0)
        self.conn.rollback()
        return out

    def begin_round(self, job, round_no, run, planned, assignments, skips):
        """Record the round's placements and skips in one transaction.

        ``assignments``: (oid, dest, sources_json); ``skips``: (oid, status, reason, detail).
        Only rows still pending are touched."""
        assigned = skipped = 0
        with self.conn.cursor() as cur:
            cur.execute(self.q("INSERT INTO {r} (job, round, run, planned, planned_at) "
                               "VALUES (%s, %s, %s, %s, now()) ON CONFLICT (job, round) DO UPDATE "
                               "SET planned = EXCLUDED.planned, planned_at = now()", r="rounds"),
                        (job, round_no, run, json.dumps(planned)))
            if assignments:
                q = sql.SQL(
                    "UPDATE {o} AS o SET status = 'assigned', dest = v.dest, sources = v.sources, "
                    "round = {r}, reason = NULL, detail = NULL, updated_at = now() "
                    "FROM (VALUES %s) AS v(oid, dest, sources) "
                    "WHERE o.oid = v.oid AND o.job = {j} AND o.status = 'pending' RETURNING o.oid"
                ).format(o=self.t("objects"), r=sql.Literal(int(round_no)), j=sql.Literal(job))
                res = psycopg2.extras.execute_values(cur, q.as_string(cur), assignments,
                                                     template="(%s::bigint, %s, %s)",
                                                     page_size=5000, fetch=True)
                assigned = len(res)
            if skips:
                skipped = self._set_fates(cur, job, skips, ("pending",))
        self.conn.commit()
        return assigned, skipped

    def _set_fates(self, cur, job, fates, from_status, round_no=None, dest=None):
        """(oid, status, reason, detail[, fetched]) -> rows updated. Transient
        fates go back to pending with attempts + 1."""
        q = ("UPDATE {o} AS o SET status = v.status, reason = v.reason, detail = v.detail, "
             "attempts = o.attempts + CASE WHEN v.status = 'pending' AND v.reason <> 'not_attempted' "
             "THEN 1 ELSE 0 END, "
             "copied_at = CASE WHEN v.status = 'copied' THEN now() ELSE o.copied_at END, "
             "done_at = CASE WHEN v.status = 'done' THEN now() ELSE o.done_at END, "
             "fetched = COALESCE(v.fetched, o.fetched), updated_at = now() "
             "FROM (VALUES %s) AS v(oid, status, reason, detail, fetched) "
             "WHERE o.oid = v.oid AND o.job = {job} AND o.status = ANY({statuses}){extra} "
             "RETURNING o.status")
        extra = sql.SQL("")
        if round_no is not None:
            extra = sql.SQL(" AND o.round = {}").format(sql.Literal(int(round_no)))
        q = sql.SQL(q).format(o=self.t("objects"), job=sql.Literal(job),
                              statuses=sql.Literal(list(from_status)), extra=extra).as_string(cur)
        rows = [tuple(f) + (None,) * (5 - len(f)) for f in fates]
        res = psycopg2.extras.execute_values(cur, q, rows,
                                             template="(%s::bigint, %s, %s, %s, %s::boolean)",
                                             page_size=5000, fetch=True)
        self.last_fates = {}
        for (st,) in res:
            self.last_fates[st] = self.last_fates.get(st, 0) + 1
        return len(res)

    def record_copy_results(self, job, round_no, dest, fates, stats):
        """Ingest one destination's results for a round (idempotent: only rows
        still 'assigned' in that round move). Returns {new status: rows}."""
        self.last_fates = {}
        with self.conn.cursor() as cur:
            if fates:
                self._set_fates(cur, job, fates, ("assigned",), round_no=round_no)
            cur.execute(self.q("UPDATE {r} SET copy = coalesce(copy, '{{}}'::jsonb) || "
                               "jsonb_build_object(%s::text, %s::jsonb) WHERE job = %s AND round = %s",
                               r="rounds"), (dest, json.dumps(stats), job, round_no))
        self.conn.commit()
        return dict(self.last_fates)

    def set_fates(self, job, fates, from_status):
        with self.conn.cursor() as cur:
            n = self._set_fates(cur, job, fates, from_status)
        self.conn.commit()
        return n

    def refresh_rows(self, job, rows):
        """Objects a client overwrote whose new version still names the node: take the
        new version's fields and plan them again. rows: (oid, object_id, owner, path_owner,
        size, md5, sharks_json)."""
        if not rows:
            return 0
        with self.conn.cursor() as cur:
            q = sql.SQL(
                "UPDATE {o} AS o SET object_id = v.object_id, owner = v.owner, "
                "path_owner = v.path_owner, size = v.size, md5 = v.md5, sharks = v.sharks, "
                "status = 'pending', reason = 'object_changed', "
                "detail = 'overwritten during the move; the new version is planned again', "
                "dest = NULL, round = NULL, updated_at = now() "
                "FROM (VALUES %s) AS v(oid, object_id, owner, path_owner, size, md5, sharks) "
                "WHERE o.oid = v.oid AND o.job = {j} AND o.status = 'copied' RETURNING o.oid"
            ).format(o=self.t("objects"), j=sql.Literal(job))
            res = psycopg2.extras.execute_values(
                cur, q.as_string(cur), rows,
                template="(%s::bigint, %s, %s, %s, %s::bigint, %s, %s)", fetch=True)
        self.conn.commit()
        return len(res)

    def fail_destination(self, job, round_no, dests, reason, detail):
        """Copies assigned to destinations whose copy task failed: back to pending."""
        with self.conn.cursor() as cur:
            cur.execute(self.q("UPDATE {o} SET status = 'pending', reason = %s, detail = %s, "
                               "attempts = attempts + 1, updated_at = now() WHERE job = %s "
                               "AND status = 'assigned' AND round = %s AND dest = ANY(%s)",
                               o="objects"), (reason, detail, job, round_no, list(dests)))
            n = cur.rowcount
        self.conn.commit()
        return n

    def round_started(self, job, round_no):
        with self.conn.cursor() as cur:
            cur.execute(self.q("SELECT extract(epoch FROM started_at)::float8 FROM {r} "
                               "WHERE job = %s AND round = %s", r="rounds"), (job, round_no))
            row = cur.fetchone()
        self.conn.rollback()
        return row[0] if row else None

    def finish_round(self, job, round_no, metadata_stats):
        with self.conn.cursor() as cur:
            cur.execute(self.q("UPDATE {r} SET metadata = %s, finished_at = now() "
                               "WHERE job = %s AND round = %s", r="rounds"),
                        (json.dumps(metadata_stats), job, round_no))
        self.conn.commit()

    def copied_rows(self, job, shard, limit):
        with self.conn.cursor() as cur:
            cur.execute(self.q("SELECT oid, key, node, dest, object_id, md5, size FROM {o} "
                               "WHERE job = %s AND shard = %s AND status = 'copied' "
                               "ORDER BY key LIMIT %s", o="objects"), (job, shard, limit))
            rows = cur.fetchall()
        self.conn.rollback()
        return [dict(zip(("oid", "key", "node", "dest", "object_id", "md5", "size"), r))
                for r in rows]

    def shards_with(self, job, status):
        with self.conn.cursor() as cur:
            cur.execute(self.q("SELECT shard, count(*) FROM {o} WHERE job = %s AND status = %s "
                               "GROUP BY shard", o="objects"), (job, status))
            rows = cur.fetchall()
        self.conn.rollback()
        return dict(rows)

    # ---- reporting ---------------------------------------------------------------------
    def counts(self, job):
        """{node: {status: [objects, bytes]}}."""
        out = {}
        with self.conn.cursor() as cur:
            cur.execute(self.q("SELECT node, status, count(*), coalesce(sum(size), 0) FROM {o} "
                               "WHERE job = %s GROUP BY node, status", o="objects"), (job,))
            for node, status, n, b in cur.fetchall():
                out.setdefault(node, {})[status] = [int(n), int(b)]
        self.conn.rollback()
        return out

    def reasons(self, job, examples=3):
        """[{node, status, reason, objects, bytes, examples}] for skipped and error rows."""
        with self.conn.cursor() as cur:
            cur.execute(self.q(
                "SELECT node, status, reason, count(*), coalesce(sum(size), 0), "
                "(array_agg(key ORDER BY oid))[1:%s], (array_agg(detail ORDER BY oid))[1:1] "
                "FROM {o} WHERE job = %s AND status IN ('skipped', 'error') "
                "GROUP BY node, status, reason ORDER BY node, status, count(*) DESC",
                o="objects"), (examples, job))
            rows = cur.fetchall()
        self.conn.rollback()
        return [{"node": r[0], "status": r[1], "reason": r[2], "objects": int(r[3]),
                 "bytes": int(r[4]), "examples": list(r[5] or []), "detail": (r[6] or [None])[0]}
                for r in rows]

    def recent_rates(self, job, window):
        """{node: (objects, bytes, seconds)} done in the last ``window`` seconds
        (seconds = from the first of them to now)."""
        out = {}
        with self.conn.cursor() as cur:
            cur.execute(self.q(
                "SELECT node, count(*), coalesce(sum(size), 0), "
                "extract(epoch FROM now() - min(done_at))::float8 "
                "FROM {o} WHERE job = %s AND done_at > now() - %s * interval '1 second' "
                "GROUP BY node", o="objects"), (job, window))
            for node, n, b, secs in cur.fetchall():
                out[node] = (int(n), int(b), float(secs or 0))
        self.conn.rollback()
        return out

    def rounds(self, job, limit=50):
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(self.q("SELECT * FROM {r} WHERE job = %s ORDER BY round DESC LIMIT %s",
                               r="rounds"), (job, limit))
            rows = cur.fetchall()
        self.conn.rollback()
        return [_jsonable(dict(r)) for r in rows]


# The scan's transactions do not wait for the WAL flush nor for the sync peer: a crash
# (or a failover) loses at most the last of them, rows and watermark alike, in WAL order
# (a watermark never survives the rows it covers), so the scan resumes before them; the
# module's next ordinary commit (its "scan" event) makes all of them durable.
SCAN_COMMIT = "SET LOCAL synchronous_commit = off"

# A key deleted and created again during the scan is found twice (two _ids), possibly
# in one batch: the newest (highest id) is the one stored.
UPSERT_SCANNED = """
INSERT INTO {o} AS o (job, shard, key, node, mid, object_id, owner, path_owner, size, md5, etag,
                      sharks, status, reason, detail, scan_pass)
SELECT %(job)s, %(shard)s, key, node, mid, object_id, owner, path_owner, size, md5, etag, sharks,
       status, reason, detail, %(pass)s
FROM (SELECT DISTINCT ON (key, node) * FROM evac_scan_stage ORDER BY key, node, mid DESC) s
ON CONFLICT (job, shard, key, node) DO UPDATE SET
  mid = EXCLUDED.mid, etag = EXCLUDED.etag, sharks = EXCLUDED.sharks, scan_pass = EXCLUDED.scan_pass,
  scanned_at = now(), updated_at = now(),
  object_id = CASE WHEN {keep} THEN o.object_id ELSE EXCLUDED.object_id END,
  owner = CASE WHEN {keep} THEN o.owner ELSE EXCLUDED.owner END,
  path_owner = CASE WHEN {keep} THEN o.path_owner ELSE EXCLUDED.path_owner END,
  size = CASE WHEN {keep} THEN o.size ELSE EXCLUDED.size END,
  md5 = CASE WHEN {keep} THEN o.md5 ELSE EXCLUDED.md5 END,
  status = CASE WHEN {keep} THEN o.status ELSE EXCLUDED.status END,
  reason = CASE WHEN {keep} THEN o.reason
                WHEN o.status = 'done' AND EXCLUDED.status = 'pending' THEN 'referenced_again'
                ELSE EXCLUDED.reason END,
  detail = CASE WHEN {keep} THEN o.detail
                WHEN o.status = 'done' THEN 'done at ' || o.done_at || ' but scan pass '
                                            || EXCLUDED.scan_pass || ' found it again'
                ELSE EXCLUDED.detail END,
  round = CASE WHEN {keep} THEN o.round ELSE NULL END,
  done_at = CASE WHEN {keep} THEN o.done_at ELSE NULL END
RETURNING (xmax = 0)
""".replace("{keep}", "(o.status IN ('assigned', 'copied', 'skipped', 'error') "
                      "AND o.object_id IS NOT DISTINCT FROM EXCLUDED.object_id "
                      "AND o.md5 IS NOT DISTINCT FROM EXCLUDED.md5)")

PENDING_ROWS = """
SELECT o.oid, o.shard, o.key, o.node, o.object_id, o.path_owner, o.size, o.md5, o.sharks, o.dest,
       o.attempts,
       (SELECT json_agg(json_build_array(s.node, s.dest, s.status)) FROM {o} s
         WHERE s.job = o.job AND s.shard = o.shard AND s.key = o.key AND s.node <> o.node)
FROM {o} o
WHERE o.job = %s AND o.status = 'pending'
ORDER BY o.oid
LIMIT %s
"""


class _Chunks:
    """A file-like ``read`` over COPY lines (each followed by ``sep``), in chunks of about
    ``size`` characters: no second copy of the whole batch in memory."""

    def __init__(self, lines, sep):
        self.lines = lines
        self.sep = sep
        self.i = 0

    def read(self, size=-1):
        lines, i, n = self.lines, self.i, len(self.lines)
        if i >= n:
            return ""
        step = n if size is None or size < 0 else max(1, size // 256)
        j = min(n, i + step)
        self.i = j
        sep = self.sep
        return sep.join(lines[i:j]) + sep

    readline = read


def _copy_line(r):
    """One row of a scan batch as a COPY text line (without the line's end)."""
    key, node, mid, oid, owner, path_owner, size, md5, etag, sharks, status, reason, detail = r
    if reason is None and detail is None and oid is not None and owner is not None \
            and path_owner is not None and md5 is not None and sharks is not None \
            and mid is not None:
        line = f"{key}\t{node}\t{mid}\t{oid}\t{owner}\t{path_owner}\t{size}\t{md5}\t{etag}\t{sharks}\t{status}"
        if "\\" not in line and "\n" not in line and "\r" not in line and line.count("\t") == 10:
            return line + "\t\\N\t\\N"
    return "\t".join([_copy_field(x) for x in r])


def _copy_field(x):
    if x is None:
        return "\\N"
    s = x if isinstance(x, str) else str(x)
    if "\\" in s or "\t" in s or "\n" in s or "\r" in s:
        s = s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return s


def _jsonable(d):
    import datetime
    out = {}
    for k, v in d.items():
        if isinstance(v, (datetime.datetime, datetime.date)):
            out[k] = v.isoformat()
        else:
            out[k] = v
    return out
