"""fash_ring and fash_ring_info run as Ansible runs them (tests/modrun.py)."""
import json
import os

import pytest

from ansible_collections.manta.ops.plugins.module_utils.fash import (
    create_ring, dump_ring, open_ring, read_topology)
from modrun import run_module

from fash_vectors import P1, P2, P3, P4, vector_path

PNODES = [P1, P2, P3]


def _ok(res):
    assert not res.get("failed"), res.get("msg")
    return res


def test_create_idempotent_check_and_diff(tmp_path):
    ring = str(tmp_path / "ring")
    args = {"path": ring, "vnodes": 12, "pnodes": PNODES}
    res = _ok(run_module("fash_ring", args, check=True, diff=True))
    assert res["changed"] and res["created"]
    assert not os.path.exists(ring)
    assert "absent" in res["diff"]["before"]
    res = _ok(run_module("fash_ring", args))
    assert res["changed"] and res["pnodes"] == {P1: 4, P2: 4, P3: 4}
    want = dump_ring(ring)
    res = _ok(run_module("fash_ring", args))
    assert not res["changed"]
    # changing what was asked
    args["remap"] = [{"vnodes": "0,3", "pnode": P4}]
    args["data"] = [{"vnodes": [4, 7], "value": "ro"}]
    res = _ok(run_module("fash_ring", args, check=True, diff=True))
    assert res["changed"] and not res["created"]
    assert dump_ring(ring) == want, "check mode changed the ring"
    assert res["pnodes"][P4] == 2
    assert "move 2 vnodes %s -> %s: 0,3" % (P1, P4) in res["diff"]["after"]
    assert 'data 1 -> "ro" on 2 vnodes: 4,7' in res["diff"]["after"]
    res = _ok(run_module("fash_ring", args))
    assert res["changed"]
    assert [a["action"] for a in res["actions"]] == ["remap", "set_data"]
    with open_ring(ring, readonly=True) as r:
        assert r.get_vnode(0) == (P4, 1) and r.get_vnode(4) == (P2, "ro")
        assert r.verify() == []
    assert not _ok(run_module("fash_ring", args))["changed"]
    res = _ok(run_module("fash_ring", {"path": ring, "vnodes": 12}, check=True))
    assert not res["changed"]


def test_remove_export_import(tmp_path):
    ring = str(tmp_path / "ring")
    create_ring(ring, PNODES, 12)
    dest = str(tmp_path / "ring.json")
    res = _ok(run_module("fash_ring", {"path": ring, "remap": [{"vnodes": "0-11", "pnode": P2}],
                                       "absent_pnodes": [P1, P3], "dest": dest}))
    assert res["changed"] and res["exported"] and res["pnodes"] == {P2: 12}
    assert json.loads(open(dest).read())["pnodeToVnodeMap"] == {P2: {str(v): 1 for v in range(12)}}
    assert not _ok(run_module("fash_ring", {"path": ring, "absent_pnodes": [P1], "dest": dest}))["changed"]
    # import: a new ring from JSON, then converge an existing ring onto JSON
    src = vector_path("ringA.json")
    ring2 = str(tmp_path / "ring2")
    res = _ok(run_module("fash_ring", {"path": ring2, "src": str(src)}))
    assert res["created"]
    res = _ok(run_module("fash_ring", {"path": ring, "src": str(src)}, diff=True))
    assert res["changed"]
    assert read_topology(ring) == read_topology(ring2)
    assert not _ok(run_module("fash_ring", {"path": ring, "src": str(src)}))["changed"]


@pytest.mark.parametrize("args,match", [
    ({"remap": [{"vnodes": "0,12", "pnode": P4}]}, r"remap\[0\]: vnode 12 is out of range; valid vnodes are 0..11"),
    ({"remap": [{"vnodes": "1,1", "pnode": P4}]}, r"vnode 1 is listed more than once"),
    ({"remap": [{"vnodes": "x", "pnode": P4}]}, r"vnode 'x' is not an integer"),
    ({"remap": [{"vnodes": [1], "pnode": "shard4"}]}, r"'shard4' is not of the form tcp://<host>:<port>"),
    ({"data": [{"vnodes": [-1], "value": "ro"}]}, r"data\[0\]: vnode -1 is out of range"),
    ({"absent_pnodes": [P1]}, r"pnode %s still has 4 vnodes" % P1),
    ({"vnodes": 13}, r"vnodes 13 does not match the existing ring .* which has 12 vnodes"),
    ({"algorithm": "md5"}, r"algorithm md5 does not match the existing ring's sha256"),
])
def test_bad_input_fails_before_writing(tmp_path, args, match):
    ring = str(tmp_path / "ring")
    create_ring(ring, PNODES, 12)
    before = dump_ring(ring)
    res = run_module("fash_ring", {"path": ring, **args})
    assert res.get("failed"), res
    import re
    assert re.search(match, res["msg"]), res["msg"]
    assert dump_ring(ring) == before


