"""The LevelDB store, byte for byte against node-fash's dumps (fash.md §4, §5; cli_transcript.txt)."""
import json
import os
import subprocess
import sys

import plyvel
import pytest

from ansible_collections.manta.ops.plugins.module_utils.fash import (
    RingCorruptError, RingError, RingExistsError, RingInputError, RingLockedError, RingNotFoundError,
    Topology, create_ring, dump_ring, open_ring, read_topology, write_topology)

from fash_vectors import (P1, P2, P3, P4, PNODES3, dump_text, normalize_vnode_data, transcript_dumps,
                          transcript_get_nodes, vector_path)


def _dump(path):
    return dump_text(dump_ring(path))


@pytest.fixture(scope="module")
def dumps():
    return transcript_dumps()


def test_transcript_sequence(tmp_path, dumps):
    ring = str(tmp_path / "ringA")
    create_ring(ring, PNODES3, 12, "sha256")
    assert _dump(ring) == dumps["dump after create"]
    with open_ring(ring) as r:
        for key, want in transcript_get_nodes():
            assert r.get_node(key) == (want["pnode"], want["vnode"], want["data"]), key
        assert r.set_data([4, 7], "ro") == [4, 7]
    assert _dump(ring) == dumps["dump after add-data ro"]
    with open_ring(ring) as r:
        assert r.data_vnodes() == {4: "ro", 7: "ro"}
        assert r.remap([4], P4) == [4]
    assert _dump(ring) == dumps["dump after remap to new pnode"]
    with open_ring(ring) as r:
        assert r.remap("0, 3,6 ,9", P2) == [0, 3, 6, 9]
        assert r.pnodes() == [P1, P2, P3, P4]
        assert r.vnodes_of(P1) == []
        assert r.vnodes_of(P2) == [1, 7, 10, 0, 3, 6, 9]
        printed = json.loads(r.to_json(include_empty=False))
    assert printed == json.loads(vector_path("ringA.json").read_text()) | {
        "pnodeToVnodeMap": {**json.loads(vector_path("ringA.json").read_text())["pnodeToVnodeMap"],
                            P2: {"0": 1, "1": 1, "3": 1, "6": 1, "7": "ro", "9": 1, "10": 1}}}
    assert _dump(ring) == dumps["dump after emptying P1"]
    with open_ring(ring) as r:
        r.remove_pnode(P1)
    assert _dump(ring) == dumps["dump after remove-pnode"]
    with open_ring(ring) as r:
        assert r.set_data([7], None) == [7]
        assert r.verify() == []
    assert _dump(ring) == dumps["dump after clearing"]
    # print-hash -> deserialize-ring -> ringB
    ring_b = str(tmp_path / "ringB")
    topo = Topology.from_json(vector_path("ringA.json").read_text())
    write_topology(topo, ring_b)
    assert _dump(ring_b) == normalize_vnode_data(dumps["dump ringB"])
    assert read_topology(ring) == read_topology(ring_b)


def test_deserialize_topo_d(tmp_path):
    want = [tuple(line.split(" = ", 1)) for line in vector_path("ringD_deserialized_dump.txt").read_text(
        encoding="utf-8").splitlines() if " = " in line]
    topo = Topology.from_json(vector_path("topoD.json").read_text())
    with pytest.raises(RingInputError, match="'42' is not of the form tcp://<host>:<port>"):
        write_topology(topo, str(tmp_path / "strict"))
    assert not (tmp_path / "strict").exists()
    write_topology(topo, str(tmp_path / "ringD"), strict_pnodes=False)
    assert _dump(str(tmp_path / "ringD")) == normalize_vnode_data(want)


def test_emoray_routing_vectors(tmp_path):
    from ansible_collections.manta.ops.plugins.module_utils.fash import node_for_path, route, transform_key
    ring = str(tmp_path / "ring")
    create_ring(ring, [P3, P1, P2], 12)
    rows = [json.loads(line) for line in vector_path("emoray_routing_ro4.jsonl").read_text().splitlines()
            if line.startswith("{")]
    assert len(rows) == 17
    with open_ring(ring) as r:
        r.set_data([4], "ro")
        topo = r.topology()
        for row in rows:
            assert transform_key(row["bucket"], row["key"]) == row["hashed"], row
            want = (row["node"]["pnode"], row["node"]["vnode"], row["node"]["data"])
            assert node_for_path(r, row["bucket"], row["key"]) == want, row
            assert node_for_path(topo, row["bucket"], row["key"]) == want, row
            assert route(r, row["bucket"], row["key"])["read_only"] == (row["put"] != "write ok")


