# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Shared pieces of the reshard: names, the sentinel, canary keys, electric-moray.

* Shard names: ``short_shard``, ``pnode``, ``check_new_shard_name``.
* The sentinel (reshard.md section 1, "Sentinel"): a single row in the moray
  bucket ``manta_reshard_sentinel`` (``_vnode`` NULL, so it is never deleted
  by the vnode cleanup), written with moray's value/etag conventions straight
  into a shard primary, then read straight from a peer to prove replication
  reached it (``ensure_sentinel_table``, ``write_sentinel``, ``read_sentinel``).
* Canary keys: Manta paths whose directory hashes to a chosen vnode
  (``canary_key``), as RFD 103 step 2 does by hand with mlocate.
* Electric-moray: ``EmClient`` speaks the RPCs (putObject, getObject,
  findObjects) over the transport at ``emoray_url`` and reads ``/status``.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import time
import zlib

try:
    import requests
    HAS_REQUESTS = True
except ImportError:  # pragma: no cover
    requests = None
    HAS_REQUESTS = False

SENTINEL_TABLE = "manta_reshard_sentinel"
SENTINEL_KEY = "sentinel"
PLAN_TAG = "manta_reshard_plan"
ROLE_TAG = "manta_reshard_role"
CANARY_DIR = "manta_reshard_canary"
LOCK_NAME = "reshard"
ROLES = ("primary", "sync", "async")


class ReshardError(Exception):
    """Something the reshard cannot go on with; the message says what and what to do."""


# ---- names ------------------------------------------------------------------------

def short_shard(shard, domain=None):
    """``3.moray.us-east.example.com`` -> ``3``."""
    if domain and shard.endswith(".moray." + domain):
        return shard[: -len(".moray." + domain)]
    return shard.split(".moray.", 1)[0]


def pnode(shard, port=2020):
    return f"tcp://{shard}:{port}"


def full_shard(name, domain):
    """``3`` -> ``3.moray.<domain>``, ``3.moray`` -> ``3.moray.<domain>``; any other name is kept as given
    (and then has to be a full shard name)."""
    name = str(name or "").strip()
    if not name or not domain:
        return name
    if "." not in name:
        return f"{name}.moray.{domain}"
    if name.endswith(".moray"):
        return f"{name}.{domain}"
    return name


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"


def check_new_shard_name(name, domain):
    """Why ``name`` is not a well-formed new shard name, or None."""
    if not isinstance(name, str) or not name:
        return "new_shard is required, like 3.moray.%s" % domain
    rx = re.compile(rf"^({_LABEL})\.moray\.{re.escape(domain)}$")
    if not rx.match(name):
        return (f"new_shard {name!r} is not well formed: expected <name>.moray.{domain} where "
                f"<name> is a DNS label (lower-case letters, digits, '-'), e.g. 3.moray.{domain}")
    return None


# ---- moray value conventions ------------------------------------------------------------

def value_string(value):
    """moray's ``_value``: JSON.stringify of the value (compact)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def etag_of(vstr):
    """moray's ``_etag``: upper-case hex CRC32 of the ``_value`` text."""
    return "%08X" % (zlib.crc32(vstr.encode("utf-8")) & 0xFFFFFFFF)


# ---- PostgreSQL ---------------------------------------------------------------------------

def pg_connect(pg_url, dbname="moray", user=None, password=None, connect_timeout=5,
               query_timeout=30.0, autocommit=True):
    from ansible_collections.manta.ops.plugins.module_utils import manatee_pg as mpg
    return mpg.connect(pg_url, user=user, password=password, dbname=dbname,
                       connect_timeout=connect_timeout, query_timeout=query_timeout,
                       autocommit=autocommit)


def ensure_sentinel_table(conn):
    """Create the sentinel bucket as moray's putBucket would (table, indexes,
    buckets_config row); idempotent. Returns True if anything was created."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (SENTINEL_TABLE,))
        if cur.fetchone()[0]:
            return False
        t = SENTINEL_TABLE
        cur.execute(f"CREATE SEQUENCE IF NOT EXISTS {t}_serial")
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {t} (_id BIGINT DEFAULT nextval('{t}_serial'), "
            "_txn_snap INTEGER, _key TEXT PRIMARY KEY, _value TEXT NOT NULL, _etag CHAR(8) NOT NULL, "
            "_mtime BIGINT DEFAULT CAST(EXTRACT(EPOCH FROM NOW()) * 1000 AS BIGINT) NOT NULL, "
            "_vnode BIGINT)")
        for c in ("_id", "_etag", "_mtime", "_vnode"):
            cur.execute(f"CREATE INDEX IF NOT EXISTS {t}_{c}_idx ON {t} USING BTREE ({c}) "
                        f"WHERE {c} IS NOT NULL")
        cur.execute("SELECT to_regclass('buckets_config') IS NOT NULL")
        if cur.fetchone()[0]:
            cur.execute("INSERT INTO buckets_config (name, index, pre, post, options) "
                        "VALUES (%s, '{}', '[]', '[]', '{\"version\":1}') ON CONFLICT DO NOTHING",
                        (t,))
    return True


def sentinel_value(plan, purpose):
    return {"pid": os.getpid(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rand": secrets.token_hex(8), "plan": plan, "purpose": purpose}


def write_sentinel(conn, plan, purpose):
    """A fresh sentinel value written straight into the primary. Returns (etag, value)."""
    value = sentinel_value(plan, purpose)
    vstr = value_string(value)
    etag = etag_of(vstr)
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {SENTINEL_TABLE} (_key, _value, _etag, _mtime, _vnode) "
            "VALUES (%s, %s, %s, %s, NULL) ON CONFLICT (_key) DO UPDATE SET "
            "_value = EXCLUDED._value, _etag = EXCLUDED._etag, _mtime = EXCLUDED._mtime",
            (SENTINEL_KEY, vstr, etag, int(time.time() * 1000)))
    return etag, value


def read_sentinel(conn):
    """(etag, value) of the sentinel row on this peer, or (None, None)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (SENTINEL_TABLE,))
        if not cur.fetchone()[0]:
            return None, None
        cur.execute(f"SELECT _etag, _value FROM {SENTINEL_TABLE} WHERE _key = %s", (SENTINEL_KEY,))
        row = cur.fetchone()
    if row is None:
        return None, None
    try:
        value = json.loads(row[1])
    except ValueError:
        value = row[1]
    return (row[0] or "").strip(), value


