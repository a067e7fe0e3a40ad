"""The copy engine's HTTP client (module_utils/evacuate_http) and the engine's use of it,
against scripted servers on loopback that misbehave on purpose: chunked bodies, bodies
delimited by close, short bodies, wrong Content-Length, silence (timeouts), stale
keep-alive connections, pipelined HEADs cut by ``Connection: close``, interim 1xx,
malformed heads. (The same paths against the lab's real nginx storage nodes:
tests/integration/test_evacuate_copy_nginx.py.)"""
import base64
import hashlib
import os
import socket
import threading
import time

import pytest

from ansible_collections.manta.ops.plugins.module_utils import evacuate_copy as EC
from ansible_collections.manta.ops.plugins.module_utils import evacuate_http as H


def md5(b):
    return base64.b64encode(hashlib.md5(b).digest()).decode()


class Scripted:
    """A TCP server whose every connection runs ``handler(conn, reader)``; ``reader``
    yields request heads (bytes up to the blank line). Counts connections."""

    def __init__(self, handler):
        self.handler = handler
        self.connections = 0
        self.requests = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.alive = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while self.alive:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = bytearray()

        def requests():
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        d = c.recv(65536)
                    except OSError:
                        return
                    if not d:
                        return
                    buf.extend(d)
                i = buf.index(b"\r\n\r\n") + 4
                head = bytes(buf[:i])
                del buf[:i]
                self.requests.append(head.split(b"\r\n", 1)[0].decode())
                yield head

        try:
            self.handler(c, requests())
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def close(self):
        self.alive = False
        self.sock.close()


@pytest.fixture
def serve():
    servers = []

    def make(handler):
        s = Scripted(handler)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def path_of(head):
    return head.split(b" ")[1].decode()


def read_body(conn, resp, size=7):
    buf = memoryview(bytearray(size))
    out = bytearray()
    while True:
        k = conn.readinto(resp, buf)
        if not k:
            return bytes(out)
        out += buf[:k]


BODY = os.urandom(300 * 1024 + 17)


def test_content_length_keep_alive_and_reuse(serve):
    def h(c, reqs):
        for head in reqs:
            body = BODY if path_of(head) == "/big" else b"hello"
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-A: b\r\n\r\n" % len(body) + body)

    s = serve(h)
    conn = H.Connection(s.url, timeout=5)
    for p, want in (("/big", BODY), ("/small", b"hello"), ("/big", BODY)):
        r = conn.request("GET", p)
        assert r.status == 200 and r.length == len(want) and r.getheader("x-a") == "b"
        assert read_body(conn, r, 64 * 1024) == want
        assert r.done
    assert s.connections == 1 and conn.is_open
    conn.close()


def test_chunked_with_extensions_and_trailers(serve):
    pieces = [BODY[:1], BODY[1:70000], BODY[70000:70001], BODY[70001:]]

    def h(c, reqs):
        for _ in reqs:
            out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            for p in pieces:
                out += b"%x;ext=1\r\n" % len(p) + p + b"\r\n"
            out += b"0\r\nX-Trailer: yes\r\n\r\n"
            # dribble it out in odd-sized writes
            for k in range(0, len(out), 4099):
                c.sendall(out[k:k + 4099])

    s = serve(h)
    conn = H.Connection(s.url, timeout=5)
    for size in (7, 1 << 20):
        r = conn.request("GET", "/x")
        assert r.chunked and r.length is None
        assert read_body(conn, r, size) == BODY
    assert s.connections == 1


def test_body_until_close_and_http10(serve):
    def h(c, reqs):
        for _ in reqs:
            c.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + BODY)
            return

    s = serve(h)
    conn = H.Connection(s.url, timeout=5)
    r = conn.request("GET", "/x")
    assert r.until_close and r.will_close
    assert read_body(conn, r, 1 << 20) == BODY
    assert not conn.is_open            # the body ended with the connection
    r = conn.request("GET", "/x")      # a new connection, transparently
    assert read_body(conn, r, 1 << 20) == BODY
    assert s.connections == 2


def test_short_body_raises_incomplete(serve):
    def h(c, reqs):
        for _ in reqs:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 400)
            return                          # closes mid-body

    s = serve(h)
    conn = H.Connection(s.url, timeout=5)
    r = conn.request("GET", "/x")
    with pytest.raises(H.IncompleteBody, match="600 of 1000"):
        read_body(conn, r, 256)
    assert not conn.is_open


def test_short_chunk_raises_incomplete(serve):
    def h(c, reqs):
        for _ in reqs:
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nabc")
            return

    s = serve(h)
    conn = H.Connection(s.url, timeout=5)
    r = conn.request("GET", "/x")
    with pytest.raises(H.IncompleteBody):
        read_body(conn, r)


