"""The lab's data plane against real processes: moray, electric-moray, storage
nodes (nginx + minnow), the ring in IMGAPI/SAPI, `lab seed` and `lab load`.

One lab for the module: its own LAB_HOME in a temp dir, base port 27000 (or
the next free one, below the kernel's ephemeral range; $LAB_TEST_DATAPLANE_PORT
overrides), domain example.com so that the routing vectors' pnodes
``tcp://N.moray.example.com:2020`` are lab shards. Everything it starts is
stopped by pid at the end.
"""
import base64
import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from manta_lab import (apis, config, emoray, load, moray, procs, ring, rpc, seed, shard, storage,
                       zones, zookeeper)

pytestmark = pytest.mark.timeout(600)

# Below the kernel's ephemeral range (32768-60999 here): a listening port in
# that range can be taken at any moment by some client connection's local port,
# which made restarts of electric-moray fail at random with EADDRINUSE.
BASE_PORT = int(os.environ.get("LAB_TEST_DATAPLANE_PORT", "27000"))
VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "emoray_routing_ro4.jsonl"
if not VECTORS.exists():
    VECTORS = Path("/work/shared/vectors/emoray_routing_ro4.jsonl")


def _fash():
    from ansible_collections.manta.ops.plugins.module_utils import fash
    return fash


def _free_base():
    """BASE_PORT, or the next base (in steps of 50) whose fixed ports are all
    free and whose port block stays below the ephemeral range."""
    elo, _ = config.ephemeral_range()
    top = min(elo - (config.DYNAMIC_BASE + config.DYNAMIC_SIZE), BASE_PORT + 1000)
    for base in range(BASE_PORT, max(top, BASE_PORT + 1), 50):
        c = config.LabConfig(home="/nonexistent", base_port=base, emorays=2, storage_nodes=4)
        fixed = [c.port(n) for n in config.PORT_OFFSETS]
        fixed += [c.emoray_port(i) for i in (1, 2)] + [c.emoray_status_port(i) for i in (1, 2)]
        fixed += [c.storage_port(k) for k in range(1, 5)]
        if all(config.port_free(p) for p in fixed):
            return base
    pytest.fail(f"no free base port from {BASE_PORT}; set LAB_TEST_DATAPLANE_PORT")


@pytest.fixture(scope="module")
def lab():
    # Not pytest's tmp dir: it is 0700 root, and postgres runs as its own user.
    base = _free_base()
    home = tempfile.mkdtemp(prefix="manta-lab-dataplane-")
    os.chmod(home, 0o755)
    cfg = config.LabConfig(home=str(home), base_port=base, shards=2, emorays=2,
                           storage_nodes=4, vnodes=256, domain="example.com")
    cfg.save()
    try:
        zookeeper.start(cfg)
        for n in (1, 2):
            shard.ensure(cfg, cfg.shard_name(n))
        apis.start(cfg)
        apis.bootstrap.ensure(cfg)
        for n in (1, 2):
            moray.ensure(cfg, cfg.shard_name(n))
        ring.ensure(cfg)
        storage.ensure(cfg)
        emoray.ensure(cfg)
        yield cfg
    finally:
        order = {"electric-moray": 0, "storage": 1, "moray": 2, "postgres": 3}
        for z in sorted(zones.all_zones(cfg), key=lambda z: order.get(z["kind"], 9)):
            try:
                zones.stop(cfg, z)
            except Exception:  # noqa: BLE001 - keep stopping the rest
                pass
        apis.stop(cfg)
        zookeeper.stop(cfg)
        for name in procs.names(cfg):
            procs.stop(cfg, name)
        if not os.environ.get("LAB_TEST_KEEP"):
            shutil.rmtree(home, ignore_errors=True)


def em_zone(cfg, i):
    return [z for z in zones.all_zones(cfg, kind=emoray.KIND) if z["index"] == i][0]


def em_client(cfg, i):
    return rpc.Client(emoray.url(em_zone(cfg, i)), timeout=30)


def em_status(cfg, i):
    z = em_zone(cfg, i)
    return rpc.Client(f"http://127.0.0.1:{z['ports']['status']}").status()


