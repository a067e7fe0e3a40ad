"""Progress math (rate, ETA) and the atomic progress file."""
import json
import os
import threading

import pytest

from ansible_collections.manta.ops.plugins.module_utils import progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_rate_and_eta_from_the_recent_window():
    c = Clock()
    m = progress.RateMeter(total=10000, window=10, clock=c)
    for _ in range(20):          # 100 rows/s for 20 s
        c.t += 1
        m.add(100)
    s = m.snapshot()
    assert s["rows_done"] == 2000 and s["rows_remaining"] == 8000
    assert s["rows_per_second"] == pytest.approx(100, rel=0.01)
    assert s["eta_seconds"] == pytest.approx(80, rel=0.02)
    assert s["percent"] == 20.0
    for _ in range(20):          # slows down to 10 rows/s
        c.t += 1
        m.add(10)
    s = m.snapshot()
    assert s["rows_per_second"] == pytest.approx(10, rel=0.15)     # recent, not average
    assert s["average_rows_per_second"] == pytest.approx(2200 / 40, rel=0.01)
    assert s["eta_seconds"] == pytest.approx(7800 / 10, rel=0.15)


def test_eta_unknown_before_any_progress_and_zero_when_done():
    c = Clock()
    m = progress.RateMeter(total=50, clock=c)
    c.t += 5
    s = m.snapshot()
    assert s["eta_seconds"] is None and s["eta"] == "unknown"
    m.add(50)
    assert m.snapshot()["eta_seconds"] == 0.0
    assert progress.RateMeter(total=0, clock=c).snapshot()["percent"] == 100.0


@pytest.mark.parametrize("secs, text", [(5, "5s"), (65, "1m 5s"), (3723, "1h 2m 3s"), (None, "unknown")])
def test_eta_text(secs, text):
    assert progress.eta_text(secs) == text


def test_write_json_is_atomic_and_readable(tmp_path):
    p = tmp_path / "sub" / "progress.json"
    progress.write_json(str(p), {"rows_done": 1})
    assert json.loads(p.read_text()) == {"rows_done": 1}
    stop = threading.Event()
    seen = []

    def reader():
        while not stop.is_set():
            try:
                seen.append(json.loads(p.read_text())["rows_done"])
            except FileNotFoundError:
                pass
    th = threading.Thread(target=reader)
    th.start()
    for i in range(300):
        progress.write_json(str(p), {"rows_done": i, "pad": "x" * 5000})
    stop.set()
    th.join()
    assert seen                                     # never a partial document (json would raise)
    assert not [f for f in os.listdir(p.parent) if f.startswith(".progress.json.")]


def test_read_json_missing_and_broken(tmp_path):
    assert progress.read_json(str(tmp_path / "none.json")) is None
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(progress.ProgressFileError, match="move it away"):
        progress.read_json(str(bad))
    bad.write_text("[1]")
    with pytest.raises(progress.ProgressFileError, match="JSON object"):
        progress.read_json(str(bad))


def test_write_json_error_names_the_file(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    (d / "x").write_text("")
    with pytest.raises(progress.ProgressFileError, match="cannot write progress file"):
        progress.write_json(str(d / "x" / "p.json"), {})
