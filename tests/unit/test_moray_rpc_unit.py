"""Pure helpers of the lab's moray / electric-moray RPC (no processes)."""
import json
import threading
import zlib

import pytest

from manta_lab import moray, rpc, seed


def test_value_string_and_etag_are_morays():
    v = {"key": "/a/stor/é", "vnode": 3, "sharks": [], "n": 1.5}
    s = rpc.value_string(v)
    assert s == '{"key":"/a/stor/é","vnode":3,"sharks":[],"n":1.5}'
    assert rpc.etag_of(s) == "%08X" % (zlib.crc32(s.encode()) & 0xFFFFFFFF)
    assert len(rpc.etag_of("")) == 8 and rpc.etag_of("") == "00000000"


@pytest.mark.parametrize("text,tree", [
    ("(dirname=/a/stor)", ("cmp", "dirname", "=", "/a/stor")),
    ("(&(type=object)(owner=x))", ("&", [("cmp", "type", "=", "object"),
                                        ("cmp", "owner", "=", "x")])),
    ("(|(a>=1)(!(b<=2)))", ("|", [("cmp", "a", ">=", "1"), ("!", ("cmp", "b", "<=", "2"))])),
    ("(name=*)", ("cmp", "name", "=", "*")),
])
def test_parse_filter(text, tree):
    assert moray.parse_filter(text) == tree


@pytest.mark.parametrize("bad", ["", "dirname=x", "(dirname=x", "(&)", "(x=1)(y=2)", "(=x)"])
def test_parse_filter_rejects(bad):
    with pytest.raises(ValueError):
        moray.parse_filter(bad)


def test_filter_sql_rejects_unindexed_and_builds_params():
    from psycopg2 import sql  # noqa: F401 - the module needs psycopg2
    cols = {"dirname": "text", "_mtime": "bigint", "_key": "text"}
    where, params = moray.filter_sql(moray.parse_filter("(&(dirname=/a*)(_mtime>=5))"),
                                     cols, "manta", "f")
    assert params == ["/a%", 5]
    with pytest.raises(rpc.RpcError) as ei:
        moray.filter_sql(moray.parse_filter("(nope=1)"), cols, "manta", "(nope=1)")
    assert ei.value.name == "NotIndexedError"


def test_pg_placeholders():
    q, p = moray.pg_placeholders("SELECT $2, $1, '100%'", ["a", "b"])
    assert q == "SELECT %s, %s, '100%%'" and p == ["b", "a"]
    with pytest.raises(rpc.RpcError) as ei:
        moray.pg_placeholders("SELECT $3", [1])
    assert ei.value.name == "InvocationError"


def test_primary_from_election_order():
    class ZK:
        def get(self, path):
            from kazoo.exceptions import NoNodeError
            raise NoNodeError()

        def get_children(self, path):
            return ["127.0.0.1:5433:12346-0000000007", "127.0.0.1:5432:12345-0000000003"]
    assert moray.primary_from_zk(ZK(), "1.moray.x") == ("127.0.0.1", 5432, "election")


def test_rpc_server_and_client_roundtrip():
    class H:
        def rpc_getObject(self, args):
            if args["key"] == "missing":
                raise rpc.error("ObjectNotFoundError", "b::missing does not exist",
                                context={"bucket": "b", "key": "missing"})
            return {"key": args["key"], "value": {"x": 1}}

    srv = rpc.RpcServer("127.0.0.1", 0, H())
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        c = rpc.Client(f"http://127.0.0.1:{srv.server_address[1]}")
        assert c.get_object("b", "k")["value"] == {"x": 1}
        with pytest.raises(rpc.RpcError) as ei:
            c.get_object("b", "missing")
        e = ei.value
        assert (e.name, e.status, e.context["key"]) == ("ObjectNotFoundError", 404, "missing")
        with pytest.raises(rpc.RpcError) as ei:
            c.call("putObject", {"bucket": "b"})
        assert ei.value.name == "InvocationError"
        with pytest.raises(rpc.RpcError) as ei:
            c.call("noSuchRpc", {})
        assert ei.value.name == "InvocationError" and ei.value.status == 400
        assert c.ping() == {"ok": True}
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(rpc.RpcError) as ei:
        rpc.Client(f"http://127.0.0.1:{srv.server_address[1]}", timeout=2).ping()
    assert ei.value.name == "ConnectionError" and ei.value.info == {"sent": False}


def test_seed_content_is_deterministic():
    a = seed.content_for("0b7c5dbe-0f52-4d4e-b0a7-8f3e3b4b2d10", 100)
    assert len(a) == 100 and a == seed.content_for("0b7c5dbe-0f52-4d4e-b0a7-8f3e3b4b2d10", 100)
    assert seed.content_for("x", 0) == b"" and seed.EMPTY_MD5 == "1B2M2Y8AsgTpgAmY7PhCfg=="
    assert len(set(seed.accounts())) == 4
    json.dumps(seed.accounts())