def test_silent_server_times_out(serve):
    ev = threading.Event()

    def h(c, reqs):
        for _ in reqs:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            ev.wait(10)                     # never sends the rest
            return

    s = serve(h)
    conn = H.Connection(s.url, timeout=0.3)
    r = conn.request("GET", "/x")
    t0 = time.monotonic()
    with pytest.raises(OSError):            # socket.timeout is TimeoutError (OSError)
        read_body(conn, r)
    assert time.monotonic() - t0 < 3
    assert not conn.is_open
    ev.set()


def test_no_response_times_out(serve):
    ev = threading.Event()

    def h(c, reqs):
        for _ in reqs:
            ev.wait(10)
            return

    s = serve(h)
    conn = H.Connection(s.url, timeout=0.3)
    with pytest.raises(TimeoutError):
        conn.request("GET", "/x")
    ev.set()


def test_stale_keep_alive_is_reopened_once(serve):
    def h(c, reqs):
        for _ in reqs:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return                          # closes the idle connection, without saying so

    s = serve(h)
    conn = H.Connection(s.url, timeout=5)
    for _ in range(3):
        r = conn.request("GET", "/x")
        assert read_body(conn, r) == b"ok"
        time.sleep(0.05)                    # let the close arrive
    assert s.connections == 3


def test_refused_connection_is_an_oserror():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(OSError):
        H.Connection(f"http://127.0.0.1:{port}", timeout=2).request("GET", "/x")


@pytest.mark.parametrize("head, err", [
    (b"HTTX/1.1 200 OK\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcde", "conflicting"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding"),
])
def test_malformed_heads(serve, head, err):
    def h(c, reqs):
        for _ in reqs:
            c.sendall(head)
            time.sleep(0.5)
            return

    s = serve(h)
    conn = H.Connection(s.url, timeout=5)
    with pytest.raises(H.ProtocolError, match=err):
        conn.request("GET", "/x")
    assert not conn.is_open


def test_bad_chunk_size(serve):
    def h(c, reqs):
        for _ in reqs:
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
            time.sleep(0.5)
            return

    s = serve(h)
    conn = H.Connection(s.url, timeout=5)
    r = conn.request("GET", "/x")
    with pytest.raises(H.ProtocolError, match="chunk size"):
        read_body(conn, r)


def test_interim_100_and_bodiless_statuses(serve):
    def h(c, reqs):
        for head in reqs:
            if path_of(head) == "/204":
                c.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                c.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")

    s = serve(h)
    conn = H.Connection(s.url, timeout=5)
    r = conn.request("GET", "/x")
    assert r.status == 200 and read_body(conn, r) == b"abc"
    r = conn.request("GET", "/204")
    assert r.status == 204 and r.done and read_body(conn, r) == b""
    r = conn.request("GET", "/x")
    assert read_body(conn, r) == b"abc"
    assert s.connections == 1


def test_discard_small_error_body_keeps_connection(serve):
    def h(c, reqs):
        for head in reqs:
            if path_of(head) == "/missing":
                c.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
            elif path_of(head) == "/huge":
                c.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 1000)
            else:
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    s = serve(h)
    conn = H.Connection(s.url, timeout=5)
    r = conn.request("GET", "/missing")
    conn.discard(r)
    assert conn.is_open
    r = conn.request("GET", "/ok")
    assert read_body(conn, r) == b"ok"
    r = conn.request("GET", "/huge")
    conn.discard(r)                      # not read: the connection is closed instead
    assert not conn.is_open
    assert s.connections == 1


def test_head_many_pipelined_and_cut_by_connection_close(serve):
    per_conn = 5

    def h(c, reqs):
        n = 0
        for head in reqs:
            n += 1
            p = path_of(head)
            close = n == per_conn
            status = b"404 Not Found" if p.endswith("missing") else b"200 OK"
            c.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n%s\r\n"
                      % (len(p), b"Connection: close\r\n" if close else b""))
            if close:
                return

    s = serve(h)
    conn = H.Connection(s.url, timeout=5)
    paths = [f"/o{i}" + ("missing" if i % 7 == 3 else "") for i in range(23)]
    out = conn.head_many(paths, depth=8)
    assert [r.status for r in out] == [404 if p.endswith("missing") else 200 for p in paths]
    assert [int(r.getheader("content-length")) for r in out] == [len(p) for p in paths]
    assert s.connections == 5            # 23 answers, 5 per connection


def test_head_many_dead_server_reports_each_path():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    out = H.Connection(f"http://127.0.0.1:{port}", timeout=1).head_many(["/a", "/b"])
    assert all(isinstance(r, OSError) for r in out)


# ---- the engine over the same misbehaving servers -------------------------------------

