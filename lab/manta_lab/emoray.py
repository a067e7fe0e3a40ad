"""Zone kind ``electric-moray``: the metadata router (fash.md §6).

One zone per electric-moray process (cfg.emorays of them at `lab up`),
process i serving the lab RPC protocol on cfg.emoray_port(i) and ``GET
/status`` on cfg.emoray_status_port(i).

Zone setup (first start, as boot/setup.sh, fash.md §6.1 step 4): read
``HASH_RING_IMAGE`` and ``HASH_RING_IMGAPI_SERVICE`` from SAPI (fatal if
either is missing), download the image file from that IMGAPI, extract its
``hash_ring/`` into the zone's ring directory ``<zone>/leveldb-<port>``
(zone record ``paths.ring``, the SMF property ``electric-moray/ring-location``),
and smoke-test it with a lookup of ``yunong``. The ring then persists in the
zone: later starts do not reinstall it (the real ring lives on a delegated
dataset); only a reprovision (`setup(..., force=True)`) or a ring swap
(`install_ring`, reshard.md §3.4) changes it.

Every start renders ``<zone>/etc/config.json`` from SAPI (the lab's
config-agent): ``ringCfg.indexShards`` = ``INDEX_MORAY_SHARDS`` entries
``{host, readOnly}``. The process reads that file and the ring ONLY at start,
holds its ring copy open (LevelDB LOCK) for its whole life, and routes:

* put/del/batch: ``getNode(transform(bucket, key))``; vnode data ``"ro"`` →
  ``ReadOnlyError: some vnodes are in read-only mode``; then a read-only pnode
  (``readOnly`` in indexShards, or matching no entry at all) →
  ``ReadOnlyError: pnode "<p>" is in read-only mode``; a put stores the vnode
  as ``value.vnode``;
* get: never blocked; ``value.vnode`` stripped, ``_node`` added;
* findObjects: ``options.hashkey`` hashed raw, or ``options.token`` = pnode;
* sql: broadcast; blocked when the ring has any data vnode (unless
  ``readOnlyOverride``) or any pnode is read-only;
* getTokens: the ring's pnodes.

Responses of routed RPCs carry ``_node: {pnode, vnode, data}``; errors of
routed RPCs carry it in ``info._node`` (a lab addition, used by `lab load` to
record rejections per vnode).

Process entry: ``python -m manta_lab.emoray --home <home> --zone <uuid>``.
"""
import argparse
import datetime
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from pathlib import Path
from urllib.parse import urlsplit

from . import config, moray, procs, ring, rpc, zones
from .config import HOST, LabError
from .rpc import error

KIND = "electric-moray"
SVC = "electric-moray"
SERVICES = [SVC]
READ_ONLY = "ro"
# Written inside the ring dir by setup/install_ring (LevelDB ignores foreign
# files); a swap done by hand replaces the directory and so drops it.
MARKER = ".lab_installed_image"


# =============================================================================
# zone handler
# =============================================================================

def zone_dir(cfg, zone):
    return cfg.zones_dir / zone["uuid"]


def url(zone):
    return f"http://{HOST}:{zone['ports']['rpc']}"


def status_url(zone):
    return f"http://{HOST}:{zone['ports']['status']}/status"


def ring_dir(zone):
    return zone["paths"]["ring"]


def fmri(zone):
    return f"svc:/manta/application/electric-moray:electric-moray-{zone['ports']['rpc']}"


def _next_index(cfg):
    used = {z.get("index") for z in zones.all_zones(cfg, kind=KIND)}
    i = 1
    while i in used:
        i += 1
    return i


