# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Per-peer PostgreSQL status of a manatee shard (reference/manatee.md 2.1, 4.6).

``probe(peer, role, downstream)`` connects to the peer's ``pgUrl`` with a
connect timeout and a statement timeout and collects:

* ``online`` / ``error`` (first line of the failure, like manatee-adm's cause);
* ``in_recovery``, ``server_version_num``;
* WAL positions: ``current_lsn`` (not in recovery), ``receive_lsn`` and
  ``replay_lsn`` (standbys), and ``wal_lsn``, the position that matters for the
  peer (current on a primary, replayed on a standby);
* ``lag_seconds`` / ``lag``: this peer's ``now() - pg_last_xact_replay_timestamp()``
  (standbys only), ``lag`` formatted like manatee-adm (``"%dm%02ds"``);
* ``replication``: every ``pg_stat_replication`` row, column names normalised to
  the PostgreSQL 10 spelling (``sent_lsn`` ...), LSNs as text, intervals as
  seconds, plus ``replay_lag_bytes`` (sent - replay);
* ``repl``: the row describing the link to the expected downstream peer. It is
  the row whose ``application_name`` is the downstream's ``pgUrl`` (manatee
  sets it so); failing that the first row, as manatee-adm does (which is how a
  stale second walsender can mask the real one, pitfall 6.10).

Connection details: host and port come from ``pgUrl``; the user is the URL's
(``postgres``) unless ``user`` is given (option ``pg_user`` / env
``MANTA_PG_USER``); ``password`` from ``pg_password`` / ``MANTA_PG_PASSWORD``.
"""
from __future__ import annotations

import datetime
import json
import traceback
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from ansible.module_utils.basic import env_fallback, missing_required_lib

from ansible_collections.manta.ops.plugins.module_utils import lsn as lsnmod

PSYCOPG2_IMP_ERR = None
try:
    import psycopg2
    import psycopg2.extras
    from psycopg2 import sql
    HAS_PSYCOPG2 = True
except ImportError:  # pragma: no cover
    PSYCOPG2_IMP_ERR = traceback.format_exc()
    HAS_PSYCOPG2 = False
    psycopg2 = None
    sql = None

ENV_USER = "MANTA_PG_USER"
ENV_PASSWORD = "MANTA_PG_PASSWORD"

LSN_COLUMNS_9 = {"sent_location": "sent_lsn", "write_location": "write_lsn",
                 "flush_location": "flush_lsn", "replay_location": "replay_lsn"}
LSN_FIELDS = ("sent_lsn", "write_lsn", "flush_lsn", "replay_lsn")


class PgError(Exception):
    pass


def pg_argument_spec():
    return dict(
        pg_user=dict(type="str", fallback=(env_fallback, [ENV_USER])),
        pg_password=dict(type="str", no_log=True, fallback=(env_fallback, [ENV_PASSWORD])),
        pg_connect_timeout=dict(type="int", default=5),
        pg_query_timeout=dict(type="float", default=10.0),
    )


def require_psycopg2(module):
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib("psycopg2"), exception=PSYCOPG2_IMP_ERR)


def parse_pg_url(url):
    """``tcp://postgres@10.0.0.1:5432/postgres`` -> host, port, user, dbname."""
    try:
        u = urlsplit(url)
        port = u.port
    except (ValueError, TypeError, AttributeError):
        raise PgError(f"pgUrl {url!r} is not like \"tcp://postgres@<ip>:<port>/postgres\"") from None
    if u.scheme not in ("tcp", "postgres", "postgresql") or not u.hostname:
        raise PgError(f"pgUrl {url!r} is not like \"tcp://postgres@<ip>:<port>/postgres\"")
    return {"host": u.hostname, "port": port or 5432, "user": u.username or "postgres",
            "dbname": (u.path or "/postgres").lstrip("/") or "postgres"}


def connect(pg_url, user=None, password=None, dbname=None, connect_timeout=5, query_timeout=10.0,
            autocommit=True):
    if not HAS_PSYCOPG2:
        raise PgError(missing_required_lib("psycopg2"))
    t = parse_pg_url(pg_url)
    kw = dict(host=t["host"], port=t["port"], user=user or t["user"], dbname=dbname or t["dbname"],
              connect_timeout=max(1, int(connect_timeout)), application_name="manta.ops",
              options=f"-c statement_timeout={max(1, int(float(query_timeout) * 1000))}")
    if password:
        kw["password"] = password
    try:
        conn = psycopg2.connect(**kw)
    except psycopg2.Error as exc:
        raise PgError(_first_line(exc)) from None
    conn.autocommit = autocommit
    return conn


def _first_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def _jsonable(v):
    if isinstance(v, datetime.timedelta):
        return v.total_seconds()
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)


def normalize_repl_row(row):
    out = {}
    for k, v in dict(row).items():
        out[LSN_COLUMNS_9.get(k, k)] = _jsonable(v)
    if out.get("sent_lsn") and out.get("replay_lsn"):
        try:
            out["replay_lag_bytes"] = lsnmod.diff(out["sent_lsn"], out["replay_lsn"])
        except lsnmod.LsnError:
            out["replay_lag_bytes"] = None
    return out


def choose_downstream_row(rows, downstream=None):
    """The row for ``downstream`` (by application_name = its pgUrl), else the first row."""
    if not rows:
        return None
    if downstream:
        for r in rows:
            if r.get("application_name") == downstream.get("pgUrl"):
                return r
    return rows[0]


