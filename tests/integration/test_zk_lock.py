"""zk_lock against the lab's real ZooKeeper: exclusive and shared (counted) locks,
re-entrance, refusal with the holder's details, waiting, release by owner only,
force with a recorded break, check mode, diff, idempotence, races, and faults."""
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from modrun import run_module
from zkclient import kazoo_client


@pytest.fixture(scope="module")
def zk_connect(lab):
    return lab.status["zookeeper"]["connect"]


@pytest.fixture(scope="module")
def zk(zk_connect):
    with kazoo_client(zk_connect) as client:
        yield client


@pytest.fixture
def root(zk):
    """A private lock root per test; removed afterwards."""
    r = f"/manta_ops_test/{uuid.uuid4().hex[:12]}"
    yield r
    zk.delete("/manta_ops_test", recursive=True)


def lock(zk_connect, **kw):
    args = {"zk_servers": zk_connect, "zk_timeout": 10}
    args.update(kw)
    return args


def node(zk, path):
    if not zk.exists(path):
        return None, None
    data, stat = zk.get(path)
    return data, stat.version


def breaks_for(zk, path):
    out = []
    if not zk.exists("/manta_ops/lock_breaks"):
        return out
    for c in sorted(zk.get_children("/manta_ops/lock_breaks")):
        rec = json.loads(zk.get(f"/manta_ops/lock_breaks/{c}")[0])
        if rec["path"] == path:
            out.append(rec)
    return out


# ---- exclusive ------------------------------------------------------------------

def test_exclusive_acquire_check_mode_then_real_then_idempotent(zk_connect, zk, root):
    path = f"{root}/critical_section"
    args = lock(zk_connect, name="critical_section", lock_root=root, owner="plan:A",
                purpose="reshard critical section", plan="A", host="ops1")
    r = run_module("zk_lock", args, check=True, diff=True)
    assert r["changed"] is True and not r.get("failed"), r
    assert r["held"] is True
    assert r["diff"]["before"] == {}
    assert list(r["diff"]["after"]["holders"]) == ["plan:A"]
    assert zk.exists(path) is None, "check mode must not create the lock"

    r = run_module("zk_lock", args, diff=True)
    assert r["changed"] is True and r["held"] is True, r
    data, version = node(zk, path)
    doc = json.loads(data)
    assert doc["owner"] == "plan:A" and doc["mode"] == "exclusive"
    assert doc["purpose"] == "reshard critical section" and doc["plan"] == "A"
    assert doc["host"] == "ops1" and doc["time"].endswith("Z")
    assert r["lock"]["version"] == version == 0

    # re-entrant and idempotent: same owner again changes nothing
    r2 = run_module("zk_lock", args, diff=True)
    assert r2["changed"] is False and r2["held"] is True
    assert node(zk, path) == (data, version)
    assert r2["diff"]["before"] == r2["diff"]["after"]


def test_other_owner_refused_with_holder_details_and_nothing_changes(zk_connect, zk, root):
    args = lock(zk_connect, name="cs", lock_root=root, owner="plan:A", purpose="critical",
                plan="A", host="ops1")
    assert run_module("zk_lock", args)["changed"]
    before = node(zk, f"{root}/cs")
    for check in (False, True):
        r = run_module("zk_lock", lock(zk_connect, name="cs", lock_root=root, owner="plan:B"),
                       check=check)
        assert r["failed"] is True and r["changed"] is False
        assert "is held (exclusive lock) by plan:A" in r["msg"]
        assert "purpose: critical" in r["msg"] and "host: ops1" in r["msg"] and "plan: A" in r["msg"]
        assert "refusing to take it exclusive for plan:B" in r["msg"]
        assert r["lock"]["holders"][0]["owner"] == "plan:A"
    assert node(zk, f"{root}/cs") == before


def test_release_only_by_owner(zk_connect, zk, root):
    path = f"{root}/cs"
    assert run_module("zk_lock", lock(zk_connect, path=path, owner="plan:A"))["changed"]
    before = node(zk, path)
    r = run_module("zk_lock", lock(zk_connect, path=path, owner="plan:B", state="absent"))
    assert r["failed"] and "not by plan:B; refusing to release it" in r["msg"]
    assert node(zk, path) == before

    r = run_module("zk_lock", lock(zk_connect, path=path, owner="plan:A", state="absent"),
                   check=True, diff=True)
    assert r["changed"] is True and r["lock"]["exists"] is False and r["diff"]["after"] == {}
    assert node(zk, path) == before, "check mode must not release"

    r = run_module("zk_lock", lock(zk_connect, path=path, owner="plan:A", state="absent"))
    assert r["changed"] is True and r["held"] is False
    assert zk.exists(path) is None
    r = run_module("zk_lock", lock(zk_connect, path=path, owner="plan:A", state="absent"))
    assert r["changed"] is False and not r.get("failed")


