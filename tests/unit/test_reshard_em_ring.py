"""reshard_em_ring against a fake electric-moray: swap, stamp check, idempotence, guards, crash resume.

The fake: a status server answering 200 only while a state file says "enabled", serving the stamp of the ring
that was in place when it was (re)enabled, like a process that reads its ring at start; and a fake `svcadm`
that flips the state file.
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modrun import run_module  # noqa: E402

from ansible_collections.manta.ops.plugins.module_utils import reshard_ring as rring  # noqa: E402
from ansible_collections.manta.ops.plugins.module_utils.fash import Topology  # noqa: E402


class FakeEm:
    def __init__(self, tmp):
        self.dir = Path(tmp)
        self.ring = self.dir / "leveldb-2021"
        self.state = self.dir / "state"
        self.state.write_text("enabled")
        self.serving = None
        self.start_time = None
        self.serving_since = None
        self.pid = 1
        self.stop = False
        em = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if em.serving is None:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps({"start_time": em.start_time, "serving_since": em.serving_since,
                                   "pid": em.pid,
                                   "ring": {"image_uuid": em.serving, "stamp": {"image_uuid": em.serving},
                                            "path": str(em.ring)},
                                   "index_shards": [{"host": "3.moray.x", "readOnly": False}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        threading.Thread(target=self.watch, daemon=True).start()
        self.svcadm = self.dir / "svcadm"
        self.svcadm.write_text(f"#!{sys.executable}\nimport sys\nopen({str(self.state)!r}, 'w').write("
                               "sys.argv[1] + 'd')\n")
        os.chmod(self.svcadm, 0o755)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.srv.server_address[1]}/status"

    def watch(self):
        last = None
        while not self.stop:
            s = self.state.read_text().strip()
            if s != last:
                if s == "enabled":
                    time.sleep(0.05)
                    self.serving = rring.stamp_image(str(self.ring)) if self.ring.exists() else "broken"
                    self.start_time = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
                    now = time.time()
                    self.serving_since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + \
                        f".{int(now * 1000) % 1000:03d}Z"
                else:
                    self.serving = None
                last = s
            time.sleep(0.01)

    def started(self):
        """As if the process (re)started now, reading the ring in place (the fixtures build the ring after
        the watcher started, which on a loaded machine may have looked before it existed)."""
        self.serving = rring.stamp_image(str(self.ring)) if self.ring.exists() else "broken"
        self.start_time = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        now = time.time()
        self.serving_since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"

    def close(self):
        self.stop = True
        self.srv.shutdown()


def em_with_rings(d, final=True):
    """A started FakeEm in ``d`` on the old ring, with the transitional ring (vnodes 0
    and 2 read-only) staged, and the final one (moved to shard 3) when ``final``."""
    topo = Topology.create(["tcp://1.moray.x:2020", "tcp://2.moray.x:2020"], 64)
    e = FakeEm(d)
    rring.build_ring_dir(topo, str(e.ring), "img-old", "p", "old")
    t = topo.copy()
    t.set_data([0, 2], "ro")
    rring.build_ring_dir(t, rring.staged_dir(str(e.ring), "img-t"), "img-t", "p", "transitional")
    if final:
        f = topo.copy()
        f.remap([0, 2], "tcp://3.moray.x:2020")
        rring.build_ring_dir(f, rring.staged_dir(str(e.ring), "img-f"), "img-f", "p", "final")
    time.sleep(0.1)
    e.started()
    return e


@pytest.fixture
def em(tmp_path):
    e = em_with_rings(tmp_path)
    yield e
    e.close()


def args(em, **kw):
    a = {"ring_path": str(em.ring), "status_url": em.url, "svcadm": str(em.svcadm), "timeout": 10,
         "image_uuid": "img-t"}
    a.update(kw)
    return a


def test_swap_then_idempotent(em):
    r = run_module("reshard_em_ring", args(em, only_from=["img-old"]), diff=True)
    assert not r.get("failed"), r
    assert r["changed"] and r["image_before"] == "img-old" and r["image_after"] == "img-t"
    assert r["serving_ts"] >= r["stopped_ts"]
    assert em.serving == "img-t"
    assert "img-old" in r["staged"]                 # the old ring is kept for a roll back
    r2 = run_module("reshard_em_ring", args(em, only_from=["img-old"]))
    assert not r2["changed"] and r2["already"]


def test_guards_only_from_and_superseded(em):
    assert not run_module("reshard_em_ring", args(em)).get("failed")
    # a final swap that only replaces the transitional ring
    r = run_module("reshard_em_ring", args(em, image_uuid="img-f", only_from=["img-t"],
                                           index_shards={"3.moray.x": False}))
    assert r["changed"] and em.serving == "img-f"
    # a late transitional task never replaces the final ring
    r = run_module("reshard_em_ring", args(em, image_uuid="img-t", only_from=["img-old"],
                                           superseded_by=["img-f"]))
    assert not r.get("failed") and r["superseded"] and em.serving == "img-f"
    # and a swap from an unexpected ring fails
    r = run_module("reshard_em_ring", args(em, image_uuid="img-t", only_from=["img-old"]))
    assert r["failed"] and "only replaces img-old" in r["msg"]


def test_resume_after_a_kill_between_the_renames(em):
    # the process was stopped and the ring moved aside, then the task died
    em.state.write_text("disabled")
    time.sleep(0.1)
    os.rename(em.ring, Path(rring.staging_root(str(em.ring))) / "img-old")
    r = run_module("reshard_em_ring", args(em, only_from=["img-old"]))
    assert not r.get("failed"), r
    assert em.serving == "img-t" and rring.stamp_image(str(em.ring)) == "img-t"


def test_check_mode_changes_nothing(em):
    r = run_module("reshard_em_ring", args(em), check=True, diff=True)
    assert r["changed"] and r["image_after"] == "img-t"
    assert em.serving == "img-old" and rring.stamp_image(str(em.ring)) == "img-old"


def test_wait_for_barrier_times_out_without_touching(em):
    r = run_module("reshard_em_ring", args(em, wait_for=["http://127.0.0.1:9/status"], wait_timeout=1))
    assert r["failed"] and "to serve img-t before swapping" in r["msg"]
    assert em.serving == "img-old"


def test_stale_index_view_is_restarted_then_fails(em):
    r = run_module("reshard_em_ring", args(em, index_shards={"9.moray.x": False}, restarts=1))
    assert r["failed"] and "9.moray.x is not in its index shards" in r["msg"]
    assert r["restarts"] == 1


def test_serving_ts_is_the_process_own(em):
    r = run_module("reshard_em_ring", args(em, only_from=["img-old"]))
    assert not r.get("failed"), r
    from ansible_collections.manta.ops.plugins.module_utils.reshard_journal import parse_iso
    assert r["serving_ts"] == parse_iso(em.serving_since) and r["status"]["serving_since"] == em.serving_since


# ---- rolling in batches -------------------------------------------------------------------------------

@pytest.fixture
def em2(tmp_path):
    d = tmp_path / "em2"
    d.mkdir()
    e = em_with_rings(d, final=False)
    yield e
    e.close()


def test_rolling_order_waits_for_the_earlier_batch(em, em2):
    order = [em.url, em2.url]
    # em2 is in the second batch (N=2: batches of 1): it waits for em to serve img-t, and gives up untouched
    r = run_module("reshard_em_ring", args(em2, rolling_order=order, wait_timeout=1))
    assert r["failed"] and f"{em.url} to serve img-t before swapping" in r["msg"], r
    assert em2.serving == "img-old" and r["batch_index"] == 1
    r = run_module("reshard_em_ring", args(em, rolling_order=order))
    assert not r.get("failed") and r["batch_index"] == 0 and em.serving == "img-t", r
    r = run_module("reshard_em_ring", args(em2, rolling_order=order))
    assert not r.get("failed") and em2.serving == "img-t", r
    assert r["stopped_ts"] >= run_module("reshard_em_ring", args(em, rolling_order=order))["serving_ts"]


def test_rolling_never_stops_the_last_one_serving(em, em2):
    em2.state.write_text("disabled")          # the other electric-moray is down
    time.sleep(0.1)
    r = run_module("reshard_em_ring", args(em, rolling_order=[em.url, em2.url], wait_timeout=1))
    assert r["failed"] and "no other electric-moray answers" in r["msg"], r
    assert em.serving == "img-old"


def test_rolling_order_must_name_this_process(em):
    r = run_module("reshard_em_ring", args(em, rolling_order=["http://127.0.0.1:9/status"]))
    assert r["failed"] and "is not in rolling_order" in r["msg"] and em.serving == "img-old"


@pytest.mark.parametrize("kw,needle", [({"batch": -1}, "batch must be 0"),
                                       ({"restart": "signal", "restart_signal": "KILL"}, "not a signal"),
                                       ({"restart": "signal", "restart_signal": "NOPE"}, "not a signal")])
def test_bad_input_fails_before_any_change(em, kw, needle):
    r = run_module("reshard_em_ring", args(em, **kw))
    assert r["failed"] and needle in r["msg"], r
    assert em.serving == "img-old" and rring.stamp_image(str(em.ring)) == "img-old"


# ---- restart=signal --------------------------------------------------------------------------------------

RESTARTER = """
import signal, sys, time
state = sys.argv[1]
def hup(*_):
    open(state, "w").write("disabled")
    time.sleep(0.15)
    open(state, "w").write("enabled")
