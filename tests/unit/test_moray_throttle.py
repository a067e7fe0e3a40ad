"""Throttle math and the live throttle file (pure logic plus a temp file)."""
import json
import os
import threading

import pytest

from ansible_collections.manta.ops.plugins.module_utils import throttle as th


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


# ---- validation --------------------------------------------------------------------

def test_check_accepts_ints_integral_floats_and_numeric_strings():
    assert th.check({"batch_size": 10, "pause_ms": 2.0, "connections": "3"}) == \
        {"batch_size": 10, "pause_ms": 2, "connections": 3}


@pytest.mark.parametrize("settings, text", [
    ({"batch_size": 0}, r"batch_size 0 is out of range; valid: 1\.\.100000"),
    ({"pause_ms": 60001}, r"pause_ms 60001 is out of range; valid: 0\.\.60000"),
    ({"connections": 65}, r"connections 65 is out of range; valid: 1\.\.64"),
    ({"max_rows_per_second": -1}, r"0 means no ceiling"),
    ({"batch_size": True}, r"batch_size True is not an integer"),
    ({"batch_size": 1.5}, r"batch_size 1\.5 is not an integer"),
    ({"batch_size": "ten"}, r"batch_size 'ten' is not an integer"),
    ({"batchsize": 10}, r"unknown setting 'batchsize'; valid settings: batch_size 1\.\.100000"),
])
def test_check_names_the_setting_the_value_and_the_range(settings, text):
    with pytest.raises(th.ThrottleError, match=text):
        th.check(settings, "throttle file /x")


def test_check_rejects_non_objects():
    with pytest.raises(th.ThrottleError, match="expected a JSON object"):
        th.check([1, 2], "throttle file /x")


def test_defaults_are_valid_and_faster_than_the_reshard_service():
    th.check(th.DEFAULTS)
    th.check(th.UNTHROTTLED)
    assert th.DEFAULTS["max_rows_per_second"] >= 1000     # ~100 rows/s was the old default


# ---- rate limiter ------------------------------------------------------------------

def test_rate_limiter_spaces_batches_to_the_ceiling():
    rl = th.RateLimiter()
    now = 0.0
    waits = [rl.reserve(100, 1000, now) for _ in range(5)]   # 5 batches of 100 at 1000 rows/s
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_rate_limiter_refund_gives_back_unused_rows():
    rl = th.RateLimiter()
    rl.reserve(1000, 1000, 0.0)     # next slot at t=1.0
    rl.refund(900, 1000)             # the batch deleted only 100 rows
    assert rl.reserve(100, 1000, 0.0) == pytest.approx(0.1)


def test_rate_limiter_idle_time_is_not_banked_beyond_one_batch():
    rl = th.RateLimiter()
    rl.reserve(100, 100, 0.0)
    # long idle: the next batch runs at once, but the one after waits again
    assert rl.reserve(100, 100, 50.0) == 0.0
    assert rl.reserve(100, 100, 50.0) == pytest.approx(1.0)


def test_rate_limiter_zero_means_no_ceiling_and_a_new_rate_applies_at_once():
    rl = th.RateLimiter()
    assert rl.reserve(10 ** 6, 0, 0.0) == 0.0
    rl.reserve(1000, 10, 0.0)                 # 100 s of debt at 10 rows/s
    assert rl.reserve(1000, 10000, 0.0) == 0.0  # the operator raised the ceiling


def test_many_workers_share_one_ceiling():
    t = th.Throttle({"max_rows_per_second": 1000})
    waits = []
    lock = threading.Lock()

    def worker():
        for _ in range(10):
            w = t.reserve(100)
            with lock:
                waits.append(w)
    ts = [threading.Thread(target=worker) for _ in range(4)]
    [x.start() for x in ts]
    [x.join() for x in ts]
    # 40 batches of 100 rows at 1000 rows/s span ~3.9 s of schedule
    assert max(waits) == pytest.approx(3.9, abs=0.2)


# ---- the throttle file ---------------------------------------------------------------

def test_file_overrides_options_and_is_reread_when_it_changes(tmp_path):
    f = tmp_path / "throttle.json"
    clock = Clock()
    t = th.Throttle({"batch_size": 100, "connections": 2}, path=str(f), recheck=0.5, clock=clock)
    assert t.settings["batch_size"] == 100 and t.error is None
    f.write_text(json.dumps({"batch_size": 5000, "max_rows_per_second": 0}))
    clock.t += 1
    assert t.refresh() is True
    assert t.settings == {"batch_size": 5000, "pause_ms": th.DEFAULTS["pause_ms"], "connections": 2,
                          "max_rows_per_second": 0}
    gen = t.generation
    clock.t += 1
    assert t.refresh() is False and t.generation == gen     # unchanged file
    os.unlink(f)
    clock.t += 1
    assert t.refresh() is True
    assert t.settings["batch_size"] == 100                   # back to the options


def test_recheck_interval_limits_stat_calls(tmp_path):
    f = tmp_path / "throttle.json"
    clock = Clock()
    t = th.Throttle({}, path=str(f), recheck=5, clock=clock)
    f.write_text('{"connections": 7}')
    clock.t += 1
    assert t.refresh() is False          # not yet due
    clock.t += 5
    assert t.refresh() is True and t.settings["connections"] == 7


@pytest.mark.parametrize("content, text", [
    ("{not json", "not valid JSON"),
    ('{"connections": 0}', "connections 0 is out of range"),
    ('{"speed": 3}', "unknown setting 'speed'"),
])
def test_invalid_file_keeps_the_settings_in_force_and_says_why(tmp_path, content, text):
    f = tmp_path / "throttle.json"
    f.write_text('{"batch_size": 777}')
    clock = Clock()
    t = th.Throttle({}, path=str(f), clock=clock)
    assert t.settings["batch_size"] == 777
    f.write_text(content)
    os.utime(f, ns=(1, 1))
    clock.t += 1
    t.refresh()
    assert t.settings["batch_size"] == 777
    assert text in t.error
    f.write_text('{"batch_size": 778}')
    clock.t += 1
    t.refresh()
    assert t.settings["batch_size"] == 778 and t.error is None


def test_bad_options_fail_at_construction():
    with pytest.raises(th.ThrottleError, match="throttle options: batch_size 0"):
        th.Throttle({"batch_size": 0})


def test_wait_returns_early_when_settings_change(tmp_path):
    f = tmp_path / "throttle.json"
    t = th.Throttle({}, path=str(f), recheck=0.0)
    timer = threading.Timer(0.3, lambda: f.write_text('{"pause_ms": 0}'))
    timer.start()
    import time
    t0 = time.monotonic()
    assert t.wait(10.0) is False
    assert time.monotonic() - t0 < 3
    timer.join()


def test_wait_honours_stop():
    import time
    stop = threading.Event()
    stop.set()
    t = th.Throttle({})
    t0 = time.monotonic()
    assert t.wait(5.0, stop) is False
    assert time.monotonic() - t0 < 0.5
