"""Placement rules (module_utils/evacuate_plan.py): no node twice, the datacenter rule,
capacity, spread, round shares, snaplinks, copies of one object on several evacuated
nodes, and source order."""
import json

import pytest

from ansible_collections.manta.ops.plugins.module_utils import evacuate_plan as EP

GB = 1 << 30


def dest(sid, dc, head=10 * GB, **kw):
    return EP.Dest(sid, dc, head, **kw)


def row(oid, node, sharks, size=1000, key=None, dest_=None, obj=None, owner="o", siblings=None,
        shard="1.moray"):
    return {"oid": oid, "shard": shard, "key": key or f"/o/stor/k{oid}", "node": node,
            "object_id": obj or f"obj-{oid}", "path_owner": owner, "size": size, "md5": "x",
            "sharks": json.dumps(sharks), "dest": dest_, "siblings": siblings}


# lab-like layout: 1 and 4 in dc1, 2 in dc2, 3 in dc3 (alone)
EVAC3 = {"3": "dc3"}


def planner(dests, evac=None, **kw):
    return EP.Planner(dests, evac or EVAC3, **kw)


def test_never_a_datacenter_that_holds_a_copy_unless_its_own():
    p = planner([dest("1", "dc1"), dest("2", "dc2"), dest("4", "dc1")])
    # copy on 3 (dc3) with the other copy in dc1: dc1 is excluded, dc2 is fine
    r = p.place(row(1, "3", [["dc3", "3"], ["dc1", "1"]]))
    assert r[0] == "assign" and r[1] == "2"
    # other copy in dc2: dc1 (either node)
    r = p.place(row(2, "3", [["dc3", "3"], ["dc2", "2"]]))
    assert r[0] == "assign" and r[1] in ("1", "4")


def test_own_datacenter_first_and_never_a_holder():
    p = planner([dest("5", "dc3"), dest("2", "dc2"), dest("1", "dc1")])
    r = p.place(row(1, "3", [["dc3", "3"], ["dc1", "1"]]))
    assert r[1] == "5"          # the evacuated node's own datacenter first
    # 5 already holds this object: never there again
    r = p.place(row(2, "3", [["dc3", "3"], ["dc3", "5"]]))
    assert r[0] == "assign" and r[1] in ("1", "2")


def test_same_datacenter_only():
    p = planner([dest("1", "dc1"), dest("2", "dc2")], same_datacenter=True)
    r = p.place(row(1, "3", [["dc3", "3"], ["dc1", "1"]]))
    assert r[:2] == ("skip", "no_destination_in_datacenter")


def test_skip_reasons():
    # the only destinations are in the datacenter that holds the other copy
    p = planner([dest("4", "dc1")])
    r = p.place(row(1, "3", [["dc3", "3"], ["dc1", "1"]]))
    assert r[:2] == ("skip", "object_already_in_datacenter")
    # the only allowed destination holds the object
    p = planner([dest("5", "dc3")])
    r = p.place(row(2, "3", [["dc3", "3"], ["dc3", "5"]]))
    assert r[:2] == ("skip", "object_already_on_dest_shark")
    # too big for everyone
    p = planner([dest("2", "dc2", head=500)])
    r = p.place(row(3, "3", [["dc3", "3"], ["dc1", "1"]], size=1000))
    assert r[:2] == ("skip", "destination_insufficient_space")


def test_capacity_is_charged_per_byte_and_spread_by_free_space():
    p = planner([dest("1", "dc1", head=3000), dest("4", "dc1", head=1000)])
    got = [p.place(row(i, "3", [["dc3", "3"], ["dc2", "2"]], size=500))[1] for i in range(8)]
    assert got.count("1") == 6 and got.count("4") == 2        # in proportion to headroom
    r = p.place(row(9, "3", [["dc3", "3"], ["dc2", "2"]], size=500))
    assert r[:2] == ("skip", "destination_insufficient_space")  # both full now


def test_round_share_defers_instead_of_skipping():
    p = planner([dest("2", "dc2", round_objects_limit=2)])
    res = [p.place(row(i, "3", [["dc3", "3"], ["dc1", "1"]]))[0] for i in range(4)]
    assert res == ["assign", "assign", "defer", "defer"]
    assert p.all_exhausted