def pg_rows(cfg, shard_name, sql_text, params=()):
    import psycopg2
    conn = psycopg2.connect(moray.primary_dsn(cfg, shard_name))
    try:
        with conn.cursor() as cur:
            cur.execute(sql_text, params)
            return cur.fetchall()
    finally:
        conn.close()


def app_md(cfg):
    return ring.sapi_app(cfg)["metadata"]


def set_readonly(cfg, hosts):
    shards = [{"host": cfg.shard_name(n)} for n in range(1, cfg.shards + 1)]
    for s in shards:
        if s["host"] in hosts:
            s["readOnly"] = True
    shards[-1]["last"] = True
    ring.set_app_metadata(cfg, {"INDEX_MORAY_SHARDS": shards})


def restart_ems(cfg):
    for z in zones.all_zones(cfg, kind=emoray.KIND):
        zones.svcadm(cfg, z, "restart", emoray.SVC)


def obj_value(key, **extra):
    d, _, n = key.rpartition("/")
    v = {"dirname": d or "/", "key": key, "name": n, "owner": "a3829ca2-0966-60ce-9dc3-e4e9060f0950",
         "objectId": "0b7c5dbe-0f52-4d4e-b0a7-8f3e3b4b2d10", "type": "object", "contentLength": 0,
         "sharks": []}
    v.update(extra)
    return v


# ---- storage nodes ------------------------------------------------------------------

def test_nginx_put_get_head(lab):
    z = storage.by_storage_id(lab, lab.storage_id(1))
    u = storage.url(z)
    body = os.urandom(3000)
    r = requests.put(f"{u}/acct-1/obj-1", data=body, timeout=10)
    assert r.status_code == 201, r.text
    assert Path(storage.layout_path(z, "acct-1", "obj-1")).read_bytes() == body
    r = requests.get(f"{u}/acct-1/obj-1", timeout=10)
    assert r.status_code == 200 and r.content == body
    r = requests.head(f"{u}/acct-1/obj-1", timeout=10)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(body)
    # overwrite, missing object, and no DELETE (mako does not allow it)
    assert requests.put(f"{u}/acct-1/obj-1", data=b"x", timeout=10).status_code == 204
    assert requests.get(f"{u}/acct-1/obj-1", timeout=10).content == b"x"
    assert requests.get(f"{u}/acct-1/nope", timeout=10).status_code == 404
    assert requests.delete(f"{u}/acct-1/obj-1", timeout=10).status_code == 403
    # nginx is its own master process, recorded by pid
    pid = procs.alive(lab, zones.proc_name(z, "nginx"))
    assert pid and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"nginx: master process")
    d = {n["storage_id"]: n for n in storage.describe(lab)}
    assert len({n["datacenter"] for n in d.values()}) >= 2
    assert d[lab.storage_id(1)]["url"] == u and d[lab.storage_id(1)]["root"] == storage.root(z)


def _storage_record(cfg, storage_id):
    c = moray.client(cfg, cfg.shard_name(1))
    return c.get_object("manta_storage", storage_id)


