"""Interop with the real node-fash 3.0.1 (installed from npm by scripts/setup.sh from tests/oracle/fash/package.json).

The same command sequence runs on node-fash's ``fash`` and on ``manta-fash``;
after every step the two LevelDB rings are dumped with plyvel and compared key
for key, and ``get-node`` answers are compared. Each side then loads the
other's rings. Small rings (12-2000 vnodes) keep this under a minute.
"""
import json
import os
import pathlib
import random
import re
import subprocess
import sys

import pytest

from ansible_collections.manta.ops.plugins.module_utils.fash import (
    Topology, create_ring, dump_ring, open_ring, read_topology)
from ansible_collections.manta.ops.plugins.module_utils.fash.cli import main as fash_main

ROOT = pathlib.Path(__file__).resolve().parents[2]
ORACLE = pathlib.Path(os.environ.get("FASH_ORACLE", ROOT / ".venv" / "fash-oracle" / "node_modules" / ".bin" / "fash"))
MANTA_FASH = ROOT / ".venv" / "bin" / "manta-fash"



@pytest.fixture(autouse=True)
def _oracle_installed():
    # The oracle is part of the test set-up (scripts/setup.sh): its absence is a failure.
    assert ORACLE.exists(), f"node-fash oracle not installed at {ORACLE}: run scripts/setup.sh"

P = ["tcp://%d.moray.example.com:2020" % i for i in range(1, 6)]


