"""zk.Zk retries against the lab's real ZooKeeper, through a TCP proxy (127.0.0.1) that
cuts the connection at a chosen request: before it reaches ZooKeeper (not applied) or
after ZooKeeper got it but before its reply comes back (applied, reply lost).

Reads must retry and succeed; a write whose reply was lost must be recognised as
applied (not reported lost, not applied twice); a dead ZooKeeper must still fail
within the timeout with a message naming servers, operation and path."""
import json
import socket
import struct
import threading
import time
import uuid

import pytest
from kazoo.exceptions import BadVersionError

from zkclient import kazoo_client

from ansible_collections.manta.ops.plugins.module_utils import zk_lock
from ansible_collections.manta.ops.plugins.module_utils.zk import Zk, ZkError

# ZooKeeper request opcodes (jute): the ones kazoo sends for our calls
OP = {"create": (1, 15), "delete": (2,), "exists": (3,), "get": (4,), "set": (5,),
      "children": (8, 12), "multi": (14,)}


class ZkProxy:
    """Frame-aware proxy: forwards ZooKeeper's length-prefixed frames and, when armed,
    cuts the connection at the next request of a given kind."""

    def __init__(self, host, port):
        self.upstream = (host, port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.mode = "forward"   # forward | refuse (accept and close) | blackhole (never answer)
        self.armed = []         # [(opcodes, "before"|"after", hook)]
        self.cuts = []          # (opcode, when) of every cut made
        self.conns = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def connect(self):
        return f"127.0.0.1:{self.port}"

    def arm(self, op, when, hook=None):
        with self.lock:
            self.armed.append((OP[op], when, hook))

    def kill(self, mode):
        """ZooKeeper 'dies': drop every connection, then refuse or black-hole new ones."""
        self.mode = mode
        for c in list(self.conns):
            self._close(c)

    def close(self):
        self.closed = True
        self.kill("refuse")
        self.sock.close()

    # ---- plumbing ------------------------------------------------------------------
    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.mode == "refuse":
                client.close()
                continue
            if self.mode == "blackhole":
                self.conns.append({"client": client, "server": None, "drop": True})
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            conn = {"client": client, "server": server, "drop": False}
            self.conns.append(conn)
            threading.Thread(target=self._up, args=(conn,), daemon=True).start()
            threading.Thread(target=self._down, args=(conn,), daemon=True).start()

    @staticmethod
    def _recv_exact(sock, n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise OSError("closed")
            buf += chunk
        return buf

    def _close(self, conn):
        for k in ("client", "server"):
            s = conn.get(k)
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        if conn in self.conns:
            self.conns.remove(conn)

    def _up(self, conn):
        """client -> ZooKeeper, frame by frame (the first frame is the connect request)."""
        first = True
        try:
            while True:
                head = self._recv_exact(conn["client"], 4)
                body = self._recv_exact(conn["client"], struct.unpack(">i", head)[0])
                rule = None
                if not first and len(body) >= 8:
                    _xid, opcode = struct.unpack(">ii", body[:8])
                    with self.lock:
                        for r in self.armed:
                            if opcode in r[0]:
                                rule = r
                                self.armed.remove(r)
                                break
                first = False
                if rule is None:
                    conn["server"].sendall(head + body)
                    continue
                _ops, when, hook = rule
                self.cuts.append((opcode, when))
                if when == "after":
                    conn["drop"] = True          # swallow the reply
                    conn["server"].sendall(head + body)
                    time.sleep(0.3)              # let ZooKeeper apply it
                if hook:
                    hook()
                self._close(conn)
                return
        except OSError:
            self._close(conn)

    def _down(self, conn):
        """ZooKeeper -> client, raw bytes (dropped once a reply is to be lost)."""
        try:
            while True:
                data = conn["server"].recv(65536)
                if not data:
                    raise OSError("closed")
                if not conn["drop"]:
                    conn["client"].sendall(data)
        except OSError:
            self._close(conn)


@pytest.fixture(scope="module")
def zk_direct(lab):
    with kazoo_client(lab.status["zookeeper"]["connect"]) as client:
        yield client


@pytest.fixture
def proxy(lab):
    zk = lab.status["zookeeper"]
    p = ZkProxy(zk["host"], int(zk["port"]))
    yield p
    p.close()


@pytest.fixture
def root(zk_direct):
    r = f"/manta_ops_test_retry/{uuid.uuid4().hex[:12]}"
    zk_direct.ensure_path(r)
    yield r
    zk_direct.delete("/manta_ops_test_retry", recursive=True)


# ---- reads ----------------------------------------------------------------------------

@pytest.mark.parametrize("when", ["before", "after"])
def test_reads_retry_through_a_cut_connection(proxy, zk_direct, root, when):
    zk_direct.create(f"{root}/n", b"payload")
    zk_direct.create(f"{root}/n/kid", b"")
    with Zk(proxy.connect, timeout=10) as zk:
        proxy.arm("get", when)
        data, stat = zk.get(f"{root}/n")
        assert data == b"payload" and stat.version == 0
        proxy.arm("exists", when)
        assert zk.exists(f"{root}/n").version == 0
        proxy.arm("children", when)
        assert zk.children(f"{root}/n") == ["kid"]
        assert len(proxy.cuts) == 3, proxy.cuts
        assert zk.retries >= 3 and zk.recovered == 0


# ---- writes whose reply was lost --------------------------------------------------------

def test_cas_set_whose_reply_was_lost_is_recognised_as_applied(proxy, zk_direct, root):
    path = f"{root}/cas"
    zk_direct.create(path, b"v0")
    zk_direct.set(path, b"v1")          # version 1
    with Zk(proxy.connect, timeout=10) as zk:
        proxy.arm("set", "after")
        stat = zk.set(path, b"v2", version=1)
        assert proxy.cuts == [(5, "after")]
        assert stat.version == 2, "reported as our write, at version + 1"
        assert zk.recovered == 1
    data, stat = zk_direct.get(path)
    assert (data, stat.version) == (b"v2", 2), "applied exactly once"


def test_cas_set_cut_before_arrival_is_resent_once(proxy, zk_direct, root):
    path = f"{root}/cas"
    zk_direct.create(path, b"v0")
    with Zk(proxy.connect, timeout=10) as zk:
        proxy.arm("set", "before")
        assert zk.set(path, b"v1", version=0).version == 1
        assert proxy.cuts == [(5, "before")] and zk.recovered == 0 and zk.retries >= 1
    assert zk_direct.get(path)[0] == b"v1" and zk_direct.get(path)[1].version == 1


def test_cas_set_that_lost_a_race_during_the_outage_still_fails(proxy, zk_direct, root):
    """Not applied, and meanwhile someone else wrote: the retry must not claim success."""
    path = f"{root}/cas"
    zk_direct.create(path, b"v0")
    with Zk(proxy.connect, timeout=10) as zk:
        proxy.arm("set", "before", hook=lambda: zk_direct.set(path, b"theirs", version=0))
        with pytest.raises(BadVersionError):
            zk.set(path, b"ours", version=0)
        assert zk.recovered == 0
    assert zk_direct.get(path)[0] == b"theirs"


def test_create_whose_reply_was_lost_is_not_reported_as_existing(proxy, zk_direct, root):
    path = f"{root}/made"
    with Zk(proxy.connect, timeout=10) as zk:
        proxy.arm("create", "after")
        assert zk.create(path, b"mine") == path
        assert zk.recovered == 1 and len(proxy.cuts) == 1
    assert zk_direct.get(path)[0] == b"mine"


def test_sequential_create_whose_reply_was_lost_is_found_not_repeated(proxy, zk_direct, root):
    zk_direct.create(f"{root}/h/entry-", b"older", sequence=True, makepath=True)
    with Zk(proxy.connect, timeout=10) as zk:
        proxy.arm("create", "after")
        name = zk.create(f"{root}/h/entry-", b"mine", sequence=True)
        assert zk.recovered == 1
    kids = sorted(zk_direct.get_children(f"{root}/h"))
    assert len(kids) == 2, kids
    assert name == f"{root}/h/{kids[1]}" and zk_direct.get(name)[0] == b"mine"


def test_delete_whose_reply_was_lost_is_done(proxy, zk_direct, root):
    path = f"{root}/gone"
    zk_direct.create(path, b"x")
    with Zk(proxy.connect, timeout=10) as zk:
        proxy.arm("delete", "after")
        assert zk.delete(path, version=0) is True
        assert zk.recovered == 1
    assert zk_direct.exists(path) is None


@pytest.mark.parametrize("when", ["before", "after"])
def test_transaction_is_applied_exactly_once(proxy, zk_direct, root, when):
    """The manatee state write: CAS set of the state plus a sequential history node."""
    state, hist = f"{root}/state", f"{root}/history"
    zk_direct.create(state, b'{"generation":1}')
    zk_direct.create(f"{hist}/0-", b'{"generation":1}', sequence=True, makepath=True)
    new = b'{"generation":2}'
    with Zk(proxy.connect, timeout=10) as zk:
        proxy.arm("multi", when)
        tx = zk.transaction()
        tx.set_data(state, new, version=0)
        tx.create(f"{hist}/0-", new, sequence=True)
        results = zk.commit(tx, f"write {state}")
        assert len(proxy.cuts) == 1
        assert zk.recovered == (1 if when == "after" else 0)
    data, stat = zk_direct.get(state)
    assert (data, stat.version) == (new, 1)
    kids = sorted(zk_direct.get_children(hist))
    assert len(kids) == 2, f"history written once, found {kids}"
    assert results[0].version == 1
    assert results[1] == f"{hist}/{kids[1]}"


def test_lock_acquire_whose_create_reply_was_lost_reports_a_fresh_acquire(proxy, zk_direct, root):
    """A caller: zk_lock sees its own lock, taken by this call (changed), not a re-entry."""
    path = f"{root}/lock"
    with Zk(proxy.connect, timeout=10) as zk:
        proxy.arm("create", "after")
        res = zk_lock.acquire(zk, path, "exclusive", "plan:retry", purpose="retry test")
        assert res["changed"] is True and not res["before"]["exists"]
        assert list(res["after"]["holders"]) == ["plan:retry"]
        assert zk.recovered == 1
    assert json.loads(zk_direct.get(path)[0])["owner"] == "plan:retry"


# ---- a dead ZooKeeper ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_dead_zookeeper_fails_within_the_timeout_with_a_clear_message(proxy, zk_direct, root, mode):
    zk_direct.create(f"{root}/n", b"x")
    with Zk(proxy.connect, timeout=3) as zk:
        assert zk.get(f"{root}/n")[0] == b"x"
        proxy.kill(mode)
        t0 = time.monotonic()
        with pytest.raises(ZkError) as exc:
            zk.get(f"{root}/n")
        took = time.monotonic() - t0
    assert took < 3 + 1.0, f"took {took:.1f}s with a 3s timeout"
    msg = str(exc.value)
    assert proxy.connect in msg and f"get {root}/n" in msg and "within 3s" in msg, msg


def test_write_to_a_dead_zookeeper_fails_within_the_timeout(proxy, zk_direct, root):
    path = f"{root}/cas"
    zk_direct.create(path, b"v0")
    with Zk(proxy.connect, timeout=3) as zk:
        zk.get(path)
        proxy.arm("set", "before", hook=lambda: setattr(proxy, "mode", "refuse"))
        t0 = time.monotonic()
        with pytest.raises(ZkError) as exc:
            zk.set(path, b"v1", version=0)
        took = time.monotonic() - t0
    assert took < 4.0, took
    assert f"set {path}" in str(exc.value) and "ConnectionLoss" in str(exc.value), str(exc.value)
    assert zk_direct.get(path)[0] == b"v0", "nothing written"