def test_minnow_fresh_then_stale(lab):
    z = storage.by_storage_id(lab, lab.storage_id(2))
    storage.set_interval(lab, z, 0.5)
    zones.svcadm(lab, z, "restart", "minnow")
    deadline = time.time() + 15
    while True:
        try:
            rec = _storage_record(lab, lab.storage_id(2))
            if time.time() * 1000 - rec["value"]["timestamp"] < 1500:
                break
        except rpc.RpcError:
            pass
        assert time.time() < deadline, "no fresh minnow record"
        time.sleep(0.2)
    v = rec["value"]
    for k in ("availableMB", "percentUsed", "timestamp", "hostname", "datacenter", "server_uuid",
              "zone_uuid", "manta_storage_id", "manta_compute_id", "filesystem", "statvfs"):
        assert k in v, k
    assert v["manta_storage_id"] == lab.storage_id(2) and v["zone_uuid"] == z["uuid"]
    assert v["datacenter"] == z["datacenter"] and v["server_uuid"] == z["server_uuid"]
    assert rec["_vnode"] is None
    # the row's index columns are filled
    row = pg_rows(lab, lab.shard_name(1), "SELECT availablemb, percentused, manta_storage_id "
                  "FROM manta_storage WHERE _key = %s", (lab.storage_id(2),))[0]
    assert row[2] == lab.storage_id(2)
    # make the node full: capacity below what it holds
    Path(storage.root(z), "filler").write_bytes(b"\0" * (2 * 1024 * 1024))
    storage.set_capacity(lab, z, 1)
    deadline = time.time() + 15
    while True:
        v = _storage_record(lab, lab.storage_id(2))["value"]
        if v["availableMB"] == 0 and v["percentUsed"] == 100:
            break
        assert time.time() < deadline, v
        time.sleep(0.2)
    storage.set_capacity(lab, z, storage.DEFAULT_CAPACITY_MB)
    # disable minnow: the record goes stale
    zones.svcadm(lab, z, "disable", "minnow")
    assert zones.states(lab, zones.get(lab, z["uuid"]))["minnow"] == "disabled"
    t1 = _storage_record(lab, lab.storage_id(2))["value"]["timestamp"]
    time.sleep(2.0)
    t2 = _storage_record(lab, lab.storage_id(2))["value"]["timestamp"]
    assert t1 == t2 and time.time() * 1000 - t2 > 1500
    zones.svcadm(lab, z, "enable", "minnow")
    deadline = time.time() + 10
    while _storage_record(lab, lab.storage_id(2))["value"]["timestamp"] == t2:
        assert time.time() < deadline, "minnow did not resume"
        time.sleep(0.2)
    os.unlink(Path(storage.root(z), "filler"))


# ---- moray ------------------------------------------------------------------------------

def test_moray_put_get_etag_batch(lab):
    s1 = lab.shard_name(1)
    c = moray.client(lab, s1)
    key = "/acct/stor/moray-test/k1"
    v = obj_value(key, vnode=17)
    put = c.put_object("manta", key, v, etag=None)
    got = c.get_object("manta", key)
    assert got["value"] == v and got["key"] == key and got["_id"] == put["_id"]
    assert got["_etag"] == put["etag"] == got["etag"] and got["_vnode"] == 17
    assert abs(got["_mtime"] - time.time() * 1000) < 10000 and got["mtime"] == got["_mtime"]
    # _etag is the upper-case hex CRC32 of the stored _value text
    raw, etag, vnode, dirname, name, owner, objectid, typ = pg_rows(
        lab, s1, "SELECT _value, _etag, _vnode, dirname, name, owner, objectid, type "
        "FROM manta WHERE _key = %s", (key,))[0]
    assert etag == "%08X" % (zlib.crc32(raw.encode()) & 0xFFFFFFFF)
    assert json.loads(raw) == v and vnode == 17
    assert (dirname, name, owner, objectid, typ) == (v["dirname"], "k1", v["owner"], v["objectId"], "object")
    # etag semantics
    with pytest.raises(rpc.RpcError) as ei:
        c.put_object("manta", key, v, etag=None)
    assert ei.value.name == "EtagConflictError" and ei.value.status == 409
    assert ei.value.message == f'manta::{key} was expected to have etag "null", but was "{etag}"'
    with pytest.raises(rpc.RpcError) as ei:
        c.put_object("manta", key, v, etag="0BADBEEF")
    assert ei.value.name == "EtagConflictError"
    assert ei.value.context == {"bucket": "manta", "key": key, "expected": "0BADBEEF", "actual": etag}
    with pytest.raises(rpc.RpcError) as ei:
        c.put_object("manta", key + "-missing", v, etag="0BADBEEF")
    assert ei.value.name == "EtagConflictError" and ei.value.context["actual"] == "null"
    p2 = c.put_object("manta", key, dict(v, contentLength=5), etag=etag)
    assert p2["etag"] != etag and p2["_id"] == put["_id"]
    p3 = c.put_object("manta", key, dict(v, contentLength=6))          # unconditional
    assert c.get_object("manta", key)["_etag"] == p3["etag"]
    # batch: one transaction; a conflict rolls everything back
    k2 = "/acct/stor/moray-test/k2"
    with pytest.raises(rpc.RpcError) as ei:
        c.batch([{"operation": "put", "bucket": "manta", "key": k2, "value": obj_value(k2)},
                 {"operation": "put", "bucket": "manta", "key": key, "value": v,
                  "options": {"etag": "0BADBEEF"}}])
    assert ei.value.name == "EtagConflictError"
    with pytest.raises(rpc.RpcError) as ei:
        c.get_object("manta", k2)
    assert ei.value.name == "ObjectNotFoundError" and ei.value.status == 404
    assert ei.value.message == f"manta::{k2} does not exist"
    assert c.get_object("manta", key)["_etag"] == p3["etag"]
    res = c.batch([{"operation": "put", "bucket": "manta", "key": k2, "value": obj_value(k2)},
                   {"operation": "delete", "bucket": "manta", "key": key,
                    "options": {"etag": p3["etag"]}}])
    assert [e["key"] for e in res["etags"]] == [k2, key]
    assert c.get_object("manta", k2)["value"]["key"] == k2
    with pytest.raises(rpc.RpcError) as ei:
        c.del_object("manta", key)
    assert ei.value.name == "ObjectNotFoundError"
    # findObjects on an index, other errors
    found = c.find_objects("manta", "(&(dirname=/acct/stor/moray-test)(type=object))")
    assert [o["key"] for o in found] == [k2]
    with pytest.raises(rpc.RpcError) as ei:
        c.get_object("no_such_bucket", key)
    assert ei.value.name == "BucketNotFoundError"
    with pytest.raises(rpc.RpcError) as ei:
        c.call("putObject", {"bucket": "manta", "key": key})
    assert ei.value.name == "InvocationError" and ei.value.status == 400
    c.del_object("manta", k2)