def node(*args, ok=True, timeout=120):
    proc = subprocess.run([str(ORACLE), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if ok and proc.returncode != 0:
        raise AssertionError("fash %s failed (%d): %s" % (" ".join(map(str, args)), proc.returncode, proc.stderr))
    return proc


def ours(*args, capsys=None):
    """manta-fash in-process (fast); returns (rc, stdout)."""
    rc = fash_main([str(a) for a in args])
    out = capsys.readouterr().out if capsys else ""
    return rc, out


def dumps_equal(a, b, normalize_vnode_data=False):
    da, db = dump_ring(a), dump_ring(b)
    if normalize_vnode_data:
        def norm(items):
            return [(k, json.dumps([int(x) for x in json.loads(v)], separators=(",", ":")).encode()
                     if k == b"VNODE_DATA" else v) for k, v in items]
        da, db = norm(da), norm(db)
    if da != db:
        ka, kb = dict(da), dict(db)
        diff = [k for k in sorted(set(ka) | set(kb)) if ka.get(k) != kb.get(k)][:10]
        raise AssertionError("rings differ at %d keys, e.g. %s" % (
            len([k for k in set(ka) | set(kb) if ka.get(k) != kb.get(k)]),
            [(k, ka.get(k), kb.get(k)) for k in diff]))
    return True


_NODE_RE = re.compile(r"\{ pnode: '([^']*)', vnode: (\d+), data: (.*) \}")


def node_get_node(ring, key):
    out = node("get-node", "-b", "leveldb", "-l", ring, key).stdout.strip()
    m = _NODE_RE.match(out)
    assert m, out
    data = m.group(3)
    return m.group(1), int(m.group(2)), (int(data) if data.isdigit() else data.strip("'"))


def test_sequence_identical_dumps(tmp_path, capsys):
    n = 1000
    a, b = str(tmp_path / "node"), str(tmp_path / "py")
    pn = ", ".join(P[:3])
    node("create", "-v", n, "-a", "sha256", "-b", "leveldb", "-l", a, "-p", pn)
    assert ours("create", "-v", n, "-a", "sha256", "-b", "leveldb", "-l", b, "-p", pn, capsys=capsys)[0] == 0
    assert dumps_equal(a, b)

    rnd = random.Random(7)
    ro = sorted(rnd.sample(range(n), 40))
    steps = [
        ("add-data", "-v", ",".join(map(str, ro[::-1])), "-d", "ro"),
        ("remap-vnode", "-v", " ".join(map(str, ro[:25])), "-p", P[3]),           # to a new pnode
        ("remap-vnode", "-v", ",".join(map(str, sorted(rnd.sample(range(0, n, 3), 30)))), "-p", P[4]),
        ("add-data", "-v", ",".join(map(str, ro[5:15]))),                           # clear
        ("remap-vnode", "-v", ",".join(map(str, ro[:10])), "-p", P[1]),
    ]
    for step in steps:
        # node rejects the whole list if one vnode already is on the pnode; keep lists valid for both
        node(*step, "-b", "leveldb", "-l", a)
        assert ours(*step, "-b", "leveldb", "-l", b, capsys=capsys)[0] == 0
        assert dumps_equal(a, b), step
    # empty P1 completely, then remove it (both sides)
    with open_ring(b, readonly=True) as r:
        p1 = r.vnodes_of(P[0])
    node("remap-vnode", "-v", ",".join(map(str, p1)), "-p", P[2], "-b", "leveldb", "-l", a, timeout=300)
    assert ours("remap-vnode", "-v", ",".join(map(str, p1)), "-p", P[2], "-b", "leveldb", "-l", b,
                capsys=capsys)[0] == 0
    assert dumps_equal(a, b)
    node("remove-pnode", "-p", P[0], "-b", "leveldb", "-l", a)
    assert ours("remove-pnode", "-p", P[0], "-b", "leveldb", "-l", b, capsys=capsys)[0] == 0
    assert dumps_equal(a, b)

    # get-node answers agree (node reads our ring, we read node's)
    keys = ["/poseidon/stor/foo", "yunong", "", "h\u00e9llo/w\u00f6rld"] + ["k%d" % i for i in range(4)]
    with open_ring(a, readonly=True) as ra:
        mine = [ra.get_node(k) for k in keys]
    for k, want in zip(keys, mine):
        assert node_get_node(b, k) == want, k
    with open_ring(a, readonly=True) as ra:
        assert ra.verify() == []

    # deserialize: our print-hash fed to both deserializers
    _, text = ours("print-hash", "-b", "leveldb", "-l", b, "--omit-empty", capsys=capsys)
    jf = tmp_path / "ring.json"
    jf.write_text(text)
    node("deserialize-ring", "-l", str(tmp_path / "node_b"), "-f", jf)
    assert ours("deserialize-ring", "-l", str(tmp_path / "py_b"), "-f", jf, capsys=capsys)[0] == 0
    # node-fash writes VNODE_DATA elements as strings after deserialize (fash.md §7 item 5); we write numbers
    assert dumps_equal(str(tmp_path / "node_b"), str(tmp_path / "py_b"), normalize_vnode_data=True)
    assert read_topology(str(tmp_path / "node_b")) == read_topology(b)

    # node's diff of its own rings vs ours (ours is correct with unsorted lists)
    out = node("diff", "-b", "leveldb", "-b", "leveldb", a, str(tmp_path / "node_b")).stdout.strip()
    assert out, "node-fash reports false differences for unsorted /PNODE lists"
    assert ours("diff", "-b", "leveldb", "-b", "leveldb", b, str(tmp_path / "py_b"), capsys=capsys) == (0, "")


def test_node_reads_python_rings_and_back(tmp_path, capsys):
    py = str(tmp_path / "py")
    create_ring(py, [P[2], P[0], P[1]], 2000, sst=True)   # .sst tables (mantav1 layout)
    assert any(f.endswith(".sst") for f in os.listdir(py))
    with open_ring(py) as r:
        r.set_data([4, 7], "ro")
        r.remap(list(range(0, 2000, 7)), P[3])
    keys = ("yunong", "/poseidon/stor", "x")
    with open_ring(py, readonly=True) as r:
        want = [r.get_node(k) for k in keys]
        pnodes = r.pnodes()
        counts = r.pnode_counts()
    for key, w in zip(keys, want):
        assert node_get_node(py, key) == w
    out = node("get-pnodes", "-b", "leveldb", "-l", py).stdout
    assert all(p in out for p in pnodes)
    out = node("get-data-vnodes", "-l", py).stdout
    assert "vnodeArray:  [ 4, 7 ]" in out
    # node mutates our ring; we still read it and it stays consistent
    node("add-data", "-b", "leveldb", "-l", py, "-v", "9", "-d", "ro")
    node("remap-vnode", "-b", "leveldb", "-l", py, "-v", "1", "-p", P[4])
    with open_ring(py, readonly=True) as r:
        assert r.verify() == []
        assert r.get_vnode(9) == (r.get_vnode(9)[0], "ro")
        assert r.get_vnode(1)[0] == P[4]
        assert sum(r.pnode_counts().values()) == sum(counts.values())

    # a ring node-fash created, deserialized from JSON, with md5
    nd = str(tmp_path / "nodemd5")
    node("create", "-v", 500, "-a", "md5", "-b", "leveldb", "-l", nd, "-p", ", ".join(P[:2]))
    with open_ring(nd, readonly=True) as r:
        assert r.algorithm_name == "md5"
        t = r.topology()
    t2 = Topology.create(P[:2], 500, "md5")
    assert t == t2
    for k in ("a", "b", "c"):
        assert node_get_node(nd, k) == t2.get_node(k)


def test_hash_and_interval_agree_large(tmp_path, capsys):
    # 20000 vnodes over 4 pnodes, odd algorithms: node and Python rings identical
    for algo in ("sha1", "SHA-256"):
        a, b = str(tmp_path / ("n" + algo)), str(tmp_path / ("p" + algo))
        node("create", "-v", 20000, "-a", algo, "-b", "leveldb", "-l", a, "-p", ", ".join(P[:4]))
        assert ours("create", "-v", 20000, "-a", algo, "-b", "leveldb", "-l", b, "-p", ", ".join(P[:4]),
                    capsys=capsys)[0] == 0
        assert dumps_equal(a, b)


def test_lock_errors_both_ways(tmp_path):
    ring = str(tmp_path / "ring")
    create_ring(ring, P[:3], 12)
    with open_ring(ring):
        proc = node("get-node", "-b", "leveldb", "-l", ring, "foo", ok=False)
        assert proc.returncode == 1 and "LOCK" in proc.stderr
    # and the console script itself, as operators run it
    proc = subprocess.run([str(MANTA_FASH), "get-node", "-l", ring, "yunong"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"pnode": P[1], "vnode": 1, "data": 1}
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from ansible_collections.manta.ops.plugins.module_utils.fash import open_ring\n"
                               "r = open_ring(sys.argv[1]); print('held', flush=True); time.sleep(60)", ring],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run([str(MANTA_FASH), "remap-vnode", "-l", ring, "-v", "0", "-p", P[3]],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and ring + "/LOCK" in proc.stderr
        assert "Resource temporarily unavailable" in proc.stderr
    finally:
        holder.kill()
        holder.wait()
