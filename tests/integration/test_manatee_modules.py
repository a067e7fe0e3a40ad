"""manatee_info / manatee_cluster / manatee_peer against the lab: real ZooKeeper, real
PostgreSQL peers with the lab's manatee sitters.

Every test works on shards of its own (created here, in the session lab, and destroyed
at the end), never on the lab's shards 1 and 2.
"""
import json
import time
import uuid

import psycopg2
import pytest
from kazoo.client import KazooClient

from modrun import run_module

from ansible_collections.manta.ops.plugins.module_utils import manatee_state as ms
from ansible_collections.manta.ops.plugins.module_utils.zk import Zk

REASON = "reshard plan 11111111-2222-3333-4444-555555555555"


# ---- fixtures and helpers ------------------------------------------------------------

@pytest.fixture(scope="module")
def cfg(lab):
    return lab.cfg


@pytest.fixture(scope="module")
def zk_connect(lab):
    return lab.status["zookeeper"]["connect"]


@pytest.fixture(scope="module")
def zk(zk_connect):
    c = KazooClient(hosts=zk_connect, timeout=10)
    c.start(timeout=10)
    yield c
    c.stop()
    c.close()


def destroy_shard(cfg, zk, name):
    from manta_lab import peer as lpeer
    from manta_lab import zones
    for z in zones.all_zones(cfg, kind="postgres", shard=name):
        lpeer.destroy(cfg, z)
    if zk.exists(f"/manatee/{name}"):
        zk.delete(f"/manatee/{name}", recursive=True)


@pytest.fixture(scope="module")
def shard(cfg, zk):
    """A private three-peer shard of the lab (primary -> sync -> async)."""
    from manta_lab import shard as lshard
    name = cfg.shard_name(71)
    destroy_shard(cfg, zk, name)
    lshard.ensure(cfg, name, timeout=120)
    yield name
    destroy_shard(cfg, zk, name)


def zkargs(zk_connect, **kw):
    a = {"zk_servers": zk_connect, "zk_timeout": 10, "pg_connect_timeout": 2,
         "pg_query_timeout": 5}
    a.update(kw)
    return a


def info(zk_connect, shard_name, **kw):
    r = run_module("manatee_info", zkargs(zk_connect, shard=shard_name, **kw))
    assert not r.get("failed"), r
    return r["manatee"]


def warnings(r):
    """Warning texts of a module result (ansible-core 2.21 structures them)."""
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in r.get("warnings", [])]


def raw_state(zk, shard_name):
    data, stat = zk.get(f"/manatee/{shard_name}/state")
    return json.loads(data), stat.version


def history(zk, shard_name):
    path = f"/manatee/{shard_name}/history"
    names = sorted(zk.get_children(path), key=lambda n: int(n.rsplit("-", 1)[1]))
    return [(n, json.loads(zk.get(f"{path}/{n}")[0])) for n in names]


