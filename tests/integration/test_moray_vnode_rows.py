"""moray_vnode_rows and moray_vnode_rows_info against real PostgreSQL 15 (no mocks).

A throwaway primary with a synchronous standby (as manatee runs them) is
started under /var/tmp on ports 40000-40999, with the moray schema of
manta_lab.schema (tables, indexes, libmanta's directory-count trigger). It is
seeded once with ~30,000 realistic rows routed by a 1024-vnode ring to shard
1; a split then moves half of shard 1's vnodes (balanced by the
census) to shard 3. Every test works on fresh file-level copies of that
database: ``src_*`` plays shard 1's primary, ``own_*`` shard 3's (a full copy,
as a new shard is right after the split).
"""
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2
import pytest

from modrun import MODULE_PKG, run_module
from pgsql import query

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from moray_bench_common import ScratchPG, copy_database, free_port, seed  # noqa: E402

from ansible_collections.manta.ops.plugins.module_utils.fash.topology import Topology  # noqa: E402

S1, S2, S3 = "1.moray.test.manta", "2.moray.test.manta", "3.moray.test.manta"
P1, P2, P3 = (f"tcp://{s}:2020" for s in (S1, S2, S3))
ROWS = 30000


# ---- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The scratch cluster, the old and new rings, and the seeded template database."""
    pg = ScratchPG(standby=True).start()
    try:
        old = Topology.create([P1, P2], 1024)
        admin = pg.connect("postgres")
        cur = admin.cursor()
        cur.execute("CREATE DATABASE seed TEMPLATE moray OWNER moray")
        conn = pg.connect("seed")
        seed(conn, old, P1, ROWS, seed=42)
        cur2 = conn.cursor()
        cur2.execute("SELECT _vnode, count(*) FROM manta GROUP BY 1")
        weights = dict(cur2.fetchall())
        conn.close()
        from ansible_collections.manta.ops.plugins.module_utils.moray_split_plan import plan_split
        plan = plan_split(S1, old.vnodes_of(P1), weights, target="half")
        moved = plan.groups[1]
        new = old.copy()
        new.remap(moved, P3, strict_pnode=False)
        d = tmp_path_factory.mktemp("rings")
        (d / "old.json").write_text(old.to_json())
        (d / "new.json").write_text(new.to_json())
        yield {"pg": pg, "admin": admin, "old": str(d / "old.json"), "new": str(d / "new.json"),
               "moved": moved, "kept": plan.groups[0], "topo": new, "dir": d}
        admin.close()
    finally:
        pg.stop()


@pytest.fixture
def dbs(world):
    """Fresh copies for a test that deletes: (source db, owner db) names, dropped afterwards."""
    tag = uuid.uuid4().hex[:8]
    src, own = f"src_{tag}", f"own_{tag}"
    copy_database(world["admin"], "seed", src, checkpoint=False)
    copy_database(world["admin"], "seed", own, checkpoint=False)
    yield src, own
    cur = world["admin"].cursor()
    for name in (src, own):
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(scope="module")
def ro_dbs(world):
    """Copies shared by the tests that must not change anything (they check that too)."""
    copy_database(world["admin"], "seed", "src_ro", checkpoint=False)
    copy_database(world["admin"], "seed", "own_ro", checkpoint=False)
    return "src_ro", "own_ro"


def dsn(world, db):
    return world["pg"].dsn(db)


def q(world, db, statement, params=None):
    return query(dsn(world, db), statement, params)


def counts(world, db, table="manta"):
    return dict(q(world, db, f"SELECT _vnode, count(*) FROM {table} WHERE _vnode IS NOT NULL GROUP BY 1"))


def args(world, src, own, tmp_path, **kw):
    a = {"shard": S1, "dsn": dsn(world, src), "owner_shard": S3, "owner_dsn": dsn(world, own),
         "ring": world["new"], "vnodes": world["moved"], "progress_file": str(tmp_path / "progress.json"),
         "batch_size": 2000, "pause_ms": 0, "connections": 2, "max_rows_per_second": 0}
    a.update(kw)
    return a


