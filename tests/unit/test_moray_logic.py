"""Pure pieces of the moray_* module_utils: ring rules, DSN resolution, census sums,
the owner-check rule, and the delete planner's arithmetic."""
import json

import pytest

from ansible_collections.manta.ops.plugins.module_utils import (moray_census, moray_delete, moray_owner_check,
                                                                 moray_pg, moray_ring)
from ansible_collections.manta.ops.plugins.module_utils.fash.topology import Topology
from ansible_collections.manta.ops.plugins.module_utils.moray_tables import TableInfo, delete_order, key_columns

S1, S2, S3 = "1.moray.lab", "2.moray.lab", "3.moray.lab"


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    topo = Topology.create([f"tcp://{S1}:2020", f"tcp://{S2}:2020"], 64)
    topo.remap([0, 2, 4], f"tcp://{S3}:2020", strict_pnode=False)   # a split of shard 1
    path = tmp_path_factory.mktemp("ring") / "ring.json"
    path.write_text(topo.to_json())
    return str(path)


# ---- moray_ring ----------------------------------------------------------------------------

def test_load_json_ring_and_pnodes(ring):
    topo = moray_ring.load(ring)
    assert topo.vnode_count == 64
    assert moray_ring.pnode(S1) == f"tcp://{S1}:2020"
    assert moray_ring.pnode("tcp://x:1") == "tcp://x:1"
    assert moray_ring.require_shard(topo, S3, ring) == f"tcp://{S3}:2020"


def test_unknown_shard_lists_the_ring_pnodes(ring):
    topo = moray_ring.load(ring)
    with pytest.raises(moray_ring.OwnershipError, match=r"unknown shard 9\.moray\.lab: ring .* has no pnode "
                                                       r"tcp://9\.moray\.lab:2020; its pnodes are: tcp://"):
        moray_ring.require_shard(topo, "9.moray.lab", ring)