def test_moray_without_primary_says_nodatabasepeers(lab):
    z = moray.provision(lab, "9.moray.example.com")
    try:
        assert moray.service_state(lab, z, "moray") == "online"
        with pytest.raises(rpc.RpcError) as ei:
            rpc.Client(moray.url(z)).get_object("manta", "/x/stor/y")
        assert ei.value.name == "NoDatabasePeersError"
        assert ei.value.message == "no manatee peers available"
        assert moray.url(z) in moray.resolve(lab, "9.moray.example.com")
    finally:
        moray.destroy(lab, z)
    assert moray.resolve(lab, "9.moray.example.com") == []
    assert not zones.all_zones(lab, kind="moray", shard="9.moray.example.com")


# ---- electric-moray ------------------------------------------------------------------------

def test_emoray_status_and_ring_install(lab):
    md = app_md(lab)
    for i in (1, 2):
        st = em_status(lab, i)
        z = em_zone(lab, i)
        assert st["pid"] == procs.alive(lab, zones.proc_name(z, emoray.SVC))
        assert st["start_time"].endswith("Z")
        assert st["client_list"] == [lab.pnode(lab.shard_name(1)), lab.pnode(lab.shard_name(2))]
        assert [s["host"] for s in st["index_shards"]] == [lab.shard_name(1), lab.shard_name(2)]
        assert st["read_only_pnodes"] == []
        r = st["ring"]
        assert r["path"] == emoray.ring_dir(z) == z["paths"]["ring"]
        assert r["path"].endswith(f"leveldb-{lab.emoray_port(i)}")
        assert r["image_uuid"] == md["HASH_RING_IMAGE"] and r["stamp"]["image_uuid"] == r["image_uuid"]
        assert r["vnodes"] == lab.vnodes and r["ro"] is False and r["data_vnodes"] == 0
        assert st["port"] == lab.emoray_port(i) and st["status_port"] == lab.emoray_status_port(i)
        # the process holds its ring copy open: the LevelDB LOCK is taken
        with pytest.raises(_fash().RingLockedError):
            _fash().open_ring(r["path"], readonly=True)
    assert em_status(lab, 1)["ring"]["hash"] == em_status(lab, 2)["ring"]["hash"]
    assert md["HASH_RING_IMGAPI_SERVICE"] == lab.url("imgapi")
    img = ring.get_image(lab, md["HASH_RING_IMAGE"])
    assert img["name"] == "manta-hash-ring" and img["state"] == "active"
    assert img["type"] == "other" and img["os"] == "other"
    assert img["files"][0]["compression"] == "gzip"
    d = {e["index"]: e for e in emoray.describe(lab)}
    assert d[1]["url"] == f"http://127.0.0.1:{lab.emoray_port(1)}"
    assert d[1]["status_url"] == f"http://127.0.0.1:{lab.emoray_status_port(1)}/status"


