"""Zone kind ``moray``: one small moray server per zone, serving one shard.

A moray zone answers the lab RPC protocol (`manta_lab.rpc`) on its own port
and keeps its rows in the shard's PostgreSQL primary, which it finds the way
node-manatee clients do: it watches ``/manatee/<shard>/state`` in ZooKeeper
and, when that node does not exist, falls back to the election children in
sequence order (manatee.md §1.2). A primary change drops the connection pool.

Semantics follow real moray (evacuate.md §1.2):

* putObject stores ``_value`` = JSON text of the value, ``_etag`` = upper-case
  hex CRC32 of that text, ``_mtime`` = now in ms, ``_vnode`` = ``value.vnode``,
  and the bucket's index columns (every table column not starting with ``_``,
  matched case-insensitively against the value's fields: ``objectId`` →
  ``objectid``); ``_id`` comes from the table's serial.
* etag option omitted: unconditional; ``null``: the row must not exist;
  a string: it must equal the current ``_etag``; otherwise EtagConflictError.
* batch runs in one transaction: any failure rolls back every operation.

Lab name resolution: electric-moray, minnow and the seeder find the morays of
a shard host ``N.moray.<domain>`` with `resolve` (the zone records of kind
``moray`` for that shard), the way binder DNS answers for a shard: creating a
moray zone makes the shard reachable.

Process entry: ``python -m manta_lab.moray --home <home> --zone <uuid>``.
"""
import argparse
import json
import os
import re
import sys
import threading
import time
import uuid as uuidlib

from . import config, procs, rpc, zones
from .config import HOST, LabError
from .rpc import error

KIND = "moray"
SERVICES = ["moray"]
SVC = "moray"
PORT_KEY = "MORAY_PORT"     # SAPI instance metadata: the port this zone serves on (see publish_port)

SYSTEM_COLUMNS = ("_id", "_txn_snap", "_key", "_value", "_etag", "_mtime", "_vnode", "_idx")
_BUCKET_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,62}$")


# =============================================================================
# zone handler (runs in the lab's own processes)
# =============================================================================

def zone_dir(cfg, zone):
    return cfg.zones_dir / zone["uuid"]


def url(zone):
    return f"http://{HOST}:{zone['ports']['rpc']}"


def _short(shard):
    return shard.split(".", 1)[0]


def _pick_server(cfg, server_uuid):
    if server_uuid:
        s = cfg.server(server_uuid)
        if s is None:
            raise LabError("moray", f"unknown server_uuid {server_uuid!r}; lab servers: "
                           f"{[x['uuid'] for x in cfg.servers]}")
        return s
    n = len(zones.all_zones(cfg, kind=KIND))
    return cfg.servers[n % len(cfg.servers)]


def provision(cfg, shard, server_uuid=None, zuuid=None, metadata=None):
    """Create a moray zone for ``shard`` and start it; returns the zone record."""
    if not shard or not isinstance(shard, str):
        raise LabError("moray", f"provision needs a shard name like {cfg.shard_name(1)!r}, got {shard!r}")
    server = _pick_server(cfg, server_uuid)
    zuuid = zuuid or str(uuidlib.uuid4())
    port = cfg.alloc_port()
    md = {"SHARD": _short(shard), "SERVICE_NAME": shard,
          "MANATEE_SHARD_PATH": f"/manatee/{shard}", "ZK_SERVERS": cfg.zk_connect}
    md.update(metadata or {})
    md[PORT_KEY] = port
    zone = zones.create(
        cfg, KIND, f"{_short(shard)}.moray-{zuuid[:8]}", SERVICES, zuuid=zuuid,
        shard=shard, server_uuid=server["uuid"], datacenter=server["datacenter"],
        ports={"rpc": port}, metadata=md)
    zone["paths"] = {"root": str(zone_dir(cfg, zone)),
                     "log": str(cfg.log(f"moray-{zone['alias']}"))}
    zones.save(cfg, zone)
    try:
        zone_dir(cfg, zone).mkdir(parents=True, exist_ok=True)
        start_service(cfg, zone, SVC)
    except BaseException:
        destroy(cfg, zone)    # a zone that failed setup is not left behind
        raise
    publish_port(cfg, zone)
    return zone