signal.signal(signal.SIGHUP, hup)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


@pytest.fixture
def restarter(em, tmp_path):
    """The fake's process: restarts (down, then up reading the ring in place) on SIGHUP, keeping its pid."""
    import subprocess
    script = tmp_path / "restarter.py"
    script.write_text(RESTARTER)
    proc = subprocess.Popen([sys.executable, str(script), str(em.state)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    em.pid = proc.pid
    yield proc
    proc.kill()
    proc.wait()


def test_restart_by_signal_swaps_without_svcadm(em, restarter, tmp_path):
    # svcadm would fail loudly: the signal path must not need it for a running process
    bad = tmp_path / "svcadm-broken"
    bad.write_text("#!/bin/sh\necho svcadm must not run >&2\nexit 3\n")
    os.chmod(bad, 0o755)
    before = em.serving_since
    r = run_module("reshard_em_ring", args(em, only_from=["img-old"], restart="signal", svcadm=str(bad)))
    assert not r.get("failed"), r
    assert em.serving == "img-t" and rring.stamp_image(str(em.ring)) == "img-t"
    assert r["status"]["pid"] == restarter.pid and em.serving_since != before
    assert r["serving_ts"] >= r["stopped_ts"]
    assert "img-old" in r["staged"]


def test_restart_by_signal_resumes_after_a_kill_between_move_and_signal(em, restarter):
    # the ring was moved under the running process, then the task died before signalling it
    r = run_module("reshard_em_ring", args(em, only_from=["img-old"], restart="signal", test_crash=True))
    assert r.get("failed")
    assert rring.stamp_image(str(em.ring)) == "img-t" and em.serving == "img-old"
    r = run_module("reshard_em_ring", args(em, only_from=["img-old"], restart="signal"))
    assert not r.get("failed") and r["changed"], r
    assert em.serving == "img-t"


def test_restart_by_signal_refuses_a_process_of_another_ring(em, restarter):
    em.pid = 1
    r = run_module("reshard_em_ring", args(em, only_from=["img-old"], restart="signal"))
    assert r["failed"] and "cannot restart" in r["msg"], r
