"""The lab's graceful stop (rpc.RpcServer.drain, what an electric-moray does on SIGTERM/SIGHUP during a reshard's
ring swap) and `lab load`'s haproxy-like failover: exact accounting with real servers, no mocks.

Two real RpcServers on 127.0.0.1 stand for two electric-morays; their handler applies putObject to its own
store and counts every application. A request is sent elsewhere only when it certainly was not applied
(refused at connect, or answered NOT_APPLIED by a draining server), so each write is applied once."""
import threading
import time

import pytest

from manta_lab import load, rpc


class Store:
    def __init__(self, name, slow=None):
        self.name = name
        self.rows = {}
        self.applied = 0
        self.slow = slow              # an Event a put waits for (to hold it in flight)
        self.entered = threading.Event()

    def rpc_putObject(self, args):
        self.entered.set()
        if self.slow is not None:
            self.slow.wait(10)
        self.applied += 1
        self.rows[args["key"]] = args["value"]
        return {"etag": rpc.etag_of(rpc.value_string(args["value"])), "em": self.name}


def serve(store):
    srv = rpc.RpcServer("127.0.0.1", 0, store, name=store.name)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": rpc.POLL}, daemon=True).start()
    return srv


def client(srv):
    return rpc.Client(f"http://127.0.0.1:{srv.server_address[1]}", timeout=10)


@pytest.fixture
def pair():
    a, b = Store("a"), Store("b")
    sa, sb = serve(a), serve(b)
    yield (a, sa), (b, sb)
    for s in (sa, sb):
        if not s.draining:
            s.shutdown()
        s.server_close()


def test_draining_server_answers_not_applied_on_a_kept_alive_connection(pair):
    (a, sa), (b, sb) = pair
    ca, cb = client(sa), client(sb)
    assert ca.put_object("manta", "/k0", {"n": 0})["em"] == "a"           # a keep-alive connection to a
    sa.stop_listening()                                                    # a starts draining
    with pytest.raises(rpc.RpcError) as ei:
        ca.put_object("manta", "/k1", {"n": 1})
    assert ei.value.name == rpc.NOT_APPLIED and ei.value.status == 503
    assert ei.value.info == {"applied": False} and load.not_applied(ei.value)
    assert a.applied == 1 and "/k1" not in a.rows
    # the reply closed that connection; a new one is refused (a stopped listening): haproxy-like, the same
    # request goes to b, applied exactly once, and the failover is reported
    seen = []
    res, used = load._haproxy([ca, cb], 0, lambda c: c.put_object("manta", "/k1", {"n": 1}),
                              on_failover=lambda i, exc: seen.append((i, exc.name)))
    assert used == 1 and res["em"] == "b" and b.applied == 1 and a.applied == 1
    assert seen == [(0, "ConnectionError")]


def test_stopped_server_refuses_connections_and_the_request_goes_to_the_other(pair):
    (a, sa), (b, sb) = pair
    assert sa.drain(5) is True
    ca, cb = client(sa), client(sb)
    with pytest.raises(rpc.RpcError) as ei:
        ca.put_object("manta", "/k", {"n": 1})
    assert ei.value.name == "ConnectionError" and ei.value.info == {"sent": False}
    res, used = load._haproxy([ca, cb], 0, lambda c: c.put_object("manta", "/k", {"n": 1}))
    assert used == 1 and b.applied == 1 and a.applied == 0


def test_drain_waits_for_the_request_in_flight_and_it_is_answered(pair):
    (a, sa), (b, sb) = pair
    a.slow = threading.Event()
    out = {}

    def put():
        try:
            out["res"] = client(sa).put_object("manta", "/slow", {"n": 1})
        except rpc.RpcError as exc:
            out["err"] = exc
    t = threading.Thread(target=put)
    t.start()
    assert a.entered.wait(5)
    done = {}
    d = threading.Thread(target=lambda: done.update(ok=sa.drain(5), at=time.monotonic()))
    d.start()
    time.sleep(0.3)
    assert d.is_alive(), "drain returned while a request was in flight"
    with pytest.raises(rpc.RpcError) as ei:                   # not listening any more
        client(sa).put_object("manta", "/late", {"n": 2})
    assert ei.value.info == {"sent": False}
    released = time.monotonic()
    a.slow.set()
    t.join(5)
    d.join(5)
    assert done["ok"] is True and done["at"] >= released
    assert out["res"]["em"] == "a" and a.applied == 1 and a.rows == {"/slow": {"n": 1}}


def test_a_request_that_may_have_been_applied_is_not_sent_again(pair):
    """A reply lost after the request was sent: its outcome is unknown, so no failover (it would risk applying
    the write twice); the error says it was sent."""
    import socket
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]

    def swallow():
        conn, _ = lsock.accept()
        conn.recv(65536)              # read the request, then close without a reply
        conn.close()
    threading.Thread(target=swallow, daemon=True).start()
    (b, sb) = pair[1]
    lost = rpc.Client(f"http://127.0.0.1:{port}", timeout=5)
    with pytest.raises(rpc.RpcError) as ei:
        load._haproxy([lost, client(sb)], 0, lambda c: c.put_object("manta", "/k", {"n": 1}))
    assert ei.value.name == "ConnectionError" and ei.value.info == {"sent": True}
    assert not load.not_applied(ei.value) and b.applied == 0
    lsock.close()
