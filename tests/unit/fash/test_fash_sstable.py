"""The direct table writer produces the same database as LevelDB's own write path."""
import os
import struct

import plyvel
import pytest

from ansible_collections.manta.ops.plugins.module_utils.fash import Topology, dump_ring, open_ring, write_topology
from ansible_collections.manta.ops.plugins.module_utils.fash import sstable

from fash_vectors import P1, P2, P3, P4


def _topo():
    topo = Topology.create([P1, P2, P3], 5000)
    topo.remap(list(range(0, 5000, 7)), P4)
    topo.remap([1, 2], "tcp://10.moray.example.com:2020")       # a pnode name of another length
    topo.set_data([1, 2, 3, 4999], "ro")
    topo.set_data([5], {"x": "\u00e9", "n": [1, 2.5]})
    topo.add_pnode("tcp://9.moray.example.com:2020")               # empty pnode
    return topo


@pytest.mark.parametrize("fork,parts", [("1", (1, 1)), ("1", (2, 3)), ("0", (3, 2))])
def test_same_as_leveldb_write_path(tmp_path, monkeypatch, fork, parts):
    monkeypatch.setenv("MANTA_FASH_NO_FORK", "0" if fork == "1" else "1")
    monkeypatch.setattr(sstable, "SPLIT_MIN_VNODES", 0)
    monkeypatch.setattr(sstable, "SPLIT_PARTS", parts)
    monkeypatch.setenv("MANTA_FASH_PROCS", "4" if parts != (1, 1) else "2")
    topo = _topo()
    write_topology(topo, str(tmp_path / "direct"), engine="sstable")
    write_topology(topo, str(tmp_path / "plyvel"), engine="plyvel")
    k = sum(parts)
    assert sorted(os.listdir(tmp_path / "direct")) == ["%06d.ldb" % i for i in range(2, 2 + k)] + [
        "CURRENT", "MANIFEST-%06d" % (2 + k)]
    assert dump_ring(str(tmp_path / "direct")) == dump_ring(str(tmp_path / "plyvel"))
    db = plyvel.DB(str(tmp_path / "direct"), paranoid_checks=True)
    try:
        assert sum(1 for _ in db.iterator(verify_checksums=True)) == 2 * 5000 + 6 + 6   # vnode keys, 6 pnode lists, 6 others
        assert db.get(b"/VNODE/4998", verify_checksums=True) == b'"%s"' % P4.encode()
        key5 = b"/PNODE/%s/5" % topo.pnode_of(5).encode()
        assert db.get(key5, verify_checksums=True) == '{"x":"\u00e9","n":[1,2.5]}'.encode()
    finally:
        db.close()
    with open_ring(str(tmp_path / "direct")) as r:
        assert r.verify() == []
        r.remap([0], P2)      # and LevelDB writes on top of it
    assert read_back(tmp_path / "direct").pnode_of(0) == P2


def read_back(path):
    from ansible_collections.manta.ops.plugins.module_utils.fash import read_topology
    return read_topology(str(path))


def test_unit_templates_do_not_depend_on_the_cache(tmp_path, monkeypatch):
    # a unit rendered from a template cached for another prefix is the unit rendered for its own
    topo = _topo()
    write_topology(topo, str(tmp_path / "cached"), engine="sstable")
    monkeypatch.setattr(sstable, "TEMPLATE_CACHE", 1)
    write_topology(topo, str(tmp_path / "uncached"), engine="sstable")
    for name in ("000002.ldb", "000003.ldb"):
        assert (tmp_path / "cached" / name).read_bytes() == (tmp_path / "uncached" / name).read_bytes()