def wait_sentinel(pg_url, etag, value, timeout, pg_opts=None, interval=0.1, clock=time.monotonic):
    """Wait until ``pg_url`` has the sentinel ``(etag, value)``. Returns seconds waited.
    Raises ReshardError naming what was last seen."""
    pg_opts = pg_opts or {}
    t0 = clock()
    last = "not checked"
    conn = None
    while True:
        try:
            if conn is None:
                conn = pg_connect(pg_url, **pg_opts)
            got = read_sentinel(conn)
            if got[0] == etag and got[1] == value:
                return clock() - t0
            last = f"sentinel etag {got[0]!r}, expected {etag!r}"
        except Exception as exc:  # noqa: BLE001 - a peer restarting is retried
            last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
                conn = None
        if clock() - t0 > timeout:
            if conn is not None:
                conn.close()
            raise ReshardError(f"the sentinel written to the primary did not reach {pg_url} within "
                               f"{timeout:g}s: {last}")
        time.sleep(interval)


# ---- canary keys -----------------------------------------------------------------------------

def canary_key(topology, owner, plan, vnode, start=0, limit=5_000_000):
    """A Manta key ``/<owner>/stor/manta_reshard_canary/<plan8>/<n>/canary`` whose
    directory hashes to ``vnode`` (electric-moray hashes an object's directory).
    Returns (key, n)."""
    base = f"/{owner}/stor/{CANARY_DIR}/{plan[:8]}"
    vof = topology.vnode_of
    for n in range(start, start + limit):
        d = f"{base}/{n}"
        if vof(d) == vnode:
            return d + "/canary", n
    raise ReshardError(f"no canary key for vnode {vnode} within {limit} candidates")


def canary_keys(topology, owner, plan, vnodes, limit=5_000_000):
    """Keys for several vnodes in one pass: {vnode: key}."""
    want = set(int(v) for v in vnodes)
    base = f"/{owner}/stor/{CANARY_DIR}/{plan[:8]}"
    out = {}
    vof = topology.vnode_of
    for n in range(limit):
        if not want:
            break
        d = f"{base}/{n}"
        v = vof(d)
        if v in want:
            out[v] = d + "/canary"
            want.discard(v)
    if want:
        raise ReshardError(f"no canary key found for vnodes {sorted(want)} within {limit} candidates")
    return out


# ---- electric-moray -----------------------------------------------------------------------------

class EmError(Exception):
    def __init__(self, name, message, status=None, info=None):
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message
        self.status = status
        self.info = info or {}


class EmClient:
    """Electric-moray RPCs over the transport at ``url`` (JSON over HTTP: POST /<rpc>)."""

    def __init__(self, url, timeout=30.0):
        if not HAS_REQUESTS:
            raise ReshardError("the python 'requests' library is required")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def call(self, rpc, args):
        try:
            r = self.session.post(f"{self.url}/{rpc}", json=args, timeout=self.timeout)
        except requests.RequestException as exc:
            raise EmError("ConnectionError", f"{self.url}/{rpc}: {exc}") from None
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code >= 300:
            raise EmError(body.get("name") or f"HTTP{r.status_code}", body.get("message") or r.text[:200],
                          r.status_code, body.get("info"))
        return body

    def put_object(self, bucket, key, value, etag="__missing__"):
        opts = {}
        if etag != "__missing__":
            opts["etag"] = etag
        return self.call("putObject", {"bucket": bucket, "key": key, "value": value, "options": opts})

    def get_object(self, bucket, key):
        return self.call("getObject", {"bucket": bucket, "key": key, "options": {}})

    def find_objects(self, bucket, flt, **opts):
        return self.call("findObjects", {"bucket": bucket, "filter": flt, "options": opts})


def em_status(status_url, timeout=5.0):
    """GET the electric-moray status document; None when it does not answer."""
    try:
        r = requests.get(status_url, timeout=timeout)
        if r.status_code != 200:
            return None
        return r.json()
    except (requests.RequestException, ValueError):
        return None


def status_image(status):
    """The ring image a running electric-moray serves (its stamp), or None."""
    if not status:
        return None
    ring = status.get("ring") or {}
    stamp = ring.get("stamp") or {}
    return stamp.get("image_uuid") or ring.get("image_uuid")


def index_shards_ok(status, want):
    """(ok, why): ``want`` maps shard -> read_only flag expected in the process's view."""
    have = {s.get("host"): bool(s.get("readOnly")) for s in (status or {}).get("index_shards") or []}
    for host, ro in (want or {}).items():
        if host not in have:
            return False, f"{host} is not in its index shards (config not re-rendered yet?)"
        if have[host] != bool(ro):
            return False, f"{host} is {'read-only' if have[host] else 'read-write'} in its config"
    return True, "ok"