def run_bg(module_args):
    """Start the module like Ansible does, in the background; returns (Popen, argfile)."""
    payload = dict(module_args, _ansible_check_mode=False, _ansible_diff=False,
                   _ansible_tmpdir=tempfile.gettempdir())
    fd, argfile = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump({"ANSIBLE_MODULE_ARGS": payload}, fh)
    proc = subprocess.Popen([sys.executable, "-m", f"{MODULE_PKG}.moray_vnode_rows", argfile],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, argfile


def finish_bg(proc, argfile, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    os.unlink(argfile)
    out = out.strip()
    return json.loads(out[out.index("{"):]) if out else {"failed": True, "msg": err}


def wait_progress(path, pred, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = json.loads(Path(path).read_text())
            if pred(data):
                return data
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"progress file {path} never satisfied the condition")


# ---- the census and plans (info module) ---------------------------------------------------------

def test_census_matches_sql_top_n_like_the_runbook(world, ro_dbs):
    src, _ = ro_dbs
    r = run_module("moray_vnode_rows_info", {"shard": S1, "dsn": dsn(world, src), "top": 10}, check=True)
    assert not r.get("failed"), r
    assert r["changed"] is False
    c = r["census"]
    by_table = {t["name"]: t for t in c["tables"]}
    assert by_table["manta"]["rows"] == ROWS
    assert by_table["manta_directory_counts"]["rows"] == q(world, src, "SELECT count(*) FROM manta_directory_counts")[0][0]
    assert by_table["manta"]["bytes"] == q(world, src, "SELECT sum(octet_length(_value)) FROM manta")[0][0]
    assert by_table["manta"]["bytes_method"] == "exact"          # under the 50,000-row sample size
    assert c["rows"] == sum(t["rows"] for t in c["tables"])
    # the runbook's query, over all tables
    runbook = q(world, src, "SELECT _vnode, sum(n) FROM (SELECT _vnode, count(*) n FROM manta GROUP BY 1 "
                            "UNION ALL SELECT _vnode, count(*) FROM manta_directory_counts GROUP BY 1) x "
                            "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10")
    assert [(t["vnode"], t["rows"]) for t in c["top"]] == [(v, int(n)) for v, n in runbook]
    assert not {t["name"] for t in r["table_info"]} - {"manta", "manta_directory_counts", "manta_uploads",
                                                       "manta_delete_log", "manta_fastdelete_queue"}


def test_sampled_bytes_are_close_to_exact_and_rows_stay_exact(world, ro_dbs, monkeypatch):
    """bytes=sampled on a table above the sample size (lowered here to 3,000 rows)."""
    from ansible_collections.manta.ops.plugins.module_utils import moray_census, moray_tables
    src, _ = ro_dbs
    monkeypatch.setattr(moray_census, "SAMPLE_ROWS", 3000)
    conn = psycopg2.connect(dsn(world, src))
    conn.autocommit = True
    try:
        t = moray_tables.discover(conn, ["manta"])["manta"]
        a = moray_census.take(conn, S1, [t], bytes_mode="sampled")
        b = moray_census.take(conn, S1, [t], bytes_mode="exact")
        c = moray_census.take(conn, S1, [t], bytes_mode="none")
    finally:
        conn.close()
    assert a.rows == b.rows == c.rows
    assert a.bytes_method["manta"].startswith("sampled 10.0% of pages")
    assert b.bytes_method["manta"] == "exact" and c.bytes_method["manta"] == "none"
    assert abs(a.total_bytes - b.total_bytes) / b.total_bytes < 0.05
    assert c.to_result()["bytes"] is None


def test_census_of_some_vnodes_rows_only_and_some_tables(world, ro_dbs):
    src, _ = ro_dbs
    some = world["moved"][:5]
    r = run_module("moray_vnode_rows_info", {"shard": S1, "dsn": dsn(world, src), "vnodes": some,
                                             "bytes": "none", "per_vnode": True, "tables": ["manta"]})
    assert not r.get("failed"), r
    expect = counts(world, src)
    assert {e["vnode"]: e["rows"] for e in r["census"]["per_vnode"]} == {v: expect[v] for v in some if v in expect}
    assert r["census"]["bytes"] is None
    assert [t["name"] for t in r["census"]["tables"]] == ["manta"]


def test_ownership_sees_ghost_rows_after_the_split(world, ro_dbs):
    src, _ = ro_dbs
    r = run_module("moray_vnode_rows_info", {"shard": S1, "dsn": dsn(world, src), "ring": world["new"],
                                             "bytes": "none"})
    assert not r.get("failed"), r
    own = r["ownership"]
    moved_rows = sum(n for v, n in counts(world, src).items() if v in set(world["moved"]))
    moved_rows += sum(n for v, n in counts(world, src, "manta_directory_counts").items()
                      if v in set(world["moved"]))
    assert own["rows_in_other_vnodes"] == moved_rows
    assert list(own["other_vnodes_by_owner"]) == [P3]
    assert own["owned_vnodes"] == len(world["kept"])


def test_split_plan_half_balances_rows(world, ro_dbs):
    src, _ = ro_dbs
    r = run_module("moray_vnode_rows_info", {"shard": S1, "dsn": dsn(world, src), "ring": world["old"],
                                             "plan": {"target": "half"}})
    assert not r.get("failed"), r
    plan = r["plan"]
    total = plan["total"]["rows"]
    assert total == r["census"]["rows"]
    biggest = r["census"]["top"][0]["rows"]
    assert abs(plan["stay"]["rows"] - plan["moves"][0]["rows"]) <= max(2, biggest if biggest > total / 2 else 2)
    assert plan["stay"]["rows"] + plan["rows_moved"] == total
    assert sorted(plan["vnodes"]) == plan["vnodes"]
    assert set(plan["vnodes"]) <= set(Topology.from_json(Path(world["old"]).read_text()).vnodes_of(P1))


def test_split_plan_bytes_fraction_and_n_shards(world, ro_dbs):
    src, _ = ro_dbs
    base = {"shard": S1, "dsn": dsn(world, src), "ring": world["old"], "top": 0}
    r = run_module("moray_vnode_rows_info", dict(base, plan={"target": "fraction", "fraction": 0.3,
                                                             "balance": "bytes"}))
    assert not r.get("failed"), r
    assert r["plan"]["moves"][0]["share"] == pytest.approx(0.3, abs=0.01)
    r = run_module("moray_vnode_rows_info", dict(base, plan={"target": "shards", "new_shards": 3}))
    assert not r.get("failed"), r
    shares = [r["plan"]["stay"]["share"]] + [m["share"] for m in r["plan"]["moves"]]
    assert len(shares) == 4 and max(shares) - min(shares) < 0.02


def test_explicit_plan_is_validated_against_the_ring(world, ro_dbs):
    src, _ = ro_dbs
    base = {"shard": S1, "dsn": dsn(world, src), "ring": world["old"]}
    r = run_module("moray_vnode_rows_info", dict(base, plan={"vnodes": [0, 2, 4]}))
    assert not r.get("failed"), r
    assert r["plan"]["target"] == "explicit" and r["plan"]["vnodes"] == [0, 2, 4]
    assert r["plan"]["rows_moved"] == sum(counts(world, src).get(v, 0) +
                                          counts(world, src, "manta_directory_counts").get(v, 0)
                                          for v in (0, 2, 4))
    r = run_module("moray_vnode_rows_info", dict(base, plan={"vnodes": [0, 3]}))
    assert r["failed"] and "vnode 3 is owned by tcp://2.moray.test.manta:2020, not by 1.moray.test.manta" in r["msg"]
    r = run_module("moray_vnode_rows_info", {"shard": S1, "dsn": dsn(world, src), "plan": {"target": "half"}})
    assert r["failed"] and "plan needs the ring option" in r["msg"]
    r = run_module("moray_vnode_rows_info", dict(base, vnodes=[1], plan={"target": "half"}))
    assert r["failed"] and "use plan.vnodes" in r["msg"]


# ---- deleting ---------------------------------------------------------------------------------

def test_check_mode_counts_per_table_and_vnode_and_changes_nothing(world, ro_dbs, tmp_path):
    src, own = ro_dbs
    before = counts(world, src)
    a = args(world, src, own, tmp_path)
    r = run_module("moray_vnode_rows", a, check=True, diff=True)
    assert not r.get("failed"), r
    assert r["changed"] is True
    moved = set(world["moved"])
    assert r["would_delete"]["manta"] == {str(v): n for v, n in sorted(before.items()) if v in moved}
    assert set(r["would_delete"]["manta_directory_counts"]) <= {str(v) for v in moved}
    assert r["rows_to_delete"] == sum(sum(m.values()) for m in r["would_delete"].values())
    assert r["owner_check"]["ok"] is True
    assert r["diff"]["before"]["manta"]["rows"] == sum(n for v, n in before.items() if v in moved)
    assert r["diff"]["after"]["manta"]["rows"] == 0
    assert counts(world, src) == before
    assert not Path(a["progress_file"]).exists() and not Path(a["progress_file"] + ".lock").exists()


def test_delete_verify_progress_and_idempotence(world, dbs, tmp_path):
    src, own = dbs
    before = counts(world, src)
    dc_before = dict(q(world, src, "SELECT _key, entries FROM manta_directory_counts"))
    dc_vnode = dict(q(world, src, "SELECT _key, _vnode FROM manta_directory_counts"))
    a = args(world, src, own, tmp_path)
    r = run_module("moray_vnode_rows", a, diff=True)
    assert not r.get("failed"), r
    moved = set(world["moved"])
    assert r["changed"] is True and r["verified"] is True
    assert r["deleted"]["manta"] == sum(n for v, n in before.items() if v in moved)
    assert r["rows_deleted"] == r["rows_to_delete"]
    assert r["rows_after"] == {t: {} for t in r["tables"]}
    assert r["tables"][0] == "manta_directory_counts"
    after = counts(world, src)
    assert after == {v: n for v, n in before.items() if v not in moved}          # others untouched
    # the directory counts of the kept directories are exactly as before (counts purged first,
    # so the trigger never touched a count row); those of moved vnodes are gone
    dc_after = dict(q(world, src, "SELECT _key, entries FROM manta_directory_counts"))
    assert dc_after == {k: e for k, e in dc_before.items() if dc_vnode[k] not in moved}
    # the owner still has everything
    assert counts(world, own) == before
    # progress file: done, rates, markers
    prog = json.loads(Path(a["progress_file"]).read_text())
    assert prog["status"] == "done" and prog["rows_done"] == r["rows_deleted"] and prog["percent"] == 100.0
    assert prog["average_rows_per_second"] > 0 and prog["eta_seconds"] == 0
    assert prog["tables"]["manta"]["status"] == "done"
    assert r["progress"]["rows_done"] == r["rows_deleted"]
    assert r["diff"]["before"]["manta"]["rows"] == r["deleted"]["manta"]
    # second identical run: nothing to do
    r2 = run_module("moray_vnode_rows", a, diff=True)
    assert not r2.get("failed"), r2
    assert r2["changed"] is False and r2["rows_deleted"] == 0 and r2["verified"] is True
    assert r2["resumed"] is False
    r3 = run_module("moray_vnode_rows", a, check=True)
    assert r3["changed"] is False


@pytest.mark.parametrize("strategy", ["vnode", "id_range"])
def test_both_strategies_give_the_same_result(world, dbs, tmp_path, strategy):
    src, own = dbs
    before = counts(world, src)
    r = run_module("moray_vnode_rows", args(world, src, own, tmp_path, strategy=strategy, batch_size=700))
    assert not r.get("failed"), r
    assert set(v for v in r["strategy"].values() if v) == {strategy}
    assert counts(world, src) == {v: n for v, n in before.items() if v not in set(world["moved"])}


def test_a_few_hot_vnodes_use_the_vnode_index(world, dbs, tmp_path):
    src, own = dbs
    moved = world["moved"]
    few = sorted(moved, key=lambda v: -counts(world, src).get(v, 0))[:3]
    r = run_module("moray_vnode_rows", args(world, src, own, tmp_path, vnodes=few))
    assert not r.get("failed"), r
    assert r["strategy"]["manta"] == "vnode"
    left = counts(world, src)
    assert not set(few) & set(left)


def test_owner_check_refuses_before_any_delete_then_force_and_ratio(world, dbs, tmp_path):
    src, own = dbs
    victim = max(world["moved"], key=lambda v: counts(world, src).get(v, 0))
    q(world, own, "DELETE FROM manta WHERE _key IN (SELECT _key FROM manta WHERE _vnode = %s LIMIT 5)", (victim,))
    before = counts(world, src)
    a = args(world, src, own, tmp_path)
    r = run_module("moray_vnode_rows", a)
    assert r["failed"]
    assert "refusing to delete: owner shard 3.moray.test.manta does not hold" in r["msg"]
    assert f"manta vnode {victim}: {before[victim]} rows on {S1}, {before[victim] - 5} on {S3}" in r["msg"]
    assert counts(world, src) == before
    assert not Path(a["progress_file"]).exists()
    # a tolerance the operator chose
    r = run_module("moray_vnode_rows", dict(a, owner_min_ratio=0.5), check=True)
    assert not r.get("failed"), r
    assert r["owner_check"]["ok"] is True
    # forced: deletes, warns, reports the deficit
    r = run_module("moray_vnode_rows", dict(a, force=True))
    assert not r.get("failed"), r
    assert r["owner_check"]["forced"] is True and r["owner_check"]["deficit_count"] >= 1
    assert ("manta", victim) in {(d["table"], d["vnode"]) for d in r["owner_check"]["deficits"]}
    assert "force=true: deleting anyway" in json.dumps(r.get("warnings", []))
    assert victim not in counts(world, src)


def test_owner_must_be_another_database(world, ro_dbs, tmp_path):
    src, own = ro_dbs
    r = run_module("moray_vnode_rows", args(world, src, own, tmp_path, owner_dsn=dsn(world, src)))
    assert r["failed"] and "is the same database as shard" in r["msg"]


@pytest.mark.parametrize("override, text", [
    ({"vnodes": ["seven"]}, "vnodes: vnode 'seven' is not an integer; vnodes are integers 0..N-1"),
    ({"vnodes": [1024]}, "vnodes: vnode 1024 is out of range; valid vnodes are 0..1023"),
    ({"vnodes": "KEPT"}, "its rows on 1.moray.test.manta are live data and are never deleted"),
    ({"vnodes": [1]}, "vnode 1 is owned by 1.moray.test.manta"),            # not yet shard 1's? see below
    ({"owner_shard": S2}, "not by 2.moray.test.manta"),
    ({"shard": "9.moray.test.manta"}, "unknown shard 9.moray.test.manta: ring"),
    ({"owner_shard": None}, "owner_shard is required"),
    ({"owner_shard": S1}, "owner_shard 1.moray.test.manta is the shard being deleted from"),
    ({"tables": ["buckets_config"]}, "table 'buckets_config' has no _vnode column"),
    ({"tables": ["nosuch"]}, "table 'nosuch' does not exist in database"),
    ({"batch_size": 0}, "throttle options: batch_size 0 is out of range; valid: 1..100000"),
    ({"connections": 100}, "connections 100 is out of range; valid: 1..64"),
    ({"owner_min_ratio": 1.5}, "owner_min_ratio 1.5 is out of range"),
    ({"lock_wait": -1}, "lock_wait -1 is negative; valid: seconds >= 0"),
])
def test_bad_input_fails_before_any_delete(world, ro_dbs, tmp_path, override, text):
    src, own = ro_dbs
    before = counts(world, src)
    a = args(world, src, own, tmp_path)
    if override.get("vnodes") == "KEPT":
        override = dict(override, vnodes=world["kept"][:3])
    if override.get("vnodes") == [1]:
        # vnode 1 is shard 2's in both rings: not the owner's (shard 3)
        text = "vnode 1 is owned by tcp://2.moray.test.manta:2020, not by 3.moray.test.manta"
    a.update(override)
    r = run_module("moray_vnode_rows", a)
    assert r.get("failed"), r
    assert text in r["msg"], r["msg"]
    assert counts(world, src) == before


def test_unreachable_primary_unknown_dsn_and_standby(world, ro_dbs, tmp_path):
    src, own = ro_dbs
    dead = free_port()
    t0 = time.monotonic()
    r = run_module("moray_vnode_rows", args(world, src, own, tmp_path,
                                            dsn=f"host=127.0.0.1 port={dead} dbname=moray user=moray",
                                            connect_timeout=2))
    assert r["failed"] and f"cannot connect to the primary of shard {S1} at moray@127.0.0.1:{dead}/moray" in r["msg"]
    assert "connect_timeout=2s" in r["msg"] and time.monotonic() - t0 < 20
    a = args(world, src, own, tmp_path)
    a.pop("dsn")
    r = run_module("moray_vnode_rows", a, env={"MANTA_ZK_SERVERS": ""})
    assert r["failed"] and f"unknown shard {S1}: no connection details for its primary" in r["msg"]
    # the environment is honoured
    r = run_module("moray_vnode_rows", a, check=True,
                   env={"MANTA_ZK_SERVERS": "", "MANTA_PG_DSN_1": dsn(world, src)})
    assert not r.get("failed"), r
    # the standby is refused
    sb = f"host=127.0.0.1 port={world['pg'].standby_port} dbname={src} user=moray"
    for _ in range(50):                       # the copy must have replayed on the standby
        try:
            psycopg2.connect(sb).close()
            break
        except psycopg2.OperationalError:
            time.sleep(0.2)
    r = run_module("moray_vnode_rows", args(world, src, own, tmp_path, dsn=sb))
    assert r["failed"] and "is a standby (in recovery), not the primary" in r["msg"]


def test_extended_ids_and_rows_without_ids(world, dbs, tmp_path):
    """MANTA-3721 tables: rows keyed by _idx (NULL _id), and rows with neither id."""
    src, own = dbs
    from manta_lab import schema
    for db in (src, own):
        for stmt in schema.bucket_ddl("ext_bucket", {"name": {"type": "string"}}):
            q(world, db, stmt)
        q(world, db, "ALTER TABLE ext_bucket ADD COLUMN _idx BIGINT")
        q(world, db, "CREATE INDEX ext_bucket__idx_idx ON ext_bucket USING BTREE (_idx) WHERE _idx IS NOT NULL")
        q(world, db, "INSERT INTO ext_bucket (_key, _value, _etag, _vnode, name) "
                     "SELECT 'k' || g, '{}', 'ABCDEF01', (%s::bigint[])[1 + g %% 4], 'n' FROM generate_series(1, 3000) g",
          (world["moved"][:4],))
        q(world, db, "UPDATE ext_bucket SET _idx = _id + 10000000000, _id = NULL WHERE _id % 3 = 0")
        q(world, db, "UPDATE ext_bucket SET _id = NULL WHERE _id % 7 = 0")
    r = run_module("moray_vnode_rows", args(world, src, own, tmp_path, tables=["ext_bucket"], batch_size=300))
    assert not r.get("failed"), r
    info = {t["name"]: t for t in r["table_info"]}
    assert info["ext_bucket"]["extended_ids"] is True
    assert r["deleted"] == {"ext_bucket": 3000}
    assert q(world, src, "SELECT count(*) FROM ext_bucket")[0][0] == 0


def test_interrupted_run_resumes_and_skips_finished_vnodes(world, dbs, tmp_path):
    src, own = dbs
    before = counts(world, src)
    a = args(world, src, own, tmp_path, max_rows_per_second=3000, batch_size=300, strategy="vnode")
    proc, argfile = run_bg(a)
    wait_progress(a["progress_file"], lambda d: d.get("rows_done", 0) > 3000 and
                  any(d.get("done", {}).get("manta_directory_counts", "")))
    proc.send_signal(signal.SIGKILL)      # our own child, by pid
    proc.wait()
    os.unlink(argfile)
    mid = json.loads(Path(a["progress_file"]).read_text())
    assert mid["status"] == "running"
    left = sum(counts(world, src).values())
    assert left < sum(before.values())
    r = run_module("moray_vnode_rows", dict(a, max_rows_per_second=0))
    assert not r.get("failed"), r
    assert r["resumed"] is True and r["skipped_done"] > 0 and r["verified"] is True
    moved_manta = sum(n for v, n in before.items() if v in set(world["moved"]))
    assert r["rows_deleted"] == r["rows_to_delete"]
    assert r["deleted"]["manta"] < moved_manta          # the first attempt did part of it
    assert counts(world, src) == {v: n for v, n in before.items() if v not in set(world["moved"])}
    done = json.loads(Path(a["progress_file"]).read_text())
    assert done["status"] == "done" and done.get("attempts") == 2


def test_rows_reappearing_in_a_finished_vnode_fail_loudly(world, dbs, tmp_path):
    src, own = dbs
    a = args(world, src, own, tmp_path, max_rows_per_second=2000, batch_size=200, strategy="vnode")
    proc, argfile = run_bg(a)
    mid = wait_progress(a["progress_file"], lambda d: d.get("done", {}).get("manta_directory_counts"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    os.unlink(argfile)
    mid = json.loads(Path(a["progress_file"]).read_text())
    from ansible_collections.manta.ops.plugins.module_utils.fash.vnodes import parse_vnodes
    v = parse_vnodes(mid["done"]["manta_directory_counts"])[0]
    q(world, src, "INSERT INTO manta_directory_counts (_key, _value, _etag, _vnode, entries) "
                  "VALUES ('/stray/writer', '{}', '_trigger', %s, 1)", (v,))
    q(world, own, "INSERT INTO manta_directory_counts (_key, _value, _etag, _vnode, entries) "
                  "VALUES ('/stray/writer', '{}', '_trigger', %s, 1)", (v,))
    before = counts(world, src)
    r = run_module("moray_vnode_rows", a)
    assert r["failed"]
    assert f"1 rows reappeared in table manta_directory_counts vnode {v}" in r["msg"]
    assert "Nothing was deleted" in r["msg"]
    assert counts(world, src) == before


def test_live_throttle_change_and_an_invalid_throttle_file(world, dbs, tmp_path):
    src, own = dbs
    tf = tmp_path / "throttle.json"
    a = args(world, src, own, tmp_path, max_rows_per_second=300, batch_size=100, throttle_file=str(tf))
    t0 = time.monotonic()
    proc, argfile = run_bg(a)
    wait_progress(a["progress_file"], lambda d: d.get("rows_done", 0) > 200)
    tf.write_text('{"max_rows_per_second": "fast"}')          # ignored, reported
    wait_progress(a["progress_file"], lambda d: d.get("throttle_error"))
    tf.write_text(json.dumps({"max_rows_per_second": 0, "batch_size": 5000, "connections": 3}))
    r = finish_bg(proc, argfile)
    assert not r.get("failed"), r
    # at 300 rows/s the ~15,000 rows would take ~50 s
    assert time.monotonic() - t0 < 40
    assert r["throttle"] == {"batch_size": 5000, "pause_ms": 0, "connections": 3, "max_rows_per_second": 0}
    assert r["throttle_error"] is None


def test_ceiling_is_respected(world, dbs, tmp_path):
    src, own = dbs
    few = world["moved"][:40]
    total = sum(counts(world, src).get(v, 0) for v in few)
    r = run_module("moray_vnode_rows", args(world, src, own, tmp_path, vnodes=few, max_rows_per_second=1500,
                                            batch_size=100, connections=3))
    assert not r.get("failed"), r
    assert r["rows_deleted"] >= total
    assert r["progress"]["average_rows_per_second"] <= 1500 * 1.1 + 100


def test_verification_failure_names_table_and_vnode(world, dbs, tmp_path):
    """A trigger that recreates a count row after the counts table was purged."""
    src, own = dbs
    q(world, src, """CREATE FUNCTION resurrect() RETURNS trigger AS $$
        BEGIN
          INSERT INTO manta_directory_counts (_key, _value, _etag, _vnode, entries)
          VALUES ('/ghost/' || OLD._vnode, '{}', '_trigger', OLD._vnode, 1) ON CONFLICT DO NOTHING;
          RETURN NULL;
        END $$ LANGUAGE plpgsql""")
    q(world, src, "CREATE TRIGGER resurrect AFTER DELETE ON manta FOR EACH ROW EXECUTE PROCEDURE resurrect()")
    r = run_module("moray_vnode_rows", args(world, src, own, tmp_path, vnodes=world["moved"][:3]))
    assert r["failed"]
    assert "verification failed on shard 1.moray.test.manta" in r["msg"]
    assert "table manta_directory_counts vnode" in r["msg"]
    assert r["table"] == "manta_directory_counts" and r["vnode"] in world["moved"][:3]
    assert {x["table"] for x in r["leftovers"]} == {"manta_directory_counts"}
    prog = json.loads(Path(tmp_path / "progress.json").read_text())
    assert prog["status"] == "failed" and "verification failed" in prog["error"]


def test_two_runs_cannot_share_a_progress_file(world, ro_dbs, tmp_path):
    """A lock held by something that did not say who it is: refused at once, shard untouched."""
    src, own = ro_dbs
    before = counts(world, src)
    a = args(world, src, own, tmp_path)
    lock = open(a["progress_file"] + ".lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        t0 = time.monotonic()
        r = run_module("moray_vnode_rows", a)
        assert r["failed"] and "already running" in r["msg"], r
        assert "holder unknown" in r["msg"] and "lock_wait" in r["msg"], r["msg"]
        assert time.monotonic() - t0 < 10, "lock_wait defaults to 0: no waiting"
    finally:
        lock.close()
    assert counts(world, src) == before


def test_second_run_names_the_holder_and_waits_for_it_with_lock_wait(world, dbs, tmp_path):
    """A real first run holds the lock; a second one fails at once naming it (pid, shard),
    then with lock_wait waits for it, counts afresh and has nothing left to do."""
    src, own = dbs
    before = counts(world, src)
    a = args(world, src, own, tmp_path, max_rows_per_second=3000, batch_size=300)
    proc, argfile = run_bg(a)
    try:
        wait_progress(a["progress_file"], lambda d: d.get("rows_done", 0) > 0)
        holder = json.loads(Path(a["progress_file"] + ".lock").read_text())
        assert holder["pid"] == proc.pid and holder["shard"] == S1

        r = run_module("moray_vnode_rows", dict(a, max_rows_per_second=0))
        assert r["failed"] and "already running" in r["msg"], r
        assert f"pid {proc.pid} on " in r["msg"] and f"shard {S1}" in r["msg"], r["msg"]
        assert proc.poll() is None, "the holder keeps running"

        t0 = time.monotonic()
        second = run_module("moray_vnode_rows", dict(a, max_rows_per_second=0, lock_wait=300))
        waited = time.monotonic() - t0
        first = finish_bg(proc, argfile)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not first.get("failed"), first
    assert first["changed"] is True and first["rows_deleted"] == first["rows_to_delete"] > 0
    assert not second.get("failed"), second
    assert second["seconds"]["lock_wait"] > 0.5 and waited >= second["seconds"]["lock_wait"]
    assert second["changed"] is False and second["rows_to_delete"] == 0, \
        "after the wait the census sees what the first run left: nothing"
    assert counts(world, src) == {v: n for v, n in before.items() if v not in set(world["moved"])}
    assert Path(a["progress_file"] + ".lock").read_text() == "", "released: names no holder"


def test_lock_wait_times_out_naming_the_holder(world, ro_dbs, tmp_path):
    src, own = ro_dbs
    before = counts(world, src)
    a = args(world, src, own, tmp_path, lock_wait=2)
    lock = open(a["progress_file"] + ".lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write(json.dumps({"pid": 4242, "host": "ops7", "shard": S1, "vnode_count": 9,
                           "since": "2026-01-02T03:04:05.00Z"}))
    lock.flush()
    try:
        t0 = time.monotonic()
        r = run_module("moray_vnode_rows", a)
        took = time.monotonic() - t0
    finally:
        lock.close()
    assert r["failed"], r
    assert 2 <= took < 15, took
    msg = r["msg"]
    assert "held by pid 4242 on ops7, shard 1.moray.test.manta, 9 vnodes, since 2026-01-02T03:04:05.00Z" in msg, msg
    assert "waited 2." in msg and "(lock_wait 2s)" in msg, msg
    assert a["progress_file"] + ".lock" in msg
    assert counts(world, src) == before


def test_password_never_reaches_output(world, ro_dbs, tmp_path):
    src, own = ro_dbs
    dead = free_port()
    r = run_module("moray_vnode_rows", args(world, src, own, tmp_path, connect_timeout=2,
                                            dsn=f"host=127.0.0.1 port={dead} dbname=moray user=moray password=hunter2",
                                            pg_password="sesame"))
    assert r["failed"]
    assert "hunter2" not in json.dumps(r) and "sesame" not in json.dumps(r)