def format_lag(seconds):
    """manatee-adm's LAG column: ``"%dm%02ds"``, minutes not capped; ``-`` when unknown."""
    if seconds is None:
        return "-"
    total = max(0, int(seconds))
    return f"{total // 60}m{total % 60:02d}s"


def probe(peer, role, downstream=None, user=None, password=None, connect_timeout=5,
          query_timeout=10.0):
    """Status of one peer's postgres (never raises for postgres problems)."""
    res = {"online": False, "error": None, "in_recovery": None, "server_version_num": None,
           "current_lsn": None, "receive_lsn": None, "replay_lsn": None, "wal_lsn": None,
           "lag_seconds": None, "lag": "-", "replication": [], "repl": None}
    conn = None
    try:
        conn = connect(peer["pgUrl"], user=user, password=password,
                       connect_timeout=connect_timeout, query_timeout=query_timeout)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery(), current_setting('server_version_num')::int")
            in_rec, ver = cur.fetchone()
            res["in_recovery"], res["server_version_num"] = in_rec, ver
            wal = "wal" if ver >= 100000 else "xlog"
            loc = "lsn" if ver >= 100000 else "location"
            if in_rec:
                cur.execute(f"SELECT pg_last_{wal}_receive_{loc}()::text, "
                            f"pg_last_{wal}_replay_{loc}()::text")
                res["receive_lsn"], res["replay_lsn"] = cur.fetchone()
                res["wal_lsn"] = res["replay_lsn"]
            else:
                cur.execute(f"SELECT pg_current_{wal}_{loc}()::text")
                res["current_lsn"] = cur.fetchone()[0]
                res["wal_lsn"] = res["current_lsn"]
            if role != "primary":
                cur.execute("SELECT EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))")
                lag = cur.fetchone()[0]
                res["lag_seconds"] = float(lag) if lag is not None else None
                res["lag"] = format_lag(res["lag_seconds"])
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute("SELECT * FROM pg_stat_replication")
            rows = [normalize_repl_row(r) for r in cur.fetchall()]
        res["replication"] = rows
        row = choose_downstream_row(rows, downstream)
        res["repl"] = row if row and row.get("state") else None
        res["online"] = True
    except PgError as exc:
        res["error"] = str(exc)
    except psycopg2.Error as exc:
        res["error"] = _first_line(exc)
    finally:
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
    return res


def downstream_of(state, role, index):
    """The peer a given role replicates *to* (P->S, S->A0, Ai->Ai+1), or None."""
    asyncs = state.get("async") or []
    if role == "primary":
        return state.get("sync") or None
    if role == "sync":
        return asyncs[0] if asyncs else None
    if role == "async" and index is not None and index + 1 < len(asyncs):
        return asyncs[index + 1]
    return None


def upstream_of(state, role, index):
    """The peer a given role replicates *from*, or None."""
    if role == "sync":
        return state.get("primary")
    if role == "async":
        if index == 0:
            return state.get("sync") or None
        return (state.get("async") or [])[index - 1]
    return None


def probe_state(state, user=None, password=None, connect_timeout=5, query_timeout=10.0):
    """Probe primary, sync and asyncs concurrently (deposed peers are not probed,
    like manatee-adm). Returns ``{peer id: probe result}``."""
    targets = []
    if isinstance(state.get("primary"), dict):
        targets.append(("primary", None, state["primary"]))
    if isinstance(state.get("sync"), dict):
        targets.append(("sync", None, state["sync"]))
    for i, p in enumerate(state.get("async") or []):
        targets.append(("async", i, p))
    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as ex:
        futs = {p["id"]: ex.submit(probe, p, role, downstream_of(state, role, i), user, password,
                                   connect_timeout, query_timeout)
                for role, i, p in targets}
        return {pid: f.result() for pid, f in futs.items()}


def query_sentinel(peer, table, key, database="moray", key_column="_key", user=None,
                   password=None, connect_timeout=5, query_timeout=10.0):
    """Rows of ``table`` whose ``key_column`` is ``key`` on this peer, read directly.

    The table name is a (possibly schema-qualified) identifier composed with
    psycopg2.sql, never interpolated. ``_value`` is decoded from JSON when it
    is text. Raises PgError on connection or query failure.
    """
    parts = table.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise PgError(f"sentinel table {table!r} must be \"table\" or \"schema.table\"")
    conn = connect(peer["pgUrl"], user=user, password=password, dbname=database,
                   connect_timeout=connect_timeout, query_timeout=query_timeout)
    try:
        q = sql.SQL("SELECT * FROM {} WHERE {} = %s").format(
            sql.Identifier(*parts), sql.Identifier(key_column))
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(q, (key,))
            rows = [{k: _jsonable(v) for k, v in r.items()} for r in cur.fetchall()]
    except psycopg2.Error as exc:
        raise PgError(_first_line(exc)) from None
    finally:
        conn.close()
    for r in rows:
        if isinstance(r.get("_value"), str):
            try:
                r["_value"] = json.loads(r["_value"])
            except ValueError:
                pass
    return rows


def sentinel_matches(rows, etag=None, value=None):
    """(ok, why) for reshard's check: exactly one row, etag and value as expected."""
    if len(rows) != 1:
        return False, f"expected exactly 1 sentinel row, found {len(rows)}"
    row = rows[0]
    if etag is not None and row.get("_etag") != etag:
        return False, f"expected _etag {etag!r}, found {row.get('_etag')!r}"
    if value is not None and row.get("_value") != value:
        return False, (f"expected _value {json.dumps(value, sort_keys=True)}, found "
                       f"{json.dumps(row.get('_value'), sort_keys=True)}")
    return True, "sentinel row present"