def test_query_reports_without_changing(zk_connect, zk, root):
    path = f"{root}/q"
    r = run_module("zk_lock", lock(zk_connect, path=path, state="query"))
    assert r["changed"] is False and r["lock"]["exists"] is False
    run_module("zk_lock", lock(zk_connect, path=path, owner="plan:A", purpose="p"))
    r = run_module("zk_lock", lock(zk_connect, path=path, state="query", owner="plan:B"))
    assert r["lock"]["holders"][0]["owner"] == "plan:A" and r["held"] is False


def test_wait_until_the_holder_releases(zk_connect, zk, root):
    path = f"{root}/w"
    assert run_module("zk_lock", lock(zk_connect, path=path, owner="plan:A"))["changed"]

    def release_later():
        time.sleep(2.0)
        run_module("zk_lock", lock(zk_connect, path=path, owner="plan:A", state="absent"))

    t = threading.Thread(target=release_later)
    t.start()
    t0 = time.monotonic()
    r = run_module("zk_lock", lock(zk_connect, path=path, owner="plan:B", wait=True, timeout=30))
    t.join()
    assert r["changed"] is True and r["held"] is True, r
    assert r["waited"] >= 1.0
    assert time.monotonic() - t0 < 20, "the watch should wake the waiter promptly"
    assert json.loads(node(zk, path)[0])["owner"] == "plan:B"


def test_wait_times_out_with_the_holder_named(zk_connect, zk, root):
    path = f"{root}/w2"
    run_module("zk_lock", lock(zk_connect, path=path, owner="plan:A", purpose="long job"))
    before = node(zk, path)
    t0 = time.monotonic()
    r = run_module("zk_lock", lock(zk_connect, path=path, owner="plan:B", wait=True, timeout=2))
    assert r["failed"] and "held (exclusive lock) by plan:A (purpose: long job" in r["msg"]
    assert "timeout 2s" in r["msg"]
    assert 2 <= time.monotonic() - t0 < 15
    assert node(zk, path) == before


def test_force_breaks_a_stale_lock_and_records_it(zk_connect, zk, root):
    path = f"{root}/stale"
    run_module("zk_lock", lock(zk_connect, path=path, owner="plan:dead", purpose="crashed"))
    r = run_module("zk_lock", lock(zk_connect, path=path, owner="plan:new", force=True,
                                   force_reason="plan dead abandoned (CM-1)"), check=True)
    assert r["changed"] and r["broken"]["broken_by"] == "plan:new"
    assert json.loads(node(zk, path)[0])["owner"] == "plan:dead"
    assert breaks_for(zk, path) == []

    r = run_module("zk_lock", lock(zk_connect, path=path, owner="plan:new", force=True,
                                   force_reason="plan dead abandoned (CM-1)", host="ops2"))
    assert r["changed"] is True and r["held"] is True, r
    doc = json.loads(node(zk, path)[0])
    assert doc["owner"] == "plan:new"
    assert doc["broke"]["broken_by"] == "plan:new"
    assert doc["broke"]["reason"] == "plan dead abandoned (CM-1)"
    assert doc["broke"]["previous"] == ["plan:dead"]
    recs = breaks_for(zk, path)
    assert len(recs) == 1
    assert recs[0]["reason"] == "plan dead abandoned (CM-1)" and recs[0]["host"] == "ops2"
    assert recs[0]["previous"]["holders"][0]["owner"] == "plan:dead"
    assert recs[0]["previous"]["holders"][0]["purpose"] == "crashed"

    # force release by someone else: lock gone, break recorded
    r = run_module("zk_lock", lock(zk_connect, path=path, owner="operator:jane", state="absent",
                                   force=True, force_reason="cleanup"))
    assert r["changed"] and zk.exists(path) is None
    assert [x["broken_by"] for x in breaks_for(zk, path)] == ["plan:new", "operator:jane"]


def test_force_needs_a_reason(zk_connect, root):
    r = run_module("zk_lock", lock(zk_connect, path=f"{root}/x", owner="a", force=True))
    assert r["failed"] and "force_reason" in r["msg"]


def test_exactly_one_of_many_concurrent_acquirers_wins(zk_connect, zk, root):
    path = f"{root}/race"
    owners = [f"plan:{i}" for i in range(6)]
    with ThreadPoolExecutor(len(owners)) as ex:
        results = list(ex.map(lambda o: run_module("zk_lock", lock(zk_connect, path=path, owner=o)),
                              owners))
    winners = [r for r in results if not r.get("failed")]
    losers = [r for r in results if r.get("failed")]
    assert len(winners) == 1, results
    assert all("is held (exclusive lock) by" in r["msg"] for r in losers)
    assert json.loads(node(zk, path)[0])["owner"] == winners[0]["lock"]["holders"][0]["owner"]


# ---- shared (counted), the /pg_dump_lock interlock ---------------------------------

