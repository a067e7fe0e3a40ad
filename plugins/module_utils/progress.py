# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Progress of a long job: rows done, rows/s, ETA, and a JSON file an operator can watch.

* :class:`RateMeter` (pure math): cumulative rows sampled over time; the
  recent rate is measured over a sliding window (default 10 s), the average
  since the start, and the ETA is ``remaining / recent rate`` (the average
  when the window has too little data).
* :func:`write_json` replaces a file atomically (write a temporary file in
  the same directory, fsync, rename), so a reader (``watch cat``, ``jq``)
  never sees half a document. :func:`read_json` reads one back.
* :func:`eta_text` renders seconds as ``1h 2m 3s``.
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import tempfile
import threading
import time


class ProgressFileError(Exception):
    """The progress file cannot be read or written."""


class RateMeter:
    def __init__(self, total=0, done=0, window=10.0, clock=time.monotonic):
        self.clock = clock
        self.window = float(window)
        self.total = int(total)
        self.done = int(done)
        self._start_done = int(done)
        self.started = clock()
        self._samples = collections.deque([(self.started, self.done)])
        self._lock = threading.Lock()

    def add(self, n):
        with self._lock:
            self.done += int(n)
            now = self.clock()
            self._samples.append((now, self.done))
            while len(self._samples) > 2 and now - self._samples[1][0] > self.window:
                self._samples.popleft()

    def _recent(self, now):
        t0, d0 = self._samples[0]
        if now - t0 <= 0:
            return None
        if now - t0 < min(2.0, self.window):
            return None
        return (self.done - d0) / (now - t0)

    def snapshot(self):
        with self._lock:
            now = self.clock()
            elapsed = now - self.started
            avg = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
            recent = self._recent(now)
            rate = recent if recent is not None else avg
            remaining = max(0, self.total - self.done)
            if remaining == 0:
                eta = 0.0
            elif rate > 0:
                eta = remaining / rate
            else:
                eta = None
            return {
                "rows_total": self.total,
                "rows_done": self.done,
                "rows_remaining": remaining,
                "percent": round(100.0 * self.done / self.total, 2) if self.total else 100.0,
                "rows_per_second": round(rate, 1),
                "average_rows_per_second": round(avg, 1),
                "elapsed_seconds": round(elapsed, 3),
                "eta_seconds": None if eta is None else round(eta, 1),
                "eta": eta_text(eta),
            }


def eta_text(seconds):
    if seconds is None:
        return "unknown"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h {m}m {s}s"
    if m:
        return f"{m}m {s}s"
    return f"{s}s"


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def write_json(path, data, mode=0o644):
    """Atomically replace ``path`` with ``data`` as pretty JSON."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path)) or "."
    try:
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as exc:
        raise ProgressFileError(f"cannot write progress file {path}: {exc}") from None


def read_json(path):
    """The JSON object in ``path``, or None when the file does not exist."""
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ProgressFileError(f"cannot read progress file {path}: {exc}; move it away to start "
                                "afresh (deleting is idempotent, nothing is lost)") from None
    if not isinstance(data, dict):
        raise ProgressFileError(f"progress file {path} does not hold a JSON object; move it away "
                                "to start afresh")
    return data