def _vector_ring(cfg, tmp):
    """fash.md §4.3's ring with vnode 4 marked "ro", published to IMGAPI."""
    fash = _fash()
    path = Path(tmp, "hash_ring")
    fash.create_ring(str(path), [f"tcp://{n}.moray.example.com:2020" for n in (1, 2, 3)], 12)
    with fash.open_ring(str(path)) as r:
        r.set_data([4], "ro")
    return ring.publish_ring(cfg, path, tags={"lab_test": "emoray_routing_ro4"})


def _node_of(call):
    try:
        return "ok", call()["_node"], None
    except rpc.RpcError as exc:
        return "err", exc.info.get("_node"), exc


def test_emoray_routing_vectors(lab, tmp_path):
    vectors = [json.loads(line) for line in VECTORS.read_text().splitlines()
               if line.startswith("{")]
    assert len(vectors) == 17
    image = _vector_ring(lab, tmp_path)
    z = em_zone(lab, 2)
    old = emoray.installed_image(z)
    try:
        st = emoray.install_ring(lab, z, image)
        assert st["ring"]["image_uuid"] == image and st["ring"]["ro"] is True
        assert st["ring"]["vnodes"] == 12 and st["ring"]["data_vnodes"] == 1
        # pnode 3 is in the ring but not in INDEX_MORAY_SHARDS: read-only
        assert st["read_only_pnodes"] == ["tcp://3.moray.example.com:2020"]
        assert not os.path.exists(z["paths"]["ring"] + ".new")
        assert not os.path.exists(z["paths"]["ring"] + ".old")
        c = em_client(lab, 2)
        for vec in vectors:
            b, k, want = vec["bucket"], vec["key"], vec["node"]
            assert _fash().transform_key(b, k) == vec["hashed"]
            # reads are never blocked, and say where they went
            kind, node, exc = _node_of(lambda: c.get_object(b, k))
            assert node == want, (vec, kind, exc)
            value = obj_value(k) if b == "manta" else {"key": k, "uploadId": "u1"}
            kind, node, exc = _node_of(lambda: c.put_object(b, k, value))
            assert node == want, (vec, exc)
            if want["data"] == "ro":
                assert vec["put"] == "WRITE->ReadOnlyError"
                assert (exc.name, exc.message) == ("ReadOnlyError", "some vnodes are in read-only mode")
            elif want["pnode"] == "tcp://3.moray.example.com:2020":
                assert (exc.name, exc.message) == (
                    "ReadOnlyError", 'pnode "tcp://3.moray.example.com:2020" is in read-only mode')
            elif b in ("manta", "manta_uploads"):
                assert kind == "ok", (vec, exc)
                host = urlsplit(want["pnode"]).hostname
                rows = pg_rows(lab, host, f"SELECT _vnode, _value FROM {b} WHERE _key = %s", (k,))
                assert rows and rows[0][0] == want["vnode"], (vec, rows)
                assert json.loads(rows[0][1])["vnode"] == want["vnode"]
                other = lab.shard_name(1) if host == lab.shard_name(2) else lab.shard_name(2)
                assert not pg_rows(lab, other, f"SELECT 1 FROM {b} WHERE _key = %s", (k,))
                got = c.get_object(b, k)
                assert "vnode" not in got["value"] and got["_node"] == want
                c.del_object(b, k)
            else:       # testmanta / other_bucket have no table in the lab
                assert exc.name == "BucketNotFoundError", (vec, exc)
        # any data vnode blocks sql (ro_), as electric-moray does
        with pytest.raises(rpc.RpcError) as ei:
            c.sql("SELECT 1")
        assert (ei.value.name, ei.value.message) == ("ReadOnlyError", "some vnodes are in read-only mode")
    finally:
        st = emoray.install_ring(lab, zones.get(lab, z["uuid"]), old)
    assert st["ring"]["image_uuid"] == old and st["ring"]["hash"] == em_status(lab, 1)["ring"]["hash"]