def wait_for(what, fn, timeout=90, interval=0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def pg_port(peer):
    return int(peer["pgUrl"].rsplit(":", 1)[1].split("/")[0])


def sql(peer, statement, params=None, db="moray"):
    conn = psycopg2.connect(host="127.0.0.1", port=pg_port(peer), dbname=db, user="postgres",
                            connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def cluster(zk_connect, shard_name, check=False, diff=False, **kw):
    return run_module("manatee_cluster", zkargs(zk_connect, shard=shard_name, **kw),
                      check=check, diff=diff)


def peer_mod(zk_connect, shard_name, peer, check=False, diff=False, **kw):
    return run_module("manatee_peer", zkargs(zk_connect, shard=shard_name, peer=peer, **kw),
                      check=check, diff=diff)


def scratch_state(zk, state_obj, raw=None):
    """A shard path with a hand-written state and no sitters (for validation/CAS tests)."""
    name = f"scratch-{uuid.uuid4().hex[:10]}"
    zk.create(f"/manatee/{name}/state", raw if raw is not None else ms.dumps(state_obj).encode(),
              makepath=True)
    zk.ensure_path(f"/manatee/{name}/history")
    return name


def good_state():
    return {"generation": 1,
            "primary": ms.build_peer("10.9.9.1", "aaaaaaaa-0000-0000-0000-000000000001"),
            "sync": ms.build_peer("10.9.9.2", "bbbbbbbb-0000-0000-0000-000000000002"),
            "async": [ms.build_peer("10.9.9.3", "cccccccc-0000-0000-0000-000000000003")],
            "deposed": [], "initWal": "0/00000000"}


@pytest.fixture
def scratch(zk):
    made = []

    def make(state_obj=None, raw=None):
        name = scratch_state(zk, state_obj or good_state(), raw)
        made.append(name)
        return name
    yield make
    for name in made:
        zk.delete(f"/manatee/{name}", recursive=True)


# ---- manatee_info ------------------------------------------------------------------------

def test_info_reports_roles_replication_and_clean_verify(cfg, zk_connect, shard):
    from manta_lab import shard as lshard
    m = info(zk_connect, shard)
    lab_view = lshard.describe(cfg, shard)
    assert [p["role"] for p in m["peers"]] == ["primary", "sync", "async"]
    assert [p["id"] for p in m["peers"]] == [p["id"] for p in lab_view["peers"][:3]]
    assert m["generation"] == lab_view["generation"] and m["frozen"] is False
    assert m["valid"] and m["healthy"], (m["errors"], m["warnings"])
    assert m["verify"] == [] and m["errors"] == [] and m["warnings"] == []
    prim, sync, asyn = m["peers"]
    assert all(p["pg"] == "ok" and p["active"] for p in m["peers"])
    assert prim["in_recovery"] is False and prim["current_lsn"] and prim["lag"] == "-"
    assert sync["in_recovery"] is True and asyn["replay_lsn"]
    assert prim["repl"]["sync_state"] == "sync" and prim["repl"]["application_name"] == sync["pgUrl"]
    assert sync["repl"]["sync_state"] == "async" and sync["repl"]["client_addr"] == asyn["ip"]
    assert asyn["repl"] is None and asyn["upstream_link"]["state"] == "streaming"
    for key in ("sent_lsn", "flush_lsn", "replay_lsn"):
        assert ms.lsnmod.is_valid(prim["repl"][key])
    lines = m["show"].splitlines()
    assert lines[1] == f"cluster:     {shard}"
    assert lines[2] == f"generation:  {m['generation']} ({m['init_wal']})"
    assert lines[4] == "freeze:      not frozen"
    rows = [ln.split() for ln in lines if ln.split()[:1] in (["primary"], ["sync"], ["async"])
            and len(ln.split()) == 8]
    assert [r[:4] for r in rows] == [["primary", prim["label"], "ok", "sync"],
                                     ["sync", sync["label"], "ok", "async"],
                                     ["async", asyn["label"], "ok", "-"]]
    # ZooKeeper only
    m2 = info(zk_connect, shard, probe_postgres=False)
    assert all(p["pg"] == "not probed" for p in m2["peers"]) and m2["probed"] is False


# ---- freeze / unfreeze ---------------------------------------------------------------------

def test_freeze_check_mode_diff_history_and_idempotence(zk_connect, zk, shard):
    before, v0 = raw_state(zk, shard)
    assert not before.get("freeze")
    r = cluster(zk_connect, shard, check=True, diff=True, state="frozen", freeze_reason=REASON)
    assert r["changed"] is True and not r.get("failed"), r
    assert r["state"]["freeze"]["reason"] == REASON
    assert "freeze" not in r["diff"]["before"] and r["diff"]["after"]["freeze"]["reason"] == REASON
    assert raw_state(zk, shard) == (before, v0), "check mode must not write"

    nhist = len(history(zk, shard))
    r = cluster(zk_connect, shard, diff=True, state="frozen", freeze_reason=REASON)
    assert r["changed"] is True and r["freeze_matches"] is True and r["attempts"] >= 1
    after, v1 = raw_state(zk, shard)
    assert v1 > v0 and after["freeze"]["reason"] == REASON
    assert after["freeze"]["date"].endswith("Z")
    hist = history(zk, shard)
    assert len(hist) == nhist + 1
    assert hist[-1][0].startswith("0-") and hist[-1][1] == after, "history node = new state"
    # everything else of the state is untouched
    assert {k: v for k, v in after.items() if k != "freeze"} == \
           {k: v for k, v in before.items() if k != "freeze"}

    r = cluster(zk_connect, shard, diff=True, state="frozen", freeze_reason=REASON)
    assert r["changed"] is False and r["diff"]["before"] == r["diff"]["after"]
    assert raw_state(zk, shard)[1] == v1
    m = info(zk_connect, shard)
    assert m["frozen"] and m["freeze_reason"] == REASON
    assert f"freeze info: {REASON}" in m["show"]

    r = cluster(zk_connect, shard, state="unfrozen", freeze_reason=REASON)
    assert r["changed"] is True and r["freeze_matches"] is True
    assert "freeze" not in raw_state(zk, shard)[0]
    r = cluster(zk_connect, shard, state="unfrozen", freeze_reason=REASON)
    assert r["changed"] is False


def test_someone_elses_freeze_is_reported_and_left_alone(cfg, zk_connect, zk, shard):
    from manta_lab import shard as lshard
    lshard.freeze(cfg, shard, "By nate for CM-129")      # manatee-adm freeze -r ...
    st, v = raw_state(zk, shard)

    r = cluster(zk_connect, shard, state="frozen", freeze_reason=REASON)
    assert r["changed"] is False and r["freeze_matches"] is False
    assert r["foreign_freeze"]["reason"] == "By nate for CM-129"
    assert any("already frozen by someone else" in w for w in warnings(r))
    r = cluster(zk_connect, shard, state="unfrozen", freeze_reason=REASON)
    assert r["changed"] is False and r["freeze_matches"] is False
    assert any("left frozen" in w for w in warnings(r))
    assert raw_state(zk, shard) == (st, v), "a foreign freeze is never touched without force"

    r = cluster(zk_connect, shard, state="frozen", freeze_reason=REASON, force=True)
    assert r["changed"] is True and r["foreign_freeze"]["reason"] == "By nate for CM-129"
    assert raw_state(zk, shard)[0]["freeze"]["reason"] == REASON
    lshard.unfreeze(cfg, shard)
    lshard.freeze(cfg, shard, "By nate for CM-129")
    r = cluster(zk_connect, shard, state="unfrozen", force=True)
    assert r["changed"] is True and "freeze" not in raw_state(zk, shard)[0]


def test_freeze_argument_errors(zk_connect, zk, shard):
    v = raw_state(zk, shard)[1]
    for args, needle in [({"state": "frozen"}, "freeze_reason"),
                         ({"state": "unfrozen"}, "needs freeze_reason"),
                         ({"state": "frozen", "freeze_reason": "  "}, "must not be empty"),
                         ({"state": "frozen", "freeze_reason": "r", "cas_retries": -1}, "cas_retries")]:
        r = cluster(zk_connect, shard, **args)
        assert r["failed"] and needle in r["msg"], (args, r)
    assert raw_state(zk, shard)[1] == v


# ---- faults: missing state, invalid state, CAS lost, ZooKeeper down, postgres down -------

def test_missing_state_is_a_clear_error_and_creates_nothing(zk_connect, zk):
    name = f"nostate-{uuid.uuid4().hex[:8]}"
    r = cluster(zk_connect, name, state="frozen", freeze_reason=REASON)
    assert r["failed"] and r["changed"] is False
    assert f'no state object exists for shard: "{name}"' in r["msg"]
    r = run_module("manatee_info", zkargs(zk_connect, shard=name))
    assert r["failed"] and "no state object exists" in r["msg"]
    r = run_module("manatee_info", zkargs(zk_connect, shard=name, missing_ok=True))
    assert r["manatee"]["exists"] is False and not r.get("failed")
    r = peer_mod(zk_connect, name, "10.0.0.1")
    assert r["failed"] and "no state object exists" in r["msg"]
    assert zk.exists(f"/manatee/{name}") is None


def test_invalid_state_is_reported_and_never_written(zk_connect, zk, scratch):
    bad = good_state()
    bad["sync"] = None                       # fatal for every sitter (not in ONWM)
    name = scratch(bad)
    data0, stat0 = zk.get(f"/manatee/{name}/state")
    r = cluster(zk_connect, name, state="frozen", freeze_reason=REASON)
    assert r["failed"] and r["changed"] is False
    assert "state fails validation" in r["msg"] and "a null sync is only valid" in r["msg"]
    assert zk.get(f"/manatee/{name}/state") == (data0, stat0)
    assert zk.get_children(f"/manatee/{name}/history") == []

    m = info(zk_connect, name)
    assert m["valid"] is False and m["healthy"] is False
    assert any("sync: is null" in e for e in m["validation_errors"])
    r = run_module("manatee_info", zkargs(zk_connect, shard=name, fail_on_issues=True))
    assert r["failed"] and "is not healthy" in r["msg"]

    # sitters tolerate a missing backupUrl, manatee-adm does not: refuse to write that too
    half = good_state()
    del half["async"][0]["backupUrl"]
    name2 = scratch(half)
    r = cluster(zk_connect, name2, state="frozen", freeze_reason=REASON)
    assert r["failed"] and "async[0].backupUrl: expected a string" in r["msg"]
    # and a state that is not JSON at all
    name3 = scratch(raw=b"{not json")
    r = cluster(zk_connect, name3, state="frozen", freeze_reason=REASON)
    assert r["failed"] and "is not valid JSON" in r["msg"]
    assert zk.get(f"/manatee/{name3}/state")[0] == b"{not json"


def test_boolean_freeze_counts_as_someone_elses(zk_connect, zk, scratch):
    name = scratch(dict(good_state(), freeze=True))      # an old-style freeze: true
    m = info(zk_connect, name, probe_postgres=False)
    assert m["frozen"] is True and m["freeze_reason"] == "unknown"
    before = zk.get(f"/manatee/{name}/state")
    for args in ({"state": "unfrozen", "freeze_reason": "unknown"},
                 {"state": "frozen", "freeze_reason": REASON}):
        r = cluster(zk_connect, name, **args)
        assert r["changed"] is False and r["foreign_freeze"]["reason"] == "unknown", r
    assert zk.get(f"/manatee/{name}/state") == before
    r = cluster(zk_connect, name, state="unfrozen", force=True, diff=True)
    assert r["changed"] is True and r["diff"]["before"]["freeze"] is True
    assert "freeze" not in json.loads(zk.get(f"/manatee/{name}/state")[0])
    assert [n[:2] for n in zk.get_children(f"/manatee/{name}/history")] == ["0-"]


def test_cas_lost_to_a_concurrent_writer_writes_nothing(zk_connect, zk, scratch):
    name = scratch()
    path = f"/manatee/{name}/state"
    other = ms.build_peer("10.9.9.4", "dddddddd-0000-0000-0000-000000000004")

    def concurrent_writer(_attempt):
        # another writer (a sitter appending an async) commits between our read and write
        cur, stat = zk.get(path)
        st = json.loads(cur)
        st["async"].append(dict(other, zoneId=f"z{stat.version}", id=f"10.9.9.4:5432:{stat.version}"))
        zk.set(path, ms.dumps(st).encode(), version=stat.version)

    def freeze(st):
        st["freeze"] = {"date": "2025-01-01T00:00:00.000Z", "reason": REASON}
        return st

    with Zk(zk_connect, 10) as client:
        with pytest.raises(ms.CasConflict) as ei:
            ms.update_state(client, name, freeze, retries=0, on_attempt=concurrent_writer)
    assert "compare-and-swap lost to concurrent writers" in str(ei.value)
    assert "nothing was written" in str(ei.value)
    st, stat = zk.get(path)
    st = json.loads(st)
    assert "freeze" not in st and len(st["async"]) == 2, "only the other writer's change is there"
    assert zk.get_children(f"/manatee/{name}/history") == []

    # with retries: the change is re-applied on top of the concurrent one
    calls = []

    def once(attempt):
        calls.append(attempt)
        if attempt == 1:
            concurrent_writer(attempt)

    with Zk(zk_connect, 10) as client:
        res = ms.update_state(client, name, freeze, retries=3, on_attempt=once)
    assert res["changed"] and res["attempts"] == 2 and calls == [1, 2]
    final = json.loads(zk.get(path)[0])
    assert final["freeze"]["reason"] == REASON and len(final["async"]) == 3
    assert len(zk.get_children(f"/manatee/{name}/history")) == 1


def test_module_retries_against_a_writer_hammering_the_state(zk_connect, zk, scratch):
    """Module level: a writer rewrites /state as fast as it can; the freeze still lands
    (re-read and re-applied) and the writer's changes are not lost."""
    import threading
    name = scratch()
    path = f"/manatee/{name}/state"
    stop = threading.Event()
    writes = []

    def hammer():
        c = KazooClient(hosts=zk_connect, timeout=10)
        c.start(timeout=10)
        try:
            while not stop.is_set():
                data, stat = c.get(path)
                st = json.loads(data)
                st["initWal"] = f"0/{stat.version + 1:X}"
                try:
                    c.set(path, ms.dumps(st).encode(), version=stat.version)
                    writes.append(stat.version + 1)
                except Exception:  # noqa: BLE001 - lost to the module: fine
                    pass
                # ~500 writes/s: hundreds of times a sitter's rate, yet not a loop that
                # a loaded CI machine can schedule so that every one of our reads is stale.
                time.sleep(0.002)
        finally:
            c.stop()
            c.close()

    t = threading.Thread(target=hammer)
    t.start()
    try:
        time.sleep(0.3)
        r = cluster(zk_connect, name, state="frozen", freeze_reason=REASON, cas_retries=50)
    finally:
        stop.set()
        t.join()
    assert r["changed"] is True and not r.get("failed"), r
    final = json.loads(zk.get(path)[0])
    assert final["freeze"]["reason"] == REASON
    assert ms.lsnmod.to_int(final["initWal"]) >= 1, "the hammer's writes were kept"
    assert writes, "the hammer really wrote concurrently"


def test_zookeeper_unreachable(zk_connect):
    t0 = time.monotonic()
    for mod, args in [("manatee_cluster", {"state": "frozen", "freeze_reason": "x"}),
                      ("manatee_info", {}), ("manatee_peer", {"peer": "x"})]:
        r = run_module(mod, dict(args, shard="1.moray.x", zk_servers="127.0.0.1:1", zk_timeout=2))
        assert r["failed"] and r["changed"] is False
        assert "cannot connect to ZooKeeper at 127.0.0.1:1 within 2s" in r["msg"], r
    assert time.monotonic() - t0 < 40


def test_postgres_peer_down(cfg, zk_connect, zk, shard):
    """The sync's sitter is disabled (its postgres stops) while the shard is frozen, so the
    state keeps it as sync: verify reports it exactly as manatee-adm would."""
    from manta_lab import shard as lshard
    from manta_lab import zones
    assert cluster(zk_connect, shard, state="frozen", freeze_reason=REASON)["changed"]
    st, _ = raw_state(zk, shard)
    sync_zone = zones.get(cfg, st["sync"]["zoneId"])
    label = st["sync"]["zoneId"][:8]
    try:
        zones.svcadm(cfg, sync_zone, "disable", "manatee-sitter")
        m = wait_for("sync postgres down", lambda: (lambda m: m if m["peers"][1]["pg"] == "fail"
                                                    else None)(info(zk_connect, shard)))
        assert m["peers"][1]["role"] == "sync" and m["peers"][1]["error"]
        assert m["errors"][0].startswith(f'cannot query postgres on sync: peer "{label}": ')
        assert m["verify"][0].startswith("error: cannot query postgres on sync: ")
        assert m["healthy"] is False
        sync_row = [ln.split() for ln in m["show"].splitlines()
                    if ln.startswith(f"sync     {label} ")][0]
        assert sync_row == ["sync", label, "fail", "-", "-", "-", "-", "-"]
        r = run_module("manatee_info", zkargs(zk_connect, shard=shard, fail_on_issues=True))
        assert r["failed"] and "cannot query postgres on sync" in r["msg"]
        r = peer_mod(zk_connect, shard, st["sync"]["zoneId"], state="caught_up", lsn="0/0",
                     timeout=2, interval=0.5)
        assert r["failed"] and "did not catch up to 0/0" in r["msg"]
        assert "postgres is fail" in r["msg"]
    finally:
        zones.svcadm(cfg, zones.get(cfg, sync_zone["uuid"]), "enable", "manatee-sitter")
    lshard.wait_healthy(cfg, shard, timeout=120)
    assert info(zk_connect, shard)["healthy"]
    assert cluster(zk_connect, shard, state="unfrozen", freeze_reason=REASON)["changed"]


# ---- manatee_peer waits ----------------------------------------------------------------------

def test_new_peer_waits_healthy_async_caught_up_and_gone(cfg, zk_connect, zk, shard):
    from manta_lab import peer as lpeer
    from manta_lab import zones
    zone = lpeer.provision(cfg, shard, cfg.servers[0]["uuid"])
    try:
        r = peer_mod(zk_connect, shard, zone["uuid"], state="healthy_async", timeout=120,
                     interval=0.5, diff=True)
        assert r["met"] is True and r["changed"] is False, r
        assert r["peer"]["role"] == "async" and r["peer"]["index"] == 1
        assert r["peer"]["upstream_link"]["state"] == "streaming"
        assert r["active"]["id"] == r["peer"]["id"]
        assert r["diff"]["after"]["role"] == "async"

        r = peer_mod(zk_connect, shard, zone["uuid"], state="caught_up", lsn="primary",
                     timeout=60, interval=0.5)
        assert r["met"] and ms.lsnmod.at_least(r["peer"]["wal_lsn"], r["target_lsn"]), r

        # reshard's sentinel proof: a row written on the primary, read on the new peer
        st, _ = raw_state(zk, shard)
        sql(st["primary"], "CREATE TABLE IF NOT EXISTS manta_reshard_sentinel "
                           "(_id serial, _key text PRIMARY KEY, _value text, _etag text)")
        value = {"pid": 42, "when": "now", "rand": uuid.uuid4().hex}
        sql(st["primary"], "INSERT INTO manta_reshard_sentinel (_key, _value, _etag) "
                           "VALUES ('sentinel', %s, 'E1') ON CONFLICT (_key) DO UPDATE "
                           "SET _value = EXCLUDED._value, _etag = EXCLUDED._etag",
            (json.dumps(value),))
        r = peer_mod(zk_connect, shard, zone["uuid"], state="caught_up", timeout=60, interval=0.5,
                     sentinel={"key": "sentinel", "etag": "E1", "value": value})
        assert r["met"] and r["sentinel_rows"][0]["_value"] == value, r
        r = peer_mod(zk_connect, shard, zone["uuid"], state="caught_up", timeout=2, interval=0.5,
                     sentinel={"key": "sentinel", "etag": "E-other"})
        assert r["failed"] and "expected _etag 'E-other', found 'E1'" in r["msg"]

        r = peer_mod(zk_connect, shard, zone["uuid"], state="absent", timeout=1, interval=0.5)
        assert r["failed"] and "still listed as async" in r["msg"]
        # the sync is no async: a clear timeout
        r = peer_mod(zk_connect, shard, st["sync"]["id"], state="healthy_async", timeout=1,
                     interval=0.5)
        assert r["failed"] and "did not become a healthy async" in r["msg"]
        assert "role is sync, expected async" in r["msg"]

        zones.svcadm(cfg, zones.get(cfg, zone["uuid"]), "disable", "manatee-sitter")
        r = peer_mod(zk_connect, shard, zone["uuid"], state="absent", timeout=60, interval=0.5)
        assert r["met"] is True and r["peer"] is None and r["active"] is None, r
        r = peer_mod(zk_connect, shard, zone["uuid"])
        assert r["met"] is True and r["peer"] is None
    finally:
        lpeer.destroy(cfg, zone)


# ---- establish: a reshard-style split into a new shard ---------------------------------------

def test_establish_new_shard_from_split_off_peers(cfg, zk_connect, zk, shard):
    from manta_lab import peer as lpeer
    from manta_lab import shard as lshard
    from manta_lab import zones
    new = cfg.shard_name(72)
    destroy_shard(cfg, zk, new)
    made = []
    try:
        st, _ = raw_state(zk, shard)
        sql(st["primary"], "CREATE TABLE IF NOT EXISTS split_marker (k text PRIMARY KEY)")
        sql(st["primary"], "INSERT INTO split_marker VALUES ('before-split') ON CONFLICT DO NOTHING")
        for i in range(3):
            z = lpeer.provision(cfg, shard, cfg.servers[i % len(cfg.servers)]["uuid"])
            made.append(z)
            r = peer_mod(zk_connect, shard, z["uuid"], state="healthy_async", timeout=120,
                         interval=0.5)
            assert r["met"], r
        # chain is now P -> S -> A0 -> N1 -> N2 -> N3; stop the tail first
        n1, n2, n3 = made
        r = peer_mod(zk_connect, shard, n1["uuid"], state="caught_up", lsn="primary", timeout=60,
                     interval=0.5)
        assert r["met"], r
        recorded = {}
        for z in (n3, n2, n1):
            q = peer_mod(zk_connect, shard, z["uuid"])
            recorded[z["uuid"]] = q["peer"]["wal_lsn"]
            zones.svcadm(cfg, zones.get(cfg, z["uuid"]), "disable", "manatee-sitter")
            r = peer_mod(zk_connect, shard, z["uuid"], state="absent", timeout=60, interval=0.5)
            assert r["met"], r
        init_wal = recorded[n1["uuid"]]
        assert ms.lsnmod.at_least(init_wal, recorded[n3["uuid"]])
        for z in made:
            lpeer.reprovision(cfg, zones.get(cfg, z["uuid"]), {"SERVICE_NAME": new})
        peers = {z["uuid"]: lpeer.peer_object(zones.get(cfg, z["uuid"])) for z in made}
        spec = lambda z: {"zone_id": z["uuid"], "ip": "127.0.0.1",              # noqa: E731
                          "pg_port": zones.get(cfg, z["uuid"])["ports"]["pg"],
                          "backup_port": zones.get(cfg, z["uuid"])["ports"]["backup"]}
        args = dict(state="established", freeze_reason=REASON, primary=spec(n1), sync=spec(n2),
                    asyncs=[spec(n3)])
        state_path = f"/manatee/{new}/state"

        # init_wal=auto needs the primary's postgres, which is down (no state yet)
        r = cluster(zk_connect, new, **args)
        assert r["failed"] and "cannot read the WAL position of the new primary" in r["msg"]
        assert zk.exists(state_path) is None
        # bad input is refused before anything is written
        r = cluster(zk_connect, new, **dict(args, sync=spec(n1), init_wal=init_wal))
        assert r["failed"] and "is also primary" in r["msg"]
        r = cluster(zk_connect, new, **dict(args, init_wal="0/xyz"))
        assert r["failed"] and "neither an LSN" in r["msg"]
        r = cluster(zk_connect, new, **dict(args, init_wal=init_wal, primary={"ip": "127.0.0.1"}))
        assert r["failed"] and "zone_id (or zoneId) and ip are required" in r["msg"]
        assert zk.exists(state_path) is None

        r = cluster(zk_connect, new, check=True, diff=True, **dict(args, init_wal=init_wal))
        assert r["changed"] is True and r["diff"]["before"] == {}
        assert r["state"]["generation"] == 1 and r["state"]["initWal"] == init_wal
        assert zk.exists(state_path) is None, "check mode must not create the state"

        r = cluster(zk_connect, new, diff=True, **dict(args, init_wal=init_wal))
        assert r["changed"] is True and r["init_wal"] == init_wal, r
        written, _v = raw_state(zk, new)
        assert written["generation"] == 1 and written["deposed"] == []
        assert written["initWal"] == init_wal
        assert written["freeze"]["reason"] == REASON
        assert written["primary"] == peers[n1["uuid"]] and written["sync"] == peers[n2["uuid"]]
        assert written["async"] == [peers[n3["uuid"]]]
        assert ms.validate_state(written, "strict") == []
        hist = history(zk, new)
        assert hist[0][0].startswith("1-") and hist[0][1] == written

        # the sitters take their roles from it: the new shard comes up, frozen, healthy
        lshard.wait_healthy(cfg, new, timeout=180)
        r = peer_mod(zk_connect, new, n3["uuid"], state="healthy_async", timeout=60, interval=0.5)
        assert r["met"], r
        m = info(zk_connect, new)
        assert m["healthy"] and m["frozen"] and m["freeze_reason"] == REASON, m["verify"]
        assert [p["zoneId"] for p in m["peers"]] == [n1["uuid"], n2["uuid"], n3["uuid"]]
        assert sql(peers[n1["uuid"]], "SELECT k FROM split_marker") == [("before-split",)]

        # idempotent re-run; a different topology is refused and nothing changes
        v_before = raw_state(zk, new)[1]
        r = cluster(zk_connect, new, **dict(args, init_wal=init_wal))
        assert r["changed"] is False and not r.get("failed")
        r = cluster(zk_connect, new, **dict(args, init_wal=init_wal, sync=spec(n3),
                                            asyncs=[spec(n2)]))
        assert r["failed"] and "already has a state with a different topology" in r["msg"]
        assert raw_state(zk, new)[1] == v_before

        r = cluster(zk_connect, new, state="unfrozen", freeze_reason=REASON)
        assert r["changed"] and not info(zk_connect, new)["frozen"]
        lshard.wait_healthy(cfg, shard, timeout=120)
    finally:
        destroy_shard(cfg, zk, new)
        for z in made:
            try:
                lpeer.destroy(cfg, z)
            except Exception:  # noqa: BLE001 - already gone with the new shard
                pass