def publish_port(cfg, zone):
    """Put the zone's port in its SAPI instance metadata (``MORAY_PORT``), where a client finds it the way
    it finds a production moray: SAPI instance (SERVICE_NAME = the shard) + VMAPI VM (nic IP) + port. In
    production every moray zone serves on 2020 (haproxy); lab zones share 127.0.0.1, so each publishes its
    own. Instances created later by the lab's adoption take it from the zone record's metadata. Best effort:
    SAPI down, or no instance yet (`lab up` adopts the zone right after), changes nothing."""
    import http.client
    from .config import port_free
    if port_free(cfg.port("sapi")):
        return False
    body = json.dumps({"action": "update", "metadata": {PORT_KEY: zone["ports"]["rpc"]}})
    c = http.client.HTTPConnection(HOST, cfg.port("sapi"), timeout=30)
    try:
        c.request("PUT", f"/instances/{zone['uuid']}", body=body,
                  headers={"Content-Type": "application/json", "Accept-Version": "~2"})
        r = c.getresponse()
        r.read()
        return r.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        c.close()


def destroy(cfg, zone):
    """Stop the zone's services and delete it (record and zone directory)."""
    zones.destroy(cfg, zone, zone_dir(cfg, zone))


def ensure(cfg, shard):
    """One moray per shard at `lab up`: provision it once, start it always."""
    existing = zones.all_zones(cfg, kind=KIND, shard=shard)
    if not existing:
        zone = provision(cfg, shard)
        zones.register(cfg, zone)
        return [zone]
    for z in existing:
        zones.start(cfg, z)
    return existing


def start_service(cfg, zone, svc):
    if svc != SVC:
        raise LabError("moray", f"zone {zone['alias']} has no service {svc!r}")
    name = zones.proc_name(zone, svc)
    if procs.alive(cfg, name):
        return
    log = zone.get("paths", {}).get("log") or str(cfg.log(f"moray-{zone['alias']}"))
    procs.spawn(cfg, name, [sys.executable, "-m", "manta_lab.moray",
                            "--home", cfg.home, "--zone", zone["uuid"]], log=log)
    if not rpc.wait_ping(url(zone), 30, lambda: procs.alive(cfg, name)):
        raise LabError(f"moray {zone['alias']}", f"did not answer /ping: {rpc.log_tail(log)}", log)


def stop_service(cfg, zone, svc):
    procs.stop(cfg, zones.proc_name(zone, svc))


def service_state(cfg, zone, svc):
    if not zone.get("services", {}).get(svc, {}).get("enabled", True):
        return "disabled"
    return "online" if procs.alive(cfg, zones.proc_name(zone, svc)) else "offline"


def resolve(cfg, shard, online_only=True):
    """URLs of the morays serving ``shard`` (lab name service)."""
    out = []
    for z in zones.all_zones(cfg, kind=KIND, shard=shard):
        if online_only and not procs.alive(cfg, zones.proc_name(z, SVC)):
            continue
        out.append(url(z))
    return out


def client(cfg, shard, timeout=30.0):
    """An rpc.Client for one live moray of ``shard`` (LabError if none)."""
    urls = resolve(cfg, shard)
    if not urls:
        raise LabError("moray", f"no running moray for shard {shard}; "
                       f"morays: {[z['alias'] for z in zones.all_zones(cfg, kind=KIND)]}")
    return rpc.Client(urls[0], timeout=timeout)


def describe(cfg, shard):
    return [{"uuid": z["uuid"], "alias": z["alias"], "url": url(z),
             "server_uuid": z.get("server_uuid"), "datacenter": z.get("datacenter"),
             "state": service_state(cfg, z, SVC), "log": z.get("paths", {}).get("log")}
            for z in zones.all_zones(cfg, kind=KIND, shard=shard)]


# =============================================================================
# primary discovery (ZooKeeper)
# =============================================================================

