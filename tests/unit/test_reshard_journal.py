"""reshard_journal: the plan document, phases, window, status text (pure functions)."""
import re
from pathlib import Path

import pytest
import yaml

from ansible_collections.manta.ops.plugins.module_utils import reshard_journal as rj

ROLE = Path(__file__).resolve().parents[2] / "roles" / "reshard"


def test_phase_list_matches_role_vars_and_main():
    vars_ = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    assert vars_["reshard_phase_names"] == rj.PHASE_NAMES
    assert vars_["reshard_window_phases"] == rj.WINDOW_PHASES
    main = (ROLE / "tasks" / "main.yml").read_text()
    included = re.findall(r"phases/(\w+)\.yml", main)
    # every phase is handled, in order (the window phases by window.yml)
    order = []
    for name in included:
        order += rj.WINDOW_PHASES if name == "window" else [name]
    assert order == rj.PHASE_NAMES[1:]


def test_every_section1_phase_is_covered():
    names = set(rj.PHASE_NAMES)
    for p in ("freeze_cluster", "create_sentinel_bucket", "create_manatee_peers", "critical_section_enter",
              "detach_peers", "establish_cluster", "reconfigure_peers", "create_morays", "install_ring",
              "sapi_cleanup", "critical_section_exit", "delete_data", "unfreeze_cluster"):
        assert p in names
    assert {"pg_dump_lock", "pg_dump_unlock", "verify_canaries"} <= names


def test_phase_start_end_and_resume_counts_runs():
    d = rj.new_plan("p1", "1.moray.x", "3.moray.x", {"vnodes": "0-3"}, now=100.0)
    rj.phase_start(d, "validate", now=100.0)
    rj.phase_end(d, "validate", now=101.0)
    assert d["phase"] == "critical_section_enter"
    rj.phase_start(d, "critical_section_enter", now=102.0)
    rj.phase_start(d, "critical_section_enter", now=105.0)       # re-run after a kill
    ph = d["phases"]["critical_section_enter"]
    assert ph["runs"] == 2 and ph["start_ts"] == 102.0 and ph["status"] == "running"
    rj.phase_end(d, "critical_section_enter", now=106.0, props={"x": 1})
    assert d["props"]["x"] == 1
    assert rj.done_phases(d) == ["validate", "critical_section_enter"]
    # ending again does not move the end time
    rj.phase_end(d, "critical_section_enter", now=200.0)
    assert d["phases"]["critical_section_enter"]["end_ts"] == 106.0


def test_completed_after_last_phase():
    d = rj.new_plan("p1", "a", "b", {}, now=0.0)
    for i, p in enumerate(rj.PHASE_NAMES):
        rj.phase_start(d, p, now=float(i))
        rj.phase_end(d, p, now=i + 0.5)
    assert d["state"] == "completed" and d["phase"] is None


def test_unknown_phase_is_refused():
    d = rj.new_plan("p1", "a", "b", {})
    with pytest.raises(rj.JournalError, match="unknown phase 'nope'"):
        rj.phase_start(d, "nope")


def test_window_from_swap_records():
    d = rj.new_plan("p1", "a", "b", {})
    d["props"]["electric_morays"] = ["em1", "em2"]
    d["props"]["em_swaps"] = {
        "em1": {"transitional": {"serving_ts": 10.0}, "final": {"serving_ts": 15.0}},
        "em2": {"transitional": {"serving_ts": 11.0}},
    }
    w = rj.window(d)
    assert w["start_ts"] == 10.0 and w["seconds"] is None and w["open"]
    d["props"]["em_swaps"]["em2"]["final"] = {"serving_ts": 16.5}
    w = rj.window(d)
    assert w["seconds"] == 6.5 and not w["open"]


def test_pack_vnodes_roundtrip_and_compression():
    small = [0, 1, 2, 5, 9, 10]
    assert rj.pack_vnodes(small) == "0-2,5,9-10"
    assert rj.unpack_vnodes("0-2,5,9-10") == small
    big = list(range(0, 1_000_000, 2))          # every other vnode of a 1M ring
    packed = rj.pack_vnodes(big)
    assert isinstance(packed, dict) and len(packed["bitmap"]) < 2000
    assert rj.unpack_vnodes(packed) == big


def test_summary_and_text():
    d = rj.new_plan("p1", "1.moray.x", "3.moray.x", {"vnodes": "0-3"}, now=0.0)
    rj.phase_start(d, "validate", now=0.0)
    rj.phase_end(d, "validate", now=1.25)
    rj.phase_start(d, "critical_section_enter", now=2.0)
    s = rj.summary(d, now=5.0)
    assert s["phase"] == "critical_section_enter" and s["phase_number"] == 2
    assert s["phases"][0]["seconds"] == 1.25 and s["phases"][1]["seconds"] == 3.0
    assert s["vnodes_moving"] == 4
    text = rj.render_text(s, locks=[{"path": "/pg_dump_lock", "holders": [{"owner": "plan:p1"}]}])
    assert "current phase: critical_section_enter (2/22)" in text
    assert "/pg_dump_lock: plan:p1" in text
    assert "validate" in text and "1.2s" in text or "1.3s" in text


def test_fmt_duration():
    assert rj.fmt_duration(None) == "-"
    assert rj.fmt_duration(3.21) == "3.2s"
    assert rj.fmt_duration(125) == "2m05s"
    assert rj.fmt_duration(3725) == "1h02m05s"


def test_aborted_plan_text_names_the_abort_not_a_pause():
    d = rj.new_plan("p1", "1.moray.x", "3.moray.x", {"vnodes": "0-3"}, now=0.0)
    rj.phase_start(d, "validate", now=0.0)
    rj.phase_end(d, "validate", now=1.0)
    d["paused_before"] = "critical_section_enter"
    d["state"], d["aborted"] = "aborted", "2026-11-22T04:00:00.000Z"
    text = rj.render_text(rj.summary(d, now=5.0))
    assert "state aborted" in text
    assert "aborted 2026-11-22T04:00:00.000Z before phase critical_section_enter (2/22)" in text
    assert "paused before it" not in text and "current phase" not in text