def test_bad_create_and_locked(tmp_path):
    ring = str(tmp_path / "ring")
    res = run_module("fash_ring", {"path": ring, "vnodes": 12, "pnodes": [P1, "nope"]})
    assert res["failed"] and "'nope' is not of the form tcp://<host>:<port>" in res["msg"]
    res = run_module("fash_ring", {"path": ring})
    assert res["failed"] and "give vnodes and pnodes" in res["msg"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"vnodes": 3, "pnodeToVnodeMap": {P1: {"0": 1, "1": 1}},
                               "algorithm": {"NAME": "sha256", "VNODE_HASH_INTERVAL": "55"}, "version": "2.1.0"}))
    res = run_module("fash_ring", {"path": ring, "src": str(bad)})
    assert res["failed"] and "missing 1 of its 3 vnodes" in res["msg"]
    assert not os.path.exists(ring)
    create_ring(ring, PNODES, 12)
    with open_ring(ring):
        res = run_module("fash_ring", {"path": ring, "remap": [{"vnodes": [0], "pnode": P4}]})
        assert res["failed"] and ring + "/LOCK" in res["msg"]
        # check mode and the info module read a copy, so they work while the ring is held
        assert _ok(run_module("fash_ring", {"path": ring, "remap": [{"vnodes": [0], "pnode": P4}]},
                              check=True))["changed"]
        assert _ok(run_module("fash_ring_info", {"path": ring}))["vnode_count"] == 12
        res = run_module("fash_ring_info", {"path": ring, "snapshot": False})
        assert res["failed"] and ring + "/LOCK" in res["msg"]


def test_info(tmp_path):
    ring = str(tmp_path / "ring")
    create_ring(ring, PNODES, 12)
    with open_ring(ring) as r:
        r.set_data([4], "ro")
    other = str(tmp_path / "other")
    create_ring(other, PNODES, 12)
    with open_ring(other) as r:
        r.remap([0, 3], P4)
    res = _ok(run_module("fash_ring_info", {
        "path": ring, "pnode": P2, "keys": ["yunong"], "paths": ["/poseidon/stor/foo/bar.txt"],
        "compare_to": other, "verify": True}))
    assert not res["changed"]
    assert res["pnode_counts"] == {P1: 4, P2: 4, P3: 4}
    assert res["data_vnodes"] == {"4": "ro"} and res["read_only_vnodes"] == "4"
    assert res["vnodes"] == [1, 4, 7, 10] and res["vnode_ranges"] == "1,4,7,10"
    assert res["nodes"][0] == {"key": "yunong", "hashed": "yunong", "pnode": P2, "vnode": 1, "data": 1}
    assert res["nodes"][1]["hashed"] == "/poseidon/stor/foo" and res["nodes"][1]["read_only"]
    assert res["problems"] == []
    assert res["diff"]["moved"] == [{"from": P1, "to": P4, "count": 2, "ranges": "0,3"}]
    assert res["diff"]["data"][0]["ranges"] == "4"
    res = _ok(run_module("fash_ring_info", {"path": str(vector_path("ringA.json")), "pnode": P4}))
    assert res["vnodes"] == [4]
    res = run_module("fash_ring_info", {"path": ring, "pnode": "tcp://nope:2020"})
    assert res["failed"] and "'tcp://nope:2020' is not in the ring" in res["msg"]


def test_diff_is_compact_for_big_moves(tmp_path):
    ring = str(tmp_path / "ring")
    create_ring(ring, PNODES, 60000)
    with open_ring(ring, readonly=True) as r:
        moving = r.vnodes_of(P1)[::2]                 # 10,000 vnodes, every 6th vnode: no long ranges
    res = _ok(run_module("fash_ring", {"path": ring, "remap": [{"vnodes": moving, "pnode": P4}],
                                       "data": [{"vnodes": "0-9999", "value": "ro"}]}, check=True, diff=True))
    text = res["diff"]["before"] + res["diff"]["after"]
    assert len(text) < 2000, text
    assert "move 10000 vnodes %s -> %s" % (P1, P4) in text
    assert 'data 1 -> "ro" on 10000 vnodes: 0-9999' in text
    assert res["ring_diff"]["moved_count"] == 10000 and "vnodes" not in res["ring_diff"]["moved"][0]
    assert res["actions"][0]["count"] == 10000 and len(res["actions"][0]["ranges"]) <= 303
    res = _ok(run_module("fash_ring", {"path": ring, "remap": [{"vnodes": moving, "pnode": P4}]}))
    assert res["pnodes"][P4] == 10000
    res = _ok(run_module("fash_ring", {"path": ring, "remap": [{"vnodes": moving, "pnode": P4}]}))
    assert not res["changed"]


def test_existing_ring_algorithm_and_sst(tmp_path):
    ring = str(tmp_path / "md5")
    create_ring(ring, PNODES, 12, algorithm="md5")
    res = _ok(run_module("fash_ring", {"path": ring, "vnodes": 12, "pnodes": PNODES}))
    assert not res["changed"]                      # algorithm not given: the ring's own is fine
    res = run_module("fash_ring", {"path": ring, "algorithm": "sha256"})
    assert res["failed"] and "algorithm sha256 does not match the existing ring's md5" in res["msg"]
    sst = str(tmp_path / "sst")
    res = _ok(run_module("fash_ring", {"path": sst, "vnodes": 30, "pnodes": PNODES, "sst": True,
                                       "data": [{"vnodes": [1], "value": "ro"}]}))
    assert res["created"] and res["data_vnodes"] == 1
    assert sorted(f for f in os.listdir(sst) if f.endswith((".sst", ".ldb"))) == ["000002.sst", "000003.sst"]
    res = _ok(run_module("fash_ring", {"path": sst, "remap": [{"vnodes": "0-5", "pnode": P4}]}))
    assert res["changed"] and not any(f.endswith(".ldb") for f in os.listdir(sst))