def dsn_for(ip, port, user=None):
    """The DSN moray uses for a shard peer at ip:port (database and role
    ``moray``, as manta_lab.schema creates them)."""
    from . import schema
    user = user or os.environ.get("MANTA_LAB_PGUSER") or schema.ROLE
    return f"host={ip} port={port} dbname={schema.DB} user={user} connect_timeout=5"


def primary_dsn(cfg, shard, zk=None):
    """DSN of ``shard``'s primary as moray finds it (ZooKeeper state, else
    election order); LabError when no primary is known."""
    own = zk is None
    if own:
        from kazoo.client import KazooClient
        zk = KazooClient(hosts=cfg.zk_connect, timeout=10.0)
        try:
            zk.start(timeout=15)
        except Exception as exc:  # noqa: BLE001
            raise LabError("moray", f"ZooKeeper {cfg.zk_connect}: {exc}") from None
    try:
        p = primary_from_zk(zk, shard)
    finally:
        if own:
            zk.stop()
            zk.close()
    if p is None:
        raise LabError("moray", f"shard {shard}: no primary in /manatee/{shard}/state or election")
    return dsn_for(p[0], p[1])


def _pgurl_hostport(pgurl):
    m = re.match(r"^tcp://(?:[^@/]*@)?([^:/]+):(\d+)", pgurl or "")
    return (m.group(1), int(m.group(2))) if m else None


def primary_from_zk(zk, shard):
    """(ip, port, source) of the shard primary, or None.

    ``/manatee/<shard>/state`` wins; without it the election children sorted
    by sequence number give the legacy order (index 0 = primary).
    """
    from kazoo.exceptions import NoNodeError
    base = f"/manatee/{shard}"
    try:
        data, _ = zk.get(base + "/state")
        st = json.loads(data.decode())
        hp = _pgurl_hostport((st.get("primary") or {}).get("pgUrl"))
        if hp:
            return hp + ("state",)
    except NoNodeError:
        pass
    except (ValueError, AttributeError):
        return None
    try:
        kids = zk.get_children(base + "/election")
    except NoNodeError:
        return None
    best = None
    for k in kids:
        ident, _, seq = k.rpartition("-")
        parts = ident.split(":")
        if len(parts) >= 2 and seq.isdigit():
            if best is None or int(seq) < best[0]:
                best = (int(seq), parts[0], int(parts[1]))
    return (best[1], best[2], "election") if best else None


# =============================================================================
# the moray server process
# =============================================================================

class _Retry(Exception):
    pass


