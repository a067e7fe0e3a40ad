# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""The destination side of an evacuation: pull object copies over HTTP,
verify them while streaming, and make them durable. Standard library only
(it runs on the storage nodes).

Per copy (the rebalancer agent's algorithm, reference/evacuate.md §3.7, with
its gaps closed, §7.3 items 4, 7, 8, 9):

1. If ``<root>/<creator-or-owner>/<objectId>`` already exists with the right
   size and MD5, nothing is fetched (an interrupted round is redone cheaply).
2. Otherwise GET ``<source>/<creator-or-owner>/<objectId>`` from the first
   source, falling back along the list (other copies, then the evacuated
   node). Transport errors and 5xx are retried with back-off; a 404, a size
   or an MD5 mismatch moves on to the next source.
3. The body streams into a temporary file in ``tmp_dir`` (same filesystem)
   while its MD5 is computed; the byte count and MD5 must equal
   ``contentLength`` and ``contentMD5``.
4. Make the data durable, ``rename`` it into place (creating the owner
   directory), and make the directory entry durable, in that order, before
   the copy counts. ``durability=file``: ``fsync`` the file, then (group-
   committed) ``fsync`` the directory. ``durability=batch`` (Linux): the same
   order with one ``syncfs(2)`` of the filesystem shared by every copy in
   flight instead of one flush per file, which is what a disk's flush costs
   allow; ``auto`` picks ``batch`` where syncfs exists. The default is
   ``file`` (ZFS, the storage nodes' filesystem, batches concurrent fsyncs
   in its intent log itself).
5. Optionally ``HEAD`` the copy through the destination's own web server
   (``verify_url``), so metadata never points at a node that cannot serve it.

Throttles: ``max_bytes_per_sec`` for everything this destination reads, and a
per-source share (the plan divides each source's limit among the
destinations reading from it). Concurrency: ``concurrency`` worker threads,
each with keep-alive connections per source.

Automatic pause: when the share of transient failures in the last
``pause_window`` copies reaches ``pause_error_ratio`` (or ``pause_consecutive``
fail in a row), no new copy starts; the rest is reported ``not_attempted`` and
the result says why, so the play pauses the job (RFD 162's requirement).
"""
from __future__ import annotations

import base64
import collections
import hashlib
import http.client
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

CHUNK = 1024 * 1024
COPIED, SKIPPED, TRANSIENT, NOT_ATTEMPTED = "copied", "skipped", "transient", "not_attempted"


class CopyError(Exception):
    pass


class RateLimiter:
    """Token bucket (bytes/s), shared by threads; ``None`` rate = unlimited.
    The rate can be changed while running (``set_rate``)."""

    def __init__(self, rate, burst_seconds=0.25):
        self.lock = threading.Lock()
        self.rate = None
        self.burst = 0.0
        self.tokens = 0.0
        self.t = time.monotonic()
        self.burst_seconds = burst_seconds
        self.set_rate(rate)

    def set_rate(self, rate):
        with self.lock:
            self.rate = float(rate) if rate else None
            self.burst = max(CHUNK, (self.rate or 0) * self.burst_seconds)
            self.tokens = min(self.tokens, self.burst)

    def acquire(self, n):
        if self.rate is None:
            return
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
                self.t = now
                if self.tokens >= n or self.tokens >= self.burst:
                    self.tokens -= n
                    return
                wait = (min(n, self.burst) - self.tokens) / self.rate
            time.sleep(min(wait, 0.5))


def _fsync_path(d):
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_LIBC = None


def syncfs_available():
    """Linux's syncfs(2) (one flush for every file of a filesystem), through libc."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes
            import ctypes.util
            lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            _LIBC = lib if hasattr(lib, "syncfs") else False
        except (OSError, AttributeError):
            _LIBC = False
    return bool(_LIBC)


def _syncfs_path(d):
    import ctypes
    fd = os.open(d, os.O_RDONLY)
    try:
        if _LIBC.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), d)
    finally:
        os.close(fd)


