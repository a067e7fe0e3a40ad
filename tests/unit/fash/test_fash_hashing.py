"""Hashing, interval formatting and version checks against the node-fash vectors (fash.md §2)."""
import json

import pytest

from ansible_collections.manta.ops.plugins.module_utils.fash import (
    RingInputError, RingLookupError, Topology, algorithm_record, check_version, compute_interval, format_interval,
    normalize_algorithm, vnode_for_key)
from ansible_collections.manta.ops.plugins.module_utils.fash.hashing import version_problem

from fash_vectors import vector_path


def test_all_hash_vectors():
    doc = json.loads(vector_path("hash_vectors.json").read_text(encoding="utf-8"))
    rings = {}
    for case in doc["cases"]:
        key = (case["algorithm"], case["vnodes"])
        if key not in rings:
            rings[key] = Topology.create(doc["pnodes_given"], case["vnodes"], case["algorithm"])
        topo = rings[key]
        assert topo.algorithm["VNODE_HASH_INTERVAL"] == case["interval_hex"], case
        assert format_interval(compute_interval(case["algorithm"], case["vnodes"])) == case["interval_hex"]
        assert topo.get_node(case["key"]) == (case["pnode"], case["vnode"], 1), case
        assert vnode_for_key(case["key"], case["algorithm"], case["vnodes"]) == case["vnode"]
    assert len(doc["cases"]) == 99


@pytest.mark.parametrize("algo,n,hexstr", [
    ("sha256", 12, "15" + "55" * 31),
    ("sha256", 6, "2a" + "aa" * 31),
    ("sha256", 100, "028f5c28f5c28f5c28f5c28f5c28f5c28f5c28f5c28f5c28f5c28f5c28f5c28f"),
    ("sha256", 1000000, "10c6f7a0b5ed8d36b4c7f34938583621fafc8b0079a2834d26fa3fcc9ea9"),
    ("sha1", 12, "1555555555555555555555555555555555555555"),
    ("md5", 12, "15555555555555555555555555555555"),
    ("sha1", 1000000, "10c6f7a0b5ed8d36b4c7f34938583621fafc"),
    ("md5", 1000000, "10c6f7a0b5ed8d36b4c7f3493858"),
])
def test_interval_hex(algo, n, hexstr):
    assert algorithm_record(algo, n)["VNODE_HASH_INTERVAL"] == hexstr


def test_algorithm_names():
    for name in ("sha256", "sha-256", "SHA256", "SHA-256"):
        assert normalize_algorithm(name) == "sha256"
    assert normalize_algorithm("SHA-1") == "sha1"
    assert normalize_algorithm("MD5") == "md5"
    rec = algorithm_record("sha-256", 12)
    assert list(rec) == ["NAME", "MAX", "VNODE_HASH_INTERVAL"]
    assert rec["MAX"] == "F" * 64
    with pytest.raises(RingInputError, match="algorithm 'sha512' is not supported.*sha256"):
        normalize_algorithm("sha512")
    with pytest.raises(RingInputError, match="Sha256"):
        Topology.create(["A"], 12, "Sha256")


def test_no_clamping():
    # A ring whose interval is a quarter of the hash space: keys past N*I hash to vnodes 2 and 3,
    # which do not exist; fash does not clamp and neither does this library.
    doc = json.loads(Topology.create(["A", "B"], 2).to_json())
    doc["algorithm"]["VNODE_HASH_INTERVAL"] = format(int("F" * 64, 16) // 4, "x")
    topo = Topology.from_json(json.dumps(doc))
    vs = {k: topo.vnode_of(k) for k in map(str, range(40))}
    assert max(vs.values()) == 3
    past = next(k for k, v in vs.items() if v >= 2)
    with pytest.raises(RingLookupError, match="past the last vnode 1"):
        topo.get_node(past)


@pytest.mark.parametrize("version,ok", [
    ("2.1.0", True), ("2.0.0", True), ("x.y.z", True), ("1.0.0", True),
    ("2.1", False), ("2", False), ("1.5.0", False), ("2.0.9", False), ("2.2.0", False),
    ("3.0.0", False), ("2.1.0.0", False), (2.1, False),
])
def test_version_check(version, ok):
    assert (version_problem(version) is None) is ok
    if not ok:
        with pytest.raises(RingInputError, match="version"):
            check_version(version)


def test_unicode_key():
    topo = Topology.create(["C", "A", "B"], 12)
    assert topo.get_node("h\u00e9llo/w\u00f6rld") == ("B", 10, 1)
    # lone surrogates are hashed as U+FFFD, like Node
    assert topo.vnode_of("a\ud800") == topo.vnode_of("a\ufffd")


@pytest.mark.parametrize("x,text", [
    (1.0, "1"), (-0.0, "0"), (2.5, "2.5"), (0.1, "0.1"), (123.456, "123.456"), (1e20, "100000000000000000000"),
    (1e21, "1e+21"), (1e-7, "1e-7"), (0.000001, "0.000001"), (1.5e-7, "1.5e-7"), (-1.25e300, "-1.25e+300"),
])
def test_js_number_formatting(x, text):
    from ansible_collections.manta.ops.plugins.module_utils.fash.jsenc import js_dumps, js_number
    assert js_number(x) == text
    assert js_dumps({"a": [x, True, None, "\u00e9"]}) == '{"a":[%s,true,null,"\u00e9"]}' % text
