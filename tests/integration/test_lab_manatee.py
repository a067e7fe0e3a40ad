"""The lab's manatee tier against a real ZooKeeper and real PostgreSQL 15.

One module-scoped lab (its own LAB home under /var/tmp, base port
$LAB_MANATEE_TEST_BASE_PORT or the first free one from 30000): ZooKeeper plus two shards of
three peers. Tests run in file order and build on each other: shard 2 is the
one whose primary is taken away (freeze / takeover), shard 1 grows new peers
that are detached tail-first into a new shard 3, as reshard phases 4 and
9-11 do. Everything started is stopped by pid at the end.
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest
from kazoo.client import KazooClient

from manta_lab import config, peer, postgres, procs, schema, shard, sitter, zones, zookeeper

def _base_port():
    """$LAB_MANATEE_TEST_BASE_PORT, else the first base in 30000-30900 whose
    ZooKeeper port and first dynamic ports (peers) are free."""
    if os.environ.get("LAB_MANATEE_TEST_BASE_PORT"):
        return int(os.environ["LAB_MANATEE_TEST_BASE_PORT"])
    for base in range(30000, 31000, 100):
        probe = [base] + list(range(base + config.DYNAMIC_BASE, base + config.DYNAMIC_BASE + 60))
        if all(config.port_free(p) for p in probe):
            return base
    raise RuntimeError("no free base port in 30000-30900; set LAB_MANATEE_TEST_BASE_PORT")
NODE_RE = re.compile(r"^127\.0\.0\.1:(\d+):(\d+)-(\d{10})$")
PEER_KEYS = {"id", "ip", "pgUrl", "zoneId", "backupUrl"}


class Ctx:
    def __init__(self, cfg):
        self.cfg = cfg
        self.timings = {}
        self.shared = {}

    def name(self, n):
        return self.cfg.shard_name(n)

    def zk(self):
        zk = KazooClient(hosts=self.cfg.zk_connect, timeout=5)
        zk.start(timeout=10)
        return zk

    def state(self, n_or_name):
        name = n_or_name if isinstance(n_or_name, str) else self.name(n_or_name)
        return shard.state(self.cfg, name)[0]

    def zone(self, peer_obj):
        return zones.get(self.cfg, peer_obj["zoneId"])


def wait_for(what, fn, timeout=20, interval=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def moray_conn(port):
    conn = psycopg2.connect(postgres.dsn(port), connect_timeout=5)
    conn.autocommit = True
    return conn


def pg_port(peer_obj):
    return sitter.url_port(peer_obj["pgUrl"])[1]


def put_row(port, key, vnode=7):
    value = json.dumps({"key": key, "owner": "o1", "type": "object", "vnode": vnode})
    with moray_conn(port) as conn:
        conn.cursor().execute(
            "INSERT INTO manta (_key, _value, _etag, _vnode, dirname, name, owner, objectid, type)"
            " VALUES (%s, %s, 'ABCDEF01', %s, %s, %s, 'o1', %s, 'object')",
            (key, value, vnode, key.rsplit("/", 1)[0], key.rsplit("/", 1)[1], key))


def has_row(port, key):
    try:
        with moray_conn(port) as conn:
            cur = conn.cursor()
            cur.execute("SELECT 1 FROM manta WHERE _key = %s", (key,))
            return cur.fetchone() is not None
    except psycopg2.Error:
        return False


def repl_rows(port):
    return {r["application_name"]: r for r in postgres.replication(port)}


def sitter_status(cfg, zone):
    return peer.sitter_status(zones.get(cfg, zone["uuid"]))


def in_state(st, zone_uuid):
    return any(p["zoneId"] == zone_uuid for p in sitter.chain(st)) if st else False


@pytest.fixture(scope="module")
def mlab():
    home = tempfile.mkdtemp(prefix="manatee-test-", dir="/var/tmp")
    os.chmod(home, 0o755)
    cfg = config.LabConfig(home=home, base_port=_base_port(), shards=2)
    cfg.save()
    ctx = Ctx(cfg)
    try:
        t0 = time.monotonic()
        zookeeper.start(cfg)
        ctx.timings["zookeeper"] = time.monotonic() - t0
        t1 = time.monotonic()
        for n in (1, 2):
            shard.ensure(cfg, cfg.shard_name(n), wait=False)
        for n in (1, 2):
            shard.wait_healthy(cfg, cfg.shard_name(n), 60)
        ctx.timings["shards"] = time.monotonic() - t1
        print(f"\nmanatee lab up: zookeeper {ctx.timings['zookeeper']:.2f}s, "
              f"2 shards x 3 peers {ctx.timings['shards']:.2f}s")
        yield ctx
    finally:
        t0 = time.monotonic()
        for z in zones.all_zones(cfg):
            zones.stop(cfg, z)
        t1 = time.monotonic()
        zookeeper.stop(cfg)
        for name in procs.names(cfg):
            procs.stop(cfg, name)
        t2 = time.monotonic()
        if not os.environ.get("LAB_TEST_KEEP"):
            shutil.rmtree(home, ignore_errors=True)
        print(f"\nteardown: zones {t1 - t0:.2f}s, zookeeper {t2 - t1:.2f}s, "
              f"rm {time.monotonic() - t2:.2f}s")


# ---- bring-up and layout --------------------------------------------------------

def test_bring_up_is_fast_and_healthy(mlab):
    assert mlab.timings["zookeeper"] < 10
    assert mlab.timings["shards"] < 25
    for n in (1, 2):
        d = shard.describe(mlab.cfg, mlab.name(n))
        assert [p["role"] for p in d["peers"]] == ["primary", "sync", "async"]
        assert d["generation"] == 1 and not d["frozen"]
        for p in d["peers"]:
            assert p["service"] == "online"
            assert p["dsn"] == f"host=127.0.0.1 port={p['pg_port']} dbname=moray user=postgres"
            assert p["id"] == f"127.0.0.1:{p['pg_port']}:{p['backup_port']}"
        prim, sync, asy = d["peers"]
        rows = repl_rows(prim["pg_port"])
        assert rows[sync["pgUrl"]]["state"] == "streaming"
        assert rows[sync["pgUrl"]]["sync_state"] == "sync"
        assert list(rows) == [sync["pgUrl"]]            # the async cascades from the sync
        rows = repl_rows(sync["pg_port"])
        assert rows[asy["pgUrl"]]["state"] == "streaming"
        assert rows[asy["pgUrl"]]["sync_state"] == "async"
        assert postgres.in_recovery(sync["pg_port"]) and postgres.in_recovery(asy["pg_port"])
        assert not postgres.in_recovery(prim["pg_port"])
    # peers spread over the datacenters
    d = shard.describe(mlab.cfg, mlab.name(1))
    assert len({p["datacenter"] for p in d["peers"]}) == 3


def test_only_loopback_listeners(mlab):
    cfg = mlab.cfg
    pids = {procs.alive(cfg, n) for n in procs.names(cfg)} - {None}
    for z in zones.all_zones(cfg, kind="postgres"):
        pm = postgres.postmaster_of(z["paths"]["data"])
        if pm:
            pids.add(pm)
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    ours = [line for line in out.splitlines()
            if any(f"pid={p}," in line for p in pids)]
    assert len(ours) >= 1 + 2 * 3 * 2         # zookeeper + (postgres + status) per peer
    for line in ours:
        local = line.split()[3]
        assert local.startswith("127.0.0.1:"), line
    zk_pid = procs.alive(cfg, "zookeeper")
    zk_lines = [line for line in ours if f"pid={zk_pid}," in line]
    assert [line.split()[3] for line in zk_lines] == [f"127.0.0.1:{cfg.port('zookeeper')}"]


def test_moray_schema(mlab):
    prim = mlab.state(1)["primary"]
    with moray_conn(pg_port(prim)) as conn:
        cur = conn.cursor()
        cur.execute("SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'manta' ORDER BY ordinal_position")
        assert [r[0] for r in cur.fetchall()] == [
            "_id", "_txn_snap", "_key", "_value", "_etag", "_mtime", "_vnode",
            "dirname", "name", "owner", "objectid", "type"]
        assert schema.COLUMNS["manta"][:12] == [
            "_id", "_txn_snap", "_key", "_value", "_etag", "_mtime", "_vnode",
            "dirname", "name", "owner", "objectid", "type"]
        cur.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                    "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                    "WHERE i.indrelid = 'manta'::regclass AND i.indisprimary")
        assert [r[0] for r in cur.fetchall()] == ["_key"]
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'manta'")
        idx = dict(cur.fetchall())
        for col in ("_id", "_etag", "_mtime", "_vnode", "dirname", "name", "owner",
                    "objectid", "type"):
            assert f"manta_{col}_idx" in idx, col
            assert f"USING btree ({col}) WHERE ({col} IS NOT NULL)" in idx[f"manta_{col}_idx"]
        cur.execute("SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'manta_directory_counts' ORDER BY ordinal_position")
        cols = [r[0] for r in cur.fetchall()]
        assert {"_key", "_value", "_etag", "_mtime", "_vnode", "entries"} <= set(cols)
        cur.execute("SELECT name FROM buckets_config ORDER BY name")
        names = [r[0] for r in cur.fetchall()]
        assert {"manta", "manta_directory_counts", "manta_storage"} <= set(names)
        # libmanta's trigger keeps the directory counts (checked, then rolled back)
        cur.execute("BEGIN")
        cur.execute("INSERT INTO manta (_key, _value, _etag, _vnode, dirname, name, owner, type)"
                    " VALUES ('/o/stor/d/a', '{}', 'AAAAAAAA', 11, '/o/stor/d', 'a', 'o', 'object'),"
                    " ('/o/stor/d/b', '{}', 'BBBBBBBB', 11, '/o/stor/d', 'b', 'o', 'object')")
        cur.execute("SELECT entries, _vnode FROM manta_directory_counts WHERE _key = '/o/stor/d'")
        assert cur.fetchone() == (2, 11)
        cur.execute("DELETE FROM manta WHERE _key = '/o/stor/d/a'")
        cur.execute("SELECT entries FROM manta_directory_counts WHERE _key = '/o/stor/d'")
        assert cur.fetchone() == (1,)
        cur.execute("SELECT count(*) FROM manta_storage WHERE _vnode IS NOT NULL")
        assert cur.fetchone() == (0,)
        cur.execute("ROLLBACK")
    # the storage bucket lives on the storage shard (1) only
    with moray_conn(pg_port(mlab.state(2)["primary"])) as conn:
        cur = conn.cursor()
        cur.execute("SELECT to_regclass('manta_storage'), to_regclass('manta')")
        assert cur.fetchone() == (None, "manta")


def test_election_nodes(mlab):
    zk = mlab.zk()
    try:
        for n in (1, 2):
            path = f"/manatee/{mlab.name(n)}/election"
            kids = zk.get_children(path)
            assert len(kids) == 3
            ids = set()
            for k in kids:
                m = NODE_RE.match(k)
                assert m, k
                raw, stat = zk.get(f"{path}/{k}")
                assert stat.ephemeralOwner != 0
                text = raw.decode()
                assert " " not in text                      # compact JSON
                data = json.loads(text)
                assert set(data) == {"zoneId", "ip", "pgUrl", "backupUrl"}
                z = zones.get(mlab.cfg, data["zoneId"])
                assert data["ip"] == "127.0.0.1"
                assert data["pgUrl"] == f"tcp://postgres@127.0.0.1:{z['ports']['pg']}/postgres"
                assert data["backupUrl"] == f"http://127.0.0.1:{z['ports']['backup']}"
                assert (int(m.group(1)), int(m.group(2))) == (z["ports"]["pg"], z["ports"]["backup"])
                ids.add(k.rsplit("-", 1)[0])
            assert len(ids) == 3
            assert zk.exists(f"/manatee/{mlab.name(n)}/history")
    finally:
        zk.stop()
        zk.close()


def test_sitter_status_server(mlab):
    import urllib.request
    st = mlab.state(1)
    for role, p in (("primary", st["primary"]), ("sync", st["sync"])):
        with urllib.request.urlopen(p["backupUrl"] + "/state", timeout=5) as r:
            body = json.loads(r.read())
        assert body["id"] == p["id"] and body["role"] == role
        assert body["zkstate"]["generation"] == st["generation"]
        with urllib.request.urlopen(p["backupUrl"] + "/ping", timeout=5) as r:
            assert json.loads(r.read())["healthy"] is True


def test_state_fields_and_history(mlab):
    name = mlab.name(1)
    zk = mlab.zk()
    try:
        raw, _ = zk.get(f"/manatee/{name}/state")
        assert b" " not in raw
        st = json.loads(raw)
        assert {"generation", "primary", "sync", "async", "deposed", "initWal"} <= set(st)
        for p in [st["primary"], st["sync"], *st["async"]]:
            assert set(p) == PEER_KEYS
            assert all(isinstance(v, str) for v in p.values())
        sitter.validate_state(st)
        hist = f"/manatee/{name}/history"
        before = sorted(zk.get_children(hist), key=lambda c: c.rsplit("-", 1)[1])
        assert before and all(re.match(r"^\d+-\d{10}$", c) for c in before)
        last = json.loads(zk.get(f"{hist}/{before[-1]}")[0])
        assert last == st                                   # history node = the write
        shard.freeze(mlab.cfg, name, "test freeze")
        shard.unfreeze(mlab.cfg, name)
        after = sorted(zk.get_children(hist), key=lambda c: c.rsplit("-", 1)[1])
        new = [c for c in after if c not in before]
        assert len(new) == 2 and all(c.startswith("0-") for c in new)
        frz = json.loads(zk.get(f"{hist}/{new[0]}")[0])
        assert frz["freeze"]["reason"] == "test freeze" and frz["generation"] == st["generation"]
        assert "freeze" not in json.loads(zk.get(f"{hist}/{new[1]}")[0])
        assert json.loads(zk.get(f"/manatee/{name}/state")[0]) == st
    finally:
        zk.stop()
        zk.close()


def test_compare_and_swap_retries_bad_version(mlab):
    """The write path every sitter uses: a concurrent writer's change makes the
    multi-op fail with BadVersion; the writer re-reads, re-applies, and both
    changes survive, each with its own history node."""
    path = "/manatee/cas.test"
    base = mlab.state(2)
    zk, other = mlab.zk(), mlab.zk()
    try:
        sitter.write_state(zk, path, lambda cur: dict(base, generation=5))
        calls = []

        def mutate(cur):
            calls.append(cur)
            if len(calls) == 1:      # someone else writes in between our read and write
                sitter.write_state(other, path, lambda c: dict(c, freeze={"date": "x", "reason": "r"}),
                                   history_prefix=0)
            cur["async"] = []
            return cur

        new, version, wrote = sitter.write_state(zk, path, mutate)
        assert wrote and len(calls) == 2
        assert "freeze" not in calls[0] and calls[1]["freeze"]["reason"] == "r"
        st = json.loads(zk.get(f"{path}/state")[0])
        assert st["async"] == [] and st["freeze"]["reason"] == "r" and version == 2
        hist = sorted(zk.get_children(f"{path}/history"), key=lambda c: c.rsplit("-", 1)[1])
        assert [h.split("-")[0] for h in hist] == ["5", "0", "5"]
    finally:
        zk.delete(path, recursive=True)
        for c in (zk, other):
            c.stop()
            c.close()


# ---- freeze, takeover (shard 2) -------------------------------------------------------

def test_async_list_changes_while_frozen(mlab):
    cfg, name = mlab.cfg, mlab.name(2)
    shard.freeze(cfg, name, "test: async churn")
    st0 = mlab.state(2)
    a = mlab.zone(st0["async"][0])
    zones.svcadm(cfg, a, "disable", peer.SVC)
    st = wait_for("async removed", lambda: (s := mlab.state(2)) and not s["async"] and s, 10)
    assert st["generation"] == st0["generation"] and st["freeze"] == st0["freeze"]
    assert st["primary"] == st0["primary"] and st["sync"] == st0["sync"]
    zones.svcadm(cfg, a, "enable", peer.SVC)
    st = wait_for("async back", lambda: (s := mlab.state(2)) and s["async"] and s, 10)
    assert [x["zoneId"] for x in st["async"]] == [a["uuid"]]
    assert st["generation"] == st0["generation"] and st["freeze"] == st0["freeze"]
    shard.wait_healthy(cfg, name, 30)


def test_freeze_blocks_takeover_then_sync_takes_over(mlab):
    cfg, name = mlab.cfg, mlab.name(2)
    st0 = mlab.state(2)
    assert st0["freeze"]
    p, s, a = (mlab.zone(x) for x in (st0["primary"], st0["sync"], st0["async"][0]))
    t0 = time.monotonic()
    state = zones.svcadm(cfg, p, "disable", peer.SVC)
    assert state == "disabled"
    assert time.monotonic() - t0 < 10
    # svcadm disable leaves the election at once and stops postgres
    zk = mlab.zk()
    try:
        kids = zk.get_children(f"/manatee/{name}/election")
        assert not any(k.startswith(st0["primary"]["id"] + "-") for k in kids)
    finally:
        zk.stop()
        zk.close()
    assert not postgres.ping(p["ports"]["pg"])
    time.sleep(3)                                  # frozen: the sync must not take over
    st = mlab.state(2)
    assert st == st0
    assert sitter_status(cfg, s)["role"] == "sync"
    shard.unfreeze(cfg, name)
    st = wait_for("takeover", lambda: (x := mlab.state(2))["generation"] == st0["generation"] + 1
                  and x, 15)
    assert st["primary"]["zoneId"] == s["uuid"]
    assert st["sync"]["zoneId"] == a["uuid"]
    assert st["async"] == []
    assert [d["zoneId"] for d in st["deposed"]] == [p["uuid"]]
    assert sitter.parse_lsn(st["initWal"]) > 0
    assert "freeze" not in st
    shard.wait_healthy(cfg, name, 30)
    assert not postgres.in_recovery(s["ports"]["pg"])
    put_row(s["ports"]["pg"], "/o1/stor/after-takeover/x")
    wait_for("row on the new sync", lambda: has_row(a["ports"]["pg"], "/o1/stor/after-takeover/x"))
    # the deposed peer stays down when its sitter comes back
    zones.svcadm(cfg, p, "enable", peer.SVC)
    wait_for("deposed", lambda: (sitter_status(cfg, p) or {}).get("role") == "deposed", 10)
    assert not postgres.ping(p["ports"]["pg"])
    d = shard.describe(cfg, name)
    assert [x["role"] for x in d["peers"]] == ["primary", "sync", "deposed"]


# ---- provision, destroy, reshard (shard 1 -> shard 3) ------------------------------------

def _wait_healthy_async(mlab, name, zone, timeout=30):
    def ok():
        st = mlab.state(name)
        ch = sitter.chain(st)
        idx = next((i for i, x in enumerate(ch) if x["zoneId"] == zone["uuid"]), None)
        if idx is None or idx < 2:
            return False
        up = ch[idx - 1]
        row = repl_rows(pg_port(up)).get(ch[idx]["pgUrl"])
        return bool(row and row["state"] == "streaming" and row["sync_state"] == "async") and st
    return wait_for(f"{zone['alias']} healthy async of {name}", ok, timeout)


def test_provisioned_peer_joins_as_async(mlab):
    cfg, name = mlab.cfg, mlab.name(1)
    prim = mlab.state(1)["primary"]
    put_row(pg_port(prim), "/o1/stor/before-provision/x")
    t0 = time.monotonic()
    z = peer.provision(cfg, name, cfg.servers[1]["uuid"])
    st = _wait_healthy_async(mlab, name, z)
    mlab.timings["provision"] = time.monotonic() - t0
    assert st["async"][-1]["zoneId"] == z["uuid"]
    assert set(st["async"][-1]) == PEER_KEYS
    assert z["shard"] == name and z["metadata"]["MANATEE_SHARD_PATH"] == f"/manatee/{name}"
    assert z["metadata"]["SHARD"] == "1"
    assert has_row(z["ports"]["pg"], "/o1/stor/before-provision/x")
    put_row(pg_port(prim), "/o1/stor/after-provision/x")
    wait_for("row streamed to the new peer", lambda: has_row(z["ports"]["pg"], "/o1/stor/after-provision/x"))
    assert peer.service_state(cfg, z) == "online"
    mlab.shared["provisioned"] = z


def test_destroy_removes_peer(mlab):
    cfg, name = mlab.cfg, mlab.name(1)
    z = mlab.shared["provisioned"]
    assert peer.destroy(cfg, z)
    with pytest.raises(config.LabError):
        zones.get(cfg, z["uuid"])
    assert not Path(z["paths"]["root"]).exists()
    assert not postgres.ping(z["ports"]["pg"])
    # its session expires, then the primary drops it from the async list
    st = wait_for("destroyed peer gone from the state",
                  lambda: (s := mlab.state(1)) and not in_state(s, z["uuid"]) and s,
                  sitter.SESSION_TIMEOUT + 10)
    assert len(sitter.chain(st)) == 3
    shard.wait_healthy(cfg, name, 30)


def test_reshard_detach_and_establish_new_shard(mlab):
    cfg, old, new = mlab.cfg, mlab.name(1), mlab.name(3)
    base = mlab.state(1)
    prim_port = pg_port(base["primary"])
    put_row(prim_port, "/o1/stor/sentinel/before-reshard")
    # phase 4: three new peers appended to the old shard's chain
    news = []
    for i in range(3):
        z = peer.provision(cfg, old, cfg.servers[i * 2]["uuid"])
        _wait_healthy_async(mlab, old, z)
        news.append(z)
    st = mlab.state(1)
    assert [x["zoneId"] for x in st["async"][-3:]] == [z["uuid"] for z in news]
    # phase 2 (earlier): freeze; phase 9: detach tail-first while frozen
    shard.freeze(cfg, old, "reshard plan 0000")
    put_row(prim_port, "/o1/stor/sentinel/frozen")
    for z in reversed(news):
        wait_for("sentinel on the tail", lambda z=z: has_row(z["ports"]["pg"], "/o1/stor/sentinel/frozen"))
        zones.svcadm(cfg, z, "disable", peer.SVC)
        st = wait_for(f"{z['alias']} gone", lambda z=z: (s := mlab.state(1))
                      and not in_state(s, z["uuid"]) and s, 10)
        assert st["generation"] == base["generation"] and st["freeze"]["reason"] == "reshard plan 0000"
    assert [x["zoneId"] for x in sitter.chain(mlab.state(1))] == \
        [x["zoneId"] for x in sitter.chain(base)]
    # phase 11's state written first (the safe order), then phase 10's reprovisions
    objs = [peer.peer_object(z) for z in news]
    new_state = {"generation": 1, "primary": objs[0], "sync": objs[1], "async": [objs[2]],
                 "deposed": [], "initWal": "0/00000000",
                 "freeze": {"date": sitter.now_iso(), "reason": "reshard plan 0000"}}
    zk = mlab.zk()
    try:
        zk.create(f"/manatee/{new}/state", json.dumps(new_state, separators=(",", ":")).encode(),
                  makepath=True)
    finally:
        zk.stop()
        zk.close()
    md = {"SERVICE_NAME": new, "SHARD": "3", "MANATEE_SHARD_PATH": f"/manatee/{new}"}
    t0 = time.monotonic()
    for z in news:
        z2 = peer.reprovision(cfg, z, md)
        assert z2["shard"] == new and z2["alias"].startswith("3.postgres.")
        assert z2["services"][peer.SVC]["enabled"]
    shard.wait_healthy(cfg, new, 60)
    mlab.timings["establish"] = time.monotonic() - t0
    d = shard.describe(cfg, new)
    assert [(p["role"], p["zone"]) for p in d["peers"]] == \
        list(zip(["primary", "sync", "async"], [z["uuid"] for z in news]))
    assert d["frozen"] and d["generation"] == 1
    n1, n2, n3 = (z["ports"]["pg"] for z in news)
    assert has_row(n1, "/o1/stor/sentinel/before-reshard") and has_row(n1, "/o1/stor/sentinel/frozen")
    put_row(n1, "/o1/stor/sentinel/new-shard")
    wait_for("new shard's write on its async", lambda: has_row(n3, "/o1/stor/sentinel/new-shard"))
    assert not has_row(prim_port, "/o1/stor/sentinel/new-shard")
    # the old shard is back to its three base peers, still frozen, healthy
    shard.wait_healthy(cfg, old, 30)
    d_old = shard.describe(cfg, old)
    assert [p["zone"] for p in d_old["peers"]] == [x["zoneId"] for x in sitter.chain(base)]
    assert d_old["frozen"]
    shard.unfreeze(cfg, old)
    zk = mlab.zk()
    try:
        assert len(zk.get_children(f"/manatee/{new}/election")) == 3
        assert len(zk.get_children(f"/manatee/{old}/election")) == 3
    finally:
        zk.stop()
        zk.close()
    mlab.shared["new_shard_zones"] = news


def test_sitter_restart_keeps_roles(mlab):
    """svcadm restart is SMF's kill -9 + start: the session outlives the
    process, so a restarted primary keeps its role (no takeover)."""
    cfg, new = mlab.cfg, mlab.name(3)
    st0 = mlab.state(new)
    p = mlab.zone(st0["primary"])
    pid0 = procs.alive(cfg, peer.proc(p))
    assert zones.svcadm(cfg, p, "restart", peer.SVC) == "online"
    assert procs.alive(cfg, peer.proc(p)) != pid0
    shard.wait_healthy(cfg, new, 30)
    time.sleep(sitter.SESSION_TIMEOUT + 1)           # the old session has expired by now
    assert mlab.state(new)["generation"] == st0["generation"]
    assert mlab.state(new)["primary"] == st0["primary"]


def test_crashed_primary_is_replaced_after_session_expiry(mlab):
    """kill -9 of the primary's sitter (and with it postgres): the election node
    outlives it until the session expires, then the sync takes over; every
    acknowledged (synchronously replicated) write is on the new primary."""
    cfg, name = mlab.cfg, mlab.name(1)
    st0 = mlab.state(1)
    assert not st0.get("freeze")
    p, s, a = (mlab.zone(x) for x in (st0["primary"], st0["sync"], st0["async"][0]))
    for i in range(20):
        put_row(p["ports"]["pg"], f"/o1/stor/crash/{i}")
    t0 = time.monotonic()
    procs.kill(cfg, peer.proc(p))
    assert not postgres.ping(p["ports"]["pg"])
    time.sleep(1)
    assert mlab.state(1)["generation"] == st0["generation"]    # session still alive
    st = wait_for("takeover after session expiry",
                  lambda: (x := mlab.state(1))["generation"] == st0["generation"] + 1 and x,
                  sitter.SESSION_TIMEOUT + 15)
    assert time.monotonic() - t0 >= sitter.SESSION_TIMEOUT - 1
    assert st["primary"]["zoneId"] == s["uuid"] and st["sync"]["zoneId"] == a["uuid"]
    assert [d["zoneId"] for d in st["deposed"]] == [p["uuid"]]
    shard.wait_healthy(cfg, name, 30)
    for i in range(20):
        assert has_row(s["ports"]["pg"], f"/o1/stor/crash/{i}")
    # the crashed zone's service is still enabled: SMF would restart it; it comes back deposed
    assert peer.service_state(cfg, p) == "offline"
    zones.start(cfg, zones.get(cfg, p["uuid"]))
    wait_for("deposed", lambda: (sitter_status(cfg, p) or {}).get("role") == "deposed", 10)


def test_malformed_state_is_fatal_until_fixed(mlab):
    """As in manatee, every sitter of the shard refuses a malformed state and
    postgres goes down (manatee's sitters crash-loop); a valid state brings
    them back with their roles."""
    cfg, name = mlab.cfg, mlab.name(2)
    good = mlab.state(2)
    live = [mlab.zone(x) for x in sitter.chain(good)]
    bad = json.loads(json.dumps(good))
    del bad["primary"]["zoneId"]
    zk = mlab.zk()
    try:
        zk.set(f"/manatee/{name}/state", json.dumps(bad).encode())
        wait_for("sitters fatal", lambda: all(peer.service_state(cfg, z) == "maintenance"
                                             for z in live), 10)
        for z in live:
            assert not postgres.ping(z["ports"]["pg"])
        ids = {k.rsplit("-", 1)[0] for k in zk.get_children(f"/manatee/{name}/election")}
        assert {x["id"] for x in sitter.chain(good)} <= ids
        assert mlab.state(2) == bad                     # nobody rewrote it
        zk.set(f"/manatee/{name}/state", json.dumps(good, separators=(",", ":")).encode())
    finally:
        zk.stop()
        zk.close()
    shard.wait_healthy(cfg, name, 30)
    assert all(peer.service_state(cfg, z) == "online" for z in live)
    assert mlab.state(2)["generation"] == good["generation"]


def test_stop_all_and_start_keeps_data(mlab):
    cfg = mlab.cfg
    names = [mlab.name(n) for n in (1, 2, 3)]
    before = {n: mlab.state(n) for n in names}
    all_pg = zones.all_zones(cfg, kind="postgres")
    for z in all_pg:                                  # `lab down`
        zones.stop(cfg, z)
    zookeeper.stop(cfg)
    assert procs.names(cfg) == []
    for z in all_pg:
        assert postgres.postmaster_of(z["paths"]["data"]) is None
    t0 = time.monotonic()
    zookeeper.start(cfg)                              # `lab up`
    for n in names:
        shard.ensure(cfg, n, wait=False)
    for n in names:
        shard.wait_healthy(cfg, n, 60)
    mlab.timings["restart"] = time.monotonic() - t0
    for n in names:
        st = mlab.state(n)
        assert st["generation"] == before[n]["generation"], n
        assert st["primary"] == before[n]["primary"], n
    assert has_row(pg_port(mlab.state(1)["primary"]), "/o1/stor/sentinel/before-reshard")
    assert has_row(pg_port(mlab.state(3)["primary"]), "/o1/stor/sentinel/new-shard")
    assert has_row(pg_port(mlab.state(2)["primary"]), "/o1/stor/after-takeover/x")
    print("\nmanatee timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in mlab.timings.items()))