class DirSyncer:
    """Group commit: ``sync(key)`` returns once ``op(key)`` (fsync of a directory,
    or syncfs of a filesystem) has run *starting after* the call. Concurrent
    callers share one operation."""

    def __init__(self, op=None):
        self.op = op or _fsync_path
        self.cond = threading.Condition()
        self.req = collections.defaultdict(int)
        self.done = collections.defaultdict(int)
        self.errors = {}
        self.stop = False
        self.syncs = 0
        self.th = threading.Thread(target=self._run, name="dirsync", daemon=True)
        self.th.start()

    def sync(self, d):
        with self.cond:
            self.req[d] += 1
            mine = self.req[d]
            self.cond.notify_all()
            while self.done[d] < mine and d not in self.errors:
                self.cond.wait(1.0)
            if d in self.errors:
                raise OSError(self.errors[d])

    def _run(self):
        while True:
            with self.cond:
                while not self.stop and all(self.done[d] >= r for d, r in self.req.items()):
                    self.cond.wait(1.0)
                if self.stop:
                    return
                todo = {d: r for d, r in self.req.items() if self.done[d] < r}
            for d, r in todo.items():
                try:
                    self.op(d)
                    err = None
                except OSError as exc:
                    err = f"sync {d}: {exc}"
                with self.cond:
                    self.syncs += 1
                    if err:
                        self.errors[d] = err
                    else:
                        self.done[d] = max(self.done[d], r)
                    self.cond.notify_all()

    def close(self):
        with self.cond:
            self.stop = True
            self.cond.notify_all()
        self.th.join(timeout=5)


def md5_b64_of_file(path):
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(CHUNK)
            if not b:
                break
            h.update(b)
    return base64.b64encode(h.digest()).decode()


class Outcome:
    __slots__ = ("status", "reason", "detail", "bytes", "fetched", "source")

    def __init__(self, status, reason=None, detail=None, nbytes=0, fetched=False, source=None):
        self.status = status
        self.reason = reason
        self.detail = detail
        self.bytes = nbytes
        self.fetched = fetched
        self.source = source


