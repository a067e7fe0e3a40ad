"""The copy engine's HTTP client and pipeline against the lab's real nginx storage
nodes: keep-alive past nginx's ``keepalive_requests`` (nginx closes the connection
after 1000 requests), pipelined HEADs, 404s on a kept connection, and a copy between
two nodes with a corrupted source, a missing one, one whose file is larger than its
metadata says (Content-Length mismatch), one already in place, and a stopped
destination nginx (the HEAD check fails: transient, nothing counts as copied)."""
import base64
import hashlib
import os
import shutil
import uuid

import pytest

from ansible_collections.manta.ops.plugins.module_utils import evacuate_copy as EC
from ansible_collections.manta.ops.plugins.module_utils import evacuate_http as H

pytestmark = pytest.mark.slow


def md5(b):
    return base64.b64encode(hashlib.md5(b).digest()).decode()


def flipped(b):
    """``b`` with its first byte changed (a constant first byte would equal it 1 time in 256)."""
    return bytes([b[0] ^ 0xFF]) + b[1:]


@pytest.fixture(scope="module")
def nodes(lab):
    st = lab.status
    return sorted(st["storage"], key=lambda s: s["storage_id"])


@pytest.fixture
def owner(nodes):
    o = "httptest-" + uuid.uuid4().hex[:8]
    yield o
    for n in nodes:
        shutil.rmtree(os.path.join(n["root"], o), ignore_errors=True)


def put(node, owner, oid, data):
    d = os.path.join(node["root"], owner)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, oid), "wb") as fh:
        fh.write(data)


def test_keep_alive_past_nginx_request_limit_and_pipelined_heads(nodes, owner):
    n1 = nodes[0]
    blobs = {f"o{i}": os.urandom(100 + i) for i in range(40)}
    for oid, b in blobs.items():
        put(n1, owner, oid, b)
    conn = H.Connection(n1["url"], timeout=10)
    buf = memoryview(bytearray(1 << 16))
    seen_close = 0
    for k in range(1100):                       # nginx: keepalive_requests 1000
        oid = f"o{k % 40}"
        r = conn.request("GET", f"/{owner}/{oid}")
        assert r.status == 200 and r.length == len(blobs[oid])
        n = conn.readinto(r, buf)
        assert bytes(buf[:n]) == blobs[oid] and conn.readinto(r, buf) == 0
        seen_close += r.will_close
    assert seen_close >= 1                      # nginx did close one, the client went on
    r = conn.request("GET", f"/{owner}/missing")
    assert r.status == 404
    conn.discard(r)
    r = conn.request("GET", f"/{owner}/o1")
    assert r.status == 200 and conn.readinto(r, buf) == len(blobs["o1"])
    conn.close()

    paths = [f"/{owner}/o{i % 40}" if i % 9 else f"/{owner}/nothing{i}" for i in range(1500)]
    out = H.Connection(n1["url"], timeout=10).head_many(paths)
    for p, r in zip(paths, out):
        assert not isinstance(r, BaseException), (p, r)
        if "nothing" in p:
            assert r.status == 404
        else:
            assert r.status == 200 and int(r.getheader("Content-Length")) == len(blobs[p.rsplit("/", 1)[1]])


def test_copy_between_real_storage_nodes(lab, nodes, owner):
    n1, n2, n3 = nodes[0], nodes[1], nodes[2]
    datas = {f"c{i}": os.urandom((1 << 20) + 4096 * i + i) for i in range(12)}
    for oid, b in datas.items():
        put(n1, owner, oid, b)
        put(n3, owner, oid, b)
    put(n1, owner, "c0", flipped(datas["c0"]))            # corrupt on n1, good on n3
    put(n1, owner, "c1", flipped(datas["c1"]))            # corrupt everywhere
    put(n3, owner, "c1", flipped(datas["c1"]))
    os.unlink(os.path.join(n1["root"], owner, "c2"))          # missing everywhere
    os.unlink(os.path.join(n3["root"], owner, "c2"))
    put(n1, owner, "c3", datas["c3"] + b"tail")               # larger than its metadata
    os.unlink(os.path.join(n3["root"], owner, "c3"))
    put(n2, owner, "c4", datas["c4"])                         # already in place
    tasks = [[i, owner, oid, len(b), md5(b), ["n1", "n3"]] for i, (oid, b) in enumerate(datas.items())]
    c = EC.Copier(n2["root"], {"n1": n1["url"], "n3": n3["url"]}, concurrency=4,
                  verify_url=n2["url"], retries=0)
    res = {t[0]: o for t, o in c.run(tasks)}
    assert res[0].status == "copied" and res[0].source == "n3"
    assert (res[1].status, res[1].reason) == ("skipped", "md5_mismatch")
    assert (res[2].status, res[2].reason) == ("skipped", "source_not_found")
    assert (res[3].status, res[3].reason) == ("skipped", "size_mismatch")
    assert (res[4].status, res[4].reason, res[4].fetched) == ("copied", "present", False)
    for i in range(5, 12):
        assert res[i].status == "copied" and res[i].fetched and res[i].source == "n1"
    for i, (oid, b) in enumerate(datas.items()):
        p = os.path.join(n2["root"], owner, oid)
        if i in (1, 2, 3):
            assert not os.path.exists(p)
        else:
            assert open(p, "rb").read() == b
    # none of this run's temp files is left (a killed run of another test may have left
    # its own, which the engine removes once they are an hour old)
    left = os.listdir(os.path.join(n2["root"], "manta_evacuate", "tmp"))
    assert not [f for f in left if f.split(".")[0] in datas], left
    st = c.stats()
    assert st["dir_syncs"] >= 1 and st["commit_batches"] >= 1

    # the destination's nginx stopped: fetched copies land on disk, but none counts
    # as copied (the HEAD check fails): transient, so the job retries them
    more = {f"d{i}": os.urandom(50000 + i) for i in range(6)}
    for oid, b in more.items():
        put(n1, owner, oid, b)
    tasks = [[i, owner, oid, len(b), md5(b), ["n1"]] for i, (oid, b) in enumerate(more.items())]
    lab.run("svcadm", n2["uuid"], "disable", "nginx")
    try:
        c = EC.Copier(n2["root"], {"n1": n1["url"]}, concurrency=2, verify_url=n2["url"],
                      retries=0, timeout=5)
        res = {t[0]: o for t, o in c.run(tasks)}
    finally:
        lab.run("svcadm", n2["uuid"], "enable", "nginx")
    assert {(o.status, o.reason) for o in res.values()} == {("transient", "destination_unavailable")}
    # with nginx back, the next run finds them in place: verified, not fetched again
    c = EC.Copier(n2["root"], {"n1": n1["url"]}, concurrency=2, verify_url=n2["url"])
    res = {t[0]: o for t, o in c.run(tasks)}
    assert {(o.status, o.reason, o.fetched) for o in res.values()} == {("copied", "present", False)}
