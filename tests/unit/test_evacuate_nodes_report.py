"""Storage nodes (heartbeats, capacity, names), progress rendering, Prometheus text,
and the estimate model."""
import time

import pytest

from ansible_collections.manta.ops.plugins.module_utils import evacuate_estimate as EE
from ansible_collections.manta.ops.plugins.module_utils import evacuate_report as R
from ansible_collections.manta.ops.plugins.module_utils import storage_nodes as SN

MIB = 1 << 20


def beat(avail_mb, pct, **kw):
    r = {"manta_storage_id": "1.stor.x", "datacenter": "dc1", "availableMB": avail_mb,
         "percentUsed": pct, "timestamp": int(time.time() * 1000)}
    r.update(kw)
    return r


def test_capacity_rebalancer_formula_in_bytes():
    # reference/evacuate.md §3.4's example: available 900, 10% used, 80% fill
    cap = SN.capacity(beat(900, 10), 80)
    assert cap["total"] == 1000 * MIB
    assert cap["ceiling"] == 800 * MIB
    assert cap["headroom"] == 700 * MIB           # (the example's 400 after 300 assigned)
    assert SN.capacity(beat(900, 10), 5)["headroom"] == 0      # already above the ceiling


def test_capacity_from_statvfs():
    st = {"frsize": 4096, "blocks": 1000, "bfree": 250, "bavail": 250}
    cap = SN.capacity(beat(0, 75, statvfs=st), 90)
    assert cap["total"] == 4096000 and cap["used"] == 3072000
    assert cap["headroom"] == int(4096000 * 0.9) - 3072000


def test_rotation():
    now = time.time()
    assert SN.in_rotation(beat(1, 1, timestamp=int((now - 5) * 1000)), 60, now)
    assert not SN.in_rotation(beat(1, 1, timestamp=int((now - 61) * 1000)), 60, now)
    assert not SN.in_rotation({}, 60, now)


HOSTS = {"1.stor.x": {"manta_storage_id": "1.stor.x", "datacenter": "dc1"},
         "3.stor.x": {"manta_storage_id": "3.stor.x", "datacenter": "dc3",
                      "storage_url": "http://127.0.0.1:1", "storage_root": "/r"},
         "zone-4": {"manta_storage_id": "4.stor.x", "datacenter": "dc1"}}


def test_resolve_nodes_forms():
    out = SN.resolve_nodes("3.stor, zone-4", HOSTS, domain="x")
    assert [(o["host"], o["storage_id"]) for o in out] == [("3.stor.x", "3.stor.x"),
                                                            ("zone-4", "4.stor.x")]
    assert out[0]["storage_url"] == "http://127.0.0.1:1" and out[1]["storage_root"] == "/manta"
    assert [o["storage_id"] for o in SN.resolve_nodes(["4.stor"], HOSTS, domain="x")] == ["4.stor.x"]
    grp = SN.resolve_nodes(["rack"], HOSTS, groups={"rack": ["1.stor.x", "zone-4"]}, domain="x")
    assert [o["storage_id"] for o in grp] == ["1.stor.x", "4.stor.x"]


def test_resolve_nodes_errors_name_what_is_valid():
    with pytest.raises(SN.NodeError) as e:
        SN.resolve_nodes("9.stor", HOSTS, domain="x", known_ids=["9.stor.y"])
    assert "unknown storage node '9.stor'" in str(e.value)
    assert "Valid storage nodes in the inventory: 1.stor.x, 3.stor.x, 4.stor.x" in str(e.value)
    with pytest.raises(SN.NodeError, match="Manta knows .* not in the inventory"):
        SN.resolve_nodes("7.stor", HOSTS, domain="x", known_ids=["7.stor.x"])
    with pytest.raises(SN.NodeError, match="holds hosts that are not storage nodes"):
        SN.resolve_nodes("mix", HOSTS, groups={"mix": ["3.stor.x", "moray-1"]}, domain="x")
    with pytest.raises(SN.NodeError, match="evacuate is empty"):
        SN.resolve_nodes("", HOSTS)