def test_emoray_setup_needs_sapi_ring_keys(lab):
    md = app_md(lab)
    keep = {k: md[k] for k in ("HASH_RING_IMAGE", "HASH_RING_IMGAPI_SERVICE")}
    ring.set_app_metadata(lab, {"HASH_RING_IMAGE": None}, action="delete")
    try:
        with pytest.raises(config.LabError) as ei:
            emoray.provision(lab, index=9)
        assert "HASH_RING_IMAGE missing" in str(ei.value)
        assert not [z for z in zones.all_zones(lab, kind=emoray.KIND) if z["index"] == 9]
    finally:
        ring.set_app_metadata(lab, keep)
    assert app_md(lab)["HASH_RING_IMAGE"] == keep["HASH_RING_IMAGE"]


def test_emoray_manual_ring_swap_steps(lab, tmp_path):
    """The plain steps a role runs (reshard.md §3.4) with svcadm, curl-like
    download, tar and mv; a ring without a stamp reports no image."""
    import subprocess
    fash = _fash()
    z = em_zone(lab, 1)
    before = em_status(lab, 1)
    old_image = before["ring"]["image_uuid"]
    src = tmp_path / "hash_ring"
    fash.create_ring(str(src), [lab.pnode(lab.shard_name(n)) for n in (1, 2)], 64)
    tgz = tmp_path / "r.tgz"
    ring.tar_ring(src, tgz)
    hashdir = emoray.describe(lab)[0]["ring"]
    zones.svcadm(lab, z, "disable", emoray.SVC)
    assert emoray.service_state(lab, zones.get(lab, z["uuid"]), emoray.SVC) == "disabled"
    subprocess.run(["rm", "-rf", hashdir + ".new"], check=True)
    os.mkdir(hashdir + ".new")
    subprocess.run(["tar", "-xzf", str(tgz), "-C", hashdir + ".new", "--strip-components=1",
                    "hash_ring"], check=True)
    subprocess.run(f"rm -rf {hashdir}.old && mv {hashdir} {hashdir}.old && rm -rf {hashdir}.old "
                   f"&& mv {hashdir}.new {hashdir}", shell=True, check=True)
    zones.svcadm(lab, z, "enable", emoray.SVC)
    st = emoray.wait_status(z)
    assert st["ring"]["vnodes"] == 64 and st["ring"]["image_uuid"] is None
    assert st["ring"]["stamp"] is None and st["ring"]["hash"] != before["ring"]["hash"]
    assert st["pid"] != before["pid"]
    st = emoray.install_ring(lab, z, old_image)
    assert st["ring"]["hash"] == before["ring"]["hash"] and st["ring"]["image_uuid"] == old_image


