"""`lab load`: live writers and readers through electric-moray, and the proof
that no acknowledged write was lost.

``run(cfg, rate, duration, log)``: operations are scheduled at ``rate`` per
second for ``duration`` seconds, spread over the running electric-morays (as
haproxy would) by a pool of workers. Each worker owns its keys
(``/<owner>/stor/load-<run>/d<NN>/w<worker>-<n>``), so it can check that it
reads its own writes. About 70% of the operations are writes (new keys, and
conditional overwrites of the worker's own keys with the etag it last saw),
the rest reads of the worker's keys. Objects are zero-byte (``sharks: []``).

A request that one electric-moray did not take - refused at connect time
(it is restarting) or answered ServiceUnavailableError with ``applied:
false`` (it is draining) - is sent to the next one, as haproxy does
(``option redispatch``); each such failover is counted in the report. A
request that may have been applied (sent, no reply) is never sent again: it
is logged ``unacked``. So one write is logged at most once as acknowledged,
and only when it got a success reply. The log (JSON lines, each one written
and fsync'd before the next):

    {"op": "put", "t": ms, "key", "etag", "vhash", "vnode", "pnode", "em"}   acknowledged write
    {"op": "unacked", "t", "key", "vhash", "name"}    sent, no answer: may or may not be applied
    {"op": "reject", "t", "key", "name", "message", "vnode", "pnode"}   refused (e.g. ReadOnlyError)

``vhash`` = sha256 of the value's JSON text as sent (electric-moray adds and
strips ``vnode``). ReadOnlyError during a reshard window is expected: every
rejection is recorded with its time and vnode and summarised per vnode.

``verify(cfg, log)``: every key's last acknowledged write must be what
electric-moray returns (same etag and value hash; a later *unacked* attempt
may have superseded it), and the key must exist on exactly one shard (every
shard primary is queried directly), on the shard and vnode the ring in the
electric-morays names.
"""
import hashlib
import json
import os
import random
import shutil
import tempfile
import threading
import time
import uuid as uuidlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from . import emoray, moray, rpc, seed, zones
from .config import LabError

BUCKET = "manta"
DIRS = 64
WRITE_FRACTION = 0.7


def vhash(value):
    return hashlib.sha256(rpc.value_string(value).encode()).hexdigest()


def _now_ms():
    return int(time.time() * 1000)


class Log:
    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.fh = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def write(self, rec, sync=True):
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        with self.lock:
            self.fh.write(line)
            self.fh.flush()
            if sync:
                os.fsync(self.fh.fileno())

    def close(self):
        self.fh.close()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = defaultdict(int)
        self.errors = defaultdict(int)
        self.rejects = {}
        self.lat = []

    def inc(self, k, n=1):
        with self.lock:
            self.c[k] += n

    def err(self, name):
        with self.lock:
            self.errors[name] += 1

    def reject(self, node, t, name):
        v = (node or {}).get("vnode")
        with self.lock:
            r = self.rejects.get(v)
            if r is None:
                r = self.rejects[v] = {"vnode": v, "pnode": (node or {}).get("pnode"),
                                       "count": 0, "first": t, "last": t, "names": {}}
            r["count"] += 1
            r["last"] = t
            r["names"][name] = r["names"].get(name, 0) + 1

    def latency(self, ms):
        with self.lock:
            if len(self.lat) < 200000:
                self.lat.append(ms)


def _owner():
    return seed.accounts()[0]


def _value(key, seq, run_id):
    d, _, n = key.rpartition("/")
    oid = str(uuidlib.uuid4())
    return {"dirname": d, "key": key, "headers": {}, "mtime": _now_ms(), "name": n,
            "owner": _owner(), "roles": [], "type": "object", "contentLength": 0,
            "contentMD5": seed.EMPTY_MD5, "contentType": "application/octet-stream",
            "etag": oid, "objectId": oid, "sharks": [], "load": {"run": run_id, "seq": seq}}


def _dir_value(key):
    d, _, n = key.rpartition("/")
    return {"dirname": d or "/", "key": key, "headers": {}, "mtime": _now_ms(), "name": n,
            "owner": _owner(), "roles": [], "type": "directory"}


