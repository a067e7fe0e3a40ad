"""The scan's server-side pre-filter, run by the lab's PostgreSQL 15 on crafted
``_value`` texts, against the exact check (classify): it may keep rows that do
not match, it must never drop one that does; and with many nodes it drops the
ordinary rows that name none of them.

The rows go into a TEMP table named ``manta`` (first on the session's search
path, so the scan's own window query reads it); nothing of the lab's is written.
"""
import json

import psycopg2
import pytest

from ansible_collections.manta.ops.plugins.module_utils import evacuate_scan as S

D = "example.com"
NODES = [f"{i}.stor.{D}" for i in range(1, 13)]     # 12 nodes: PostgreSQL hashes the = ANY


def val(sharks, **kw):
    """A manta object value with one copy per storage id in ``sharks`` (``sharks_`` replaces
    the array)."""
    v = {"dirname": "/o/stor/d", "key": "/o/stor/d/f", "headers": {}, "mtime": 1, "name": "f",
         "owner": "o", "roles": [], "type": "object", "contentLength": 10,
         "contentMD5": "bWQ1", "contentType": "text/plain", "etag": "oid", "objectId": "oid",
         "sharks": [{"datacenter": f"dc{i}", "manta_storage_id": s} for i, s in enumerate(sharks)],
         "vnode": 7}
    if "sharks_" in kw:
        v["sharks"] = kw.pop("sharks_")
    v.update(kw)
    return v


def compact(v):
    return json.dumps(v, separators=(",", ":"))


CASES = {
    # what moray writes: compact JSON
    "first": compact(val([f"1.stor.{D}", f"40.stor.{D}"])),
    "second": compact(val([f"40.stor.{D}", f"12.stor.{D}"])),
    "both": compact(val([f"3.stor.{D}", f"4.stor.{D}"])),
    "third of three": compact(val([f"40.stor.{D}", f"41.stor.{D}", f"5.stor.{D}"])),
    "sixth of six": compact(val([f"{40 + i}.stor.{D}" for i in range(5)] + [f"6.stor.{D}"])),
    "id in a header, copy third": compact(val([f"40.stor.{D}", f"41.stor.{D}", f"7.stor.{D}"],
                                              headers={"m-x": {"manta_storage_id": f"9.stor.{D}"}})),
    "key in a header, copy second": compact(val([f"40.stor.{D}", f"8.stor.{D}"],
                                                headers={"manta_storage_id": "x"})),
    # hand-written JSON: spaces, newlines, tabs
    "spaced": json.dumps(val([f"40.stor.{D}", f"2.stor.{D}"])),
    "indented": json.dumps(val([f"40.stor.{D}", f"10.stor.{D}"]), indent=2),
    "tabs": compact(val([f"11.stor.{D}"])).replace(':"11.', ':\t "11.'),
    # look-alikes that name no node (the exact check drops what the filter keeps)
    "longer id": compact(val([f"111.stor.{D}", f"40.stor.{D}"])),
    "prefix of an id": compact(val([f"1.stor.{D}.other", f"40.stor.{D}"])),
    "id only in a header": compact(val([f"40.stor.{D}", f"41.stor.{D}"],
                                       headers={"m-note": f"1.stor.{D}"})),
    "none": compact(val([f"40.stor.{D}", f"41.stor.{D}"])),
    "no sharks": compact(val([], contentLength=0)),
    "sharks not a list": compact(val([], sharks_={"manta_storage_id": f"1.stor.{D}"})),
}


@pytest.fixture(scope="module")
def conn(lab):
    st = lab.status
    shard = sorted(st["shards"])[0]
    dsn = [p for p in st["shards"][shard]["peers"] if p["role"] == "primary"][0]["dsn"]
    c = psycopg2.connect(dsn)
    with c.cursor() as cur:
        cur.execute("CREATE TEMP TABLE manta (_id bigint, _key text, _etag char(8), _value text, "
                    "type text)")
        for i, (name, raw) in enumerate(CASES.items(), 1):
            cur.execute("INSERT INTO manta VALUES (%s, %s, 'ABCDEF01', %s, 'object')",
                        (i, f"/o/stor/d/{name}", raw))
    c.commit()
    yield c
    c.close()


def kept(conn, nodes, max_like=S.DEFAULT_MAX_LIKE):
    q, extra = S.window_query("_id", nodes, max_like)
    with conn.cursor() as cur:
        cur.execute(q, [0, len(CASES)] + extra)
        rows = cur.fetchall()
    conn.rollback()
    return {key.rsplit("/", 1)[1]: (mid, key, etag, raw) for mid, key, etag, raw in rows}


def exact(nodes):
    return {name: sorted(r[1] for r in S.classify("/o/stor/d/" + name, 1, "E", raw, nodes))
            for name, raw in CASES.items()}


@pytest.mark.parametrize("nodes,max_like", [
    (NODES, S.DEFAULT_MAX_LIKE),          # many nodes: the storage-id extraction, hashed
    (NODES[:4], S.DEFAULT_MAX_LIKE),      # a few: the extraction, = ANY not hashed
    (NODES, len(NODES)),                  # the LIKE form for all of them
    ([f"1.stor.{D}"], S.DEFAULT_MAX_LIKE),
    ([f"6.stor.{D}"], S.DEFAULT_MAX_LIKE),
])
def test_prefilter_never_drops_a_match(conn, nodes, max_like):
    want = {k: v for k, v in exact(nodes).items() if v}
    assert want, "the cases must include matches for these nodes"
    got = kept(conn, nodes, max_like)
    missing = sorted(set(want) - set(got))
    assert not missing, f"the pre-filter dropped real matches: {missing}"
    # and the exact check over what it kept finds exactly the matches
    found = {}
    for name, (mid, key, etag, raw) in got.items():
        rows = S.classify(key, mid, etag, raw, nodes)
        if rows:
            found[name] = sorted(r[1] for r in rows)
    assert found == want


def test_extraction_drops_rows_that_name_no_node(conn):
    got = kept(conn, NODES)
    # the ordinary non-matching rows never leave the server
    for name in ("longer id", "prefix of an id", "id only in a header", "none", "no sharks"):
        assert name not in got, name
    # (a node's id after "manta_storage_id" outside a sharks array is kept: the exact
    # check drops it)
    assert "sharks not a list" in got
    # and the rows that name a node are all there, whatever the whitespace
    assert {"first", "second", "both", "third of three", "spaced", "indented", "tabs",
            "key in a header, copy second"} <= set(got)


def test_six_copies_fall_back_to_the_like_test(conn):
    # 6.stor is the sixth "manta_storage_id": past the extraction, found by the fallback
    assert "sixth of six" in kept(conn, NODES)
    # a row with as many occurrences that names none of the nodes is dropped too
    assert "sixth of six" not in kept(conn, [f"1.stor.{D}", f"2.stor.{D}", f"3.stor.{D}"])