class Moray:
    POOL_MAX = 16

    def __init__(self, cfg, zone):
        self.cfg = cfg
        self.zone = zone
        self.shard = zone["shard"]
        self.lock = threading.Lock()
        self.primary = None          # (ip, port, source)
        self.dsn = None
        self.pool = []
        self.columns = {}            # bucket -> {column: data_type}
        self.zk = None

    # ---- ZooKeeper --------------------------------------------------------
    def start_zk(self):
        from kazoo.client import KazooClient
        self.zk = KazooClient(hosts=self.cfg.zk_connect, timeout=10.0,
                              connection_retry={"max_tries": -1, "delay": 0.2, "max_delay": 2},
                              command_retry={"max_tries": 3, "delay": 0.1})
        self.zk.start(timeout=60)
        path = f"/manatee/{self.shard}/state"

        def on_state(data, stat, event=None):
            self._refresh()
            return True
        self.zk.DataWatch(path, on_state)
        # A missing /state leaves the election order in charge: keep it fresh.
        threading.Thread(target=self._poll, daemon=True, name="zk-poll").start()

    def _poll(self):
        while True:
            time.sleep(1.0)
            try:
                self._refresh()
            except Exception as exc:  # noqa: BLE001 - keep polling
                print(f"{time.strftime('%FT%T')} refresh failed: {exc!r}", flush=True)

    def _refresh(self):
        try:
            p = primary_from_zk(self.zk, self.shard)
        except Exception:  # noqa: BLE001 - zk down: keep what we have
            return
        with self.lock:
            if p is None:
                if self.primary is not None:
                    print(f"{time.strftime('%FT%T')} shard {self.shard}: primary unknown", flush=True)
                self.primary, self.dsn = None, None
                self._drop_pool()
                return
            dsn = dsn_for(p[0], p[1])
            if dsn != self.dsn:
                print(f"{time.strftime('%FT%T')} shard {self.shard}: primary {p[0]}:{p[1]} "
                      f"(from {p[2]})", flush=True)
                self.primary, self.dsn = p, dsn
                self._drop_pool()
                self.columns = {}

    def _drop_pool(self):
        for c in self.pool:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        self.pool = []

    # ---- connections -------------------------------------------------------
    def _get(self):
        import psycopg2
        with self.lock:
            dsn = self.dsn
            if dsn is None:
                raise error("NoDatabasePeersError", "no manatee peers available",
                            info={"shard": self.shard})
            while self.pool:
                c = self.pool.pop()
                if not c.closed:
                    return c, dsn
        try:
            c = psycopg2.connect(dsn)
        except psycopg2.Error as exc:
            raise error("NoDatabaseError", "Not connected to manatee and/or postgres",
                        info={"shard": self.shard, "cause": str(exc).strip()}) from None
        return c, dsn

    def _release(self, c, dsn, ok):
        with self.lock:
            if ok and dsn == self.dsn and not c.closed and len(self.pool) < self.POOL_MAX:
                self.pool.append(c)
                return
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass

    def txn(self, fn):
        """Run fn(cursor) in one transaction; retry once on a connection that
        failed before commit (a stale pooled connection or a new primary)."""
        import psycopg2
        for attempt in (0, 1):
            c, dsn = self._get()
            committing = False
            try:
                with c.cursor() as cur:
                    out = fn(cur)
                committing = True
                c.commit()
                self._release(c, dsn, True)
                return out
            except rpc.RpcError:
                self._rollback(c, dsn)
                raise
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                self._release(c, dsn, False)
                if committing or attempt == 1:
                    raise error("NoDatabaseError", "Not connected to manatee and/or postgres",
                                info={"shard": self.shard, "cause": str(exc).strip()}) from None
                self._refresh()
                continue
            except psycopg2.errors.ReadOnlySqlTransaction as exc:
                self._release(c, dsn, False)
                self._refresh()
                raise error("NoDatabaseError", "primary is read-only (not the primary any more?)",
                            info={"shard": self.shard, "cause": str(exc).strip()}) from None
            except psycopg2.errors.QueryCanceled as exc:
                self._rollback(c, dsn)
                raise error("QueryTimeoutError", f"query timeout: {str(exc).strip()}") from None
            except psycopg2.Error as exc:
                self._rollback(c, dsn)
                raise error("InternalError", f"{type(exc).__name__}: {str(exc).strip()}") from None
            except BaseException:
                self._rollback(c, dsn)
                raise
        raise AssertionError("unreachable")

    def _rollback(self, c, dsn):
        try:
            c.rollback()
            self._release(c, dsn, True)
        except Exception:  # noqa: BLE001
            self._release(c, dsn, False)

    # ---- buckets ------------------------------------------------------------
    def bucket_columns(self, cur, bucket):
        if not isinstance(bucket, str) or not _BUCKET_RE.match(bucket):
            raise error("InvalidBucketNameError", f"{bucket} is not a valid bucket name")
        cols = self.columns.get(bucket)
        if cols is None:
            cur.execute("SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = 'public' AND table_name = %s", (bucket,))
            cols = dict(cur.fetchall())
            if not cols:
                raise error("BucketNotFoundError", f"{bucket} does not exist")
            self.columns[bucket] = cols
        return cols

    # ---- helpers --------------------------------------------------------------
    @staticmethod
    def _args(args, *names, rpcname):
        out = []
        for n in names:
            if n not in args:
                raise error("InvocationError", f"{rpcname} expects {n}")
            out.append(args[n])
        return out

    @staticmethod
    def _coerce(v, data_type):
        if v is None:
            return None
        if data_type in ("integer", "bigint", "smallint", "numeric", "double precision", "real"):
            if isinstance(v, bool):
                return int(v)
            if isinstance(v, (int, float)):
                return v
            try:
                return int(str(v))
            except ValueError:
                return None
        if data_type == "boolean":
            return bool(v)
        if data_type == "ARRAY":
            return list(v) if isinstance(v, list) else [v]
        if isinstance(v, (dict, list)):
            return json.dumps(v, separators=(",", ":"))
        return str(v)

    def _index_values(self, cols, value):
        idx = {c: t for c, t in cols.items() if not c.startswith("_")}
        lower = {}
        if isinstance(value, dict):
            for k, v in value.items():
                lower.setdefault(k.lower(), v)
        return {c: self._coerce(lower.get(c), t) for c, t in sorted(idx.items())}

    def _check_etag(self, bucket, key, want, old):
        """Moray checkEtag: want missing → ok; null → row must not exist;
        string → must equal the current etag."""
        if want is rpc._MISSING:
            return
        if want is None:
            if old is not None:
                raise error("EtagConflictError",
                            f'{bucket}::{key} was expected to have etag "null", but was "{old}"',
                            context={"bucket": bucket, "key": key, "expected": "null",
                                     "actual": old})
            return
        if want != old:
            actual = old if old is not None else "null"
            raise error("EtagConflictError",
                        f'{bucket}::{key} was expected to have etag "{want}", but was "{actual}"',
                        context={"bucket": bucket, "key": key, "expected": want, "actual": actual})

    @staticmethod
    def _etag_opt(options):
        if not isinstance(options, dict) or "etag" not in options:
            return rpc._MISSING
        e = options["etag"]
        if e is not None and not isinstance(e, str):
            raise error("InvocationError", "options.etag must be a string or null")
        return e

    def _put(self, cur, bucket, key, value, options):
        from psycopg2 import sql
        if not isinstance(key, str) or not key:
            raise error("InvocationError", "putObject expects key (string)")
        if not isinstance(value, dict):
            raise error("InvocationError", "putObject expects value (object)")
        cols = self.bucket_columns(cur, bucket)
        want = self._etag_opt(options)
        vstr = rpc.value_string(value)
        etag = rpc.etag_of(vstr)
        mtime = int(time.time() * 1000)
        vnode = value.get("vnode")
        vnode = vnode if isinstance(vnode, int) and not isinstance(vnode, bool) else None
        idx = self._index_values(cols, value)
        t = sql.Identifier(bucket)
        cur.execute(sql.SQL("SELECT _etag FROM {} WHERE _key = %s FOR UPDATE").format(t), (key,))
        row = cur.fetchone()
        old = row[0].strip() if row and row[0] is not None else (None if row is None else "")
        self._check_etag(bucket, key, want, old)
        fields = {"_value": vstr, "_etag": etag, "_mtime": mtime}
        if "_vnode" in cols:
            fields["_vnode"] = vnode
        if "_txn_snap" in cols:
            fields["_txn_snap"] = None
        fields.update(idx)
        names = list(fields)
        if row is not None:
            cur.execute(sql.SQL("UPDATE {} SET {} WHERE _key = %s RETURNING _id").format(
                t, sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(n)) for n in names)),
                [fields[n] for n in names] + [key])
        else:
            cur.execute("SAVEPOINT put_insert")
            import psycopg2
            try:
                cur.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING _id").format(
                    t, sql.SQL(", ").join(map(sql.Identifier, ["_key"] + names)),
                    sql.SQL(", ").join(sql.Placeholder() * (len(names) + 1))),
                    [key] + [fields[n] for n in names])
            except psycopg2.errors.UniqueViolation:
                # A concurrent insert won the race: moray reports a conflict.
                cur.execute("ROLLBACK TO SAVEPOINT put_insert")
                cur.execute(sql.SQL("SELECT _etag FROM {} WHERE _key = %s").format(t), (key,))
                r = cur.fetchone()
                actual = r[0].strip() if r else "null"
                exp = "null" if want is None or want is rpc._MISSING else want
                raise error("EtagConflictError",
                            f'{bucket}::{key} was expected to have etag "{exp}", but was "{actual}"',
                            context={"bucket": bucket, "key": key, "expected": exp,
                                     "actual": actual}) from None
        rid = cur.fetchone()[0]
        return {"bucket": bucket, "key": key, "etag": etag, "_id": rid, "count": 1}

    def _del(self, cur, bucket, key, options):
        from psycopg2 import sql
        if not isinstance(key, str) or not key:
            raise error("InvocationError", "delObject expects key (string)")
        self.bucket_columns(cur, bucket)
        want = self._etag_opt(options)
        t = sql.Identifier(bucket)
        cur.execute(sql.SQL("SELECT _etag FROM {} WHERE _key = %s FOR UPDATE").format(t), (key,))
        row = cur.fetchone()
        if row is None:
            raise error("ObjectNotFoundError", f"{bucket}::{key} does not exist",
                        context={"bucket": bucket, "key": key})
        self._check_etag(bucket, key, want, (row[0] or "").strip())
        cur.execute(sql.SQL("DELETE FROM {} WHERE _key = %s").format(t), (key,))
        return {"bucket": bucket, "key": key, "count": 1}

    @staticmethod
    def _record(bucket, row, names):
        r = dict(zip(names, row))
        try:
            value = json.loads(r["_value"])
        except (TypeError, ValueError):
            value = r["_value"]
        etag = (r.get("_etag") or "").strip() or None
        out = {"bucket": bucket, "key": r["_key"], "value": value,
               "_id": r.get("_id"), "_etag": etag, "_mtime": r.get("_mtime"),
               "_vnode": r.get("_vnode"), "_txn_snap": r.get("_txn_snap"),
               "etag": etag, "mtime": r.get("_mtime")}
        if "_count" in r:
            out["_count"] = r["_count"]
        return out

    def _select_cols(self, cols):
        return [c for c in ("_id", "_key", "_value", "_etag", "_mtime", "_vnode", "_txn_snap")
                if c in cols]

    # ---- RPCs -------------------------------------------------------------------
    def rpc_putObject(self, args):
        bucket, key, value = self._args(args, "bucket", "key", "value", rpcname="putObject")
        return self.txn(lambda cur: self._put(cur, bucket, key, value, args.get("options") or {}))

    def rpc_getObject(self, args):
        from psycopg2 import sql
        bucket, key = self._args(args, "bucket", "key", rpcname="getObject")

        def fn(cur):
            cols = self.bucket_columns(cur, bucket)
            names = self._select_cols(cols)
            cur.execute(sql.SQL("SELECT {} FROM {} WHERE _key = %s").format(
                sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(bucket)), (key,))
            row = cur.fetchone()
            if row is None:
                raise error("ObjectNotFoundError", f"{bucket}::{key} does not exist",
                            context={"bucket": bucket, "key": key})
            return self._record(bucket, row, names)
        return self.txn(fn)

    def rpc_delObject(self, args):
        bucket, key = self._args(args, "bucket", "key", rpcname="delObject")
        return self.txn(lambda cur: self._del(cur, bucket, key, args.get("options") or {}))

    def rpc_batch(self, args):
        (reqs,) = self._args(args, "requests", rpcname="batch")
        if not isinstance(reqs, list) or not reqs:
            raise error("InvocationError", "batch expects requests (non-empty array)")

        def fn(cur):
            etags = []
            for i, r in enumerate(reqs):
                if not isinstance(r, dict):
                    raise error("InvocationError", f"batch: requests[{i}] must be an object")
                op = r.get("operation") or "put"
                if op == "put":
                    res = self._put(cur, r.get("bucket"), r.get("key"), r.get("value"),
                                    r.get("options") or {})
                    etags.append({"bucket": r.get("bucket"), "key": r.get("key"),
                                  "etag": res["etag"]})
                elif op == "delete":
                    self._del(cur, r.get("bucket"), r.get("key"), r.get("options") or {})
                    etags.append({"bucket": r.get("bucket"), "key": r.get("key"), "etag": None})
                else:
                    raise error("InvocationError",
                                f"batch: requests[{i}].operation {op!r} is not supported "
                                "(put, delete)")
            return {"etags": etags}
        return self.txn(fn)

    def rpc_findObjects(self, args):
        from psycopg2 import sql
        bucket, flt = self._args(args, "bucket", "filter", rpcname="findObjects")
        opts = args.get("options") or {}
        if not isinstance(flt, str) or not flt:
            raise error("InvocationError", "findObjects expects filter (string)")
        try:
            limit = int(opts.get("limit", 1000))
            offset = int(opts.get("offset", 0))
        except (TypeError, ValueError):
            raise error("InvocationError", "findObjects: limit/offset must be integers") from None

        def fn(cur):
            cols = self.bucket_columns(cur, bucket)
            try:
                tree = parse_filter(flt)
            except ValueError as exc:
                raise error("InvalidQueryError", f"{flt} is an invalid filter ({exc})") from None
            where, params = filter_sql(tree, cols, bucket, flt)
            names = self._select_cols(cols)
            order = sql.SQL("")
            sort = opts.get("sort")
            if isinstance(sort, dict) and sort.get("attribute"):
                a = str(sort["attribute"]).lower()
                if a not in cols:
                    raise error("NotIndexedError",
                                f"{bucket} does not have indexes that support sort by {a}")
                direction = sql.SQL("DESC" if str(sort.get("order", "ASC")).upper() == "DESC"
                                    else "ASC")
                order = sql.SQL(" ORDER BY {} {}").format(sql.Identifier(a), direction)
            elif "_id" in cols:
                order = sql.SQL(" ORDER BY _id ASC")
            q = sql.SQL("SELECT {}, count(1) OVER () AS _count FROM {} WHERE {}{} LIMIT %s OFFSET %s").format(
                sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(bucket),
                where, order)
            cur.execute(q, params + [limit, offset])
            return {"objects": [self._record(bucket, row, names + ["_count"])
                                for row in cur.fetchall()]}
        return self.txn(fn)

    def rpc_sql(self, args):
        (stmt,) = self._args(args, "statement", rpcname="sql")
        values = args.get("values") or []
        if not isinstance(stmt, str):
            raise error("InvocationError", "sql expects statement (string)")
        q, params = pg_placeholders(stmt, values)

        def fn(cur):
            cur.execute(q, params)
            if cur.description is None:
                return {"rows": [], "count": cur.rowcount}
            names = [d[0] for d in cur.description]
            return {"rows": [dict(zip(names, r)) for r in cur.fetchall()], "count": cur.rowcount}
        return self.txn(fn)

    def rpc_getTokens(self, args):
        raise error("InvocationError", "getTokens is an electric-moray RPC")

    def rpc_updateObjects(self, args):
        raise error("Error", "Operation not supported")

    def rpc_deleteMany(self, args):
        raise error("Error", "Operation not supported")

    def ping(self):
        with self.lock:
            p = self.primary
        return {"ok": True, "shard": self.shard, "zone": self.zone["uuid"],
                "primary": f"{p[0]}:{p[1]}" if p else None,
                "primary_source": p[2] if p else None, "pid": os.getpid()}


