"""reshard_plan.validate and friends: every bad input is named, before any change."""
import pytest

from ansible_collections.manta.ops.plugins.module_utils import reshard_plan as rp
from ansible_collections.manta.ops.plugins.module_utils import reshard_rows as rr

DOM = "lab.manta.test"
S1, S2, S3 = (f"{n}.moray.{DOM}" for n in (1, 2, 3))
SERVERS = [{"uuid": f"u{dc}{i}", "hostname": f"cn{i}-dc{dc}", "datacenter": f"dc{dc}"}
           for dc in (1, 2, 3) for i in (1, 2)]


def facts(**kw):
    f = {"domain": DOM, "index_hosts": [S1, S2], "shard_vnodes": list(range(0, 16, 2)), "vnode_count": 16,
         "servers": SERVERS, "pg_versions": {"a": "15.4", "b": "15.4", "c": "15.4"}, "new_shard_uses": [],
         "base_peers": [{}, {}, {}], "census": {"vnodes": {0: [10, 100], 2: [5, 50], 4: [1, 10]}}}
    f.update(kw)
    return f


def inputs(**kw):
    i = {"shard": S1, "new_shard": S3, "vnodes": "0,2", "split": "none"}
    i.update(kw)
    return i


def test_valid_inputs_choose_three_servers_one_per_dc():
    errors, warnings, d = rp.validate(inputs(), facts())
    assert errors == []
    assert d["vnodes"] == [0, 2]
    assert sorted(s["datacenter"] for s in d["servers"]) == ["dc1", "dc2", "dc3"]


@pytest.mark.parametrize("inp,fct,needle", [
    (dict(shard=f"9.moray.{DOM}"), {}, "shard '9.moray.lab.manta.test' is not in INDEX_MORAY_SHARDS"),
    (dict(new_shard="3.moray.other.test"), {}, "new_shard '3.moray.other.test' is not well formed"),
    (dict(new_shard=f"Bad_Name.moray.{DOM}"), {}, "is not well formed"),
    (dict(new_shard=S2), {"new_shard_uses": ["listed in SAPI INDEX_MORAY_SHARDS"]}, "already in use"),
    (dict(vnodes="1,2"), {}, "vnodes: 1 do not belong to"),
    (dict(vnodes="0-99"), {}, "out of range"),
    (dict(vnodes="0,2,4,6,8,10,12,14"), {}, "at least one must stay"),
    (dict(vnodes="x"), {}, "vnodes: vnode 'x' is not an integer"),
    (dict(vnodes=None), {}, "vnodes is required"),
    (dict(vnodes="0", split="balanced"), {}, "mutually exclusive"),
    (dict(split="halves"), {}, "split 'halves' is not valid"),
    (dict(servers=["nope"]), {}, "servers: 'nope' is not a known compute node"),
    (dict(servers=["u11", "u21"]), {}, "a new shard needs exactly 3 servers"),
    (dict(servers=["u11", "u12", "u21"]), {}, "span 2 datacenters"),
    (dict(servers=["u11", "u11", "u12"]), {}, "repeats a server"),
    (dict(pause_before="nonsense"), {}, "pause_before 'nonsense' is not a phase"),
    ({}, {"pg_versions": {"a": "15.4", "b": "14.9"}}, "PostgreSQL versions differ"),
    (dict(pg_versions=["9.6"]), {}, "not in pg_versions"),
    ({}, {"lock_holder": "plan:other-plan"}, "another reshard holds the reshard lock: plan:other-plan"),
    ({}, {"other_plans": [{"plan": "p9", "shard": S1, "new_shard": f"7.moray.{DOM}", "phase": "x"}]},
     "another reshard is active on these shards: plan p9"),
])
def test_each_bad_input_is_named(inp, fct, needle):
    errors, _, _ = rp.validate(inputs(**inp), facts(**fct))
    assert any(needle in e for e in errors), errors


def test_gather_errors_pass_through():
    errors, _, _ = rp.validate(inputs(), facts(errors=["ZooKeeper is not reachable: boom"]))
    assert "ZooKeeper is not reachable: boom" in errors


def test_resume_keeps_planned_vnodes_and_refuses_others():
    resume = {"plan": "p1", "inputs": {"vnodes": "4,6", "servers": SERVERS[:1] + SERVERS[2:3] + SERVERS[4:5]}}
    f = facts(resume=resume, new_shard_uses=["the ring already has pnode x"], lock_holder="plan:p1")
    errors, _, d = rp.validate(inputs(vnodes=None, split="balanced"), f)
    assert errors == [] and d["vnodes"] == [4, 6]
    errors, _, _ = rp.validate(inputs(vnodes="0"), f)
    assert any("is in progress with 2 vnodes" in e for e in errors)


def test_balanced_split_moves_about_half_the_rows():
    counts = {v: (v % 7) * 10 for v in range(64)}
    move = rr.balanced_split(counts, range(64), 0.5)
    moved = sum(counts[v] for v in move)
    total = sum(counts.values())
    assert abs(moved - total / 2) <= max(counts.values())
    assert 0 < len(move) < 64
    assert abs(len(move) - 32) <= 8


def test_balanced_split_keeps_one_vnode_each_side():
    assert rr.balanced_split({0: 100, 1: 0}, [0, 1]) in ([0], [1])
    with pytest.raises(rr.RowsError):
        rr.balanced_split({}, [5])


def test_balanced_split_via_validate():
    errors, _, d = rp.validate(inputs(vnodes=None, split="balanced"), facts())
    assert errors == [] and 0 in d["vnodes"]


def test_auto_servers_single_dc_when_only_one():
    one = [{"uuid": f"s{i}", "hostname": f"h{i}", "datacenter": "dc1"} for i in range(4)]
    got = rp.auto_servers(one, avoid=["s0"])
    assert [s["uuid"] for s in got] == ["s1", "s2", "s3"]


def test_estimates_use_measured_figures_when_known():
    split = {"moving": {"rows": 1000, "bytes": 10}, "staying": {"rows": 3000, "bytes": 10}}
    e = rp.estimates(split, 100 * 1024 * 1024, 2, {}, {"batch_size": 100, "pause": 0.0, "connections": 1})
    assert e["source"] == "model defaults" and e["window_seconds"] > 0
    # 2 routers swap one at a time: 3 swaps inside the window; 6 swap two at a time (3 batches): 5, not 11
    six = rp.estimates(split, 0, 6, {}, {})
    assert six["window_model_seconds"] == round(e["window_model_seconds"] + 2 * rp.DEFAULT_RATES["em_restart_s"], 1)
    assert rp.estimates(split, 0, 1, {}, {})["window_model_seconds"] < e["window_model_seconds"]
    m = rp.estimates(split, 0, 2, {}, {}, {"window_s": 4.2, "delete_rows_per_s": 1000, "plan": "p0"})
    assert m["window_seconds"] == 4.2 and m["delete_seconds"] == 3.0 and "p0" in m["source"]


def test_history_rates_from_last_completed_plan():
    plans = [{"plan": "a", "state": "completed", "completed": "2026-01-01", "props": {"measured": {"window_s": 5}}},
             {"plan": "b", "state": "completed", "completed": "2026-02-01", "props": {"measured": {"window_s": 7}}},
             {"plan": "c", "state": "active", "props": {}}]
    m, plan = rp.history_rates(plans)
    assert plan == "b" and m["window_s"] == 7
