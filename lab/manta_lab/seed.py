"""`lab seed`: directories and objects with realistic metadata and real bytes.

What gets written (reference/evacuate.md §1.3):

* per account (a few fixed owner uuids): ``/<owner>/stor``, ``/<owner>/public``,
  ``/<owner>/uploads`` (directories, kept across runs);
* ``/<owner>/stor/seed-<run>/d<NNNNN>/`` directories holding the objects,
  about ``per_dir`` each; object ``_value`` = key, dirname, name, owner,
  objectId, etag, type, contentLength, contentMD5 (base64 md5 of the real
  bytes), contentType, mtime, headers, roles, vnode, and two ``sharks`` in
  different datacenters; the bytes are stored on both sharks at
  ``<root>/<owner>/<objectId>`` (sizes vary, 32 B - 2 KiB);
* two snaplinked objects (``creator`` = the original owner ≠ ``owner``, same
  objectId; the bytes stay at ``<root>/<creator>/<objectId>``);
* three zero-byte objects (``contentLength`` 0, ``sharks: []``, no file);
* MPU part records under ``/<owner>/uploads/<c>/<uploadId>/<n>``: one upload in
  progress (part files present) and one committed (part files gone).

Routing is electric-moray's: the row goes to ``getNode(transform("manta",
key))`` and ``_vnode`` / ``value.vnode`` is that vnode.

Two paths:

* **fast (default for >= 1000 objects)**: the routing is computed with the
  collection's fash library on a *copy* of the ring installed in the
  electric-morays (they must all agree), rows are COPYed straight into each
  shard's primary (found in ZooKeeper as moray finds it) through a temporary
  table and ``INSERT ... ON CONFLICT DO NOTHING`` (so the directory-count
  trigger runs), and the bytes are written directly into the storage roots.
  This bypasses the RPC path for speed but uses the identical routing; the
  ``_etag`` is computed exactly as moray does.
* **rpc (small N or ``via_rpc=True``)**: every row through electric-moray
  (putObject, unconditional), every copy through the storage node's nginx (PUT).
"""
import base64
import hashlib
import io
import json
import os
import random
import shutil
import tempfile
import threading
import time
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from . import emoray, moray, procs, ring, rpc, storage, zones
from .config import LabError

BUCKET = "manta"
RPC_THRESHOLD = 1000
CHUNK = 20000
EMPTY_MD5 = base64.b64encode(hashlib.md5(b"").digest()).decode()
INDEX_COLS = ("dirname", "name", "owner", "objectid", "type")
CONTENT_TYPES = (("txt", "text/plain"), ("json", "application/json"),
                 ("log", "text/plain"), ("bin", "application/octet-stream"),
                 ("csv", "text/csv"))


def accounts(n=4):
    """Fixed lab account uuids (the same in every lab and run)."""
    return [str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"manta-lab-account-{i}")) for i in range(n)]