def _check_table_ring(path, expected):
    """Read ``path`` with LevelDB's checks on: same items as ``expected``, in both directions and by seeks."""
    db = plyvel.DB(str(path), paranoid_checks=True)
    try:
        items = list(db.iterator(verify_checksums=True))
        assert items == expected
        assert list(db.iterator(reverse=True, verify_checksums=True)) == expected[::-1]
        for k, v in expected[::max(1, len(expected) // 200)]:
            assert db.get(k, verify_checksums=True) == v
            assert next(db.iterator(start=k + b"\x00", include_value=False), None) == next(
                (x for x, _ in expected if x > k), None)
    finally:
        db.close()


@pytest.mark.parametrize("n", [1, 9, 10, 11, 99, 100, 101, 111, 1000, 1001, 1234, 10000, 12345])
@pytest.mark.parametrize("shape", ["fresh1", "fresh3", "fresh5", "remapped"])
def test_vnode_counts_and_shapes(tmp_path, n, shape):
    # runs are walked as decimal subtrees: counts at and around powers of ten, partial subtrees,
    # one pnode or many, units with scattered owners and data
    import random
    pn = ["tcp://%d.moray.example.com:2020" % i for i in range(1, 6)]
    if shape == "remapped":
        topo = Topology.create(pn[:3], n)
        rnd = random.Random(n)
        topo.remap(rnd.sample(range(n), max(1, n // 7)), P4)
        topo.remap([0], "tcp://10.moray.example.com:2020")
        topo.set_data(rnd.sample(range(n), min(n, 5)), "ro")
        topo.add_pnode("tcp://9.moray.example.com:2020")
    else:
        topo = Topology.create(pn[:int(shape[-1])], n)
    write_topology(topo, str(tmp_path / "direct"), engine="sstable")
    write_topology(topo, str(tmp_path / "plyvel"), engine="plyvel")
    db = plyvel.DB(str(tmp_path / "plyvel"))
    try:
        expected = list(db.iterator())
    finally:
        db.close()
    assert len(expected) == 2 * n + 6 + len(topo.pnodes())
    _check_table_ring(tmp_path / "direct", expected)


def test_interleaving_pnode_names_fall_back(tmp_path):
    # "/PNODE/A-1" sorts between "/PNODE/A" and "/PNODE/A/0": the writer hands such rings to LevelDB
    topo = Topology.create(["A", "A-1", "A/x"], 30)
    write_topology(topo, str(tmp_path / "r"), strict_pnodes=False, engine="sstable")
    write_topology(topo, str(tmp_path / "p"), strict_pnodes=False, engine="plyvel")
    assert dump_ring(str(tmp_path / "r")) == dump_ring(str(tmp_path / "p"))


def test_split_cuts_runs_evenly():
    items = [("key", b"/PNODE", b"[]"), ("list", 0), ("data", 0, 0, 10), ("list", 1), ("data", 1, 0, 7)]
    chunks = sstable._RingLayout.split(items, 3)
    assert [sum((it[3] - it[2]) if it[0] == "data" else 1 for it in c) for c in chunks] == [7, 7, 6]
    assert chunks[0] == [("key", b"/PNODE", b"[]"), ("list", 0), ("data", 0, 0, 5)]
    assert chunks[1] == [("data", 0, 5, 10), ("list", 1), ("data", 1, 0, 1)]
    assert chunks[2] == [("data", 1, 1, 7)]
    assert sstable._RingLayout.split([("vnode", 0, 10)], 4) == [[("vnode", 0, 3)], [("vnode", 3, 6)],
                                                                 [("vnode", 6, 9)], [("vnode", 9, 10)]]


def test_sst_names(tmp_path):
    write_topology(Topology.create([P1, P2], 100), str(tmp_path / "r"), sst=True)
    assert sorted(f for f in os.listdir(tmp_path / "r") if f.endswith(("sst", "ldb"))) == ["000002.sst", "000003.sst"]
    assert read_back(tmp_path / "r").counts() == {P1: 50, P2: 50}


def _unframe(data):
    """Decode LevelDB log framing (for the test only)."""
    out, rec, pos = [], b"", 0
    while pos + 7 <= len(data):
        block_left = 32768 - pos % 32768
        if block_left < 7:
            pos += block_left
            continue
        crc, length, rtype = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + 7:pos + 7 + length]
        assert crc == sstable.masked_crc(bytes([rtype]) + chunk)
        rec += chunk
        pos += 7 + length
        if rtype in (1, 4):
            out.append(rec)
            rec = b""
    return out


def test_log_framing_and_helpers():
    small = sstable._log_records(b"abc")
    assert _unframe(small) == [b"abc"]
    big = bytes(range(256)) * 400          # 102400 bytes: FIRST, MIDDLE..., LAST fragments
    assert _unframe(sstable._log_records(big)) == [big]
    assert sstable.varint(300) == b"\xac\x02"
    assert sstable._level_for(60 << 20) == 2 and sstable._level_for(1 << 20) == 1
    assert sstable._level_for(600 << 20) == 3
