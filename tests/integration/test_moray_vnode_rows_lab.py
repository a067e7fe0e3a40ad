"""moray_vnode_rows(_info) against the whole lab: real manatee shards found in ZooKeeper,
the ring electric-moray serves (LevelDB, read through a private copy), libmanta's trigger.

The lab's own data is never deleted: the test plants "ghost" rows, rows of
vnodes the ring gives to shard 2, on shard 1 (and their copies on shard 2, the
owner), which is the state a split leaves behind, and removes the copies on
shard 2 at the end.
"""
import json
import uuid

import pytest

from modrun import run_module
from pgsql import query as q

from ansible_collections.manta.ops.plugins.module_utils import moray_ring


@pytest.fixture(scope="module")
def world(lab):
    st = lab.status
    shards = sorted(st["shards"])
    s1, s2 = shards[0], shards[1]

    def primary_dsn(name):
        peers = [p for p in st["shards"][name]["peers"] if p["role"] == "primary"]
        assert peers, st["shards"][name]
        return peers[0]["dsn"]
    ring = st["electric_moray"][0]["ring"]
    topo = moray_ring.load(ring)
    ghosts = topo.vnodes_of(moray_ring.pnode(s2))[:3]
    return {"s1": s1, "s2": s2, "dsn1": primary_dsn(s1), "dsn2": primary_dsn(s2), "ring": ring,
            "zk": st["zookeeper"]["connect"], "ghosts": ghosts, "topo": topo}


def plant(dsn, tag, vnodes, per_vnode=50):
    for v in vnodes:
        d = f"/{tag}/stor/ghost-{v}"
        q(dsn, "INSERT INTO manta (_key, _value, _etag, _vnode, dirname, name, owner, objectid, type) "
               "SELECT %s || '/o' || g, '{\"ghost\":true}', 'ABCDEF01', %s, %s, 'o' || g, %s, "
               "md5(g::text), 'object' FROM generate_series(1, %s) g",
          (d, v, d, tag, per_vnode))


def ghost_rows(dsn, vnodes, tag):
    return q(dsn, "SELECT count(*) FROM manta WHERE _vnode = ANY(%s) AND owner = %s", (vnodes, tag))[0][0]


def test_census_on_a_lab_shard_found_through_zookeeper(world):
    r = run_module("moray_vnode_rows_info", {"shard": world["s1"], "zk_servers": world["zk"], "top": 5,
                                             "ring": world["ring"], "bytes": "exact"}, check=True)
    assert not r.get("failed"), r
    assert r["changed"] is False
    by = {t["name"]: t for t in r["census"]["tables"]}
    n = q(world["dsn1"], "SELECT count(*) FROM manta WHERE _vnode IS NOT NULL")[0][0]
    assert abs(by["manta"]["rows"] - n) <= 50            # the lab may be taking writes
    assert r["ownership"]["pnode"] == moray_ring.pnode(world["s1"])
    assert r["ownership"]["owned_vnodes"] == len(world["topo"].vnodes_of(moray_ring.pnode(world["s1"])))


def test_ghost_rows_are_deleted_from_the_shard_that_no_longer_owns_them(world, tmp_path):
    tag = str(uuid.uuid4())
    ghosts = world["ghosts"]
    plant(world["dsn1"], tag, ghosts)
    plant(world["dsn2"], tag, ghosts)
    others_before = q(world["dsn1"], "SELECT count(*) FROM manta WHERE NOT (_vnode = ANY(%s))", (ghosts,))[0][0]
    try:
        base = {"shard": world["s1"], "zk_servers": world["zk"], "owner_shard": world["s2"],
                "owner_dsn": world["dsn2"], "ring": world["ring"], "vnodes": ghosts,
                "progress_file": str(tmp_path / "progress.json")}
        r = run_module("moray_vnode_rows", base, check=True, diff=True)
        assert not r.get("failed"), r
        assert r["changed"] is True and r["owner_check"]["ok"] is True
        assert sum(int(n) for n in r["would_delete"]["manta"].values()) >= 150
        assert ghost_rows(world["dsn1"], ghosts, tag) == 150
        r = run_module("moray_vnode_rows", base, diff=True)
        assert not r.get("failed"), r
        assert r["verified"] is True and r["deleted"]["manta"] >= 150
        assert r["database"]["in_recovery"] is False
        assert ghost_rows(world["dsn1"], ghosts, tag) == 0
        assert ghost_rows(world["dsn2"], ghosts, tag) == 150            # the owner keeps them
        others_after = q(world["dsn1"], "SELECT count(*) FROM manta WHERE NOT (_vnode = ANY(%s))", (ghosts,))[0][0]
        assert others_after >= others_before                              # nothing else was touched
        assert not q(world["dsn1"], "SELECT 1 FROM manta_directory_counts WHERE _key LIKE %s",
                     (f"/{tag}/%",))
        r = run_module("moray_vnode_rows", base)
        assert r["changed"] is False
        # deleting the owner's copy is refused by the ring: the owner owns those vnodes
        r = run_module("moray_vnode_rows", dict(base, shard=world["s2"], dsn=world["dsn2"],
                                                owner_shard=world["s1"], owner_dsn=world["dsn1"]))
        assert r["failed"] and "live data and are never deleted" in r["msg"]
    finally:
        q(world["dsn2"], "DELETE FROM manta WHERE owner = %s", (tag,))
        q(world["dsn2"], "DELETE FROM manta_directory_counts WHERE _key LIKE %s", (f"/{tag}/%",))
        q(world["dsn1"], "DELETE FROM manta WHERE owner = %s", (tag,))
        q(world["dsn1"], "DELETE FROM manta_directory_counts WHERE _key LIKE %s", (f"/{tag}/%",))


def test_a_lab_split_plan_covers_the_shard(world):
    r = run_module("moray_vnode_rows_info", {"shard": world["s1"], "dsn": world["dsn1"], "ring": world["ring"],
                                             "bytes": "none", "top": 0, "plan": {"target": "half"}})
    assert not r.get("failed"), r
    plan = r["plan"]
    own = world["topo"].vnodes_of(moray_ring.pnode(world["s1"]))
    assert plan["total"]["vnodes"] == len(own)
    assert plan["stay"]["vnode_count"] + plan["moves"][0]["vnode_count"] == len(own)
    assert json.dumps(plan)                                   # plain JSON types only