class Copier:
    """Copy a list of tasks into ``root``. Thread-safe internals; ``run`` blocks."""

    def __init__(self, root, sources, tmp_dir=None, concurrency=8, max_bytes_per_sec=None,
                 source_bytes_per_sec=None, timeout=30.0, retries=2, verify_url=None,
                 deadline=None, pause_window=50, pause_error_ratio=0.5, pause_consecutive=20,
                 check_mode=False, retry_delay=0.5, durability="file"):
        if durability not in ("auto", "file", "batch"):
            raise CopyError(f"durability must be auto, file or batch, got {durability!r}")
        if durability == "auto":
            durability = "batch" if syncfs_available() else "file"
        if durability == "batch" and not syncfs_available():
            raise CopyError("durability=batch needs Linux syncfs(2); use durability=file")
        self.durability = durability
        self.root = os.path.abspath(root)
        self.sources = dict(sources or {})
        self.tmp_dir = tmp_dir or os.path.join(self.root, "manta_evacuate", "tmp")
        self.concurrency = max(1, int(concurrency))
        self.limiter = RateLimiter(max_bytes_per_sec)
        self.source_limiters = {s: RateLimiter(r) for s, r in (source_bytes_per_sec or {}).items() if r}
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.verify = urlsplit(verify_url) if verify_url else None
        self.deadline = deadline
        self.pause_window = max(5, int(pause_window))
        self.pause_ratio = float(pause_error_ratio)
        self.pause_consecutive = max(1, int(pause_consecutive))
        self.check_mode = check_mode
        self.retry_delay = retry_delay
        self.local = threading.local()
        self.lock = threading.Lock()
        self.recent = collections.deque(maxlen=self.pause_window)
        self.consecutive = 0
        self.paused = None
        self.stopped = None
        self.source_down = {}       # source id -> monotonic time until which it is skipped
        self.source_fail = collections.Counter()
        self.counts = collections.Counter()
        self.reasons = collections.Counter()
        self.bytes_fetched = 0
        self.syncer = None
        self.fs_syncer = None

    # ---- HTTP -------------------------------------------------------------------------
    def _conn(self, base):
        pool = getattr(self.local, "pool", None)
        if pool is None:
            pool = self.local.pool = {}
        c = pool.get(base)
        if c is None:
            u = urlsplit(base)
            cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
            c = pool[base] = cls(u.hostname, u.port or (443 if u.scheme == "https" else 80),
                                 timeout=self.timeout)
        return c

    def _drop(self, base):
        pool = getattr(self.local, "pool", None) or {}
        c = pool.pop(base, None)
        if c is not None:
            c.close()

    def _source_base(self, sid):
        base = self.sources.get(sid) or f"http://{sid}"
        return base.rstrip("/")

    # ---- one copy ---------------------------------------------------------------------
    def final_path(self, path_owner, object_id):
        if "/" in path_owner or "/" in object_id or path_owner in ("", ".", "..") \
                or object_id in ("", ".", ".."):
            raise CopyError(f"unsafe path component in {path_owner!r}/{object_id!r}")
        return os.path.join(self.root, path_owner, object_id)

    def copy_one(self, task):
        oid, path_owner, object_id, size, md5, srcs = task[:6]
        try:
            final = self.final_path(path_owner, object_id)
        except CopyError as exc:
            return Outcome(SKIPPED, "bad_manta_object", str(exc))
        # 1. already there?
        try:
            st = os.stat(final)
            if st.st_size == size and md5_b64_of_file(final) == md5:
                ok = self._serve_check(path_owner, object_id, size)
                if ok is not True:
                    return ok
                return Outcome(COPIED, "present", None, 0, False)
        except FileNotFoundError:
            pass
        except OSError as exc:
            return Outcome(TRANSIENT, "destination_io_error", f"stat {final}: {exc}")
        if self.check_mode:
            return Outcome(COPIED, "would_fetch", None, size, False)
        # 2. fetch, falling back along the sources
        failures = []
        for sid in srcs:
            if self.source_down.get(sid, 0) > time.monotonic():
                failures.append((sid, TRANSIENT, "source_unreachable", "marked down after errors"))
                continue
            res = self._fetch(sid, path_owner, object_id, size, md5, final)
            if res.status == COPIED:
                with self.lock:
                    self.source_fail[sid] = 0
                ok = self._serve_check(path_owner, object_id, size)
                if ok is not True:
                    return ok
                res.source = sid
                return res
            failures.append((sid, res.status, res.reason, res.detail))
            if res.reason == "destination_io_error":
                return res
        return self._aggregate(failures)

    @staticmethod
    def _aggregate(failures):
        detail = "; ".join(f"{sid}: {reason}" + (f" ({d})" if d else "")
                           for sid, dummy, reason, d in failures)[:500]
        if not failures:
            return Outcome(SKIPPED, "source_not_found", "no source listed")
        if any(st == TRANSIENT for dummy, st, dummy, dummy in failures):
            reasons = [r for dummy, st, r, dummy in failures if st == TRANSIENT]
            return Outcome(TRANSIENT, reasons[0], detail)
        reasons = [r for dummy, dummy, r, dummy in failures]
        for r in ("md5_mismatch", "size_mismatch", "source_http_error"):
            if r in reasons:
                return Outcome(SKIPPED, r, detail)
        return Outcome(SKIPPED, "source_not_found", detail)

    def _fetch(self, sid, path_owner, object_id, size, md5, final):
        base = self._source_base(sid)
        path = urlsplit(base).path + "/" + quote(path_owner) + "/" + quote(object_id)
        src_lim = self.source_limiters.get(sid)
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_delay * (2 ** (attempt - 1)))
            tmp = os.path.join(self.tmp_dir, f"{object_id}.{os.getpid()}.{threading.get_ident()}.tmp")
            c = self._conn(base)
            try:
                c.request("GET", path, headers={"Connection": "keep-alive"})
                resp = c.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                self._drop(base)
                last = Outcome(TRANSIENT, "source_unreachable", f"GET {base}{path}: {exc!r}"[:300])
                self._source_error(sid)
                continue
            if resp.status != 200:
                resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self._drop(base)
                if resp.status == 404:
                    return Outcome(SKIPPED, "source_not_found", f"HTTP 404 from {sid}")
                if resp.status >= 500:
                    last = Outcome(TRANSIENT, "source_http_5xx", f"HTTP {resp.status} from {sid}")
                    continue
                return Outcome(SKIPPED, "source_http_error", f"HTTP {resp.status} from {sid}")
            h = hashlib.md5()
            n = 0
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except OSError as exc:
                resp.close()
                self._drop(base)
                return Outcome(TRANSIENT, "destination_io_error", f"open {tmp}: {exc}")
            try:
                broken = None
                buf = getattr(self.local, "buf", None)
                if buf is None:
                    buf = self.local.buf = bytearray(CHUNK)
                mv_buf = memoryview(buf)
                while True:
                    try:
                        k = resp.readinto(mv_buf)
                    except (OSError, http.client.HTTPException) as exc:
                        broken = exc
                        break
                    if not k:
                        break
                    if self.limiter.rate is not None:
                        self.limiter.acquire(k)
                    if src_lim is not None:
                        src_lim.acquire(k)
                    chunk = mv_buf[:k]
                    h.update(chunk)
                    n += k
                    while chunk:
                        w = os.write(fd, chunk)
                        chunk = chunk[w:]
                if broken is not None:
                    self._drop(base)
                    last = Outcome(TRANSIENT, "source_unreachable",
                                   f"reading from {sid}: {broken!r}"[:300])
                    self._source_error(sid)
                    continue
                with self.lock:
                    self.bytes_fetched += n
                got = base64.b64encode(h.digest()).decode()
                if n != size:
                    return Outcome(SKIPPED, "size_mismatch", f"{sid} sent {n} bytes, expected {size}")
                if got != md5:
                    return Outcome(SKIPPED, "md5_mismatch", f"{sid} sent MD5 {got}, expected {md5}")
                d = os.path.dirname(final)
                if self.durability == "file":
                    # the file's data first, then the rename, then its directory
                    os.fsync(fd)
                    os.close(fd)
                    fd = None
                    if not os.path.isdir(d):
                        os.makedirs(d, exist_ok=True)
                        self.syncer.sync(os.path.dirname(d))
                    os.replace(tmp, final)
                    tmp = None
                    self.syncer.sync(d)
                else:
                    # the same order, group-committed: one syncfs makes every temp file
                    # written so far durable, the renames follow, and a second syncfs
                    # makes the directory entries durable
                    os.close(fd)
                    fd = None
                    self.fs_syncer.sync(self.root)
                    if not os.path.isdir(d):
                        os.makedirs(d, exist_ok=True)
                    os.replace(tmp, final)
                    tmp = None
                    self.fs_syncer.sync(self.root)
                return Outcome(COPIED, "fetched", None, n, True)
            except OSError as exc:
                return Outcome(TRANSIENT, "destination_io_error", f"writing {final}: {exc}")
            finally:
                if fd is not None:
                    os.close(fd)
                if tmp is not None:
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass
        return last

    def _source_error(self, sid):
        with self.lock:
            self.source_fail[sid] += 1
            if self.source_fail[sid] >= 5:
                self.source_down[sid] = time.monotonic() + 30

    def _serve_check(self, path_owner, object_id, size):
        """HEAD the copy through the destination's own server; True when it serves it."""
        if self.verify is None or self.check_mode:
            return True
        base = f"{self.verify.scheme}://{self.verify.netloc}"
        path = self.verify.path.rstrip("/") + "/" + quote(path_owner) + "/" + quote(object_id)
        for attempt in range(2):
            c = self._conn(base)
            try:
                c.request("HEAD", path)
                resp = c.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop(base)
                if attempt:
                    return Outcome(TRANSIENT, "destination_unavailable",
                                   f"HEAD {base}{path}: {exc!r}"[:300])
                continue
            length = resp.getheader("Content-Length")
            if resp.status == 200 and (length is None or int(length) == size):
                return True
            return Outcome(TRANSIENT, "destination_unavailable",
                           f"HEAD {base}{path}: HTTP {resp.status}, length {length}")
        return Outcome(TRANSIENT, "destination_unavailable", "HEAD failed")

    # ---- the run ----------------------------------------------------------------------
    def _note(self, out):
        with self.lock:
            self.counts[out.status] += 1
            self.reasons[out.reason or out.status] += 1
            transient = out.status == TRANSIENT
            self.recent.append(transient)
            self.consecutive = self.consecutive + 1 if transient else 0
            if self.paused is None and transient:
                bad = sum(self.recent)
                if self.consecutive >= self.pause_consecutive or (
                        len(self.recent) >= min(self.pause_window, 20)
                        and bad / float(len(self.recent)) >= self.pause_ratio):
                    top = collections.Counter(
                        r for r, c in self.reasons.items() if r in (
                            "source_unreachable", "source_http_5xx", "destination_io_error",
                            "destination_unavailable"))
                    self.paused = (f"{bad} of the last {len(self.recent)} copies failed transiently "
                                   f"({self.consecutive} in a row); reasons so far: "
                                   + ", ".join(f"{r}={self.reasons[r]}" for r in sorted(top)))

    def _should_stop(self):
        if self.paused:
            return "paused"
        if self.deadline is not None and time.time() >= self.deadline:
            self.stopped = "max_duration"
            return "max_duration"
        return None

    def run(self, tasks, on_result=None):
        """Copy every task; returns [(task, Outcome)] in input order."""
        if not self.check_mode:
            os.makedirs(self.tmp_dir, exist_ok=True)
            self._clean_tmp()
        self.syncer = DirSyncer() if not self.check_mode else None
        if not self.check_mode and self.durability == "batch":
            self.fs_syncer = DirSyncer(_syncfs_path)
        results = [None] * len(tasks)
        t0 = time.monotonic()

        def work(i):
            why = self._should_stop()
            if why:
                out = Outcome(NOT_ATTEMPTED, "not_attempted", why)
            else:
                try:
                    out = self.copy_one(tasks[i])
                except Exception as exc:  # noqa: BLE001 - one object's surprise is not fatal
                    out = Outcome(TRANSIENT, "destination_io_error", f"{type(exc).__name__}: {exc}"[:300])
                self._note(out)
            results[i] = out
            if on_result is not None:
                on_result(tasks[i], out)

        try:
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                list(pool.map(work, range(len(tasks))))
        finally:
            for sy in (self.syncer, self.fs_syncer):
                if sy is not None:
                    sy.close()
            for c in list((getattr(self.local, "pool", None) or {}).values()):
                c.close()
        self.seconds = time.monotonic() - t0
        return list(zip(tasks, results))

    def _clean_tmp(self):
        """Remove temporary files a killed earlier run left (ours only: *.tmp, > 1 h old)."""
        try:
            with os.scandir(self.tmp_dir) as it:
                for e in it:
                    if e.name.endswith(".tmp") and e.is_file(follow_symlinks=False):
                        try:
                            if time.time() - e.stat().st_mtime > 3600:
                                os.unlink(e.path)
                        except OSError:
                            pass
        except OSError:
            pass

    def stats(self):
        return {"objects": sum(self.counts.values()), "by_status": dict(self.counts),
                "by_reason": dict(self.reasons), "bytes_fetched": self.bytes_fetched,
                "seconds": round(getattr(self, "seconds", 0.0), 3), "concurrency": self.concurrency,
                "dir_syncs": self.syncer.syncs if self.syncer else 0,
                "fs_syncs": self.fs_syncer.syncs if self.fs_syncer else 0,
                "durability": self.durability,
                "paused": self.paused, "stopped": self.stopped}


