"""The destination-side copy engine against real HTTP servers on loopback: fetch,
MD5 and length checks, source fallback, idempotence, HEAD verification, throttling,
automatic pause, time budget, probe."""
import base64
import hashlib
import http.server
import os
import socket
import threading
import time

import pytest

from ansible_collections.manta.ops.plugins.module_utils import evacuate_copy as EC


def md5(b):
    return base64.b64encode(hashlib.md5(b).digest()).decode()


def flipped(b):
    """``b`` with its first byte changed (a constant first byte would equal it 1 time in 256)."""
    return bytes([b[0] ^ 0xFF]) + b[1:]


class Server:
    """A tiny mako: GET/HEAD of files under ``root``; counts requests."""

    def __init__(self, root):
        self.root = root
        self.gets = 0
        srv = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _file(self):
                p = os.path.join(srv.root, self.path.lstrip("/"))
                return p if os.path.isfile(p) else None

            def do_GET(self):
                srv.gets += 1
                p = self._file()
                if p is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = open(p, "rb").read()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_HEAD(self):
                p = self._file()
                self.send_response(200 if p else 404)
                self.send_header("Content-Length", str(os.path.getsize(p)) if p else "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def put(root, owner, oid, data):
    os.makedirs(os.path.join(root, owner), exist_ok=True)
    with open(os.path.join(root, owner, oid), "wb") as fh:
        fh.write(data)


@pytest.fixture
def nodes(tmp_path):
    out = {}
    for name in ("src", "evac", "dest"):
        root = tmp_path / name
        root.mkdir()
        out[name] = Server(str(root))
    yield out
    for s in out.values():
        s.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def test_copy_verify_fallback_and_idempotence(nodes):
    src, evac, dst = nodes["src"], nodes["evac"], nodes["dest"]
    good = {f"o{i}": os.urandom(1000 + i) for i in range(20)}
    for oid, data in good.items():
        put(src.root, "own", oid, data)
        put(evac.root, "own", oid, data)
    # o0: bad bytes on the first source, good on the evacuated node -> falls back
    put(src.root, "own", "o0", flipped(good["o0"]))
    # o1: missing on the first source -> falls back
    os.unlink(os.path.join(src.root, "own", "o1"))
    # o2: bad everywhere -> md5_mismatch; o3: missing everywhere -> source_not_found
    put(src.root, "own", "o2", flipped(good["o2"]))
    put(evac.root, "own", "o2", flipped(good["o2"]))
    os.unlink(os.path.join(src.root, "own", "o3"))
    os.unlink(os.path.join(evac.root, "own", "o3"))
    # a snaplinked copy lives under its creator
    put(src.root, "creator", "link", b"linked")
    tasks = [[i, "own", oid, len(d), md5(d), ["src", "evac"]] for i, (oid, d) in enumerate(good.items())]
    tasks.append([99, "creator", "link", 6, md5(b"linked"), ["src", "evac"]])
    c = EC.Copier(dst.root, {"src": src.url, "evac": evac.url}, concurrency=4, verify_url=dst.url,
                  retries=0)
    res = {t[0]: o for t, o in c.run(tasks)}
    assert (res[2].status, res[2].reason) == ("skipped", "md5_mismatch")
    assert (res[3].status, res[3].reason) == ("skipped", "source_not_found")
    assert res[0].status == "copied" and res[0].source == "evac"
    assert res[1].status == "copied" and res[1].source == "evac"
    assert res[99].status == "copied"
    for i, (oid, d) in enumerate(good.items()):
        p = os.path.join(dst.root, "own", oid)
        if i in (2, 3):
            assert not os.path.exists(p)
        else:
            assert open(p, "rb").read() == d
    assert open(os.path.join(dst.root, "creator", "link"), "rb").read() == b"linked"
    assert os.listdir(os.path.join(dst.root, "manta_evacuate", "tmp")) == []   # no temp left
    # again: everything verified in place, nothing fetched
    gets = src.gets + evac.gets
    c2 = EC.Copier(dst.root, {"src": src.url, "evac": evac.url}, concurrency=4, verify_url=dst.url)
    res2 = {t[0]: o for t, o in c2.run([t for t in tasks if t[0] not in (2, 3)])}
    assert all(o.status == "copied" and o.reason == "present" and not o.fetched
               for o in res2.values())
    assert src.gets + evac.gets == gets


def test_wrong_size_and_unsafe_paths(nodes):
    src, dst = nodes["src"], nodes["dest"]
    put(src.root, "own", "o", b"12345")
    c = EC.Copier(dst.root, {"src": src.url}, retries=0)
    (t, o), (t2, o2) = c.run([[1, "own", "o", 6, md5(b"12345"), ["src"]],
                              [2, "..", "o", 5, md5(b"12345"), ["src"]]])
    assert (o.status, o.reason) == ("skipped", "size_mismatch")
    assert (o2.status, o2.reason) == ("skipped", "bad_manta_object")


def test_dead_destination_server_is_transient_and_pauses(nodes, tmp_path):
    src = nodes["src"]
    data = b"abc"
    for i in range(30):
        put(src.root, "own", f"o{i}", data)
    tasks = [[i, "own", f"o{i}", 3, md5(data), ["src"]] for i in range(30)]
    dead = f"http://127.0.0.1:{free_port()}"
    root = tmp_path / "d"
    root.mkdir()
    c = EC.Copier(str(root), {"src": src.url}, concurrency=1, verify_url=dead,
                  pause_consecutive=5, pause_window=50, pipeline_depth=2)
    res = [o for _, o in c.run(tasks)]
    assert c.paused and "in a row" in c.paused
    assert [o.status for o in res[:5]] == ["transient"] * 5
    assert res[0].reason == "destination_unavailable"
    # copies already fetched when the pause came finish (at most the pipeline's depth
    # and the one being fetched); no new one starts
    k = next(i for i, o in enumerate(res) if o.status == "not_attempted")
    assert k <= 5 + 2 + 1, [o.status for o in res]
    assert {o.status for o in res[:k]} == {"transient"}
    assert {o.status for o in res[k:]} == {"not_attempted"}


def test_unreachable_source_falls_back_then_counts_as_transient(nodes):
    evac, dst = nodes["evac"], nodes["dest"]
    put(evac.root, "own", "o", b"hello")
    dead = f"http://127.0.0.1:{free_port()}"
    c = EC.Copier(dst.root, {"gone": dead, "evac": evac.url}, retries=1, retry_delay=0.01)
    (_, o), = c.run([[1, "own", "o", 5, md5(b"hello"), ["gone", "evac"]]])
    assert o.status == "copied" and o.source == "evac"
    c = EC.Copier(dst.root, {"gone": dead}, retries=1, retry_delay=0.01)
    (_, o), = c.run([[1, "own", "p", 5, md5(b"hello"), ["gone"]]])
    assert (o.status, o.reason) == ("transient", "source_unreachable")


def test_deadline_leaves_the_rest_not_attempted(nodes):
    src, dst = nodes["src"], nodes["dest"]
    put(src.root, "own", "o", b"x")
    c = EC.Copier(dst.root, {"src": src.url}, deadline=time.time() - 1)
    (_, o), = c.run([[1, "own", "o", 1, md5(b"x"), ["src"]]])
    assert o.status == "not_attempted" and c.stopped == "max_duration"


def test_byte_throttle(nodes):
    src, dst = nodes["src"], nodes["dest"]
    blob = os.urandom(300 * 1024)
    for i in range(4):
        put(src.root, "own", f"b{i}", blob)
    c = EC.Copier(dst.root, {"src": src.url}, concurrency=4, max_bytes_per_sec=600 * 1024)
    t0 = time.monotonic()
    res = c.run([[i, "own", f"b{i}", len(blob), md5(blob), ["src"]] for i in range(4)])
    dt = time.monotonic() - t0
    assert all(o.status == "copied" for _, o in res)
    assert dt >= 1.5, dt          # 1.2 MB at 600 KB/s (minus one burst)


def test_check_mode_writes_nothing(nodes):
    src, dst = nodes["src"], nodes["dest"]
    put(src.root, "own", "o", b"x")
    c = EC.Copier(dst.root, {"src": src.url}, check_mode=True)
    (_, o), = c.run([[1, "own", "o", 1, md5(b"x"), ["src"]]])
    assert o.reason == "would_fetch"
    assert os.listdir(dst.root) == []


def test_probe_reads_and_verifies(nodes):
    src = nodes["src"]
    put(src.root, "own", "a", b"aaaa")
    put(src.root, "own", "b", b"bbbb")
    r = EC.probe([[1, "own", "a", 4, md5(b"aaaa"), ["src"]],
                  [2, "own", "b", 4, md5(b"zzzz"), ["src"]]], {"src": src.url}, concurrency=2)
    assert r["objects"] == 1 and r["failures"] == {"md5_mismatch": 1}
    assert r["seconds_per_object"] > 0


def test_rate_limiter_live_change():
    rl = EC.RateLimiter(None)
    t0 = time.monotonic()
    rl.acquire(10 ** 9)
    assert time.monotonic() - t0 < 0.1
    rl.set_rate(1000)
    assert rl.rate == 1000.0


@pytest.mark.skipif(not EC.syncfs_available(), reason="needs Linux syncfs(2)")
def test_batch_durability_group_commits_with_syncfs(nodes):
    src, dst = nodes["src"], nodes["dest"]
    blobs = {f"b{i}": os.urandom(70000 + i) for i in range(12)}
    for oid, b in blobs.items():
        put(src.root, "own", oid, b)
    put(dst.root, "own", "b0", blobs["b0"])                 # already in place
    tasks = [[i, "own", oid, len(b), md5(b), ["src"]] for i, (oid, b) in enumerate(blobs.items())]
    c = EC.Copier(dst.root, {"src": src.url}, concurrency=4, verify_url=dst.url, durability="batch")
    res = {t[0]: o for t, o in c.run(tasks)}
    assert (res[0].reason, res[0].fetched) == ("present", False)
    assert all(res[i].status == "copied" and res[i].fetched for i in range(1, 12))
    for oid, b in blobs.items():
        assert open(os.path.join(dst.root, "own", oid), "rb").read() == b
    st = c.stats()
    assert st["durability"] == "batch" and st["fs_syncs"] >= 2 and st["dir_syncs"] == 0
    assert os.listdir(os.path.join(dst.root, "manta_evacuate", "tmp")) == []


def test_group_commit_syncs_each_directory_once_per_batch(nodes, monkeypatch):
    src, dst = nodes["src"], nodes["dest"]
    synced = []
    real = EC._fsync_path
    monkeypatch.setattr(EC, "_fsync_path", lambda d: (synced.append(d), real(d)))
    for owner in ("a", "b"):
        for i in range(30):
            put(src.root, owner, f"o{i}", b"x" * (i + 1))
    tasks = [[k, owner, f"o{i}", i + 1, md5(b"x" * (i + 1)), ["src"]]
             for k, (owner, i) in enumerate((o, i) for o in ("a", "b") for i in range(30))]
    c = EC.Copier(dst.root, {"src": src.url}, concurrency=8, verify_url=dst.url)
    res = [o for _, o in c.run(tasks)]
    assert all(o.status == "copied" and o.fetched for o in res)
    st = c.stats()
    # every directory sync serves a batch; never more than one per directory and batch
    assert st["dir_syncs"] == len(synced) <= 2 * st["commit_batches"] + 2
    assert set(synced) >= {os.path.join(dst.root, "a"), os.path.join(dst.root, "b"), dst.root}
