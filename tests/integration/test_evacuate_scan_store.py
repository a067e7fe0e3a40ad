"""The scan end to end on the lab's PostgreSQL: windows, pre-filter, exact check,
the matches COPYed into a job store by several writers with the watermark
moving only over stored batches; stopped half way and resumed, and resumed
from a watermark behind what was stored (a writer's rows committed, the
watermark not): every matching copy is stored exactly once.

Rows are added to shard 2's ``manta`` table under an owner of the test's own
(removed at the end); the job store is a schema of the test's own on shard 1.
"""
import json
import time
import uuid

import psycopg2
import pytest

from ansible_collections.manta.ops.plugins.module_utils import evacuate_scan as S
from ansible_collections.manta.ops.plugins.module_utils.evacuate_store import JobStore

ROWS = 3000
REGION = 20        # storage ids 1..20.stor.<test domain>; two copies per object


def sid(n):
    return f"{n}.stor.scan-test.example"


@pytest.fixture(scope="module")
def world(lab):
    st = lab.status
    shards = sorted(st["shards"])

    def primary(name):
        return [p for p in st["shards"][name]["peers"] if p["role"] == "primary"][0]["dsn"]
    dsn, job_dsn = primary(shards[1]), primary(shards[0])
    owner = str(uuid.uuid4())
    rows = []
    for i in range(ROWS):
        a, b = i % REGION + 1, (i * 7 + 3) % REGION + 1
        if a == b:
            b = b % REGION + 1
        key = f"/{owner}/stor/scan/d{i // 100}/f{i}"
        v = {"key": key, "owner": owner, "objectId": str(uuid.UUID(int=i + 1)), "type": "object",
             "contentLength": 0 if i % 97 == 0 else 10 + i, "contentMD5": "bWQ1",
             "sharks": [{"datacenter": "dc1", "manta_storage_id": sid(a)},
                        {"datacenter": "dc2", "manta_storage_id": sid(b)}]}
        rows.append((key, json.dumps(v, separators=(",", ":"))))
    c = psycopg2.connect(dsn)
    with c.cursor() as cur:
        cur.executemany("INSERT INTO manta (_key, _value, _etag, _vnode, dirname, name, owner, "
                        "objectid, type) VALUES (%s, %s, 'ABCDEF01', 0, %s, %s, %s, 'x', 'object')",
                        [(k, v, k.rsplit("/", 1)[0], k.rsplit("/", 1)[1], owner) for k, v in rows])
        cur.execute("SELECT min(_id) - 1 FROM manta WHERE _key LIKE %s", (f"/{owner}/%",))
        lo = cur.fetchone()[0]
    c.commit()
    schema = "evac_scan_test_" + uuid.uuid4().hex[:8]
    # scans start just before the test's rows (as a resumed scan would), so a lab with
    # many rows of its own does not slow the test down
    yield {"dsn": dsn, "job_dsn": job_dsn, "rows": rows, "owner": owner, "schema": schema, "lo": lo}
    with c.cursor() as cur:
        cur.execute("DELETE FROM manta WHERE _key LIKE %s", (f"/{owner}/%",))
        cur.execute("DELETE FROM manta_directory_counts WHERE _key LIKE %s", (f"/{owner}/%",))
    c.commit()
    c.close()
    j = psycopg2.connect(job_dsn)
    with j.cursor() as cur:
        cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    j.commit()
    j.close()


def expected(world, nodes):
    out = {}
    for key, raw in world["rows"]:
        for r in S.classify(key, 0, "ABCDEF01", raw, nodes):
            out[(key, r[1])] = (r[10], r[11])
    return out


def stored(world, job):
    c = psycopg2.connect(world["job_dsn"])
    with c.cursor() as cur:
        cur.execute(f'SELECT key, node, status, reason FROM "{world["schema"]}".objects '
                    "WHERE job = %s AND key LIKE %s", (job, f"/{world['owner']}/%"))
        rows = cur.fetchall()
    c.close()
    return rows


def run_scan(world, job, nodes, start, deadline=None):
    store = JobStore(psycopg2.connect(world["job_dsn"]), world["schema"])
    sink = S.StoreSink(JobStore(psycopg2.connect(world["job_dsn"]), world["schema"]), job, 1,
                       "s", writers=3, batch_rows=40, max_wait=0.05,
                       new_store=lambda: JobStore(psycopg2.connect(world["job_dsn"]),
                                                  world["schema"]))
    try:
        st = S.ShardScan("s", lambda: psycopg2.connect(world["dsn"]), nodes, sink.sink,
                         start=start, chunk=100, parallel=3, deadline=deadline).run()
    finally:
        sink.close()
    prog = {r["col"]: r for r in store.scan_progress(job, 1)}
    store.conn.close()
    return st, sink, prog