# ---- LDAP filter subset (moray findObjects) -------------------------------------

def parse_filter(text):
    """Parse an LDAP search filter: (&..) (|..) (!..) (a=v) (a>=v) (a<=v) (a=*) (a=x*y)."""
    pos = 0

    def parse():
        nonlocal pos
        if pos >= len(text) or text[pos] != "(":
            raise ValueError(f"expected '(' at {pos}")
        pos += 1
        c = text[pos:pos + 1]
        if c in ("&", "|"):
            pos += 1
            kids = []
            while pos < len(text) and text[pos] == "(":
                kids.append(parse())
            node = (c, kids)
            if not kids:
                raise ValueError(f"empty {c} at {pos}")
        elif c == "!":
            pos += 1
            node = ("!", parse())
        else:
            end = pos
            depth = 0
            while end < len(text) and not (text[end] == ")" and depth == 0):
                end += 1
            item = text[pos:end]
            pos = end
            m = re.match(r"^([A-Za-z_][A-Za-z0-9_.-]*)(>=|<=|~=|=)(.*)$", item, re.S)
            if not m:
                raise ValueError(f"bad item {item!r}")
            node = ("cmp", m.group(1), m.group(2), m.group(3))
        if pos >= len(text) or text[pos] != ")":
            raise ValueError(f"expected ')' at {pos}")
        pos += 1
        return node

    node = parse()
    if pos != len(text):
        raise ValueError(f"trailing text at {pos}")
    return node