def progress_sample(state="active"):
    return {"job": 'j"1', "state": state, "pause_reason": None, "throttle": {"copy_concurrency": 8},
            "nodes": {"3.stor.x": {
                "objects": {"total": 10, "done": 6, "skipped": 1, "error": 0, "remaining": 3,
                            "pending": 3, "assigned": 0, "copied": 0},
                "bytes": {"total": 100, "done": 60, "skipped": 10, "error": 0, "remaining": 30},
                "rate": {"objects_per_second": 2.0, "bytes_per_second": 20.0, "window_seconds": 600},
                "eta_seconds": 1.5, "percent_done": 60.0}},
            "objects": {"total": 10, "done": 6, "skipped": 1, "error": 0, "remaining": 3},
            "bytes": {"total": 100, "done": 60, "skipped": 10, "error": 0, "remaining": 30},
            "eta_seconds": 1.5, "reasons": [{"node": "3.stor.x", "status": "skipped",
                                             "reason": "md5_mismatch", "objects": 1, "bytes": 10,
                                             "examples": ["/o/stor/k"], "detail": None}],
            "last_rounds": [{"metadata": {"shards": {"1.moray": {"rows_per_second": 5000.0}}}}]}


def test_prometheus_text_format():
    text = R.prometheus([progress_sample(), dict(progress_sample(), job="j2")], now=1.0)
    lines = text.splitlines()
    helps = [ln for ln in lines if ln.startswith("# HELP ")]
    assert len(helps) == len(set(helps))                 # one HELP per metric, several jobs
    assert 'manta_evacuate_objects{job="j\\"1",node="3.stor.x",status="done"} 6' in lines
    assert 'manta_evacuate_objects{job="j2",node="3.stor.x",status="done"} 6' in lines
    assert 'manta_evacuate_reason_objects{job="j2",node="3.stor.x",status="skipped",' \
           'reason="md5_mismatch"} 1' in lines
    assert 'manta_evacuate_metadata_updates_per_second{job="j2",shard="1.moray"} 5000.0' in lines
    for ln in lines:
        assert ln.startswith("#") or ln.rsplit(" ", 1)[1].replace(".", "", 1).lstrip("-").isdigit()


def test_textfile_write_is_atomic_and_reports_change(tmp_path):
    f = tmp_path / "m.prom"
    t = R.prometheus(progress_sample(), now=1.0)
    assert R.write_textfile(str(f), t, check_mode=True) and not f.exists()
    assert R.write_textfile(str(f), t)
    assert not R.write_textfile(str(f), R.prometheus(progress_sample(), now=2.0))   # time only
    assert [p.name for p in tmp_path.iterdir()] == ["m.prom"]


def test_render_lines():
    lines = R.render(progress_sample())
    assert lines[0].startswith('job j"1: active, 6/10 objects done')
    assert "md5_mismatch: 1 objects" in "\n".join(lines) and "/o/stor/k" in "\n".join(lines)


def test_estimate_model():
    est = EE.estimate({"a": (1000, 1000 * 4096), "b": (500, 500 * 4096)}, {"s1": 1500},
                      {"copy_concurrency": 8}, measured={"seconds_per_object": 0.008,
                                                         "write_overhead_per_object": 0.0},
                      scan_seconds=2.0, forks=5, round_seconds=300, rotation_lag=60)
    c = est["components"]
    assert c["copy"] == pytest.approx(1000 / (8 / 0.008))
    assert c["scan"] == 4.0 and c["rounds"] == 1
    assert c["metadata"] == pytest.approx(1500 / 5000)
    slow = EE.estimate({"a": (1000, 1000 * 4096)}, {}, {"copy_concurrency": 8,
                                                        "max_bytes_per_sec": 4096})
    assert slow["components"]["copy"] == pytest.approx(1000)   # the byte throttle binds
    assert EE._lpt([5, 4, 3, 3], 2) == 8


def test_measured_from_rounds():
    m = EE.measured_from_rounds([{"copy": {"d": {"by_status": {"copied": 100}, "seconds": 2.0,
                                                 "bytes_fetched": 1000, "concurrency": 4}},
                                  "metadata": {"shards": {"s": {"rows": 100, "seconds": 0.02}},
                                               "round_seconds": 10, "busy_seconds": 4}}])
    assert m["seconds_per_object"] == pytest.approx(0.08)
    assert m["metadata_rows_per_second"] == pytest.approx(5000)
    assert m["round_overhead_seconds"] == 6

# The modules' documentation against their argument specs (fragments merged): tests/unit/test_module_docs.py.