def not_applied(exc):
    """True when a failed request certainly did not reach moray: the connection was refused (or failed
    before the request was sent), or a draining electric-moray answered that it did not process it."""
    return (exc.name == "ConnectionError" and exc.info.get("sent") is False) or \
        (exc.name == rpc.NOT_APPLIED and exc.info.get("applied") is False)


def _haproxy(clients, first, fn, on_failover=None):
    """Like haproxy in front of electric-moray (``option redispatch``): a request that one process did not
    take (connection refused while it restarts for a ring swap, or answered "not processed" while it
    drains) goes to the next one. A request that may have been applied (sent, no reply) is never sent
    again: its outcome is unknown and it is reported as such. Returns (result, index of the process that
    answered)."""
    last = None
    for k in range(len(clients)):
        i = (first + k) % len(clients)
        try:
            return fn(clients[i]), i
        except rpc.RpcError as exc:
            if not_applied(exc):
                last = exc
                if on_failover is not None and k + 1 < len(clients):
                    on_failover(i, exc)
                continue
            raise
    raise last


def run(cfg, rate, duration, log=None, workers=None, write_fraction=WRITE_FRACTION,
        timeout=10.0):
    """Writers and readers through electric-moray; returns a report dict."""
    if not rate or rate <= 0 or not duration or duration <= 0:
        raise LabError("load", f"rate and duration must be > 0, got rate={rate!r} duration={duration!r}")
    ems = [emoray.url(z) for z in zones.all_zones(cfg, kind=emoray.KIND)]
    if not emoray.clients(cfg):
        raise LabError("load", "no running electric-moray")
    run_id = uuidlib.uuid4().hex[:8]
    log = log or str(cfg.path("load", f"load-{run_id}.log"))
    lg = Log(log)
    st = Stats()
    base = f"/{_owner()}/stor/load-{run_id}"
    clients = [rpc.Client(u, timeout=timeout) for u in ems]
    nworkers = workers or max(4, min(64, int(rate // 10) + 4))
    counter = [0]
    clock = threading.Lock()

    def ack(key, value, res, em_i):
        node = res.get("_node") or {}
        lg.write({"op": "put", "t": _now_ms(), "key": key, "etag": res.get("etag"),
                  "vhash": vhash(value), "vnode": node.get("vnode"), "pnode": node.get("pnode"),
                  "em": em_i})

    def failed(key, value, exc):
        t = _now_ms()
        st.err(exc.name)
        if not_applied(exc):
            return            # no electric-moray took it (all refused): not applied
        if exc.name in ("ConnectionError", "InternalError", "NoDatabaseError",
                        "QueryTimeoutError"):
            # may or may not have been applied
            lg.write({"op": "unacked", "t": t, "key": key, "vhash": vhash(value),
                      "name": exc.name})
            return
        node = (exc.info or {}).get("_node") or {}
        lg.write({"op": "reject", "t": t, "key": key, "name": exc.name,
                  "message": exc.message, "vnode": node.get("vnode"),
                  "pnode": node.get("pnode")}, sync=False)
        st.reject(node, t, exc.name)

    # directories first (best effort; logged like any acknowledged write)
    for key in [base] + [f"{base}/d{i:02d}" for i in range(DIRS)]:
        v = _dir_value(key)
        try:
            res = clients[0].put_object(BUCKET, key, v)
            ack(key, v, res, 0)
            st.inc("dir_writes")
        except rpc.RpcError as exc:
            failed(key, v, exc)

    def failover(i, exc):
        st.inc("failovers")
        st.inc(f"failovers_{exc.name}")

    t_start = time.monotonic()
    t_end = t_start + duration
    interval = 1.0 / rate

    def worker(w):
        rng = random.Random(f"{run_id}-{w}")
        mine = {}          # key -> etag of my last acknowledged write
        n = 0
        while True:
            with clock:
                i = counter[0]
                counter[0] += 1
            at = t_start + i * interval
            if at >= t_end:
                return
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            em_i = i % len(clients)
            t0 = time.monotonic()
            if rng.random() < write_fraction or not mine:
                if mine and rng.random() < 0.3:
                    key = rng.choice(list(mine))
                    etag = mine[key]
                else:
                    key = f"{base}/d{rng.randrange(DIRS):02d}/w{w:02d}-{n:06d}"
                    n += 1
                    etag = None
                v = _value(key, i, run_id)
                try:
                    res, used = _haproxy(clients, em_i, lambda c: c.put_object(BUCKET, key, v, etag=etag),
                                         failover)
                    ack(key, v, res, used)
                    mine[key] = res.get("etag")
                    st.inc("writes_ok")
                except rpc.RpcError as exc:
                    st.inc("writes_failed")
                    failed(key, v, exc)
                    if exc.name in ("ConnectionError", "InternalError"):
                        mine.pop(key, None)   # unknown state: stop doing conditional writes
            else:
                key = rng.choice(list(mine))
                try:
                    got, _ = _haproxy(clients, em_i, lambda c: c.get_object(BUCKET, key), failover)
                    st.inc("reads_ok")
                    if got.get("_etag") != mine[key]:
                        st.inc("reads_stale")
                except rpc.RpcError as exc:
                    st.inc("reads_failed")
                    st.err(exc.name)
            st.latency((time.monotonic() - t0) * 1000)

    with ThreadPoolExecutor(max_workers=nworkers) as pool:
        for f in [pool.submit(worker, w) for w in range(nworkers)]:
            f.result()
    elapsed = time.monotonic() - t_start
    lg.close()
    lat = sorted(st.lat)

    def pct(p):
        return round(lat[min(len(lat) - 1, int(len(lat) * p))], 2) if lat else None
    rejects = sorted(st.rejects.values(), key=lambda r: (r["vnode"] is None, r["vnode"] or 0))
    ops = st.c["writes_ok"] + st.c["writes_failed"] + st.c["reads_ok"] + st.c["reads_failed"]
    return {"log": log, "run_id": run_id, "prefix": base, "rate": rate, "duration": duration,
            "elapsed_s": round(elapsed, 2), "achieved_rate": round(ops / elapsed, 1) if elapsed else 0,
            "workers": nworkers, "electric_morays": ems,
            "writes_ok": st.c["writes_ok"], "writes_failed": st.c["writes_failed"],
            "reads_ok": st.c["reads_ok"], "reads_failed": st.c["reads_failed"],
            "reads_stale": st.c["reads_stale"], "dir_writes": st.c["dir_writes"],
            "failovers": {"total": st.c["failovers"],
                          "refused": st.c["failovers_ConnectionError"],
                          "not_processed": st.c[f"failovers_{rpc.NOT_APPLIED}"]},
            "errors": dict(st.errors),
            "rejections": {"total": sum(r["count"] for r in rejects), "vnodes": len(rejects),
                           "by_vnode": rejects},
            "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": lat[-1] if lat else None}}


# ---- verify ------------------------------------------------------------------------------

def read_log(path):
    acked = defaultdict(list)     # key -> [(etag, vhash, t)] in log order
    unacked = defaultdict(list)   # key -> [(vhash, t)]
    rejects = 0
    bad = 0
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except ValueError:
                bad += 1          # a torn last line after a crash
                continue
            op = r.get("op")
            if op == "put":
                acked[r["key"]].append((r["etag"], r["vhash"], r["t"]))
            elif op == "unacked":
                unacked[r["key"]].append((r["vhash"], r["t"]))
            elif op == "reject":
                rejects += 1
    return acked, unacked, rejects, bad


def _shard_hosts(cfg, router_pnodes):
    hosts = {urlsplit(p).hostname for p in router_pnodes}
    hosts.update(cfg.shard_name(n) for n in range(1, cfg.shards + 1))
    for z in zones.all_zones(cfg, kind="postgres"):
        if z.get("shard"):
            hosts.add(z["shard"])
    return sorted(hosts)


def verify(cfg, log, threads=16):
    """Check every write recorded in ``log``; returns a report with ``ok``."""
    import psycopg2
    if not os.path.exists(log):
        raise LabError("load", f"no log {log}")
    t0 = time.monotonic()
    acked, unacked, rejects, bad = read_log(log)
    keys = sorted(acked)
    clients = emoray.clients(cfg)
    if not clients:
        raise LabError("load", "no running electric-moray")
    problems = defaultdict(list)
    read_errors = defaultdict(int)
    lock = threading.Lock()

    def check(i, key):
        c = clients[i % len(clients)]
        last_etag, last_vh, last_t = acked[key][-1]
        try:
            got = c.get_object(BUCKET, key)
        except rpc.RpcError as exc:
            with lock:
                read_errors[exc.name] += 1
                problems["lost" if exc.name == "ObjectNotFoundError" else "unreadable"].append(
                    {"key": key, "error": f"{exc.name}: {exc.message}", "etag": last_etag})
            return
        vh = vhash(got["value"]) if isinstance(got.get("value"), dict) else None
        if got.get("_etag") == last_etag and vh == last_vh:
            return
        later = [u for u in unacked.get(key, []) if u[1] >= last_t]
        if vh is not None and any(u[0] == vh for u in later):
            with lock:
                problems["superseded_by_unacked"].append({"key": key})
            return
        kind = "etag_mismatch" if got.get("_etag") != last_etag else "value_mismatch"
        with lock:
            problems[kind].append({"key": key, "want": last_etag, "got": got.get("_etag")})

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for f in [pool.submit(check, i, k) for i, k in enumerate(keys)]:
            f.result()

    # exactly one shard, and the one (and vnode) the ring names
    work = tempfile.mkdtemp(prefix="verify-", dir=cfg.home)
    router = None
    ring_info = None
    try:
        try:
            router = seed.Router(cfg, work)
            pnodes = list(router.ring.pnodes())
            ring_info = {"image_uuid": router.image_uuid, "hash": router.hash}
        except LabError as exc:     # e.g. a ring roll-out in progress
            ring_info = {"skipped": str(exc)}
            pnodes = []
        where = defaultdict(list)
        for host in _shard_hosts(cfg, pnodes):
            try:
                dsn = moray.primary_dsn(cfg, host)
            except LabError:
                continue
            conn = psycopg2.connect(dsn)
            try:
                with conn.cursor() as cur:
                    for j in range(0, len(keys), 2000):
                        cur.execute("SELECT _key, _vnode FROM manta WHERE _key = ANY(%s)",
                                    (keys[j:j + 2000],))
                        for k, v in cur.fetchall():
                            where[k].append((host, v))
            finally:
                conn.close()
        for k in keys:
            locs = where.get(k, [])
            if len(locs) == 0:
                problems["on_no_shard"].append({"key": k})
                continue
            if len(locs) > 1:
                problems["on_multiple_shards"].append({"key": k, "shards": [h for h, _ in locs]})
            if router is None:
                continue
            host, vnode, _d, _p = router.node(k)
            if (host, vnode) not in locs:
                problems["wrong_shard_or_vnode"].append(
                    {"key": k, "ring": [host, vnode], "found": locs})
    finally:
        if router is not None:
            router.close()
        shutil.rmtree(work, ignore_errors=True)

    fatal = ("lost", "unreadable", "etag_mismatch", "value_mismatch", "on_no_shard",
             "on_multiple_shards", "wrong_shard_or_vnode")
    ok = not any(problems.get(k) for k in fatal)
    return {"ok": ok, "log": log, "keys": len(keys),
            "acknowledged_writes": sum(len(v) for v in acked.values()),
            "unacked_attempts": sum(len(v) for v in unacked.values()),
            "rejections_logged": rejects, "torn_lines": bad,
            "counts": {k: len(v) for k, v in problems.items()},
            "problems": {k: v[:20] for k, v in problems.items()},
            "read_errors": dict(read_errors), "ring": ring_info,
            "elapsed_s": round(time.monotonic() - t0, 2)}