def test_missing_or_bad_ring(tmp_path):
    with pytest.raises(moray_ring.OwnershipError, match="does not exist"):
        moray_ring.load(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(moray_ring.OwnershipError, match="cannot read ring"):
        moray_ring.load(str(bad))
    with pytest.raises(moray_ring.OwnershipError, match="no ring given"):
        moray_ring.load(None)


@pytest.mark.parametrize("items, text", [
    (["x"], r"vnode 'x' is not an integer; vnodes are integers 0\.\.N-1"),
    ([64], r"vnode 64 is out of range; valid vnodes are 0\.\.63"),
    ([-1], r"out of range"),
    ([1, 1], r"vnode 1 is listed more than once"),
    ([], r"vnodes is empty"),
    ({"a": 1}, r"is not a list of vnodes"),
    ([True], r"not an integer"),
])
def test_parse_vnodes_errors_name_the_item(ring, items, text):
    topo = moray_ring.load(ring)
    with pytest.raises(moray_ring.OwnershipError, match=text):
        moray_ring.parse_vnodes(items, topo)


def test_parse_vnodes_accepts_lists_ranges_and_strings(ring):
    topo = moray_ring.load(ring)
    assert moray_ring.parse_vnodes([5, "1", "10-12"], topo) == [1, 5, 10, 11, 12]
    assert moray_ring.parse_vnodes("0-2, 7", topo) == [0, 1, 2, 7]
    assert moray_ring.parse_vnodes(3, topo) == [3]


def test_ownership_rules(ring):
    topo = moray_ring.load(ring)
    # vnodes 0,2,4 moved from shard 1 to shard 3; even vnodes are shard 1's, odd shard 2's
    moray_ring.require_owned(topo, [0, 2, 4], S3, ring, "why")
    moray_ring.require_not_owned(topo, [0, 2, 4], S1, ring)
    with pytest.raises(moray_ring.OwnershipError,
                       match=r"vnode 6 is owned by tcp://1\.moray\.lab:2020, not by 3\.moray\.lab"):
        moray_ring.require_owned(topo, [0, 6], S3, ring, "the owner must own them")
    with pytest.raises(moray_ring.OwnershipError,
                       match=r"vnode 6 is owned by 1\.moray\.lab .* live data and are never deleted"):
        moray_ring.require_not_owned(topo, [0, 6, 8], S1, ring)


# ---- moray_pg ------------------------------------------------------------------------------

def test_env_names():
    assert moray_pg.env_names("2.moray.us-east.joyent.us") == [
        "MANTA_PG_DSN_2_MORAY_US_EAST_JOYENT_US", "MANTA_PG_DSN_2"]
    assert moray_pg.env_names("shardx") == ["MANTA_PG_DSN_SHARDX"]


def test_resolve_order_option_then_env_full_then_short():
    env = {"MANTA_PG_DSN_2": "host=short port=1", "MANTA_PG_DSN_2_MORAY_X": "host=full port=2"}
    t = moray_pg.resolve("2.moray.x", dsn="host=opt port=3 user=u dbname=d", env=env)
    assert (t.params["host"], t.source) == ("opt", "the dsn option")
    t = moray_pg.resolve("2.moray.x", env=env)
    assert (t.params["host"], t.source) == ("full", "$MANTA_PG_DSN_2_MORAY_X")
    assert t.params["user"] == "moray" and t.params["dbname"] == "moray"
    t = moray_pg.resolve("2.moray.y", env=env, password="pw")
    assert (t.params["host"], t.params["password"]) == ("short", "pw")
    assert "pw" not in t.display


def test_resolve_unknown_shard_says_what_to_give():
    with pytest.raises(moray_pg.MorayPgError, match=r"unknown shard 7\.moray\.x: no connection details .* "
                                                    r"dsn option, set \$MANTA_PG_DSN_7_MORAY_X or "
                                                    r"\$MANTA_PG_DSN_7, or give zk_servers"):
        moray_pg.resolve("7.moray.x", env={})


def test_bad_dsn_never_echoes_the_password():
    with pytest.raises(moray_pg.MorayPgError) as ei:
        moray_pg.resolve("1.moray.x", dsn="host=a password=s3cret bogus", env={})
    assert "s3cret" not in str(ei.value)
    assert "not a valid libpq connection string" in str(ei.value)


def test_redacted_drops_password():
    assert moray_pg.redacted({"host": "h", "port": "5", "password": "x", "dbname": "moray", "user": "u"}) == \
        "u@h:5/moray"


# ---- census sums and the owner rule ----------------------------------------------------------

def _census(data, shard="s"):
    c = moray_census.Census(shard, list(data))
    for t, per in data.items():
        for v, n in per.items():
            c.add(t, v, n, n * 10)
    return c


def test_census_totals_top_and_maps():
    c = _census({"manta": {0: 195, 106: 36, 943: 28}, "manta_directory_counts": {0: 5, 7: 1}})
    assert c.total_rows == 265 and c.total_bytes == 2650
    top = c.top(2)
    assert [t["vnode"] for t in top] == [0, 106]
    assert top[0]["rows"] == 200 and top[0]["tables"] == {"manta": 195, "manta_directory_counts": 5}
    assert c.counts_map()["manta_directory_counts"] == {"0": 5, "7": 1}
    r = c.to_result(top=1, per_vnode=True)
    assert r["vnodes_with_rows"] == 4 and len(r["per_vnode"]) == 4
    assert c.nonzero()[0] == ("manta", 0, 195)


def test_sampled_bytes_shrink_towards_the_table_mean():
    # table mean 100 B/row from the sample; vnode 1 sampled at 100 B/row, vnode 2 not sampled
    est = moray_census.sampled_bytes({1: 10, 2: 10, 3: 4}, {1: (5, 500), 3: (5, 5000)})
    mean = 5500 / 10.0
    assert est[1] == round(10 * (500 + 5 * mean) / 10)
    assert est[2] == round(10 * mean)                       # no sample: the table mean
    assert est[3] == round(4 * (5000 + 5 * mean) / 10)
    assert moray_census.sampled_bytes({1: 3}, {}) == {1: 0}


def test_owner_rule():
    src = _census({"manta": {1: 100, 2: 50}, "manta_uploads": {1: 3}})
    own = _census({"manta": {1: 120, 2: 49}})
    r = moray_owner_check.compare(src, own)
    assert not r["ok"] and r["deficit_count"] == 2
    assert {(d["table"], d["vnode"]) for d in r["deficits"]} == {("manta", 2), ("manta_uploads", 1)}
    assert moray_owner_check.compare(src, own, min_ratio=0.5)["deficit_count"] == 1   # uploads: 0 < 2
    msg = moray_owner_check.refusal(r, "1.moray", "3.moray")
    assert "refusing to delete" in msg and "manta vnode 2: 50 rows on 1.moray, 49 on 3.moray" in msg
    assert "owner_min_ratio" in msg and "force=true" in msg
    # nothing left on the source: nothing to check (a rerun is never refused)
    assert moray_owner_check.compare(_census({"manta": {}}), own)["ok"]


def test_same_database():
    a = {"server": "h:1", "database": "moray", "system_identifier": "7"}
    assert moray_owner_check.same_database(a, dict(a))
    assert not moray_owner_check.same_database(a, dict(a, server="h:2"))


# ---- delete planner arithmetic ---------------------------------------------------------------

def test_group_vnodes_packs_to_batch_size():
    groups = moray_delete.group_vnodes({1: 300, 2: 300, 3: 300, 4: 2000, 5: 10}, 700)
    assert groups == [([1, 2], 600), ([3], 300), ([4], 2000), ([5], 10)]


def test_range_layout_covers_the_span():
    count, width = moray_delete.range_layout(1, 1_000_000, 500_000, 5000, 2)
    assert count * width >= 1_000_000
    assert count == 25
    count, width = moray_delete.range_layout(10, 10, 1, 5000, 4)
    assert (count, width) == (1, 1)


def test_choose_strategy():
    t = TableInfo("manta", estimated_rows=1000)
    assert moray_delete.choose_strategy("auto", t, 500) == "id_range"
    assert moray_delete.choose_strategy("auto", t, 50) == "vnode"
    assert moray_delete.choose_strategy("vnode", t, 500) == "vnode"
    assert moray_delete.choose_strategy("id_range", TableInfo("x", has_id=False), 5) == "vnode"


def test_run_key_depends_on_the_request():
    a = moray_delete.run_key("s", "o", [1, 2], None)
    assert a == moray_delete.run_key("s", "o", [1, 2], [])
    assert a != moray_delete.run_key("s", "o", [1, 3], None)
    assert a != moray_delete.run_key("s", "p", [1, 2], None)


def test_key_columns_and_order():
    assert key_columns(TableInfo("m")) == ["_id", "_key"]
    assert key_columns(TableInfo("m", has_idx=True, idx_index=True)) == ["_id", "_idx", "_key"]
    assert key_columns(TableInfo("m", has_idx=True, idx_index=False)) == ["_id", "_key"]
    assert delete_order(["manta", "b", "manta_directory_counts", "a"]) == \
        ["manta_directory_counts", "a", "b", "manta"]


def test_progress_state_round_trip(ring, tmp_path):
    """Markers written by one Deleter are read back by the next (resume)."""
    from ansible_collections.manta.ops.plugins.module_utils import throttle
    t = TableInfo("manta")
    d = moray_delete.Deleter(None, "s", [t], [1, 2, 3], throttle.Throttle({}), progress_path=None)
    d.done["manta"] = {1, 3}
    d.range_plan["manta"] = {"_id": {"lo": 1, "width": 10, "count": 5}}
    d.range_done["manta"] = {"_id": {0, 1, 4}}
    from ansible_collections.manta.ops.plugins.module_utils import progress
    d.meter = progress.RateMeter(total=10)
    state = json.loads(json.dumps(d.snapshot()))
    d2 = moray_delete.Deleter(None, "s", [t], [1, 2, 3], throttle.Throttle({}), state=state)
    assert d2.done["manta"] == {1, 3}
    assert d2.range_done["manta"]["_id"] == {0, 1, 4}
    assert d2.range_plan["manta"]["_id"] == {"lo": 1, "width": 10, "count": 5}