def test_emoray_readonly_shard(lab):
    s1, s2 = lab.shard_name(1), lab.shard_name(2)
    c1, c2 = em_client(lab, 1), em_client(lab, 2)
    keys = {}
    for i in range(200):            # one key per shard
        k = f"/acct/stor/ro-test/d{i}/obj"
        n = c1.put_object("manta", k, obj_value(k))["_node"]
        keys.setdefault(urlsplit(n["pnode"]).hostname, k)
        if len(keys) == 2:
            break
    assert set(keys) == {s1, s2}
    set_readonly(lab, {s2})
    try:
        # config is read only at start: before a restart nothing changes
        c1.put_object("manta", keys[s2], obj_value(keys[s2]))
        zones.svcadm(lab, em_zone(lab, 1), "restart", emoray.SVC)
        st = em_status(lab, 1)
        assert st["read_only_pnodes"] == [lab.pnode(s2)]
        assert {"host": s2, "readOnly": True} in st["index_shards"]
        with pytest.raises(rpc.RpcError) as ei:
            c1.put_object("manta", keys[s2], obj_value(keys[s2]))
        assert ei.value.name == "ReadOnlyError" and ei.value.status == 503
        assert ei.value.message == f'pnode "{lab.pnode(s2)}" is in read-only mode'
        with pytest.raises(rpc.RpcError) as ei:
            c1.del_object("manta", keys[s2])
        assert ei.value.name == "ReadOnlyError"
        with pytest.raises(rpc.RpcError) as ei:
            c1.batch([{"bucket": "manta", "key": keys[s2], "value": obj_value(keys[s2])}])
        assert ei.value.name == "ReadOnlyError"
        assert c1.get_object("manta", keys[s2])["key"] == keys[s2]       # reads work
        c1.put_object("manta", keys[s1], obj_value(keys[s1]))            # the other shard writes
        with pytest.raises(rpc.RpcError) as ei:
            c1.sql("SELECT 1")
        assert ei.value.message == f'pnode "{lab.pnode(s2)}" is in read-only mode'
        c2.put_object("manta", keys[s2], obj_value(keys[s2]))   # not restarted: old config
        # a load run through both: rejections recorded per vnode, nothing lost
        log = os.path.join(lab.home, "load-ro.log")
        rep = load.run(lab, 80, 2, log)
        assert rep["rejections"]["total"] > 0
        assert all(r["pnode"] == lab.pnode(s2) for r in rep["rejections"]["by_vnode"])
        assert rep["errors"].get("ReadOnlyError", 0) == rep["rejections"]["total"]
        res = load.verify(lab, log)
        assert res["ok"], res
        assert res["rejections_logged"] == rep["rejections"]["total"]
    finally:
        set_readonly(lab, set())
        restart_ems(lab)
    assert em_status(lab, 1)["read_only_pnodes"] == []
    c1.put_object("manta", keys[s2], obj_value(keys[s2]))


# ---- seed and load ------------------------------------------------------------------------

def _check_seeded(cfg, prefixes):
    fash = _fash()
    st = em_status(cfg, 1)
    with fash.open_ring(_ring_copy(cfg, st), readonly=True) as r:
        topo = r.topology()
        by_id = {z["storage_id"]: z for z in zones.all_zones(cfg, kind=storage.KIND)}
        rows = {}
        for n in (1, 2):
            host = cfg.shard_name(n)
            for pfx in prefixes:
                owner = pfx.split("/")[1]
                for key, raw, vnode, etag in pg_rows(
                        cfg, host, "SELECT _key, _value, _vnode, _etag FROM manta WHERE "
                        "_key LIKE %s OR _key LIKE %s", (pfx + "%", f"/{owner}/uploads/%")):
                    assert key not in rows or rows[key][0] == host, f"{key} on two shards"
                    rows[key] = (host, raw, vnode, etag)
        objects = 0
        for key, (host, raw, vnode, etag) in rows.items():
            p, v, _ = topo.get_node(fash.transform_key("manta", key))
            assert (urlsplit(p).hostname, v) == (host, vnode), key
            val = json.loads(raw)
            assert val["vnode"] == vnode and val["key"] == key
            assert etag == "%08X" % (zlib.crc32(raw.encode()) & 0xFFFFFFFF)
            if val["type"] != "object" or not val["sharks"]:
                continue
            if "/uploads/" in key and not os.path.exists(
                    storage.layout_path(by_id[val["sharks"][0]["manta_storage_id"]],
                                        val["owner"], val["objectId"])):
                continue        # a committed MPU's parts: files gone, records stay
            dcs = {s["datacenter"] for s in val["sharks"]}
            assert len(val["sharks"]) == 2 and len(dcs) == 2, key
            for s in val["sharks"]:
                z = by_id[s["manta_storage_id"]]
                assert z["datacenter"] == s["datacenter"]
                data = Path(storage.layout_path(z, val.get("creator") or val["owner"],
                                                val["objectId"])).read_bytes()
                assert len(data) == val["contentLength"]
                assert base64.b64encode(hashlib.md5(data).digest()).decode() == val["contentMD5"]
            objects += 1
    return rows, objects


def _ring_copy(cfg, st):
    d = tempfile.mkdtemp(dir=cfg.home, prefix="ringcopy-")
    dst = os.path.join(d, "hash_ring")
    os.makedirs(dst)
    for p in Path(st["ring"]["path"]).iterdir():
        if p.is_file() and p.name != "LOCK":
            shutil.copy2(p, os.path.join(dst, p.name))
    return dst