def _unescape(v):
    return re.sub(r"\\([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), v)


def filter_sql(node, cols, bucket, flt):
    from psycopg2 import sql
    params = []
    indexed = [False]

    def walk(n):
        kind = n[0]
        if kind in ("&", "|"):
            parts = [walk(k) for k in n[1]]
            return sql.SQL("(") + sql.SQL(" AND " if kind == "&" else " OR ").join(parts) + sql.SQL(")")
        if kind == "!":
            return sql.SQL("(NOT ") + walk(n[1]) + sql.SQL(")")
        _, attr, op, raw = n
        col = attr.lower()
        if col not in cols:
            raise error("NotIndexedError", f"{bucket} does not have indexes that support {flt}")
        indexed[0] = True
        ident = sql.Identifier(col)
        numeric = cols[col] in ("integer", "bigint", "smallint", "numeric")
        if op == "=" and raw == "*":
            return sql.SQL("({} IS NOT NULL)").format(ident)
        if op == "=" and "*" in raw and not numeric:
            pat = "".join("%" if ch == "*" else ch.replace("\\", "\\\\").replace("%", "\\%")
                          .replace("_", "\\_") for ch in _unescape_keep_star(raw))
            params.append(pat)
            return sql.SQL("({} LIKE %s)").format(ident)
        val = _unescape(raw)
        if numeric:
            try:
                val = int(val)
            except ValueError:
                raise error("InvalidQueryError", f"{flt} is an invalid filter") from None
        params.append(val)
        sym = {"=": "=", "~=": "=", ">=": ">=", "<=": "<="}[op]
        return sql.SQL("({} " + sym + " %s)").format(ident)

    where = walk(node)
    return where, params


def _unescape_keep_star(raw):
    # split on literal '*' (unescaped) and unescape the pieces, keeping '*' as a marker
    out = []
    for i, piece in enumerate(raw.split("*")):
        if i:
            out.append("*")
        out.extend(_unescape(piece))
    return out


def pg_placeholders(stmt, values):
    """Moray sql uses $1..$n; psycopg2 wants %s. Literal % is escaped."""
    if not isinstance(values, list):
        raise error("InvocationError", "sql: values must be an array")
    params = []

    def sub(m):
        i = int(m.group(1)) - 1
        if not 0 <= i < len(values):
            raise error("InvocationError", f"sql: ${i + 1} has no value")
        params.append(values[i])
        return "%s"
    q = re.sub(r"\$(\d+)", sub, stmt.replace("%", "%%"))
    return q, params


# =============================================================================
# main
# =============================================================================

def main(argv=None):
    ap = argparse.ArgumentParser(prog="manta_lab.moray")
    ap.add_argument("--home", required=True)
    ap.add_argument("--zone", required=True)
    args = ap.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = config.load(args.home)
    zone = zones.get(cfg, args.zone)
    m = Moray(cfg, zone)
    srv = rpc.RpcServer(HOST, zone["ports"]["rpc"], m, gets={"/status": m.ping}, name=f"moray {zone['alias']}")
    print(f"{time.strftime('%FT%T')} moray {zone['alias']} shard {m.shard} "
          f"listening on {HOST}:{zone['ports']['rpc']} pid {os.getpid()}", flush=True)
    def zk_start():
        try:
            m.start_zk()
            m._refresh()
        except Exception as exc:  # noqa: BLE001 - without ZK every RPC says so
            print(f"{time.strftime('%FT%T')} zookeeper: {exc!r}", flush=True)
    threading.Thread(target=zk_start, daemon=True, name="zk-start").start()
    try:
        # SIGTERM: stop listening at once, answer what is in flight (rpc.serve_until_term)
        rpc.serve_until_term(srv)
    finally:
        try:
            if m.zk is not None:
                m.zk.stop()
        except Exception:  # noqa: BLE001
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
