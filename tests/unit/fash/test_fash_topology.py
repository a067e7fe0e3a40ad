"""JSON topology serialize/deserialize (fash.md §3) and in-memory operations."""
import json

import pytest

from ansible_collections.manta.ops.plugins.module_utils.fash import RingInputError, Topology

from fash_vectors import P1, P2, P3, P4, PNODES3, vector_path


@pytest.mark.parametrize("name", ["mem6.json", "mem6b.json", "ringA.json"])
def test_round_trip_vectors(name):
    text = vector_path(name).read_text(encoding="utf-8").strip()
    assert Topology.from_json(text).to_json() == text


def test_create_matches_in_memory_serialization():
    assert Topology.create(["C", "A", "B"], 6).to_json() == vector_path("mem6.json").read_text().strip()


def test_remap_keeps_empty_pnode():
    topo = Topology.create(["A", "B", "C"], 6)
    assert topo.remap([0, 3], "D", strict_pnode=False) == [0, 3]
    assert topo.to_json() == vector_path("mem6b.json").read_text().strip()
    assert topo.counts() == {"A": 0, "B": 2, "C": 2, "D": 2}
    assert '"A"' not in topo.to_json(include_empty=False)
    topo.remove_pnode("A")
    assert topo.pnodes() == ["B", "C", "D"]


def test_topo_d_order_and_interval():
    topo = Topology.from_json(vector_path("topoD.json").read_text())
    assert topo.pnodes() == ["42", "zeta", "alpha"]
    assert topo.algorithm["VNODE_HASH_INTERVAL"] == "3f" + "ff" * 31
    assert list(topo.algorithm) == ["NAME", "EXTRA", "MAX", "VNODE_HASH_INTERVAL"]
    assert topo.data_vnodes() == {1: "ro", 2: "foo"}
    assert topo.vnodes_of("zeta") == [1, 3]
    assert topo.version == "2.1.0"


def _ring(**over):
    doc = json.loads(Topology.create([P1, P2, P3], 6).to_json())
    doc.update(over)
    return doc


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["pnodeToVnodeMap"][P1].pop("3"), r"missing 1 of its 6 vnodes \(first missing: \[3\]\)"),
    (lambda d: d["pnodeToVnodeMap"][P2].update({"0": 1}), r"vnode 0 appears more than once"),
    (lambda d: d["pnodeToVnodeMap"][P2].update({"6": 1}), r"vnode 6, out of range; valid vnodes are 0..5"),
    (lambda d: d["pnodeToVnodeMap"][P2].update({"x": 1}), r"vnode key 'x', which is not a decimal"),
    (lambda d: d["pnodeToVnodeMap"][P2].update({"03": 1}), r"vnode key '03'"),
    (lambda d: d.update(version="3.0.0"), r"version 3.0.0 is not compatible"),
    (lambda d: d.update(version=2.1), r"version \(string"),
    (lambda d: d.pop("vnodes"), r"vnodes must be a positive integer"),
    (lambda d: d.pop("pnodeToVnodeMap"), r"pnodeToVnodeMap"),
    (lambda d: d["algorithm"].update(NAME="sha512"), r"sha512"),
    (lambda d: d["algorithm"].update(VNODE_HASH_INTERVAL="xyz"), r"not a hex string"),
])
def test_from_json_rejects(mutate, match):
    doc = _ring()
    mutate(doc)
    with pytest.raises(RingInputError, match=match):
        Topology.from_json(json.dumps(doc))


def test_from_json_duplicate_keys_and_garbage():
    text = '{"vnodes":1,"pnodeToVnodeMap":{"A":{"0":1,"0":1}},"algorithm":{"NAME":"sha256",' \
           '"VNODE_HASH_INTERVAL":"ff"},"version":"2.1.0"}'
    with pytest.raises(RingInputError, match="key '0' more than once"):
        Topology.from_json(text)
    with pytest.raises(RingInputError, match="not valid JSON"):
        Topology.from_json("{nope")


def test_strict_pnodes_on_input():
    with pytest.raises(RingInputError, match="not of the form tcp://<host>:<port>"):
        Topology.from_json(vector_path("mem6.json").read_text(), strict_pnodes=True)


def test_operations_validate_before_changing():
    topo = Topology.create(PNODES3, 12, strict_pnodes=True)
    before = topo.to_json()
    with pytest.raises(RingInputError, match="vnode 4 already belongs to pnode " + P2):
        topo.remap([0, 4], P2)
    with pytest.raises(RingInputError, match="vnode 12 is out of range; valid vnodes are 0..11"):
        topo.remap([0, 12], P4)
    with pytest.raises(RingInputError, match="vnode 3 is listed more than once"):
        topo.remap([3, 3], P4)
    with pytest.raises(RingInputError, match="vnode 'x' is not an integer"):
        topo.remap(["x"], P4)
    with pytest.raises(RingInputError, match="tcp://<host>:<port>"):
        topo.remap([1], "P4")
    with pytest.raises(RingInputError, match="still maps to 4 vnodes"):
        topo.remove_pnode(P1)
    assert topo.to_json() == before
    assert topo.remap([4, 0], P2, strict=False) == [0]
    assert topo.set_data([4, 7], "ro") == [4, 7]
    assert topo.set_data([4], "ro") == []
    assert topo.get_node("/poseidon/stor/foo") == (P2, 4, "ro")
    assert topo.set_data([4], None) == [4]
    assert topo.data_vnodes() == {7: "ro"}


def test_create_sorts_like_javascript():
    topo = Topology.create(["b", "B", "a", "\u00e9"], 4)
    assert topo.pnodes() == ["B", "a", "b", "\u00e9"]
    assert [topo.pnode_of(v) for v in range(4)] == ["B", "a", "b", "\u00e9"]
    with pytest.raises(RingInputError, match="more than once"):
        Topology.create(["a", "a"], 6)