def provision(cfg, server_uuid=None, zuuid=None, metadata=None, index=None):
    """Create an electric-moray zone (process i) and start it (which runs
    zone setup: ring download + install). Returns the zone record."""
    i = index or _next_index(cfg)
    if server_uuid:
        server = cfg.server(server_uuid)
        if server is None:
            raise LabError("electric-moray", f"unknown server_uuid {server_uuid!r}; lab servers: "
                           f"{[s['uuid'] for s in cfg.servers]}")
    else:
        dc = cfg.datacenters[(i - 1) % len(cfg.datacenters)]
        in_dc = cfg.servers_in(dc) or cfg.servers
        server = in_dc[((i - 1) // len(cfg.datacenters)) % len(in_dc)]
    if i <= cfg.emorays:
        port, sport = cfg.emoray_port(i), cfg.emoray_status_port(i)
    else:
        port, sport = cfg.alloc_port(), cfg.alloc_port()
    zuuid = zuuid or str(uuidlib.uuid4())
    zd = cfg.zones_dir / zuuid
    zone = zones.create(
        cfg, KIND, f"electric-moray-{zuuid[:8]}", SERVICES, zuuid=zuuid, index=i,
        server_uuid=server["uuid"], datacenter=server["datacenter"],
        ports={"rpc": port, "status": sport},
        paths={"root": str(zd), "ring": str(zd / f"leveldb-{port}"),
               "config": str(zd / "etc" / "config.json"),
               "ready": str(zd / "var" / "tmp" / "electric-moray-ready"),
               "log": str(cfg.log(f"electric-moray-{i}"))},
        metadata=dict(metadata or {}), fmri=f"svc:/manta/application/electric-moray:"
                                           f"electric-moray-{port}")
    try:
        start_service(cfg, zone, SVC)
    except BaseException:
        destroy(cfg, zone)    # a zone that failed setup is not left behind
        raise
    return zone


def destroy(cfg, zone):
    """Stop the zone's services and delete it (record and zone directory)."""
    zones.destroy(cfg, zone, zone_dir(cfg, zone))


def ensure(cfg):
    """cfg.emorays processes (i = 1..N) exist and run."""
    return zones.ensure_indexed(cfg, KIND, cfg.emorays, provision)


def installed_image(zone_or_dir):
    """The image uuid of the ring in place: its stamp file, else the marker."""
    d = zone_or_dir["paths"]["ring"] if isinstance(zone_or_dir, dict) else str(zone_or_dir)
    st = ring.read_stamp(d)
    if st and st.get("image_uuid"):
        return st["image_uuid"]
    try:
        return Path(d, MARKER).read_text().strip() or None
    except OSError:
        return None


def _sapi_metadata(cfg, zone):
    try:
        return ring.instance_metadata(cfg, zone["uuid"])
    except LabError as exc:
        raise LabError(f"electric-moray {zone['alias']}", f"cannot read SAPI metadata: {exc}",
                       zone["paths"]["log"]) from None


def _smoke_test(dirpath):
    """``fash get-node -l <dir> -b leveldb yunong``: any failure is fatal."""
    from ansible_collections.manta.ops.plugins.module_utils.fash import open_ring
    r = open_ring(str(dirpath), readonly=True)
    try:
        r.get_node("yunong")
    finally:
        _close(r)


def _close(r):
    for name in ("close",):
        fn = getattr(r, name, None)
        if fn:
            fn()
            return


def _swap_in(new_dir, hashdir):
    """rm -rf <dir>.old; mv <dir> <dir>.old; rm -rf <dir>.old; mv <dir>.new <dir>."""
    hashdir = str(hashdir)
    old = hashdir + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(hashdir):
        os.rename(hashdir, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(str(new_dir), hashdir)


def setup(cfg, zone, force=False):
    """Zone setup: install SAPI's HASH_RING_IMAGE into the zone's ring dir
    unless a ring with that image is already there (or any ring, when not
    forced: the zone keeps its ring across restarts). Returns the image uuid."""
    hashdir = Path(ring_dir(zone))
    if hashdir.joinpath("CURRENT").exists() and not force:
        return installed_image(zone)
    md = _sapi_metadata(cfg, zone)
    image = md.get("HASH_RING_IMAGE")
    svc = md.get("HASH_RING_IMGAPI_SERVICE")
    missing = [k for k, v in (("HASH_RING_IMAGE", image), ("HASH_RING_IMGAPI_SERVICE", svc)) if not v]
    if missing:
        raise LabError(f"electric-moray {zone['alias']} setup",
                       f"SAPI metadata {', '.join(missing)} missing: the hash ring has not been "
                       "published (ring.ensure / manta-adm create-topology)", zone["paths"]["log"])
    if hashdir.joinpath("CURRENT").exists() and installed_image(zone) == image:
        return image
    tmp_root = Path(zone["paths"]["root"], "var", "tmp")
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{image}.", dir=str(tmp_root)) as tmp:
        new = Path(tmp, "hash_ring")
        ring.fetch_ring(cfg, image, new, imgapi_url=svc)
        _smoke_test(new)
        hashdir.parent.mkdir(parents=True, exist_ok=True)
        _swap_in(new, hashdir)
    Path(hashdir, MARKER).write_text(image + "\n")
    return image


def install_ring(cfg, zone, image_uuid, imgapi_url=None, timeout=60):
    """The ring swap of reshard.md §3.4 (electric-moray-update-ring.sh), on one
    zone: download the image, ``svcadm disable``, extract ``hash_ring`` into
    ``<dir>.new``, swap it into place, ``svcadm enable``, wait for /status.
    Returns the new /status body."""
    zone = zones.get(cfg, zone["uuid"])
    hashdir = ring_dir(zone)
    if imgapi_url is None:
        imgapi_url = _sapi_metadata(cfg, zone).get("HASH_RING_IMGAPI_SERVICE") or cfg.url("imgapi")
    tmp_root = Path(zone["paths"]["root"], "var", "tmp")
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="update-ring.", dir=str(tmp_root)) as tmp:
        tgz = os.path.join(tmp, f"{image_uuid}.tar.gz")
        ring.download_image_file(cfg, image_uuid, tgz, imgapi_url)
        zones.svcadm(cfg, zone, "disable", SVC)
        new = hashdir + ".new"
        shutil.rmtree(new, ignore_errors=True)
        ring.extract_ring(tgz, new)
        _swap_in(new, hashdir)
    Path(hashdir, MARKER).write_text(image_uuid + "\n")
    zones.svcadm(cfg, zone, "enable", SVC)
    return wait_status(zone, timeout)


def wait_status(zone, timeout=60):
    c = rpc.Client(f"http://{HOST}:{zone['ports']['status']}", timeout=5)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            return c.status()
        except rpc.RpcError as exc:
            last = exc
            time.sleep(0.1)
    raise LabError(f"electric-moray {zone['alias']}", f"/status not answering: {last}",
                   zone["paths"]["log"])


def render_config(cfg, zone):
    """The lab's config-agent: write <zone>/etc/config.json from SAPI."""
    p = Path(zone["paths"]["config"])
    try:
        md = ring.instance_metadata(cfg, zone["uuid"])
    except LabError:
        if p.exists():       # config-agent keeps the last rendering when SAPI is away
            return json.loads(p.read_text())
        raise
    shards = md.get("INDEX_MORAY_SHARDS") or []
    index_shards = [{"host": s.get("host"), "readOnly": bool(s.get("readOnly"))}
                    for s in shards if isinstance(s, dict)]
    conf = {
        "bunyan": {"level": "info"},
        "ringCfg": {"indexShards": index_shards,
                    "leveldbCfg": {"cacheSize": 8388608, "blockSize": 4096,
                                   "writeBufferSize": 4194304, "compression": False}},
        "server_uuid": zone.get("server_uuid"),
        "datacenter": zone.get("datacenter"),
        "morayOptions": {"srvDomain": None, "nameservice": "lab zone records"},
        "rendered_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(conf, indent=2) + "\n")
    os.replace(tmp, p)
    return conf


def start_service(cfg, zone, svc):
    if svc != SVC:
        raise LabError("electric-moray", f"zone {zone['alias']} has no service {svc!r}; it has {SERVICES}")
    name = zones.proc_name(zone, svc)
    if procs.alive(cfg, name):
        return
    setup(cfg, zone)
    render_config(cfg, zone)
    log = zone["paths"]["log"]
    procs.spawn(cfg, name, [sys.executable, "-m", "manta_lab.emoray",
                            "--home", cfg.home, "--zone", zone["uuid"]], log=log)
    if not rpc.wait_ping(url(zone), 60, lambda: procs.alive(cfg, name)):
        raise LabError(f"electric-moray {zone['alias']}",
                       f"did not start: {rpc.log_tail(log)}", log)


def stop_service(cfg, zone, svc):
    procs.stop(cfg, zones.proc_name(zone, svc))


def service_state(cfg, zone, svc):
    if not zone.get("services", {}).get(svc, {}).get("enabled", True):
        return "disabled"
    return "online" if procs.alive(cfg, zones.proc_name(zone, svc)) else "offline"


def describe(cfg):
    out = []
    for z in sorted(zones.all_zones(cfg, kind=KIND), key=lambda z: z.get("index", 0)):
        out.append({"uuid": z["uuid"], "alias": z["alias"], "index": z.get("index"),
                    "server_uuid": z.get("server_uuid"), "datacenter": z.get("datacenter"),
                    "url": url(z), "status_url": status_url(z), "ring": ring_dir(z),
                    "ring_image": installed_image(z), "config": z["paths"]["config"],
                    "fmri": fmri(z), "state": service_state(cfg, z, SVC),
                    "log": z["paths"]["log"]})
    return out


def clients(cfg, timeout=30.0):
    """One rpc.Client per running electric-moray (the haproxy view)."""
    return [rpc.Client(url(z), timeout=timeout) for z in zones.all_zones(cfg, kind=KIND)
            if procs.alive(cfg, zones.proc_name(z, SVC))]


# =============================================================================
# key transformation (lib/schema), via the collection's fash library
# =============================================================================

def transform(bucket, key):
    from ansible_collections.manta.ops.plugins.module_utils.fash import transform_key
    return transform_key(bucket, key)


# =============================================================================
# the electric-moray process
# =============================================================================

class ElectricMoray:
    RESOLVE_TTL = 2.0

    def __init__(self, cfg, zone, conf):
        from ansible_collections.manta.ops.plugins.module_utils.fash import open_ring
        self.cfg = cfg
        self.zone = zone
        self.conf = conf
        self.start_time = datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        path = ring_dir(zone)
        self.ring_path = path
        self.stamp = ring.read_stamp(path)
        self.image_uuid = installed_image(path)
        self.digest = ring.ring_digest(path)          # before we take the LOCK
        self.ring = open_ring(path)                    # held (LOCK) until exit
        self.pnodes = list(self.ring.pnodes())
        self.data_vnodes = list(self.ring.data_vnodes())
        self.ro_ = len(self.data_vnodes) > 0           # computed once, at start
        self.vnode_count = self.ring.vnode_count
        self.hosts = {}
        for p in self.pnodes:
            u = urlsplit(p)
            if not u.hostname or not u.port:
                raise SystemExit(f"pnode {p!r} does not parse as a URL with host and port")
            self.hosts[p] = u.hostname
        self.index_shards = list(conf.get("ringCfg", {}).get("indexShards") or [])
        self.ro_pnodes = set()
        for p in self.pnodes:
            entry = [s for s in self.index_shards if "tcp://" + str(s.get("host")) + ":2020" == p]
            # A pnode that matches no indexShards entry counts as read-only.
            if not entry or any(s.get("readOnly") for s in entry):
                self.ro_pnodes.add(p)
        self.lock = threading.Lock()
        self.resolved = {}
        self.counts = {}
        self.clients = {}

    # ---- moray backends ------------------------------------------------------
    def _resolve(self, host, force=False):
        now = time.monotonic()
        with self.lock:
            hit = self.resolved.get(host)
        if hit and not force and now - hit[1] < self.RESOLVE_TTL and hit[0]:
            return hit[0]
        urls = moray.resolve(self.cfg, host)
        with self.lock:
            self.resolved[host] = (urls, now)
        return urls

    def _client(self, u):
        with self.lock:
            c = self.clients.get(u)
            if c is None:
                c = self.clients[u] = rpc.Client(u, timeout=60)
            return c

    def forward(self, pnode, name, args, node=None):
        host = self.hosts.get(pnode)
        if host is None:
            raise error("InvocationError", f"pnode {pnode} is not in the ring")
        urls = self._resolve(host)
        tried = set()
        for attempt in range(3):
            if not urls:
                urls = self._resolve(host, force=True)
            urls = [u for u in urls if u not in tried]
            if not urls:
                break
            u = random.choice(urls)
            tried.add(u)
            try:
                return self._client(u).call(name, args)
            except rpc.RpcError as exc:
                if exc.name == "ConnectionError" and not exc.info.get("sent"):
                    urls = self._resolve(host, force=True)
                    continue
                if node is not None:
                    exc.info = dict(exc.info or {}, _node=node)
                raise
        raise error("NoBackendsError", f"no moray backend available for {host}",
                    info={"_node": node} if node else {})

    # ---- routing ---------------------------------------------------------------
    def node_for(self, bucket, key):
        if not isinstance(bucket, str) or not isinstance(key, str):
            raise error("InvocationError", "bucket and key must be strings")
        return self.node_raw(transform(bucket, key))

    def node_raw(self, hashed):
        try:
            pnode, vnode, data = self.ring.get_node(hashed)
        except Exception as exc:  # noqa: BLE001 - a ring lookup failure goes back as is
            raise error(type(exc).__name__, str(exc)) from None
        return {"pnode": pnode, "vnode": vnode, "data": data}

    def check_writable(self, node):
        if node["data"] == READ_ONLY:
            raise error("ReadOnlyError", "some vnodes are in read-only mode", info={"_node": node})
        if node["pnode"] in self.ro_pnodes:
            raise error("ReadOnlyError", f'pnode "{node["pnode"]}" is in read-only mode',
                        info={"_node": node})

    def _count(self, name):
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + 1

    # ---- RPCs ---------------------------------------------------------------------
    @staticmethod
    def _need(args, rpcname, *names):
        for n in names:
            if n not in args:
                raise error("InvocationError", f"{rpcname} expects {n}")

    def rpc_putObject(self, args):
        self._count("putObject")
        self._need(args, "putObject", "bucket", "key", "value")
        if not isinstance(args["value"], dict):
            raise error("InvocationError", "putObject expects value (object)")
        node = self.node_for(args["bucket"], args["key"])
        self.check_writable(node)
        value = dict(args["value"])
        value["vnode"] = node["vnode"]
        out = self.forward(node["pnode"], "putObject", dict(args, value=value), node)
        out["_node"] = node
        return out

    def rpc_getObject(self, args):
        self._count("getObject")
        self._need(args, "getObject", "bucket", "key")
        node = self.node_for(args["bucket"], args["key"])
        out = self.forward(node["pnode"], "getObject", args, node)
        if isinstance(out.get("value"), dict):
            out["value"].pop("vnode", None)
        out["_node"] = node
        return out

    def rpc_delObject(self, args):
        self._count("delObject")
        self._need(args, "delObject", "bucket", "key")
        node = self.node_for(args["bucket"], args["key"])
        self.check_writable(node)
        out = self.forward(node["pnode"], "delObject", args, node)
        out["_node"] = node
        return out

    def rpc_batch(self, args):
        self._count("batch")
        self._need(args, "batch", "requests")
        reqs = args["requests"]
        if not isinstance(reqs, list) or not reqs:
            raise error("InvocationError", "batch expects requests (non-empty array)")
        keys = set()
        for i, r in enumerate(reqs):
            if not isinstance(r, dict) or not isinstance(r.get("bucket"), str) \
                    or not isinstance(r.get("key"), str):
                raise error("InvocationError", f"batch: requests[{i}] needs bucket and key")
            op = r.get("operation")
            if op not in (None, "put", "delete"):
                raise error("Error", f"batch: operation {op!r} is not supported")
            keys.add(transform(r["bucket"], r["key"]))
        if len(keys) != 1:
            raise error("Error", "all requests must transform to the same key")
        node = self.node_raw(keys.pop())
        self.check_writable(node)
        out_reqs = []
        for r in reqs:
            r = dict(r)
            if (r.get("operation") or "put") == "put" and isinstance(r.get("value"), dict):
                r["value"] = dict(r["value"], vnode=node["vnode"])
            out_reqs.append(r)
        out = self.forward(node["pnode"], "batch", dict(args, requests=out_reqs), node)
        out["_node"] = node
        return out

    def rpc_findObjects(self, args):
        self._count("findObjects")
        self._need(args, "findObjects", "bucket", "filter")
        opts = args.get("options") or {}
        node = None
        if opts.get("hashkey"):
            node = self.node_raw(str(opts["hashkey"]))
            pnode = node["pnode"]
        elif opts.get("token"):
            pnode = opts["token"]
            if pnode not in self.hosts:
                raise error("Error", f"Invalid Token {pnode}")
        else:
            raise error("Error", "Invalid search request, requires either token or hashkey")
        out = self.forward(pnode, "findObjects", args, node)
        for o in out.get("objects", []):
            if isinstance(o.get("value"), dict):
                o["value"].pop("vnode", None)
        if node:
            out["_node"] = node
        return out

    def rpc_sql(self, args):
        self._count("sql")
        self._need(args, "sql", "statement")
        opts = args.get("options") or {}
        if self.ro_ and not opts.get("readOnlyOverride"):
            raise error("ReadOnlyError", "some vnodes are in read-only mode")
        ro = [p for p in self.pnodes if p in self.ro_pnodes]
        if ro:
            raise error("ReadOnlyError", f'pnode "{", ".join(ro)}" is in read-only mode')
        rows = []
        for p in self.pnodes:
            res = self.forward(p, "sql", args)
            for r in res.get("rows", []):
                rows.append(r)
        return {"rows": rows}

    def rpc_getTokens(self, args):
        self._count("getTokens")
        return {"tokens": list(self.pnodes)}

    def rpc_updateObjects(self, args):
        raise error("Error", "Operation not supported")

    def rpc_deleteMany(self, args):
        raise error("Error", "Operation not supported")

    # ---- status ---------------------------------------------------------------------
    def status(self):
        with self.lock:
            counts = dict(self.counts)
        return {
            "smf_fmri": fmri(self.zone),
            "pid": os.getpid(),
            "start_time": self.start_time,
            "client_list": list(self.pnodes),
            "index_shards": self.index_shards,
            "read_only_pnodes": sorted(self.ro_pnodes),
            "zone_uuid": self.zone["uuid"],
            "alias": self.zone["alias"],
            "port": self.zone["ports"]["rpc"],
            "status_port": self.zone["ports"]["status"],
            "ring": {
                "path": self.ring_path,
                "image_uuid": self.image_uuid,
                "stamp": self.stamp,
                "hash": self.digest,
                "vnodes": self.vnode_count,
                "pnodes": list(self.pnodes),
                "data_vnodes": len(self.data_vnodes),
                "ro": self.ro_,
            },
            "config": {"path": self.zone["paths"]["config"],
                       "rendered_at": self.conf.get("rendered_at")},
            "requests": counts,
        }


def main(argv=None):
    ap = argparse.ArgumentParser(prog="manta_lab.emoray")
    ap.add_argument("--home", required=True)
    ap.add_argument("--zone", required=True)
    args = ap.parse_args(argv)
    cfg = config.load(args.home)
    zone = zones.get(cfg, args.zone)
    ready = Path(zone["paths"]["ready"])
    try:
        ready.unlink()
    except FileNotFoundError:
        pass
    conf = json.loads(Path(zone["paths"]["config"]).read_text())
    em = ElectricMoray(cfg, zone, conf)
    srv = rpc.RpcServer(HOST, zone["ports"]["rpc"], em)
    st = rpc.serve_status(HOST, zone["ports"]["status"], em.status)
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.write_text("")
    print(f"{time.strftime('%FT%T')} electric-moray {zone['alias']} pid {os.getpid()} "
          f"rpc {HOST}:{zone['ports']['rpc']} status {HOST}:{zone['ports']['status']} "
          f"ring {em.ring_path} image {em.image_uuid} hash {em.digest[:16]} "
          f"vnodes {em.vnode_count} pnodes {em.pnodes} ro_={em.ro_} "
          f"read-only pnodes {sorted(em.ro_pnodes)}", flush=True)

    def term(*_):
        threading.Thread(target=srv.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, term)
    try:
        srv.serve_forever()
    finally:
        st.shutdown()
        _close(em.ring)
    return 0


if __name__ == "__main__":
    sys.exit(main())