def test_shared_lock_exists_while_any_holder(zk_connect, zk, root):
    path = f"{root}/pg_dump_lock"
    a = lock(zk_connect, path=path, mode="shared", owner="plan:A", purpose="reshard A")
    b = lock(zk_connect, path=path, mode="shared", owner="plan:B", purpose="reshard B")
    assert run_module("zk_lock", a)["changed"]
    assert zk.exists(path)
    r = run_module("zk_lock", b, diff=True)
    assert r["changed"] and sorted(r["diff"]["after"]["holders"]) == ["plan:A", "plan:B"]
    assert run_module("zk_lock", b)["changed"] is False  # re-entrant
    doc = json.loads(node(zk, path)[0])
    assert doc["mode"] == "shared" and sorted(doc["holders"]) == ["plan:A", "plan:B"]

    # an exclusive request conflicts with the shared holders
    r = run_module("zk_lock", lock(zk_connect, path=path, owner="plan:C"))
    assert r["failed"] and "shared lock" in r["msg"] and "plan:A" in r["msg"]

    r = run_module("zk_lock", dict(a, state="absent"))
    assert r["changed"] and zk.exists(path), "B still holds it"
    assert list(json.loads(node(zk, path)[0])["holders"]) == ["plan:B"]
    # releasing again, or releasing as a non-holder, changes nothing
    assert run_module("zk_lock", dict(a, state="absent"))["changed"] is False

    r = run_module("zk_lock", dict(b, state="absent"), check=True)
    assert r["changed"] and r["lock"]["exists"] is False
    assert zk.exists(path), "check mode must not delete"
    r = run_module("zk_lock", dict(b, state="absent"))
    assert r["changed"] and zk.exists(path) is None, "the last release removes the node"


def test_shared_lock_keeps_a_hand_made_pg_dump_lock(zk_connect, zk, root):
    path = f"{root}/pg_dump_lock"
    zk.create(path, b"operator jane", makepath=True)  # zkCli.sh create /pg_dump_lock ...
    a = lock(zk_connect, path=path, mode="shared", owner="plan:A")
    r = run_module("zk_lock", a)
    assert r["changed"]
    owners = [h["owner"] for h in r["lock"]["holders"]]
    assert owners == ["(external)", "plan:A"]
    r = run_module("zk_lock", dict(a, state="absent"))
    assert r["changed"]
    assert node(zk, path)[0] == b"operator jane", "the operator's node and data are restored"
    # an exclusive request is refused while the external holder is there
    r = run_module("zk_lock", lock(zk_connect, path=path, owner="plan:B"))
    assert r["failed"] and "node created outside manta.ops" in r["msg"]
    assert "operator jane" in r["msg"]


def test_concurrent_shared_holders_are_all_counted(zk_connect, zk, root):
    path = f"{root}/pg_dump_lock"
    owners = [f"plan:{i}" for i in range(6)]
    with ThreadPoolExecutor(len(owners)) as ex:
        res = list(ex.map(lambda o: run_module("zk_lock", lock(zk_connect, path=path, mode="shared",
                                                               owner=o)), owners))
    assert all(r["changed"] and not r.get("failed") for r in res), res
    assert sorted(json.loads(node(zk, path)[0])["holders"]) == owners
    with ThreadPoolExecutor(len(owners)) as ex:
        res = list(ex.map(lambda o: run_module("zk_lock", lock(zk_connect, path=path, mode="shared",
                                                               owner=o, state="absent")), owners))
    assert all(r["changed"] and not r.get("failed") for r in res), res
    assert zk.exists(path) is None


# ---- faults ---------------------------------------------------------------------------

def test_zookeeper_unreachable(root):
    t0 = time.monotonic()
    r = run_module("zk_lock", {"zk_servers": "127.0.0.1:1", "zk_timeout": 2, "path": f"{root}/x",
                               "owner": "a"})
    assert r["failed"] is True and r["changed"] is False
    assert "cannot connect to ZooKeeper at 127.0.0.1:1 within 2s" in r["msg"]
    assert time.monotonic() - t0 < 15


def test_servers_from_environment_and_missing(zk_connect, zk, root):
    path = f"{root}/env"
    r = run_module("zk_lock", {"path": path, "owner": "a"}, env={"MANTA_ZK_SERVERS": zk_connect})
    assert r["changed"] is True and zk.exists(path)
    r = run_module("zk_lock", {"path": path, "owner": "a"}, env={"MANTA_ZK_SERVERS": ""})
    assert r["failed"] and "MANTA_ZK_SERVERS" in r["msg"]


@pytest.mark.parametrize("args,needle", [
    ({"name": "a/b", "owner": "x"}, "single znode name"),
    ({"path": "nope", "owner": "x"}, "not an absolute ZooKeeper path"),
    ({"name": "a", "path": "/a", "owner": "x"}, "mutually exclusive"),
    ({"name": "a"}, "owner"),
    ({"name": "a", "owner": "(external)"}, "may not start with"),
    ({"name": "a", "owner": "x", "timeout": -1}, "timeout must be >= 0"),
    ({"name": "a", "owner": "x", "zk_servers": "a:b"}, "is not host or host:port"),
])
def test_bad_input_fails_before_any_change(zk_connect, zk, args, needle):
    full = {"zk_servers": zk_connect}
    full.update(args)
    r = run_module("zk_lock", full)
    assert r["failed"] and needle in r["msg"], r
    assert zk.exists("/manta_ops/locks/a") is None