def load_assignment(path):
    with open(path, "r", encoding="utf-8") as fh:
        a = json.load(fh)
    if not isinstance(a, dict) or not isinstance(a.get("tasks"), list):
        raise CopyError(f"{path} is not an assignment file (expected a JSON object with 'tasks')")
    return a


def write_json_atomic(path, data):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + f".{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def result_rows(pairs):
    """[[oid, status, reason, detail, bytes, fetched, source]] for the results file."""
    out = []
    for task, o in pairs:
        out.append([task[0], o.status, o.reason, o.detail, o.bytes, o.fetched, o.source])
    return out


def probe(tasks, sources, concurrency=8, timeout=30.0, max_bytes=256 * 1024 * 1024):
    """Read-only measurement for estimates: GET each task's object from its first
    source, verify the MD5, write nothing. Returns objects/s, bytes/s and the
    mean seconds per object seen by one stream, plus failures by reason."""
    lock = threading.Lock()
    out = {"objects": 0, "bytes": 0, "failures": collections.Counter(), "latencies": []}
    local = threading.local()
    budget = [max_bytes]

    def conn(base):
        pool = getattr(local, "pool", None)
        if pool is None:
            pool = local.pool = {}
        c = pool.get(base)
        if c is None:
            u = urlsplit(base)
            cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
            c = pool[base] = cls(u.hostname, u.port or (443 if u.scheme == "https" else 80),
                                 timeout=timeout)
        return c

    def one(task):
        _oid, path_owner, object_id, size, md5, srcs = task[:6]
        with lock:
            if budget[0] <= 0:
                return
            budget[0] -= size
        base = (sources.get(srcs[0]) or f"http://{srcs[0]}").rstrip("/") if srcs else None
        if base is None:
            return
        path = urlsplit(base).path + "/" + quote(path_owner) + "/" + quote(object_id)
        t = time.monotonic()
        try:
            c = conn(base)
            c.request("GET", path)
            r = c.getresponse()
            h = hashlib.md5()
            n = 0
            while True:
                b = r.read(CHUNK)
                if not b:
                    break
                h.update(b)
                n += len(b)
            ok = r.status == 200 and base64.b64encode(h.digest()).decode() == md5
            reason = None if ok else (f"http_{r.status}" if r.status != 200 else "md5_mismatch")
        except (OSError, http.client.HTTPException) as exc:
            (getattr(local, "pool", {}) or {}).pop(base, None)
            ok, n, reason = False, 0, type(exc).__name__
        dt = time.monotonic() - t
        with lock:
            if ok:
                out["objects"] += 1
                out["bytes"] += n
                out["latencies"].append(dt)
            else:
                out["failures"][reason] += 1

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, int(concurrency))) as pool:
        list(pool.map(one, tasks))
    secs = max(time.monotonic() - t0, 1e-6)
    lat = out["latencies"]
    return {"objects": out["objects"], "bytes": out["bytes"], "seconds": round(secs, 4),
            "objects_per_second": round(out["objects"] / secs, 1),
            "bytes_per_second": round(out["bytes"] / secs, 1),
            "seconds_per_object": round(sum(lat) / len(lat), 5) if lat else None,
            "concurrency": int(concurrency), "failures": dict(out["failures"])}
