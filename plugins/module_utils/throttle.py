# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Throttles an operator can change while a long job runs.

Four settings (the reshard service's three tunings, reshard.md §2.4, plus a
rate ceiling):

==================== ================================ ==================
name                 meaning                          valid values
==================== ================================ ==================
batch_size           most rows per DELETE statement   1 .. 100000
pause_ms             sleep of a connection after a    0 .. 60000
                     batch that deleted rows
connections          PostgreSQL connections working   1 .. 64
                     at once
max_rows_per_second  ceiling over all connections     0 (none) .. 10^7
==================== ================================ ==================

The job starts from its options. If a *throttle file* is given, it is a JSON
object with any of these keys, e.g. ``{"max_rows_per_second": 500}``; it is
re-read (when its mtime or size changed, at most every ``recheck`` seconds)
between batches, and the keys it holds override the options while it exists.
Removing the file returns to the options. A file that is not valid JSON or
holds an unknown key or an out-of-range value is ignored as a whole: the
previous settings stay in force and :attr:`Throttle.error` says what is
wrong (the job reports it in its progress file), so a typo never stops or
speeds up a multi-hour delete.

The ceiling is a shared schedule (a token bucket with a one-batch burst): a
connection reserves its batch before running it and gives back what the batch
did not delete, so all connections together stay at or below the ceiling.
"""
from __future__ import annotations

import json
import os
import threading
import time

LIMITS = {
    "batch_size": (1, 100000),
    "pause_ms": (0, 60000),
    "connections": (1, 64),
    "max_rows_per_second": (0, 10_000_000),
}
KEYS = tuple(LIMITS)

#: The default throttle: measured (docs/bench-moray.md) to keep the p99 latency of
#: concurrent single-row writes within 2x of idle on a lab shard (1.1-1.2x), while
#: deleting ~50x faster than the reshard service's defaults (about 100 rows/s).
DEFAULTS = {"batch_size": 500, "pause_ms": 20, "connections": 2, "max_rows_per_second": 5000}
#: Full speed: no ceiling, no pause, big batches over 4 connections (what the benchmark
#: calls "unthrottled"; for a maintenance window, via the options or the throttle file).
UNTHROTTLED = {"batch_size": 10000, "pause_ms": 0, "connections": 4, "max_rows_per_second": 0}


class ThrottleError(ValueError):
    """A throttle setting is not valid."""


def describe_limits():
    return ", ".join(f"{k} {lo}..{hi}" for k, (lo, hi) in LIMITS.items())


def check(settings, source="throttle"):
    """Validated copy of ``settings`` (a dict with a subset of KEYS). Raises ThrottleError.

    Integers only (JSON numbers with no fraction and numeric strings are
    accepted; booleans are not).
    """
    if not isinstance(settings, dict):
        raise ThrottleError(f"{source}: expected a JSON object like {{\"batch_size\": 1000}}, "
                            f"got {type(settings).__name__}")
    out = {}
    for key, value in settings.items():
        if key not in LIMITS:
            raise ThrottleError(f"{source}: unknown setting {key!r}; valid settings: {describe_limits()}")
        lo, hi = LIMITS[key]
        v = value
        if isinstance(v, bool):
            v = None
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        elif isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v.strip())
        if not isinstance(v, int):
            raise ThrottleError(f"{source}: {key} {value!r} is not an integer; valid: {lo}..{hi}")
        if not lo <= v <= hi:
            extra = " (0 means no ceiling)" if key == "max_rows_per_second" else ""
            raise ThrottleError(f"{source}: {key} {v} is out of range; valid: {lo}..{hi}{extra}")
        out[key] = v
    return out


class RateLimiter:
    """Rows-per-second ceiling shared by several workers (pure scheduling math).

    ``reserve(n, rate, now)`` returns how long the caller must wait before
    running a batch of ``n`` rows; ``refund(n, rate)`` gives back rows a batch
    did not use. ``rate`` 0 means no ceiling.
    """

    def __init__(self):
        self._next = None
        self._rate = None

    def reset(self):
        self._next = None

    def reserve(self, n, rate, now):
        if not rate or rate <= 0:
            self._next = None
            self._rate = rate
            return 0.0
        if rate != self._rate:
            self._next = None          # a new ceiling applies from now on
            self._rate = rate
        start = now if self._next is None or self._next < now else self._next
        self._next = start + float(n) / rate
        return start - now

    def refund(self, n, rate):
        if rate and rate > 0 and self._next is not None and rate == self._rate and n > 0:
            self._next -= float(n) / rate


class Throttle:
    """Current settings (options overlaid by the throttle file) and the shared rate schedule."""

    def __init__(self, settings=None, path=None, recheck=0.5, clock=time.monotonic):
        base = dict(DEFAULTS)
        base.update(check(settings or {}, "throttle options"))
        self._base = base
        self._file = {}
        self.path = path
        self.recheck = recheck
        self.clock = clock
        self.error = None
        self.generation = 0
        self._stamp = None
        self._checked = None
        self._lock = threading.Lock()
        self._limiter = RateLimiter()
        self.refresh(force=True)

    # ---- settings ---------------------------------------------------------------
    @property
    def settings(self):
        with self._lock:
            s = dict(self._base)
            s.update(self._file)
            return s

    def __getitem__(self, key):
        return self.settings[key]

    def refresh(self, force=False):
        """Re-read the throttle file if it changed. Returns True when the settings changed."""
        if not self.path:
            return False
        now = self.clock()
        with self._lock:
            if not force and self._checked is not None and now - self._checked < self.recheck:
                return False
            self._checked = now
            try:
                st = os.stat(self.path)
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            except FileNotFoundError:
                stamp = None
            except OSError as exc:
                self.error = f"throttle file {self.path}: {exc}"
                return False
            if stamp == self._stamp and not force:
                return False
            self._stamp = stamp
            before = dict(self._base, **self._file)
            if stamp is None:
                self._file = {}
                self.error = None
            else:
                try:
                    with open(self.path, "r", encoding="utf-8") as fh:
                        data = json.load(fh)
                    self._file = check(data, f"throttle file {self.path}")
                    self.error = None
                except (ValueError, OSError) as exc:
                    # keep what is in force; report why the file was ignored
                    self.error = str(exc) if isinstance(exc, ThrottleError) else \
                        f"throttle file {self.path}: not valid JSON ({exc}); previous settings kept"
            after = dict(self._base, **self._file)
            if after != before:
                self.generation += 1
                self._limiter.reset()
                return True
            return False

    # ---- pacing -----------------------------------------------------------------
    def reserve(self, n):
        """Seconds to wait before a batch of ``n`` rows, under the current ceiling."""
        rate = self.settings["max_rows_per_second"]
        with self._lock:
            return self._limiter.reserve(n, rate, self.clock())

    def refund(self, n):
        rate = self.settings["max_rows_per_second"]
        with self._lock:
            self._limiter.refund(n, rate)

    def wait(self, seconds, stop=None, slice_s=0.25):
        """Sleep ``seconds`` in slices, returning early (False) when ``stop`` is set or the
        settings change (so a raised ceiling or shorter pause applies at once)."""
        gen = self.generation
        end = self.clock() + seconds
        while True:
            left = end - self.clock()
            if left <= 0:
                return True
            if stop is not None and stop.is_set():
                return False
            time.sleep(min(slice_s, left))
            self.refresh()
            if self.generation != gen:
                return False