def content_for(object_id, size):
    """The bytes of a seeded object: deterministic from its objectId."""
    if size <= 0:
        return b""
    unit = (object_id + "\n").encode()
    return (unit * (size // len(unit) + 1))[:size]


def md5_b64(data):
    return base64.b64encode(hashlib.md5(data).digest()).decode()


# ---- routing on a copy of the installed ring -----------------------------------------

class Router:
    """electric-moray's routing, on a private copy of the ring the running
    electric-morays hold (all of them must agree on its content)."""

    def __init__(self, cfg, workdir):
        from ansible_collections.manta.ops.plugins.module_utils.fash import open_ring
        self.source, self.image_uuid, self.hash = self._pick(cfg)
        self.path = os.path.join(workdir, "hash_ring")
        if self.source.startswith("image:"):
            ring.fetch_ring(cfg, self.image_uuid, self.path)
        else:
            os.makedirs(self.path)
            for p in Path(self.source).iterdir():
                if p.is_file() and p.name != "LOCK":
                    shutil.copy2(p, os.path.join(self.path, p.name))
        self.ring = open_ring(self.path, readonly=True)
        topo = getattr(self.ring, "topology", None)
        self.lookup = topo().get_node if topo else self.ring.get_node
        self.cache = {}

    @staticmethod
    def _pick(cfg):
        zs = zones.all_zones(cfg, kind=emoray.KIND)
        seen = {}
        for z in zs:
            if procs.alive(cfg, zones.proc_name(z, emoray.SVC)):
                try:
                    st = rpc.Client(f"http://127.0.0.1:{z['ports']['status']}", timeout=5).status()
                    seen[st["ring"]["hash"]] = (st["ring"]["path"], st["ring"].get("image_uuid"), z)
                except (rpc.RpcError, KeyError):
                    pass
        if len(seen) > 1:
            raise LabError("seed", "the electric-morays hold different rings "
                           f"({ {h[:12]: v[2]['alias'] for h, v in seen.items()} }); "
                           "finish the ring roll-out before seeding")
        if seen:
            h, (path, image, _) = next(iter(seen.items()))
            return path, image, h
        for z in zs:
            if Path(emoray.ring_dir(z), "CURRENT").exists():
                return emoray.ring_dir(z), emoray.installed_image(z), None
        md = ring.sapi_app(cfg).get("metadata") or {}
        if not md.get("HASH_RING_IMAGE"):
            raise LabError("seed", "no ring: no electric-moray and no SAPI HASH_RING_IMAGE")
        return "image:" + md["HASH_RING_IMAGE"], md["HASH_RING_IMAGE"], None

    def node(self, key, bucket=BUCKET):
        h = emoray.transform(bucket, key)
        hit = self.cache.get(h)
        if hit is None:
            p, v, d = self.lookup(h)
            hit = self.cache[h] = (urlsplit(p).hostname, v, d, p)
        return hit

    def close(self):
        fn = getattr(self.ring, "close", None)
        if fn:
            fn()


# ---- the plan: what to write ----------------------------------------------------------------

class Plan:
    def __init__(self, cfg, objects, run_id, rng, nodes, per_dir):
        self.cfg = cfg
        self.objects = objects
        self.run_id = run_id
        self.rng = rng
        self.nodes = nodes                      # [{storage_id, datacenter, root, url}]
        self.per_dir = per_dir
        self.owners = accounts()
        self.pairs = [(a, b) for a in nodes for b in nodes
                      if a["storage_id"] < b["storage_id"] and a["datacenter"] != b["datacenter"]]
        if not self.pairs:
            raise LabError("seed", "need storage nodes in at least two datacenters; have "
                           f"{[(n['storage_id'], n['datacenter']) for n in nodes]}")
        self.now = int(time.time() * 1000)

    def _sharks(self):
        a, b = self.rng.choice(self.pairs)
        if self.rng.random() < 0.5:
            a, b = b, a
        return [{"datacenter": a["datacenter"], "manta_storage_id": a["storage_id"]},
                {"datacenter": b["datacenter"], "manta_storage_id": b["storage_id"]}]

    @staticmethod
    def _split(key):
        d, _, n = key.rpartition("/")
        return d or "/", n

    def directory(self, key, owner):
        d, n = self._split(key)
        return {"dirname": d, "key": key, "headers": {}, "mtime": self.now, "name": n,
                "owner": owner, "roles": [], "type": "directory"}

    def obj(self, key, owner, size, creator=None, object_id=None, sharks=None,
            content_type=None, md5=None):
        d, n = self._split(key)
        oid = object_id or str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4))
        v = {"dirname": d, "key": key, "headers": {}, "mtime": self.now, "name": n,
             "owner": owner}
        if creator:
            v["creator"] = creator
        v.update({"roles": [], "type": "object", "contentLength": size,
                  "contentMD5": md5 if md5 is not None else (
                      md5_b64(content_for(oid, size)) if size else EMPTY_MD5),
                  "contentType": content_type or "application/octet-stream",
                  "etag": oid, "objectId": oid,
                  "sharks": self._sharks() if sharks is None else sharks})
        return v

    def rows(self):
        """Yield (kind, value, file_owner_or_None) in an order that creates
        parents first. kind: 'dir' | 'obj' (write files) | 'meta' (no files)."""
        rng = self.rng
        for o in self.owners:
            for top in ("stor", "public", "uploads"):
                yield "dir", self.directory(f"/{o}/{top}", o), None
        ndirs = max(1, -(-self.objects // self.per_dir))
        tops = {}
        for o in self.owners:
            tops[o] = f"/{o}/stor/seed-{self.run_id}"
            yield "dir", self.directory(tops[o], o), None
        first_objs = {}
        made = 0
        for di in range(ndirs):
            o = self.owners[di % len(self.owners)]
            dkey = f"{tops[o]}/d{di:05d}"
            yield "dir", self.directory(dkey, o), None
            n = min(self.per_dir, self.objects - made)
            for j in range(n):
                ext, ct = CONTENT_TYPES[(di + j) % len(CONTENT_TYPES)]
                size = rng.choice((96, 256, 512, 1024, 2048)) - rng.randrange(0, 64)
                v = self.obj(f"{dkey}/file-{j:04d}.{ext}", o, size, content_type=ct)
                first_objs.setdefault(o, v)
                yield "obj", v, o
            made += n
        # snaplinks: owner B links A's object (creator = A)
        owners = [o for o in self.owners if o in first_objs]
        for i in range(2):
            a = owners[i % len(owners)]
            b = self.owners[(self.owners.index(a) + 1) % len(self.owners)]
            src = first_objs[a]
            ldir = f"{tops[b]}/links"
            if i == 0:
                yield "dir", self.directory(ldir, b), None
            v = self.obj(f"{ldir}/link-{i}-{src['name']}", b, src["contentLength"], creator=a,
                         object_id=src["objectId"], sharks=src["sharks"],
                         content_type=src["contentType"], md5=src["contentMD5"])
            yield "meta", v, None
        # zero-byte objects
        o = self.owners[0]
        edir = f"{tops[o]}/empty"
        yield "dir", self.directory(edir, o), None
        for i in range(3):
            yield "meta", self.obj(f"{edir}/empty-{i}", o, 0, sharks=[],
                                   content_type="text/plain"), None
        # MPU: one upload in progress (parts on disk), one committed (parts gone)
        for state in ("inprogress", "committed"):
            upload = str(uuidlib.UUID(int=rng.getrandbits(128), version=4))
            pdir = f"/{o}/uploads/{upload[0]}"
            udir = f"{pdir}/{upload}"
            yield "dir", self.directory(pdir, o), None
            yield "dir", dict(self.directory(udir, o), upload=state), None
            for part in range(2):
                v = self.obj(f"{udir}/{part}", o, 1024 + part)
                yield ("obj" if state == "inprogress" else "meta"), v, o


# ---- writers ----------------------------------------------------------------------------

def _copy_escape(s):
    return (s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


class ShardCopy:
    """One shard: COPY into a temp table over the run, INSERT at the end."""

    def __init__(self, host, dsn):
        import psycopg2
        self.host = host
        self.dsn = dsn
        self.conn = psycopg2.connect(dsn)
        self.rows = 0
        with self.conn.cursor() as cur:
            cur.execute("SET synchronous_commit = remote_write")
            cur.execute("CREATE TEMP TABLE seed_rows (_key TEXT, _value TEXT, _etag CHAR(8), "
                        "_mtime BIGINT, _vnode BIGINT, dirname TEXT, name TEXT, owner TEXT, "
                        "objectid TEXT, type TEXT) ON COMMIT DROP")

    def copy(self, lines):
        if not lines:
            return
        buf = io.StringIO("".join(lines))
        with self.conn.cursor() as cur:
            cur.copy_expert("COPY seed_rows (_key, _value, _etag, _mtime, _vnode, dirname, "
                            "name, owner, objectid, type) FROM STDIN", buf)
        self.rows += len(lines)

    def finish(self):
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO manta (_key, _value, _etag, _mtime, _vnode, dirname, name, "
                        "owner, objectid, type) SELECT DISTINCT ON (_key) _key, _value, _etag, "
                        "_mtime, _vnode, dirname, name, owner, objectid, type FROM seed_rows "
                        "ORDER BY _key ON CONFLICT (_key) DO NOTHING")
            inserted = cur.rowcount
        self.conn.commit()
        self.conn.close()
        return inserted


def _row_line(key, vstr, etag, mtime, vnode, value):
    vals = [key, vstr, etag, str(mtime), str(vnode)] + [
        value.get(c if c != "objectid" else "objectId") for c in INDEX_COLS]
    return "\t".join("\\N" if x is None else _copy_escape(str(x)) for x in vals) + "\n"


def _storage_nodes(cfg):
    nodes = []
    for z in zones.all_zones(cfg, kind=storage.KIND):
        nodes.append({"storage_id": z["storage_id"], "datacenter": z["datacenter"],
                      "root": storage.root(z), "url": storage.url(z), "zone": z})
    if not nodes:
        raise LabError("seed", "no storage nodes (lab up first)")
    return sorted(nodes, key=lambda n: n["storage_id"])


def run(cfg, objects=20000, via_rpc=False, per_dir=50, seed=None, progress=None, path=None):
    """Seed ``objects`` objects (plus directories and the special records).

    ``via_rpc=True`` (or ``path="rpc"``) writes everything through
    electric-moray; ``path="copy"`` forces the fast path; by default small
    runs (< RPC_THRESHOLD objects) go through electric-moray, larger ones
    take the fast path. Returns a report dict (counts per shard and storage
    node, timing)."""
    if not isinstance(objects, int) or isinstance(objects, bool) or objects < 1:
        raise LabError("seed", f"objects must be an integer >= 1, got {objects!r}")
    if path not in (None, "copy", "rpc"):
        raise LabError("seed", f"path must be 'copy' or 'rpc', got {path!r}")
    if path is None:
        path = "rpc" if via_rpc or objects < RPC_THRESHOLD else "copy"
    via_rpc = path == "rpc"
    t0 = time.monotonic()
    run_id = uuidlib.uuid4().hex[:8]
    rng = random.Random(seed if seed is not None else run_id)
    nodes = _storage_nodes(cfg)
    plan = Plan(cfg, objects, run_id, rng, nodes, per_dir)
    say = progress or (lambda msg: None)
    if via_rpc:
        rep = _run_rpc(cfg, plan, say)
    else:
        rep = _run_copy(cfg, plan, say)
    dt = time.monotonic() - t0
    rep.update({"run_id": run_id, "objects": objects, "path": "rpc" if via_rpc else "copy",
                "prefixes": [f"/{o}/stor/seed-{run_id}" for o in plan.owners],
                "owners": plan.owners, "elapsed_s": round(dt, 2),
                "objects_per_s": round(objects / dt, 1) if dt else None})
    out = cfg.path("seed")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{run_id}.json").write_text(json.dumps(rep, indent=2) + "\n")
    return rep


def _run_copy(cfg, plan, say):
    work = tempfile.mkdtemp(prefix="seed-", dir=cfg.home)
    router = Router(cfg, work)
    by_id = {n["storage_id"]: n for n in plan.nodes}
    from kazoo.client import KazooClient
    zk = KazooClient(hosts=cfg.zk_connect, timeout=10.0)
    zk.start(timeout=15)
    shards = {}
    try:
        for p in router.ring.pnodes():
            h = urlsplit(p).hostname
            shards[h] = ShardCopy(h, moray.primary_dsn(cfg, h, zk=zk))
    finally:
        zk.stop()
        zk.close()
    per_shard = {h: 0 for h in shards}
    per_node = {n: 0 for n in by_id}
    counts = {"dir": 0, "obj": 0, "meta": 0}
    nbytes = 0
    made_dirs = set()
    pool = ThreadPoolExecutor(max_workers=4)
    lines = {h: [] for h in shards}
    files = []
    futures = []

    def write_files(batch):
        for path, data in batch:
            try:
                with open(path, "wb") as fh:
                    fh.write(data)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as fh:
                    fh.write(data)

    def flush():
        for h, ls in lines.items():
            if ls:
                shards[h].copy(ls)
                lines[h] = []
        if files:
            batch = list(files)
            files.clear()
            futures.append(pool.submit(write_files, batch))
        for f in [f for f in futures if f.done()]:
            f.result()
            futures.remove(f)

    try:
        n = 0
        for kind, value, fowner in plan.rows():
            host, vnode, _data, _p = router.node(value["key"])
            if host not in shards:
                raise LabError("seed", f"ring pnode host {host} has no shard")
            value["vnode"] = vnode
            vstr = rpc.value_string(value)
            lines[host].append(_row_line(value["key"], vstr, rpc.etag_of(vstr), value["mtime"],
                                         vnode, value))
            per_shard[host] += 1
            counts[kind] += 1
            if kind == "obj":
                data = content_for(value["objectId"], value["contentLength"])
                for s in value["sharks"]:
                    node = by_id[s["manta_storage_id"]]
                    d = os.path.join(node["root"], fowner)
                    if d not in made_dirs:
                        os.makedirs(d, exist_ok=True)
                        made_dirs.add(d)
                    files.append((os.path.join(d, value["objectId"]), data))
                    per_node[s["manta_storage_id"]] += 1
                    nbytes += len(data)
            n += 1
            if n % CHUNK == 0:
                flush()
                say(f"seed: {n} rows")
        flush()
        for f in futures:
            f.result()
        inserted = {}
        for h, sc in shards.items():
            inserted[h] = sc.finish()
    finally:
        pool.shutdown(wait=True)
        router.close()
        shutil.rmtree(work, ignore_errors=True)
    return {"rows_per_shard": per_shard, "inserted_per_shard": inserted,
            "files_per_storage_node": per_node, "bytes": nbytes,
            "directories": counts["dir"], "records_without_files": counts["meta"],
            "ring": {"image_uuid": router.image_uuid, "hash": router.hash}}


def _run_rpc(cfg, plan, say):
    ems = emoray.clients(cfg)
    if not ems:
        raise LabError("seed", "no running electric-moray")
    by_id = {n["storage_id"]: n for n in plan.nodes}
    per_shard = {}
    per_node = {n: 0 for n in by_id}
    counts = {"dir": 0, "obj": 0, "meta": 0}
    nbytes = [0]
    lock = threading.Lock()
    errors = []
    import requests
    local = threading.local()

    def sess():
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = requests.Session()
        return s

    def put(i, kind, value, fowner):
        em = ems[i % len(ems)]
        try:
            if kind == "obj":
                data = content_for(value["objectId"], value["contentLength"])
                for s in value["sharks"]:
                    node = by_id[s["manta_storage_id"]]
                    r = sess().put(f"{node['url']}/{fowner}/{value['objectId']}", data=data,
                                   timeout=30)
                    if r.status_code not in (200, 201, 204):
                        raise LabError("seed", f"PUT {node['url']}/{fowner}/{value['objectId']}: "
                                       f"HTTP {r.status_code}")
                    with lock:
                        per_node[s["manta_storage_id"]] += 1
                        nbytes[0] += len(data)
            res = em.put_object(BUCKET, value["key"], value)
            host = urlsplit(res["_node"]["pnode"]).hostname
            with lock:
                per_shard[host] = per_shard.get(host, 0) + 1
                counts[kind] += 1
        except (rpc.RpcError, LabError, OSError) as exc:
            with lock:
                errors.append(f"{value['key']}: {exc}")

    # parents first: directories synchronously in order, objects in parallel
    with ThreadPoolExecutor(max_workers=16) as pool:
        futs = []
        for i, (kind, value, fowner) in enumerate(plan.rows()):
            if kind == "dir":
                for f in futs:
                    f.result()
                futs = []
                put(i, kind, value, fowner)
            else:
                futs.append(pool.submit(put, i, kind, value, fowner))
            if errors:
                break
        for f in futs:
            f.result()
    if errors:
        raise LabError("seed", f"{len(errors)} writes failed via electric-moray; first: {errors[0]}")
    return {"rows_per_shard": per_shard, "files_per_storage_node": per_node, "bytes": nbytes[0],
            "directories": counts["dir"], "records_without_files": counts["meta"]}
