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
import datetime
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from pathlib import Path
from urllib.parse import urlsplit

from . import config, procs, rpc, zones
from .config import HOST, LabError
from .rpc import error
from .ringfiles import read_stamp, ring_digest

# `moray` and `ring` (which pulls in requests) are imported where they are used: `lab svcadm` and
# every electric-moray start import this module, and a ring swap restarts the process inside the
# reshard's write-blocked window, so its start-up is kept lean (docs/bench-reshard.md).

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
    st = read_stamp(d)
    if st and st.get("image_uuid"):
        return st["image_uuid"]
    try:
        return Path(d, MARKER).read_text().strip() or None
    except OSError:
        return None


def _sapi_get(cfg, path, what):
    """GET a SAPI path as JSON with the stdlib (no requests import on the restart path):
    (status, body)."""
    import http.client
    c = http.client.HTTPConnection(HOST, cfg.port("sapi"), timeout=30)
    try:
        c.request("GET", path, headers={"Accept-Version": "~2", "Accept": "application/json"})
        r = c.getresponse()
        raw = r.read()
    except (OSError, http.client.HTTPException) as exc:
        raise LabError("ring", f"{what}: {exc!r}") from None
    finally:
        c.close()
    try:
        return r.status, (json.loads(raw) if raw else None)
    except ValueError:
        raise LabError("ring", f"{what}: HTTP {r.status}, not JSON: {raw[:200]!r}") from None


def instance_metadata(cfg, instance_uuid):
    """Merged metadata of a SAPI instance (GET /configs/:uuid), or the manta application's
    metadata when SAPI does not know the instance (as ring.instance_metadata)."""
    status, body = _sapi_get(cfg, f"/configs/{instance_uuid}", "SAPI GetConfig")
    if status == 200 and isinstance(body, dict) and isinstance(body.get("metadata"), dict):
        return body["metadata"]
    status, apps = _sapi_get(cfg, "/applications?name=manta&include_master=true",
                             "SAPI ListApplications name=manta")
    if status != 200 or not isinstance(apps, list):
        raise LabError("ring", f"SAPI ListApplications name=manta: HTTP {status}: {str(apps)[:200]}")
    if not apps:
        raise LabError("ring", "SAPI has no 'manta' application (run the SAPI bootstrap first)")
    return dict(apps[0].get("metadata") or {})


def _sapi_metadata(cfg, zone):
    try:
        return instance_metadata(cfg, zone["uuid"])
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
    from . import ring
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
    from . import ring
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
        md = instance_metadata(cfg, zone["uuid"])
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
        self.stamp = read_stamp(path)
        self.image_uuid = installed_image(path)
        self.digest = ring_digest(path)               # before we take the LOCK
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
        self.serving_since = None      # set once the RPC port listens (main)
        self.lock = threading.Lock()
        self.resolved = {}
        self.counts = {}
        self.clients = {}

    # ---- moray backends ------------------------------------------------------
    def warm(self):
        for host in sorted(set(self.hosts.values())):
            try:
                self._resolve(host)
            except Exception:  # noqa: BLE001 - a request resolves again
                pass

    def _resolve(self, host, force=False):
        now = time.monotonic()
        with self.lock:
            hit = self.resolved.get(host)
        if hit and not force and now - hit[1] < self.RESOLVE_TTL and hit[0]:
            return hit[0]
        from . import moray       # the lab's name service (imported after start-up: see the imports)
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
                if (exc.name == "ConnectionError" and not exc.info.get("sent")) or \
                        (exc.name == rpc.NOT_APPLIED and exc.info.get("applied") is False):
                    # refused at connect, or a moray shutting down that did not process it
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
            "serving_since": self.serving_since,
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


def _utc_iso(t=None):
    return datetime.datetime.fromtimestamp(time.time() if t is None else t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def main(argv=None):
    import argparse
    import signal
    # SIGTERM (svcadm disable / stop): drain and exit. SIGHUP: restart in place - drain, close the ring,
    # and re-exec this program, which renders its config and reads its ring again at start, as a fresh
    # start does (the ring swap's restart without a service-manager round trip; reshard_em_ring
    # restart=signal). Installed first, so that a signal during start-up is not lost.
    stopper = rpc.GracefulStop((signal.SIGTERM, signal.SIGHUP))
    ap = argparse.ArgumentParser(prog="manta_lab.emoray")
    ap.add_argument("--home", required=True)
    ap.add_argument("--zone", required=True)
    ap.add_argument("--render-config", action="store_true",
                    help="render etc/config.json from SAPI first (the config-agent; done by the start method "
                         "otherwise)")
    args = ap.parse_args(argv)
    cfg = config.load(args.home)
    zone = zones.get(cfg, args.zone)
    ready = Path(zone["paths"]["ready"])
    try:
        ready.unlink()
    except FileNotFoundError:
        pass
    if args.render_config:
        render_config(cfg, zone)
    conf = json.loads(Path(zone["paths"]["config"]).read_text())
    em = ElectricMoray(cfg, zone, conf)
    srv = rpc.RpcServer(HOST, zone["ports"]["rpc"], em, name=f"electric-moray {zone['alias']}")
    # listening (connections are queued from here and answered by the loop below): serving
    em.serving_since = _utc_iso()
    st = rpc.serve_status(HOST, zone["ports"]["status"], em.status)
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.write_text("")
    print(f"{time.strftime('%FT%T')} electric-moray {zone['alias']} pid {os.getpid()} "
          f"rpc {HOST}:{zone['ports']['rpc']} status {HOST}:{zone['ports']['status']} "
          f"ring {em.ring_path} image {em.image_uuid} hash {em.digest[:16]} "
          f"vnodes {em.vnode_count} pnodes {em.pnodes} ro_={em.ro_} "
          f"read-only pnodes {sorted(em.ro_pnodes)} (start {em.start_time}, serving {em.serving_since})",
          flush=True)
    # the lab's name service (moray.resolve) is imported and every pnode's morays looked up in the
    # background, so that the first routed request does not pay for it
    threading.Thread(target=em.warm, daemon=True, name="warm").start()

    def stopping(sig):
        what = "restart" if sig == signal.SIGHUP else "stop"
        print(f"{time.strftime('%FT%T')} {signal.Signals(sig).name}: {what}: stop listening, drain in-flight "
              "requests", flush=True)
    try:
        # both ports stop listening at once (a client's connect is refused and goes to another
        # electric-moray), requests in flight are answered, then we exit or restart
        sig = stopper.run(srv, others=[st], on_stop=stopping)
    finally:
        _close(em.ring)
    if sig == signal.SIGHUP:
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "manta_lab.emoray", "--home", str(args.home),
                                  "--zone", args.zone, "--render-config"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