def test_lock_is_reported_at_once(tmp_path):
    ring = str(tmp_path / "ring")
    create_ring(ring, PNODES3, 12)
    with open_ring(ring):
        with pytest.raises(RingLockedError, match=r"cannot lock .*/ring/LOCK") as exc:
            open_ring(ring, readonly=True)
        assert exc.value.lock_path == os.path.join(ring, "LOCK")
        # another process: LevelDB's fcntl lock, "Resource temporarily unavailable"
        code = ("import sys; from ansible_collections.manta.ops.plugins.module_utils.fash import *\n"
                "try:\n open_ring(sys.argv[1])\nexcept RingLockedError as e:\n print(e); sys.exit(3)\n")
        proc = subprocess.run([sys.executable, "-c", code, ring], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 3, proc.stderr
        assert ring + "/LOCK" in proc.stdout
    with open_ring(ring, readonly=True) as r:
        with pytest.raises(RingError, match="read-only"):
            r.remap([0], P4)


def test_missing_and_existing(tmp_path):
    with pytest.raises(RingNotFoundError, match="does not exist"):
        open_ring(str(tmp_path / "nope"))
    assert not (tmp_path / "nope").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(RingNotFoundError, match="no LevelDB CURRENT"):
        open_ring(str(tmp_path / "empty"))
    assert os.listdir(tmp_path / "empty") == []
    create_ring(str(tmp_path / "empty"), PNODES3, 6)   # an empty directory is fine
    with pytest.raises(RingExistsError, match="already holds a ring"):
        create_ring(str(tmp_path / "empty"), PNODES3, 6)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(RingExistsError, match="not empty"):
        create_ring(str(tmp_path / "junk"), PNODES3, 6)


@pytest.mark.parametrize("args,match", [
    (("tcp://a:1, tcp://a:1", 6), "listed more than once"),
    (("a, b", 6), "'a' is not of the form tcp://<host>:<port>"),
    (("tcp://a:99999", 6), "port 99999"),
    ((PNODES3, 0), "vnodes 0 is out of range"),
    ((PNODES3, "12"), "vnodes '12' is not an integer"),
    ((PNODES3, 12, "sha3"), "algorithm 'sha3' is not supported"),
])
def test_create_rejects_bad_input(tmp_path, args, match):
    with pytest.raises(RingInputError, match=match):
        create_ring(str(tmp_path / "r"), *args)
    assert not (tmp_path / "r").exists()


def _damage(path, key, value=None):
    db = plyvel.DB(path)
    if value is None:
        db.delete(key)
    else:
        db.put(key, value)
    db.close()


@pytest.mark.parametrize("key,value,match", [
    (b"COMPLETE", None, "key COMPLETE is missing"),
    (b"/VNODE/11", None, r"key /VNODE/11 \(the last vnode\) is missing"),
    (b"VERSION", b'"2.2.0"', "version 2.2.0 is not compatible"),
    (b"VERSION", None, "key VERSION is missing"),
    (b"ALGORITHM", b'{"NAME":"sha512","VNODE_HASH_INTERVAL":"ff"}', "sha512"),
    (b"VNODE_COUNT", b'"x"', "VNODE_COUNT"),
])
def test_corrupt_rings_refused(tmp_path, key, value, match):
    ring = str(tmp_path / "ring")
    create_ring(ring, PNODES3, 12)
    _damage(ring, key, value)
    with pytest.raises(RingCorruptError, match=match):
        open_ring(ring)
    # and the ring is unlocked again afterwards
    _damage(ring, b"COMPLETE", b"1")


def test_errors_leave_ring_unchanged(tmp_path):
    ring = str(tmp_path / "ring")
    create_ring(ring, PNODES3, 12)
    before = dump_ring(ring)
    with open_ring(ring) as r:
        with pytest.raises(RingInputError, match="vnode 5 already belongs to pnode " + P3):
            r.remap([0, 1, 5], P3)
        with pytest.raises(RingInputError, match="vnode 12 is out of range; valid vnodes are 0..11"):
            r.remap([0, 12], P3)
        with pytest.raises(RingInputError, match="vnode 99 is out of range"):
            r.set_data([1, 99], "ro")
        with pytest.raises(RingInputError, match="still maps to 4 vnodes"):
            r.remove_pnode(P2)
        with pytest.raises(RingInputError, match="pnode tcp://nope:2020 does not exist"):
            r.remove_pnode("tcp://nope:2020")
        with pytest.raises(RingInputError, match="pnode 'tcp://nope:2020' is not in the ring"):
            r.vnodes_of("tcp://nope:2020")
        with pytest.raises(ZeroDivisionError):
            with r.transaction():
                r.remap([0, 3, 6, 9], P4)
                r.set_data([4], "ro")
                1 / 0
    assert dump_ring(ring) == before


def test_transaction_is_one_batch(tmp_path):
    ring = str(tmp_path / "ring")
    create_ring(ring, PNODES3, 12)
    with open_ring(ring) as r:
        with r.transaction():
            r.remap([0, 3, 6, 9], P4)
            r.set_data([3], "ro")
            r.remove_pnode(P1)
            r.remap([3], P2)
        assert r.pnodes() == [P2, P3, P4]
        assert r.get_vnode(3) == (P2, "ro")
        assert r.verify() == []
        assert r.remap([0, 1, 2], P2, strict=False) == [0, 2]


def test_strings_in_vnode_data_are_handled(tmp_path):
    # a ring deserialized by node-fash stores VNODE_DATA as strings (fash.md §7 item 5)
    ring = str(tmp_path / "ring")
    create_ring(ring, PNODES3, 12)
    with open_ring(ring) as r:
        r.set_data([4], "ro")
    _damage(ring, b"VNODE_DATA", b'["4"]')
    with open_ring(ring) as r:
        assert r.data_vnodes() == {4: "ro"}
        r.set_data([4], None)
        assert r.data_vnodes() == {}
    assert dict(dump_text(dump_ring(ring)))["VNODE_DATA"] == "[]"


def test_sst_option(tmp_path):
    ring = str(tmp_path / "ring")
    create_ring(ring, PNODES3, 3000, sst=True)
    files = os.listdir(ring)
    assert any(f.endswith(".sst") for f in files) and not any(f.endswith(".ldb") for f in files)
    with open_ring(ring) as r:
        r.remap(list(range(0, 3000, 3)), P4)
    files = os.listdir(ring)
    assert not any(f.endswith(".ldb") for f in files), files
    assert read_topology(ring).counts()[P4] == 1000


def test_verify_finds_inconsistencies(tmp_path):
    ring = str(tmp_path / "ring")
    create_ring(ring, PNODES3, 12)
    _damage(ring, ("/PNODE/%s" % P1).encode(), b"[0,3,6]")
    _damage(ring, ("/PNODE/%s/4" % P2).encode())
    _damage(ring, b"VNODE_DATA", b"[5]")
    with open_ring(ring, readonly=True) as r:
        problems = r.verify()
        with pytest.raises(RingCorruptError, match="key /PNODE/%s/4 is missing" % P2):
            r.get_vnode(4)
    assert any("list /PNODE/%s does not match" % P1 in p for p in problems)
    assert any("1 data keys /PNODE/%s/<v> are missing" % P2 in p for p in problems)
    assert any("VNODE_DATA lists 5 but vnodes with data are none" in p for p in problems)
    with open_ring(ring) as r:
        with pytest.raises(RingCorruptError, match="vnode 9 does not exist in old pnode"):
            r.remap([9], P4)


def test_snapshot_reads_leave_the_ring_alone(tmp_path):
    from ansible_collections.manta.ops.plugins.module_utils.fash import snapshot_ring
    ring = str(tmp_path / "ring")
    create_ring(ring, PNODES3, 12)
    before = {f: os.stat(os.path.join(ring, f)).st_mtime_ns for f in os.listdir(ring)}
    t = read_topology(ring, snapshot=True)
    assert {f: os.stat(os.path.join(ring, f)).st_mtime_ns for f in os.listdir(ring)} == before
    assert t.counts() == {P1: 4, P2: 4, P3: 4}
    with open_ring(ring):                       # held, as by electric-moray
        with snapshot_ring(ring) as copy:
            assert copy != ring and os.path.exists(os.path.join(copy, "CURRENT"))
            assert read_topology(copy) == t


def test_repair_lost_pnode_list(tmp_path):
    # the real 2014 electric-moray test ring lacks /PNODE/tcp://172.20.1.31:2020 (fash.md §7 item 3)
    ring = str(tmp_path / "ring")
    create_ring(ring, PNODES3, 12)
    with open_ring(ring) as r:
        r.set_data([4], "ro")
    want = dump_ring(ring)
    _damage(ring, ("/PNODE/%s" % P2).encode())
    _damage(ring, b"VNODE_DATA")
    with open_ring(ring) as r:
        assert r.get_node("yunong") == (P2, 1, 1)             # routing is unaffected
        assert "key /PNODE/%s is missing" % P2 in r.verify()
        with pytest.raises(RingCorruptError, match="key /PNODE/%s .* is missing" % P2):
            r.remap([1], P4)
        assert r.repair() == ["rebuilt /PNODE/%s (4 vnodes)" % P2, "rebuilt VNODE_DATA"]
        assert r.verify() == [] and r.repair() == []
    assert dump_ring(ring) == want