def test_seed_copy_path_routes_like_electric_moray(lab):
    rep = seed.run(lab, 2000, path="copy")
    assert rep["path"] == "copy" and rep["objects"] == 2000
    assert rep["ring"]["hash"] == em_status(lab, 1)["ring"]["hash"]
    assert all(n > 0 for n in rep["rows_per_shard"].values())
    rows, objects = _check_seeded(lab, rep["prefixes"])
    vals = [json.loads(r[1]) for r in rows.values()]
    assert objects >= 2000
    snap = [v for v in vals if v.get("creator")]
    assert len(snap) == 2 and all(v["creator"] != v["owner"] for v in snap)
    assert len([v for v in vals if v["type"] == "object" and v["contentLength"] == 0
                and v["sharks"] == []]) >= 3
    parts = [v for v in vals if "/uploads/" in v["key"] and v["type"] == "object"]
    assert len(parts) >= 4
    # the directory-count trigger ran for the seeded rows
    some_dir = next(v["dirname"] for v in vals if v["type"] == "object" and "/d00000/" in v["key"])
    host = next(h for k, (h, *_r) in rows.items() if k.startswith(some_dir + "/"))
    assert pg_rows(lab, host, "SELECT entries FROM manta_directory_counts WHERE _key = %s",
                   (some_dir,))[0][0] >= 1
    # readable through electric-moray, with the object's bytes on its sharks via nginx
    c = em_client(lab, 2)
    key = next(k for k, r in rows.items() if json.loads(r[1])["type"] == "object"
               and json.loads(r[1])["sharks"] and "/uploads/" not in k)
    got = c.get_object("manta", key)
    assert "vnode" not in got["value"]
    shark = got["value"]["sharks"][0]["manta_storage_id"]
    z = storage.by_storage_id(lab, shark)
    r = requests.get(f"{storage.url(z)}/{got['value']['owner']}/{got['value']['objectId']}", timeout=10)
    assert base64.b64encode(hashlib.md5(r.content).digest()).decode() == got["value"]["contentMD5"]


def test_seed_via_rpc(lab):
    rep = seed.run(lab, 120, via_rpc=True)
    assert rep["path"] == "rpc"
    rows, objects = _check_seeded(lab, rep["prefixes"])
    assert objects >= 120


def test_load_and_verify_no_lost_writes(lab):
    log = os.path.join(lab.home, "load.log")
    rep = load.run(lab, 150, 4, log)
    assert rep["writes_ok"] > 300 and rep["writes_failed"] == 0, rep
    assert rep["reads_ok"] > 0 and rep["reads_stale"] == 0 and rep["errors"] == {}
    lines = [json.loads(x) for x in Path(log).read_text().splitlines()]
    assert sum(1 for x in lines if x["op"] == "put") == rep["writes_ok"] + rep["dir_writes"]
    assert all({"key", "etag", "vhash", "vnode", "pnode", "t"} <= set(x) for x in lines)
    res = load.verify(lab, log)
    assert res["ok"], res
    assert res["acknowledged_writes"] == rep["writes_ok"] + rep["dir_writes"]
    assert res["counts"] == {}
    # an electric-moray restarting under load: requests go to the other one,
    # and nothing acknowledged is lost
    log2 = os.path.join(lab.home, "load-restart.log")
    out = {}
    import threading
    t = threading.Thread(target=lambda: out.update(load.run(lab, 100, 4, log2)))
    t.start()
    time.sleep(1.5)
    zones.svcadm(lab, em_zone(lab, 2), "restart", emoray.SVC)
    t.join()
    assert out["writes_ok"] > 150, out
    res2 = load.verify(lab, log2)
    assert res2["ok"], res2
    # verify notices a lost write: delete one key behind electric-moray's back
    victim = next(x["key"] for x in lines if x["op"] == "put" and "/w" in x["key"])
    host = urlsplit(next(x["pnode"] for x in lines if x["key"] == victim)).hostname
    moray.client(lab, host).del_object("manta", victim)
    res = load.verify(lab, log)
    assert not res["ok"] and res["counts"]["lost"] == 1
    assert res["problems"]["lost"][0]["key"] == victim