def _engine(tmp_path, sources, tasks, **kw):
    root = tmp_path / "dest"
    root.mkdir(exist_ok=True)
    kw.setdefault("retries", 1)
    kw.setdefault("retry_delay", 0.01)
    c = EC.Copier(str(root), sources, **kw)
    res = {t[0]: o for t, o in c.run(tasks)}
    assert os.listdir(root / "manta_evacuate" / "tmp") == []     # no temp file left behind
    return root, res


def good_server(serve, body=BODY):
    def h(c, reqs):
        for _ in reqs:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    return serve(h)


def test_engine_chunked_source(serve, tmp_path):
    def h(c, reqs):
        for _ in reqs:
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n")

    s = serve(h)
    root, res = _engine(tmp_path, {"s": s.url}, [[1, "own", "o", len(BODY), md5(BODY), ["s"]]])
    assert res[1].status == "copied" and res[1].fetched
    assert (root / "own" / "o").read_bytes() == BODY


def test_engine_closed_mid_body_retries_then_falls_back(serve, tmp_path):
    def broken(c, reqs):
        for _ in reqs:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY[:1000])
            return

    bad, good = serve(broken), good_server(serve)
    task = [1, "own", "o", len(BODY), md5(BODY), ["bad", "good"]]
    root, res = _engine(tmp_path, {"bad": bad.url, "good": good.url}, [task])
    assert res[1].status == "copied" and res[1].source == "good"
    assert bad.connections == 2                      # tried, retried once, then the next source
    root, res = _engine(tmp_path, {"bad": bad.url}, [[2, "own", "p", len(BODY), md5(BODY), ["bad"]]])
    assert (res[2].status, res[2].reason) == ("transient", "source_unreachable")
    assert "IncompleteBody" in res[2].detail
    assert not (root / "own" / "p").exists()


def test_engine_wrong_content_length(serve, tmp_path):
    short = serve(lambda c, reqs: [c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")
                                   for _ in reqs])
    # announces the right length, then sends more bytes than it announced
    extra = serve(lambda c, reqs: [c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                                             % len(BODY) + BODY + b"garbage") for _ in reqs])
    tasks = [[1, "own", "a", len(BODY), md5(BODY), ["short"]],
             [2, "own", "b", len(BODY), md5(BODY), ["extra"]],
             [3, "own", "c", len(BODY), md5(BODY), ["extra"]]]
    root, res = _engine(tmp_path, {"short": short.url, "extra": extra.url}, tasks, concurrency=1)
    assert (res[1].status, res[1].reason) == ("skipped", "size_mismatch")
    assert "sent 10 bytes" in res[1].detail
    # the declared body is exactly right; the garbage after it breaks the next response
    # on that connection, which is retried on a fresh one
    assert res[2].status == "copied" and res[3].status == "copied"
    assert (root / "own" / "c").read_bytes() == BODY


def test_engine_chunked_body_longer_than_expected(serve, tmp_path):
    body = BODY + b"more"

    def h(c, reqs):
        for _ in reqs:
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")

    s = serve(h)
    root, res = _engine(tmp_path, {"s": s.url}, [[1, "own", "o", len(BODY), md5(BODY), ["s"]]])
    assert (res[1].status, res[1].reason) == ("skipped", "size_mismatch")
    assert not (root / "own" / "o").exists()


def test_engine_source_timeout(serve, tmp_path):
    ev = threading.Event()

    def h(c, reqs):
        for _ in reqs:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY[:100])
            ev.wait(10)
            return

    s = serve(h)
    t0 = time.monotonic()
    root, res = _engine(tmp_path, {"s": s.url}, [[1, "own", "o", len(BODY), md5(BODY), ["s"]]],
                        timeout=0.3)
    assert (res[1].status, res[1].reason) == ("transient", "source_unreachable")
    assert time.monotonic() - t0 < 5
    ev.set()


def test_engine_verify_pipelined_heads_and_bad_lengths(serve, tmp_path):
    src = good_server(serve)
    heads = []

    def dest(c, reqs):
        for head in reqs:
            heads.append(path_of(head))
            n = len(BODY) if not path_of(head).endswith("wrong") else 5
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)

    d = serve(dest)
    tasks = [[i, "own", f"o{i}" + ("wrong" if i == 3 else ""), len(BODY), md5(BODY), ["s"]]
             for i in range(10)]
    root, res = _engine(tmp_path, {"s": src.url}, tasks, verify_url=d.url, concurrency=4)
    assert (res[3].status, res[3].reason) == ("transient", "destination_unavailable")
    assert all(res[i].status == "copied" for i in range(10) if i != 3)
    assert sorted(heads) == sorted(f"/own/{t[2]}" for t in tasks)
    assert d.connections == 1                       # every check on one keep-alive connection