def test_snaplinks_and_retries_go_back_to_the_same_destination():
    p = planner([dest("1", "dc1"), dest("4", "dc1")])
    a = p.place(row(1, "3", [["dc3", "3"], ["dc2", "2"]], obj="same", owner="creator"))
    b = p.place(row(2, "3", [["dc3", "3"], ["dc2", "2"]], obj="same", owner="creator",
                    key="/other/stor/link"))
    assert a[1] == b[1]
    # a copy requeued from an interrupted round prefers its destination (the file may be there)
    p = planner([dest("1", "dc1"), dest("4", "dc1", head=100 * GB)])
    r = p.place(row(3, "3", [["dc3", "3"], ["dc2", "2"]], dest_="1"))
    assert r[1] == "1"


def test_copies_of_one_object_on_two_evacuated_nodes():
    evac = {"1": "dc1", "4": "dc1"}
    # object on 1 (dc1) and 2 (dc2) -- only 1 evacuated; 2-node evacuation of dc1
    p = planner([dest("2", "dc2"), dest("3", "dc3")], evac=evac)
    r = p.place(row(1, "1", [["dc1", "1"], ["dc2", "2"]]))
    assert r[1] == "3"
    # both copies evacuated (2 and 3 are being emptied), placed together:
    evac = {"2": "dc2", "3": "dc3"}
    p = planner([dest("1", "dc1"), dest("4", "dc1"), dest("5", "dc3")], evac=evac)
    rows = [row(7, "2", [["dc2", "2"], ["dc3", "3"]], key="/k"),
            row(8, "3", [["dc2", "2"], ["dc3", "3"]], key="/k")]
    a, s, d = EP.plan_rows(p, rows)
    placed = {r["node"]: dst for r, dst, _ in a}
    assert placed["3"] == "5"                          # its own datacenter
    assert placed["2"] in ("1", "4")                   # dc1: no copy there
    assert len(set(placed.values())) == 2


def test_sibling_already_moved_counts_as_a_copy():
    evac = {"2": "dc2", "3": "dc3"}
    p = planner([dest("1", "dc1"), dest("4", "dc1")], evac=evac)
    # the copy on 2 already went to 1 (dc1): the copy on 3 may not go to dc1
    r = p.place(row(8, "3", [["dc2", "2"], ["dc3", "3"]],
                    siblings=json.dumps([["2", "1", "done"]])))
    assert r[:2] == ("skip", "object_already_in_datacenter")


@pytest.mark.parametrize("pref,expect", [
    ("other_copy", ["5", "2", "3"]),
    ("evacuated_node", ["3", "5", "2"]),
    ("same_datacenter", ["5", "2", "3"]),
])
def test_source_order(pref, expect):
    p = planner([dest("1", "dc1")], source_preference=pref,
                node_dcs={"5": "dc1", "2": "dc2", "3": "dc3"})
    r = p.place(row(1, "3", [["dc2", "2"], ["dc3", "3"], ["dc1", "5"]], size=10))
    # with three copies the destination must be outside dc2 and dc1 ... unless its own dc
    assert r[0] in ("assign", "skip")
    d = EP.Dest("9", "dc3", GB)
    srcs = p.sources(row(1, "3", []), d, [("dc2", "2"), ("dc3", "3"), ("dc1", "5")])
    if pref == "other_copy":
        assert srcs == ["2", "5", "3"]          # none in dc3 among the others
    elif pref == "evacuated_node":
        assert srcs[0] == "3"
    else:
        assert srcs[0] == "3"                   # the copy in the destination's datacenter


def test_source_preference_is_validated():
    with pytest.raises(ValueError, match="source_preference must be one of"):
        EP.Planner([], {}, source_preference="nearest")


def test_fill_report():
    d = dest("1", "dc1", head=1000, before={"total": 10000, "used": 5000})
    d.take(1000)
    rep = EP.fill_report([d])["1"]
    assert rep["percent_used_before"] == 50.0 and rep["percent_used_after"] == 60.0
