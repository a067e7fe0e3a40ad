"""manta-fash, the drop-in for node-fash's fash command (fash.md §5.2-5.3)."""
import io
import json

import pytest

from ansible_collections.manta.ops.plugins.module_utils.fash import Topology, dump_ring, open_ring
from ansible_collections.manta.ops.plugins.module_utils.fash.cli import main

from fash_vectors import P1, P2, P3, P4, PNODES3, dump_text, normalize_vnode_data, transcript_dumps, vector_path


def fash(capsys, *args, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_transcript_through_the_cli(tmp_path, capsys, monkeypatch):
    dumps = transcript_dumps()
    ring = str(tmp_path / "ringA")
    assert fash(capsys, "create", "-v", 12, "-a", "sha256", "-b", "leveldb", "-l", ring, "-p", PNODES3)[0] == 0
    assert dump_text(dump_ring(ring)) == dumps["dump after create"]
    rc, out, _ = fash(capsys, "get-node", "-b", "leveldb", "-l", ring, "/poseidon/stor/foo")
    assert json.loads(out) == {"pnode": P2, "vnode": 4, "data": 1}
    rc, out, _ = fash(capsys, "add-data", "-b", "leveldb", "-l", ring, "-v", "4,7", "-d", "ro")
    assert out.splitlines() == ['{"4":"ro"}', '{"7":"ro"}']
    assert dump_text(dump_ring(ring)) == dumps["dump after add-data ro"]
    rc, out, _ = fash(capsys, "get-data-vnodes", "-l", ring, "-v")
    assert json.loads(out) == {"vnodeArray": [4, 7], "vnodes": {"4": {"pnode": P2, "vnodeData": "ro"},
                                                                "7": {"pnode": P2, "vnodeData": "ro"}}}
    rc, out, _ = fash(capsys, "get-vnode-pnode-and-data", "-l", ring, "-v", "4", "5")
    assert json.loads(out) == {"vnodes": {"4": {"pnode": P2, "vnodeData": "ro"}, "5": {"pnode": P3, "vnodeData": 1}}}
    rc, out, _ = fash(capsys, "remap-vnode", "-b", "leveldb", "-l", ring, "-v", "4", "-p", P4)
    assert out == '{"%s":"4"}\n' % P4
    assert dump_text(dump_ring(ring)) == dumps["dump after remap to new pnode"]
    assert fash(capsys, "remap-vnode", "-b", "leveldb", "-l", ring, "-v", "0, 3,6 ,9", "-p", P2)[0] == 0
    assert dump_text(dump_ring(ring)) == dumps["dump after emptying P1"]
    assert json.loads(fash(capsys, "get-pnodes", "-b", "leveldb", "-l", ring)[1]) == [P1, P2, P3, P4]
    assert json.loads(fash(capsys, "get-vnodes", "-b", "leveldb", "-l", ring, P1)[1]) == []
    assert json.loads(fash(capsys, "get-vnodes", "-b", "leveldb", "-l", ring, P2)[1]) == [1, 7, 10, 0, 3, 6, 9]
    rc, out, _ = fash(capsys, "print-hash", "-b", "leveldb", "-l", ring, "--omit-empty")
    assert json.loads(out) == json.loads(vector_path("ringA.json").read_text()) | {
        "pnodeToVnodeMap": json.loads(out)["pnodeToVnodeMap"]}
    assert json.loads(out)["pnodeToVnodeMap"][P2]["7"] == "ro"
    assert fash(capsys, "remove-pnode", "-b", "leveldb", "-l", ring, "-p", P1)[0] == 0
    assert dump_text(dump_ring(ring)) == dumps["dump after remove-pnode"]
    assert fash(capsys, "add-data", "-b", "leveldb", "-l", ring, "-v", "7", "-q")[0] == 0
    assert dump_text(dump_ring(ring)) == dumps["dump after clearing"]
    ring_b = str(tmp_path / "ringB")
    assert fash(capsys, "deserialize-ring", "-l", ring_b, stdin=vector_path("ringA.json").read_text(),
                monkeypatch=monkeypatch)[0] == 0
    assert dump_text(dump_ring(ring_b)) == normalize_vnode_data(dumps["dump ringB"])
    # node-fash reports {"tcp://2...":{"removed":[0,3,6,9],"added":[0,3,6,9]}} here; the rings are the same
    assert fash(capsys, "diff", "-b", "leveldb", ring, ring_b) == (0, "", "")


@pytest.mark.parametrize("args,match", [
    (["remap-vnode", "-v", "5", "-p", P3], "vnode 5 already belongs to pnode " + P3),
    (["remap-vnode", "-v", "12", "-p", P3], "vnode 12 is out of range; valid vnodes are 0..11"),
    (["remap-vnode", "-v", "x, 8 9q ,-1", "-p", P4], "vnode 'x' is not an integer"),
    (["remap-vnode", "-v", "1,2,1", "-p", P4], "vnode 1 is listed more than once"),
    (["remap-vnode", "-v", "1", "-p", "shard4"], "'shard4' is not of the form tcp://<host>:<port>"),
    (["remap-vnode", "-v", "1"], "-p/--pnode"),
    (["remove-pnode", "-p", P2], "still maps to 4 vnodes"),
    (["remove-pnode", "-p", "tcp://nope:2020"], "pnode tcp://nope:2020 does not exist"),
    (["get-vnodes", "tcp://nope:2020"], "'tcp://nope:2020' is not in the ring"),
    (["add-data", "-v", "12", "-d", "ro"], "vnode 12 is out of range"),
    (["get-node", "-b", "bogus", "foo"], "backend must be one of memory or leveldb"),
])
def test_errors_are_named_and_nothing_is_written(tmp_path, capsys, args, match):
    ring = str(tmp_path / "ring")
    fash(capsys, "create", "-v", 12, "-b", "leveldb", "-l", ring, "-p", PNODES3)
    before = dump_ring(ring)
    rc, out, err = fash(capsys, *args, "-l", ring)
    assert rc == 1
    assert match in err and err.startswith("manta-fash: error: ") and err.count("\n") == 1, err
    assert dump_ring(ring) == before


def test_create_errors(tmp_path, capsys):
    ring = str(tmp_path / "r")
    assert "listed more than once" in fash(capsys, "create", "-v", 6, "-b", "leveldb", "-l", ring, "-p", "tcp://a:1, tcp://a:1")[2]
    assert "algorithm 'sha3' is not supported" in fash(capsys, "create", "-v", 6, "-a", "sha3", "-l", ring, "-p", P1)[2]
    assert "'x' is not an integer" in fash(capsys, "create", "-v", "x", "-l", ring, "-p", P1)[2]
    assert not (tmp_path / "r").exists()
    fash(capsys, "create", "-v", 6, "-b", "leveldb", "-l", ring, "-p", P1)
    assert "already holds a ring" in fash(capsys, "create", "-v", 6, "-b", "leveldb", "-l", ring, "-p", P1)[2]
    assert "no ring at" in fash(capsys, "get-node", "-b", "leveldb", "-l", str(tmp_path / "nope"), "foo")[2]


def test_long_vnode_lists_from_file_and_stdin(tmp_path, capsys, monkeypatch):
    ring = str(tmp_path / "ring")
    fash(capsys, "create", "-v", 300000, "-b", "leveldb", "-l", ring, "-p", PNODES3)
    vs = list(range(0, 300000, 3))                      # 100,000 vnodes: all of P1
    (tmp_path / "list").write_text("\n".join(map(str, vs)))
    rc, out, err = fash(capsys, "remap-vnode", "-l", ring, "-p", P4, "-v", "@%s" % (tmp_path / "list"), "-q")
    assert rc == 0 and out == "", err
    with open_ring(ring, readonly=True) as r:
        assert r.pnode_counts() == {P1: 0, P2: 100000, P3: 100000, P4: 100000}
        assert r.vnodes_of(P4) == vs
    rc, out, err = fash(capsys, "add-data", "-l", ring, "-d", "ro", "-v", "-", stdin=" ".join(map(str, vs[:5000])),
                        monkeypatch=monkeypatch)
    assert rc == 0 and len(out.splitlines()) == 5000
    rc, out, _ = fash(capsys, "get-data-vnodes", "-l", ring)
    assert json.loads(out)["vnodeArray"] == vs[:5000]


def test_memory_backend_and_diff(tmp_path, capsys, monkeypatch):
    mem = tmp_path / "mem6.json"
    mem.write_text(vector_path("mem6.json").read_text())
    rc, out, _ = fash(capsys, "create", "-v", 6, "-b", "memory", "-p", "C, A, B", "--any-pnode", "-o")
    assert out.strip() == vector_path("mem6.json").read_text().strip()
    rc, out, _ = fash(capsys, "remap-vnode", "-b", "memory", "-l", mem, "-v", "0,3", "-p", "D", "--any-pnode", "-q", "-o")
    assert out.strip() == vector_path("mem6b.json").read_text().strip()
    assert mem.read_text() == vector_path("mem6.json").read_text()       # never written back
    rc, out, _ = fash(capsys, "get-node", "-l", mem, "yunong")
    assert json.loads(out) == {"pnode": "A", "vnode": 0, "data": 1}    # 6 vnodes: yunong -> 0
    rc, out, _ = fash(capsys, "get-node", "-l", mem, "--bucket", "manta", "/poseidon/stor/foo/x", "/poseidon")
    assert [json.loads(x)["vnode"] for x in out.splitlines()] == [Topology.from_json(mem.read_text()).vnode_of(k)
                                                                   for k in ("/poseidon/stor/foo", "/")]
    other = tmp_path / "mem6b.json"
    other.write_text(vector_path("mem6b.json").read_text())
    rc, out, _ = fash(capsys, "diff", mem, other)
    assert json.loads(out) == {"A": {"removed": [0, 3]}, "D": {"added": [0, 3]}}
    rc, out, _ = fash(capsys, "diff", "-", other, "--detail", stdin=mem.read_text(), monkeypatch=monkeypatch)
    d = json.loads(out)
    assert d["moved"] == [{"from": "A", "to": "D", "count": 2, "ranges": "0,3", "vnodes": [0, 3]}]
    assert d["pnodes_added"] == ["D"]
    rc, out, err = fash(capsys, "print-hash", "-l", str(tmp_path / "missing.json"))
    assert rc == 1 and "missing.json" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(mem.read_text()), "version": "2.2.0"}))
    rc, out, err = fash(capsys, "deserialize-ring", "-l", str(tmp_path / "r"), "-f", bad)
    assert rc == 1 and "version 2.2.0 is not compatible" in err and not (tmp_path / "r").exists()


def test_verify_and_help(tmp_path, capsys):
    ring = str(tmp_path / "ring")
    fash(capsys, "create", "-v", 12, "-l", ring, "-p", PNODES3)
    rc, out, _ = fash(capsys, "verify", "-l", ring)
    assert rc == 0 and json.loads(out) == {"ok": True, "problems": []}
    assert main([]) == 1
    assert main(["remap-vnode", "--bogus"]) == 1
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
