"""reshard_common: names, moray etags, canary keys, electric-moray status views."""
import zlib

import pytest

from ansible_collections.manta.ops.plugins.module_utils import reshard_common as rc
from ansible_collections.manta.ops.plugins.module_utils.fash import Topology, transform_key

DOM = "us-east.example.com"


def test_names():
    assert rc.short_shard(f"37.moray.{DOM}", DOM) == "37"
    assert rc.short_shard("2.moray.lab.manta.test") == "2"
    assert rc.full_shard("3", DOM) == f"3.moray.{DOM}"
    assert rc.full_shard("3.moray", DOM) == f"3.moray.{DOM}"
    assert rc.full_shard(f"3.moray.{DOM}", DOM) == f"3.moray.{DOM}"
    assert rc.pnode(f"3.moray.{DOM}") == f"tcp://3.moray.{DOM}:2020"


@pytest.mark.parametrize("name,ok", [
    (f"3.moray.{DOM}", True), (f"shard-7.moray.{DOM}", True), (f"3.moray.other.com", False),
    (f"3.postgres.{DOM}", False), (f"-3.moray.{DOM}", False), (f"A.moray.{DOM}", False), ("", False),
    (None, False), (f"3.x.moray.{DOM}", False),
])
def test_new_shard_name(name, ok):
    assert (rc.check_new_shard_name(name, DOM) is None) == ok


def test_etag_is_moray_crc32():
    v = rc.value_string({"a": 1, "b": "é"})
    assert v == '{"a":1,"b":"é"}'
    assert rc.etag_of(v) == "%08X" % (zlib.crc32(v.encode()) & 0xFFFFFFFF)
    assert len(rc.etag_of("")) == 8


def test_canary_keys_hash_to_their_vnodes():
    topo = Topology.create(["tcp://1.moray.x:2020", "tcp://2.moray.x:2020"], 4096)
    plan = "6c8b9680-885a-4c8b-9680-885ac8b6c8b9"
    keys = rc.canary_keys(topo, "f7f7-owner", plan, [0, 17, 4095])
    for v, key in keys.items():
        assert key.startswith("/f7f7-owner/stor/manta_reshard_canary/6c8b9680/") and key.endswith("/canary")
        # electric-moray hashes an object's directory
        assert topo.vnode_of(transform_key("manta", key)) == v
    k, n = rc.canary_key(topo, "o", plan, 17)
    assert k == keys[17] or topo.vnode_of(transform_key("manta", k)) == 17


def test_status_views():
    st = {"ring": {"image_uuid": "img-a", "stamp": {"image_uuid": "img-b"}},
          "index_shards": [{"host": "1.m", "readOnly": False}, {"host": "3.m", "readOnly": True}]}
    assert rc.status_image(st) == "img-b"
    assert rc.status_image({"ring": {"image_uuid": "img-a"}}) == "img-a"
    assert rc.status_image(None) is None
    assert rc.index_shards_ok(st, {"1.m": False}) == (True, "ok")
    ok, why = rc.index_shards_ok(st, {"3.m": False})
    assert not ok and "read-only" in why
    ok, why = rc.index_shards_ok(st, {"9.m": False})
    assert not ok and "not in its index shards" in why
