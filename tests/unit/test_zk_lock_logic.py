"""Pure logic of zk_lock: paths, owners, decoding of lock data, connect-string checks.
(Acquire/release behaviour is tested against a real ZooKeeper in tests/integration.)"""
import json
from types import SimpleNamespace

import pytest

from ansible_collections.manta.ops.plugins.module_utils import zk as zkmod
from ansible_collections.manta.ops.plugins.module_utils import zk_lock as zl


def test_lock_path_from_name_and_path():
    assert zl.lock_path(name="critical_section") == "/manta_ops/locks/critical_section"
    assert zl.lock_path(name="x", root="/a/b/") == "/a/b/x"
    assert zl.lock_path(path="/pg_dump_lock") == "/pg_dump_lock"


@pytest.mark.parametrize("kw,needle", [
    ({}, "exactly one of name"),
    ({"name": "a", "path": "/a"}, "exactly one of name"),
    ({"name": "a/b"}, "single znode name"),
    ({"name": ".."}, "single znode name"),
    ({"name": ""}, "single znode name"),
    ({"path": "relative"}, "not an absolute ZooKeeper path"),
    ({"path": "/a/"}, "not an absolute ZooKeeper path"),
    ({"path": "/a//b"}, "not an absolute ZooKeeper path"),
    ({"path": "/"}, "not an absolute ZooKeeper path"),
    ({"path": "/zookeeper/quota"}, "reserved /zookeeper"),
])
def test_lock_path_rejects(kw, needle):
    with pytest.raises(zl.LockError) as ei:
        zl.lock_path(**kw)
    assert needle in str(ei.value)


@pytest.mark.parametrize("bad", ["", "  ", None, "(external)", "a\nb"])
def test_owner_rejected(bad):
    with pytest.raises(zl.LockError):
        zl.check_owner(bad)


def stat(version=3, ctime=1700000000123):
    return SimpleNamespace(version=version, ctime=ctime)


def test_decode_free():
    v = zl.decode(None, None, "/l")
    assert v == {"path": "/l", "exists": False, "version": None, "mode": None, "holders": {},
                 "data": None}
    assert zl.describe(v) == "free"
    assert zl.diff_view(v) == {}


def test_decode_exclusive_roundtrip():
    doc = {"manta_ops_lock": 1, "mode": "exclusive", "owner": "plan:a", "purpose": "p",
           "host": "h", "plan": "a", "time": "t"}
    v = zl.decode(json.dumps(doc).encode(), stat(), "/l")
    assert v["mode"] == "exclusive" and v["version"] == 3
    assert v["holders"] == {"plan:a": {"purpose": "p", "host": "h", "plan": "a", "time": "t"}}
    assert zl.describe(v) == "plan:a (purpose: p, host: h, plan: a, since t)"
    assert zl.public(v)["holders"] == [{"owner": "plan:a", "purpose": "p", "host": "h",
                                        "plan": "a", "time": "t"}]


def test_decode_shared():
    doc = {"manta_ops_lock": 1, "mode": "shared",
           "holders": {"plan:b": {"time": "t2"}, "plan:a": {"time": "t1"}}}
    v = zl.decode(json.dumps(doc).encode(), stat(), "/pg_dump_lock")
    assert v["mode"] == "shared"
    assert [h["owner"] for h in zl.public(v)["holders"]] == ["plan:a", "plan:b"]


@pytest.mark.parametrize("raw", [b"x", b"", b"{}", b'{"mode":"exclusive","owner":"a"}',
                                 b'{"manta_ops_lock":1,"mode":"weird"}', b"\xff\xfe"])
def test_foreign_data_is_an_external_holder(raw):
    v = zl.decode(raw, stat(ctime=0), "/pg_dump_lock")
    assert v["mode"] == "external"
    assert list(v["holders"]) == [zl.EXTERNAL]
    assert v["holders"][zl.EXTERNAL]["time"] == "1970-01-01T00:00:00.000Z"
    assert "an external holder" in zl.describe(v)


def test_now_iso_format():
    t = zl.now_iso()
    assert len(t) == 24 and t[10] == "T" and t.endswith("Z")


@pytest.mark.parametrize("servers", ["127.0.0.1:2181", "a:1,b:2,c", "h1:2181/chroot/x",
                                     "[::1]:2181", " 10.0.0.1:2181 "])
def test_connect_string_ok(servers):
    assert zkmod.check_servers(servers) == servers.strip()


@pytest.mark.parametrize("servers,needle", [
    (None, "MANTA_ZK_SERVERS"),
    ("", "MANTA_ZK_SERVERS"),
    ("a:b", "is not host or host:port"),
    ("a:1,,b:2", "is not host or host:port"),
    ("a:99999", "outside 1..65535"),
    ("a:1/", "empty chroot"),
    ("http://a:1", "is not host or host:port"),
])
def test_connect_string_rejected(servers, needle):
    with pytest.raises(zkmod.ZkError) as ei:
        zkmod.check_servers(servers)
    assert needle in str(ei.value)


# ---- zk retries: which failures are retried, and how a lost write is judged -------------

def test_transient_failures_are_the_connection_not_the_request():
    from kazoo import exceptions as ke
    for exc in (ke.ConnectionLoss(), ke.OperationTimeoutError(), ke.SessionExpiredError(),
                ke.ConnectionDropped("x")):
        assert zkmod.is_transient(exc), type(exc).__name__
    for exc in (ke.ConnectionClosedError("closed by us"), ke.NoNodeError(), ke.BadVersionError(),
                ke.NodeExistsError(), ke.NoAuthError(), ke.AuthFailedError()):
        assert not zkmod.is_transient(exc), type(exc).__name__


def test_transaction_witness_order():
    """A sequential create tells best, then a create, then a compare-and-swap set."""
    from kazoo.protocol.serialization import CheckVersion, Create, Delete, SetData
    seq = Create("/h/e-", b"x", None, 2)
    plain = Create("/n", b"x", None, 0)
    cas = SetData("/s", b"x", 3)
    blind = SetData("/s", b"x", -1)
    assert zkmod._is_seq_create(seq) and not zkmod._is_create(seq)
    assert zkmod._is_create(plain) and not zkmod._is_seq_create(plain)
    assert zkmod._is_cas_set(cas) and not zkmod._is_cas_set(blind)
    assert zkmod._is_delete(Delete("/d", 1)) and not zkmod._is_delete(CheckVersion("/d", 1))


def test_give_up_message_names_servers_operation_attempts_and_cause():
    from kazoo import exceptions as ke
    fake = SimpleNamespace(servers="10.0.0.1:2181", timeout=3.0)
    msg = zkmod.Zk._gave_up(fake, "set /a", 4, ke.ConnectionLoss())
    assert msg.startswith("ZooKeeper at 10.0.0.1:2181 did not answer set /a within 3s")
    assert "4 attempts; last error: ConnectionLoss" in msg
    assert zkmod.Zk._gave_up(fake, "get /a", 1, None).endswith("within 3s")