def new_job(world, nodes):
    store = JobStore(psycopg2.connect(world["job_dsn"]), world["schema"])
    store.ensure_schema()
    job = "scan-test-" + uuid.uuid4().hex[:6]
    store.create_job(job, [{"storage_id": n} for n in nodes], {}, {})
    c = psycopg2.connect(world["dsn"])
    cols = S.id_columns(c)
    for col in cols:
        store.start_scan(job, 1, "s", col, S.max_id(c, col))
    c.close()
    store.conn.close()
    return job, {"_id": world["lo"]}


@pytest.mark.parametrize("nodes", [[sid(1)], [sid(n) for n in range(1, 9)],
                                   [sid(n) for n in range(1, 19)]])
def test_every_match_stored_once_by_several_writers(world, nodes):
    job, start = new_job(world, nodes)
    want = expected(world, nodes)
    st, sink, prog = run_scan(world, job, nodes, start)
    got = stored(world, job)
    assert len(got) == len({(k, n) for k, n, _, _ in got}), "a copy was stored twice"
    assert {(k, n): (s, r) for k, n, s, r in got} == want
    assert st["complete"] and prog["_id"]["done"] and sink.batches > 3
    # 1.stor never picks up 11..19.stor (exact ids)
    if nodes == [sid(1)]:
        assert {n for _, n, _, _ in got} == {sid(1)}
    # zero-byte objects are found and skipped with their reason
    assert any(r == "zero_byte" for _, _, _, r in got)


def test_stopped_then_resumed_and_a_window_stored_twice(world):
    nodes = [sid(n) for n in range(1, 11)]
    job, start = new_job(world, nodes)
    want = expected(world, nodes)
    # stop at once: the deadline has passed when the first window is done
    st, sink, prog = run_scan(world, job, nodes, start, deadline=time.time() - 1)
    assert not st["complete"] and st["stopped"] == "max_duration"
    part = stored(world, job)
    assert 0 < len(part) < len(want)
    mark = prog["_id"]["last_id"]
    assert mark > 0
    # the watermark covers exactly the stored windows: every stored copy is at or below it
    c = psycopg2.connect(world["job_dsn"])
    with c.cursor() as cur:
        cur.execute(f'SELECT max(mid) FROM "{world["schema"]}".objects WHERE job = %s', (job,))
        assert cur.fetchone()[0] <= mark
        # as if a writer's rows had been committed and the watermark not: move it back
        back = max(world["lo"], mark - 150)
        cur.execute(f'UPDATE "{world["schema"]}".scan_progress SET last_id = %s '
                    "WHERE job = %s AND col = '_id'", (back, job))
    c.commit()
    c.close()
    st, sink, prog = run_scan(world, job, nodes, {"_id": back})
    assert st["complete"] and prog["_id"]["done"]
    assert sink.updated > 0, "the windows stored twice were not recognised"
    got = stored(world, job)
    assert len(got) == len({(k, n) for k, n, _, _ in got}), "a copy was stored twice"
    assert {(k, n): (s, r) for k, n, s, r in got} == want


def test_a_key_found_twice_in_one_batch_is_stored_once_newest_first(world):
    """A key deleted and created again while the scan runs is seen under two _ids; when
    both land in one batch the fresh COPY fails on the primary key and the upsert keeps
    the newer (higher _id) version."""
    nodes = [sid(1)]
    job, _ = new_job(world, nodes)
    key, raw = world["rows"][0]
    old = S.classify(key, 10, "ABCDEF01", raw, nodes)
    new = S.classify(key, 20, "ABCDEF02", raw.replace('"contentMD5":"bWQ1"',
                                                      '"contentMD5":"bmV3"'), nodes)
    assert len(old) == len(new) == 1
    store = JobStore(psycopg2.connect(world["job_dsn"]), world["schema"])
    try:
        ins, upd = store.store_rows(job, 1, "s", old + new, fresh=True)
        assert (ins, upd) == (1, 0)
        # and the same batch stored again (a resumed scan) updates, adds nothing
        ins, upd = store.store_rows(job, 1, "s", new + old, fresh=True)
        assert (ins, upd) == (0, 1)
        with store.conn.cursor() as cur:
            cur.execute(f'SELECT mid, etag, md5 FROM "{world["schema"]}".objects WHERE job = %s',
                        (job,))
            assert cur.fetchall() == [(20, "ABCDEF02", "bmV3")]
    finally:
        store.conn.close()
