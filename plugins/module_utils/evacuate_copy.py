# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""The destination side of an evacuation: pull object copies over HTTP,
verify them while streaming, and make them durable. Standard library only (it
runs on the storage nodes), plus the MD5 lanes of module_utils/md5_lanes, which it
compiles on the host when a C compiler is there and does without otherwise.

Per copy (the rebalancer agent's algorithm, reference/evacuate.md §3.7, with
its gaps closed, §7.3 items 4, 7, 8, 9):

1. If ``<root>/<creator-or-owner>/<objectId>`` already exists with the right
   size and MD5, nothing is fetched (an interrupted round is redone cheaply);
   it is still made durable and checked like a fetched copy (steps 4-5).
2. Otherwise GET ``<source>/<creator-or-owner>/<objectId>`` from the first
   source, falling back along the list (other copies, then the evacuated
   node). Transport errors and 5xx are retried with back-off; a 404, a size
   or an MD5 mismatch moves on to the next source.
3. The body streams into a temporary file in ``tmp_dir`` (same filesystem)
   while its MD5 is computed (evacuate_hash: the chunks of all the transfers
   together, in SIMD lanes, on a thread of their own); the byte count and MD5
   must equal ``contentLength`` and ``contentMD5`` before the rename (on an MD5
   mismatch the next sources are tried then).
4. Make the data durable, ``rename`` it into place (creating the owner
   directory), and make the directory entry durable, in that order, before
   the copy counts. ``durability=file``: ``fsync`` the file, then the
   directory. ``durability=batch`` (Linux): the same order with one
   ``syncfs(2)`` of the filesystem for a whole batch of copies instead of one
   flush per file; ``auto`` picks ``batch`` where syncfs exists. The default
   is ``file``.
5. Optionally ``HEAD`` the copy through the destination's own web server
   (``verify_url``), so metadata never points at a node that cannot serve it.

How it runs (a pipeline, so no fetch waits for a disk flush or a round trip
of the check): ``concurrency`` fetch threads, each with a keep-alive
connection per source (evacuate_http: the body is read with ``recv_into``
into the slots of a preallocated ring of buffers, hashed and written from them,
no copy in Python), do steps 1-3 and hand the open temp file on without waiting
for the MD5; a pool of sync threads
``fsync``s them (concurrent fsyncs share the filesystem's journal commits);
one committer takes whatever is ready as a batch (group commit): checks the MD5s, renames the
batch's files into place, ``fsync``s each directory once for the batch, then
checks the whole batch with pipelined HEADs on one keep-alive connection to
the destination's server. Only then does a copy count as ``copied``. At most
``pipeline_depth`` verified copies wait for steps 4-5 at once.

Throttles: ``max_bytes_per_sec`` for everything this destination reads, and a
per-source share (the plan divides each source's limit among the
destinations reading from it).

Automatic pause: when the share of transient failures in the last
``pause_window`` copies reaches ``pause_error_ratio`` (or ``pause_consecutive``
fail in a row), no new copy starts (copies already fetched finish); the rest
is reported ``not_attempted`` and the result says why, so the play pauses the
job (RFD 162's requirement).
"""
from __future__ import annotations

import base64
import collections
import hashlib
import itertools
import json
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from ansible_collections.manta.ops.plugins.module_utils import evacuate_hash
from ansible_collections.manta.ops.plugins.module_utils.evacuate_http import (
    Connection, HTTPClientError)

CHUNK = 1024 * 1024   # read size where a whole buffer is read at once (files, probes)
# Bodies are received and hashed a PIECE at a time, into a ring of RING_PIECES slots per
# fetch thread (up to 2 MiB received ahead of its hashes; 256 KiB pieces did better than
# 128 KiB or 1 MiB, docs/bench-evacuate.md).
PIECE = 256 * 1024
RING_PIECES = 8
# ... and written in smaller pieces: Linux (6.x) allocates page-cache folios as large as
# each write (a 1 MiB write asks for 1 MiB of contiguous memory), and where memory is
# fragmented (a busy host) that means direct compaction in the writer: up to a third of
# the engine's CPU time in the lab. 32 KiB writes (order-3 folios) cost the least CPU
# there (docs/bench-evacuate.md).
WRITE_CHUNK = 32 * 1024
_NO_BUFFER = memoryview(bytearray(0))
COPIED, SKIPPED, TRANSIENT, NOT_ATTEMPTED = "copied", "skipped", "transient", "not_attempted"
_HEAD_BATCH = 64


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


def md5_b64_of_file(path):
    h = hashlib.md5()
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            k = fh.readinto(mv)
            if not k:
                break
            h.update(mv[:k])
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


class _Item:
    """A copy past steps 1-3 (verified bytes in ``tmp``, or already at ``final``)
    on its way through steps 4-5. ``fd`` is open for the sync pool."""
    __slots__ = ("i", "path_owner", "object_id", "size", "final", "tmp", "fd", "nbytes",
                 "source", "error", "finished", "digest", "failures", "rest")

    def __init__(self, i, path_owner, object_id, size, final, tmp, fd, nbytes=0, source=None):
        self.i = i
        self.path_owner = path_owner
        self.object_id = object_id
        self.size = size
        self.final = final
        self.tmp = tmp
        self.fd = fd
        self.nbytes = nbytes
        self.source = source
        self.error = None               # an Outcome once something failed
        self.finished = False
        # fetched bytes whose MD5 is still being computed: (hash, last ticket, expected);
        # the committer checks it before the rename, falling back along ``rest``
        self.digest = None
        self.failures = []              # (source, status, reason, detail) before this one
        self.rest = ()                  # the sources after this one

    def discard(self):
        """Close the temp file and remove it (nothing was renamed into place)."""
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None


class Copier:
    """Copy a list of tasks into ``root``. Thread-safe internals; ``run`` blocks."""

    def __init__(self, root, sources, tmp_dir=None, concurrency=8, max_bytes_per_sec=None,
                 source_bytes_per_sec=None, timeout=30.0, retries=2, verify_url=None,
                 deadline=None, pause_window=50, pause_error_ratio=0.5, pause_consecutive=20,
                 check_mode=False, retry_delay=0.5, durability="file", pipeline_depth=None,
                 md5="auto"):
        if durability not in ("auto", "file", "batch"):
            raise CopyError(f"durability must be auto, file or batch, got {durability!r}")
        if durability == "auto":
            durability = "batch" if syncfs_available() else "file"
        if durability == "batch" and not syncfs_available():
            raise CopyError("durability=batch needs Linux syncfs(2); use durability=file")
        self.durability = durability
        if md5 not in ("auto", "hashlib"):
            raise CopyError(f"md5 must be auto or hashlib, got {md5!r}")
        self.md5 = md5
        self.root = os.path.abspath(root)
        self.sources = dict(sources or {})
        self.tmp_dir = tmp_dir or os.path.join(self.root, "manta_evacuate", "tmp")
        self.concurrency = max(1, int(concurrency))
        self.pipeline_depth = max(1, int(pipeline_depth)) if pipeline_depth else \
            min(256, max(32, 2 * self.concurrency))
        self.limiter = RateLimiter(max_bytes_per_sec)
        self.source_limiters = {s: RateLimiter(r) for s, r in (source_bytes_per_sec or {}).items() if r}
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.verify_url = verify_url.rstrip("/") if verify_url else None
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
        self.dir_syncs = 0
        self.fs_syncs = 0
        self.commit_batches = 0
        self.seconds = 0.0
        self._conns = []
        self._seq = itertools.count()
        self._known_dirs = set()
        self.hasher = evacuate_hash.PlainHasher()  # run() picks the engine

    # ---- HTTP -------------------------------------------------------------------------
    def _conn(self, base):
        pool = getattr(self.local, "pool", None)
        if pool is None:
            pool = self.local.pool = {}
        c = pool.get(base)
        if c is None:
            c = pool[base] = Connection(base, timeout=self.timeout)
            with self.lock:
                self._conns.append(c)
        return c

    def _source_base(self, sid):
        base = self.sources.get(sid) or f"http://{sid}"
        return base.rstrip("/")

    # ---- steps 1-3 (fetch threads) ------------------------------------------------------
    def final_path(self, path_owner, object_id):
        if "/" in path_owner or "/" in object_id or path_owner in ("", ".", "..") \
                or object_id in ("", ".", ".."):
            raise CopyError(f"unsafe path component in {path_owner!r}/{object_id!r}")
        return os.path.join(self.root, path_owner, object_id)

    def _prepare(self, i, task):
        """Steps 1-3: an Outcome when the copy is over (skipped, failed, check mode),
        or an _Item holding verified bytes for steps 4-5."""
        oid, path_owner, object_id, size, md5, srcs = task[:6]
        try:
            final = self.final_path(path_owner, object_id)
        except CopyError as exc:
            return Outcome(SKIPPED, "bad_manta_object", str(exc))
        # 1. already there?
        try:
            st = os.stat(final)
            if st.st_size == size and md5_b64_of_file(final) == md5:
                if self.check_mode:
                    return Outcome(COPIED, "present", None, 0, False)
                # made durable like a fetched copy: a killed run may have left it unflushed
                fd = os.open(final, os.O_RDONLY) if self.durability == "file" else None
                return _Item(i, path_owner, object_id, size, final, None, fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            return Outcome(TRANSIENT, "destination_io_error", f"stat {final}: {exc}")
        if self.check_mode:
            return Outcome(COPIED, "would_fetch", None, size, False)
        # 2. fetch, falling back along the sources
        failures = []
        return self._fetch_along(i, task, final, srcs, failures) or self._aggregate(failures)

    def _fetch_along(self, i, task, final, sources, failures, verify_now=False):
        """Fetch copy ``i`` from the first of ``sources`` that sends it: its _Item, or the
        Outcome of a destination failure (no use trying another source), or None when
        every source failed. Each failure is appended to ``failures``."""
        dummy, path_owner, object_id, size, md5 = task[:5]
        for k, sid in enumerate(sources):
            if self.source_down.get(sid, 0) > time.monotonic():
                failures.append((sid, TRANSIENT, "source_unreachable", "marked down after errors"))
                continue
            res = self._fetch(i, sid, path_owner, object_id, size, md5, final, verify_now)
            if isinstance(res, _Item):
                with self.lock:
                    self.source_fail[sid] = 0
                res.failures = failures
                res.rest = tuple(sources[k + 1:])
                return res
            failures.append((sid, res.status, res.reason, res.detail))
            if res.reason == "destination_io_error":
                return res
        return None

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

    def _ring(self):
        ring = getattr(self.local, "ring", None)
        if ring is None:
            ring = self.local.ring = evacuate_hash.PieceRing(RING_PIECES, PIECE)
        return ring

    def _fetch(self, i, sid, path_owner, object_id, size, md5, final, verify_now=False):
        """GET one copy into a temp file. Returns an Outcome, or an _Item whose MD5 is
        still being computed (``verify_now``: an _Item already verified)."""
        base = self._source_base(sid)
        path = "/" + quote(path_owner) + "/" + quote(object_id)
        src_lim = self.source_limiters.get(sid)
        limiter = self.limiter
        wsize = WRITE_CHUNK
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_delay * (2 ** (attempt - 1)))
            c = self._conn(base)
            try:
                resp = c.request("GET", path)
            except (OSError, HTTPClientError) as exc:
                c.close()
                last = Outcome(TRANSIENT, "source_unreachable", f"GET {base}{path}: {exc!r}"[:300])
                self._source_error(sid)
                continue
            if resp.status != 200:
                try:
                    c.discard(resp)
                except (OSError, HTTPClientError):
                    c.close()
                if resp.status == 404:
                    return Outcome(SKIPPED, "source_not_found", f"HTTP 404 from {sid}")
                if resp.status >= 500:
                    last = Outcome(TRANSIENT, "source_http_5xx", f"HTTP {resp.status} from {sid}")
                    continue
                return Outcome(SKIPPED, "source_http_error", f"HTTP {resp.status} from {sid}")
            if resp.length is not None and resp.length != size:
                # the source announces another size: no need to read it
                c.close()
                return Outcome(SKIPPED, "size_mismatch",
                               f"{sid} sent {resp.length} bytes, expected {size}")
            tmp = os.path.join(self.tmp_dir, f"{object_id}.{os.getpid()}.{next(self._seq)}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except OSError as exc:
                c.close()
                return Outcome(TRANSIENT, "destination_io_error", f"open {tmp}: {exc}")
            keep = False
            hz = self.hasher
            h = hz.new()
            ticket = None
            try:
                n = 0
                ring = self._ring()
                broken = None
                # Each piece is handed to the hasher and written; the thread goes on
                # receiving into the next slot (and the next object) while it is hashed.
                while True:
                    # a body already complete takes no slot (taking one can mean waiting
                    # for its old chunk's hash); readinto still closes a closing connection
                    slot, piece = ring.take(hz) if not resp.done else (None, _NO_BUFFER)
                    try:
                        k = c.readinto(resp, piece)
                    except (OSError, HTTPClientError) as exc:
                        broken = exc
                        break
                    if not k:
                        break
                    if limiter.rate is not None:
                        limiter.acquire(k)
                    if src_lim is not None:
                        src_lim.acquire(k)
                    n += k
                    if n > size:
                        break
                    chunk = piece[:k]
                    ticket = hz.submit(h, chunk)
                    ring.hold(slot, ticket)
                    off = 0
                    while off < k:
                        off += os.write(fd, chunk[off:off + wsize])
                if broken is not None:
                    last = Outcome(TRANSIENT, "source_unreachable",
                                   f"reading from {sid}: {broken!r}"[:300])
                    self._source_error(sid)
                    continue
                with self.lock:
                    self.bytes_fetched += n
                if n != size:
                    c.close()
                    return Outcome(SKIPPED, "size_mismatch",
                                   f"{sid} sent {'more than ' if n > size else ''}{n} bytes, expected {size}")
                if verify_now:
                    bad = self._check_md5(sid, (h, ticket, md5))
                    if bad is not None:
                        return bad
                if self.durability == "batch":
                    os.close(fd)
                    fd = None
                keep = True
                it = _Item(i, path_owner, object_id, size, final, tmp, fd, n, sid)
                if not verify_now:
                    it.digest = (h, ticket, md5)
                return it
            except OSError as exc:
                c.close()
                return Outcome(TRANSIENT, "destination_io_error", f"writing {tmp}: {exc}")
            finally:
                if not keep:
                    if fd is not None:
                        os.close(fd)
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

    # ---- steps 4-5 (sync pool, committer) -----------------------------------------------
    def _sync_worker(self):
        while True:
            it = self._sync_q.get()
            if it is None:
                return
            try:
                os.fsync(it.fd)
            except OSError as exc:
                it.error = Outcome(TRANSIENT, "destination_io_error",
                                   f"fsync {it.tmp or it.final}: {exc}")
            finally:
                try:
                    os.close(it.fd)
                except OSError:
                    pass
                it.fd = None
            self._commit_q.put(it)

    def _committer(self):
        stop = False
        while not stop:
            batch = [self._commit_q.get()]
            while True:
                try:
                    batch.append(self._commit_q.get_nowait())
                except queue.Empty:
                    break
            stop = any(x is None for x in batch)
            batch = [x for x in batch if x is not None]
            if not batch:
                continue
            try:
                self._commit(batch)
            except Exception as exc:  # noqa: BLE001 - fail the batch, not the run
                for it in batch:
                    if not it.finished:
                        self._finish_item(it, Outcome(TRANSIENT, "destination_io_error",
                                                      f"{type(exc).__name__}: {exc}"[:300]))

    def _check_md5(self, sid, digest):
        """None when the bytes from ``sid`` hashed to the expected MD5, else an Outcome."""
        h, ticket, want = digest
        try:
            if ticket is not None:
                self.hasher.wait(ticket)
            got = base64.b64encode(h.digest()).decode()
        except Exception as exc:  # noqa: BLE001 - the hashing library failed: try again later
            return Outcome(TRANSIENT, "destination_io_error", f"MD5: {exc!r}"[:300])
        if got != want:
            return Outcome(SKIPPED, "md5_mismatch", f"{sid} sent MD5 {got}, expected {want}")
        return None

    def _verify(self, it):
        """Step 3's check, for bytes fetched without waiting for their MD5: True when
        ``it`` holds verified bytes (from its source or, after a mismatch, from one of the
        sources after it, fetched again here), False when it was finished."""
        bad = self._check_md5(it.source, it.digest)
        it.digest = None
        if bad is None:
            return True
        failures = list(it.failures) + [(it.source, bad.status, bad.reason, bad.detail)]
        it.discard()
        res = None
        if bad.reason == "md5_mismatch":  # rare (corrupt bytes): fetched and verified here
            res = self._fetch_along(it.i, self._tasks[it.i], it.final, it.rest, failures,
                                    verify_now=True)
        if isinstance(res, _Item):
            try:
                if res.fd is not None:  # durability=file (batch: the syncfs to come)
                    os.fsync(res.fd)
                    os.close(res.fd)
                    res.fd = None
            except OSError as exc:
                why = f"fsync {res.tmp}: {exc}"
                res.discard()
                res = Outcome(TRANSIENT, "destination_io_error", why)
            else:
                it.tmp, it.nbytes, it.source = res.tmp, res.nbytes, res.source
                return True
        self._finish_item(it, res or self._aggregate(failures))
        return False

    def _commit(self, batch):
        """Group commit of a batch: the MD5 checks, (syncfs,) renames, one fsync per
        directory (or syncfs), then the HEAD checks; each copy is finished with its
        outcome."""
        self.commit_batches += 1
        ok = []
        for it in batch:
            if it.error is not None:
                self._finish_item(it, it.error)
            elif it.digest is None or self._verify(it):
                ok.append(it)
        if self.durability == "batch" and any(it.tmp for it in ok):
            # the data of every temp file first (present files: the syncfs below)
            try:
                _syncfs_path(self.root)
                self.fs_syncs += 1
            except OSError as exc:
                for it in ok:
                    if it.tmp:
                        self._finish_item(it, Outcome(TRANSIENT, "destination_io_error",
                                                      f"syncfs {self.root}: {exc}"))
                ok = [it for it in ok if not it.finished]
        parents = set()
        for it in ok:
            if it.tmp is None:
                continue
            d = os.path.dirname(it.final)
            try:
                if d not in self._known_dirs and not os.path.isdir(d):
                    os.makedirs(d, exist_ok=True)
                    parents.add(os.path.dirname(d))
                os.replace(it.tmp, it.final)
                it.tmp = None
            except OSError as exc:
                self._finish_item(it, Outcome(TRANSIENT, "destination_io_error",
                                              f"rename into {it.final}: {exc}"))
        ok = [it for it in ok if not it.finished]
        # the directory entries: each directory once for the whole batch
        if self.durability == "batch":
            todo = [self.root] if ok else []
            op = _syncfs_path
        else:
            todo = sorted(parents) + sorted({os.path.dirname(it.final) for it in ok})
            op = _fsync_path
        failed = {}
        for d in todo:
            try:
                op(d)
            except OSError as exc:
                failed[d] = f"sync {d}: {exc}"
            if op is _syncfs_path:
                self.fs_syncs += 1
            else:
                self.dir_syncs += 1
        for it in ok:
            d = os.path.dirname(it.final)
            err = failed.get(self.root) if self.durability == "batch" else \
                (failed.get(d) or failed.get(os.path.dirname(d)))
            if err:
                self._finish_item(it, Outcome(TRANSIENT, "destination_io_error", err))
            else:
                self._known_dirs.add(d)
        ok = [it for it in ok if not it.finished]
        # step 5: can this node serve them? (pipelined HEADs, one connection)
        if self.verify_url and ok:
            for k in range(0, len(ok), _HEAD_BATCH):
                part = ok[k:k + _HEAD_BATCH]
                for it, why in zip(part, self._serve_check(part)):
                    if why is not None:
                        self._finish_item(it, why)
        for it in ok:
            if not it.finished:
                if it.nbytes or it.source:
                    self._finish_item(it, Outcome(COPIED, "fetched", None, it.nbytes, True, it.source))
                else:
                    self._finish_item(it, Outcome(COPIED, "present", None, 0, False))

    def _serve_check(self, items):
        """HEAD each copy through the destination's own server: None when it serves
        it with the right length, else a transient Outcome."""
        c = self._conn(self.verify_url)
        paths = ["/" + quote(it.path_owner) + "/" + quote(it.object_id) for it in items]
        answers = c.head_many(paths)
        out = []
        for it, p, r in zip(items, paths, answers):
            where = f"HEAD {self.verify_url}{p}"
            if isinstance(r, BaseException):
                out.append(Outcome(TRANSIENT, "destination_unavailable", f"{where}: {r!r}"[:300]))
                continue
            length = r.getheader("Content-Length")
            if r.status == 200 and (length is None or length == str(it.size)):
                out.append(None)
            else:
                out.append(Outcome(TRANSIENT, "destination_unavailable",
                                   f"{where}: HTTP {r.status}, length {length}"))
        return out

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

    def _finish(self, i, out, note=True):
        if note:
            self._note(out)
        self._results[i] = out
        if self._on_result is not None:
            self._on_result(self._tasks[i], out)

    def _finish_item(self, it, out):
        if it.finished:
            return
        it.finished = True
        it.discard()
        try:
            self._finish(it.i, out)
        finally:
            self._slots.release()

    def _fetch_worker(self, next_index):
        try:
            while True:
                i = next_index()
                if i is None:
                    return
                why = self._should_stop()
                if why:
                    self._finish(i, Outcome(NOT_ATTEMPTED, "not_attempted", why), note=False)
                    continue
                try:
                    r = self._prepare(i, self._tasks[i])
                except Exception as exc:  # noqa: BLE001 - one object's surprise is not fatal
                    r = Outcome(TRANSIENT, "destination_io_error", f"{type(exc).__name__}: {exc}"[:300])
                if isinstance(r, Outcome):
                    self._finish(i, r)
                    continue
                self._slots.acquire()
                if r.fd is not None and self._nsync:
                    self._sync_q.put(r)
                else:
                    self._commit_q.put(r)
        finally:
            for c in (getattr(self.local, "pool", None) or {}).values():
                c.close()

    def run(self, tasks, on_result=None):
        """Copy every task; returns [(task, Outcome)] in input order."""
        if not self.check_mode:
            os.makedirs(self.tmp_dir, exist_ok=True)
            self._clean_tmp()
        self._tasks = tasks
        self._results = [None] * len(tasks)
        self.hasher = evacuate_hash.hasher() if self.md5 == "auto" and not self.check_mode \
            else evacuate_hash.PlainHasher()
        self._on_result = on_result
        self._slots = threading.BoundedSemaphore(self.pipeline_depth)
        self._sync_q = queue.SimpleQueue()
        self._commit_q = queue.SimpleQueue()
        t0 = time.monotonic()
        counter = iter(range(len(tasks)))
        counter_lock = threading.Lock()

        def next_index():
            with counter_lock:
                return next(counter, None)

        nfetch = min(self.concurrency, max(1, len(tasks)))
        nsync = self._nsync = 0 if self.check_mode or self.durability == "batch" else min(nfetch, 32)
        fetchers = [threading.Thread(target=self._fetch_worker, args=(next_index,),
                                     name=f"copy-fetch-{k}", daemon=True) for k in range(nfetch)]
        syncers = [threading.Thread(target=self._sync_worker, name=f"copy-sync-{k}", daemon=True)
                   for k in range(nsync)]
        committer = threading.Thread(target=self._committer, name="copy-commit", daemon=True)
        try:
            for th in fetchers + syncers + [committer]:
                th.start()
            for th in fetchers:
                th.join()
            for dummy in syncers:
                self._sync_q.put(None)
            for th in syncers:
                th.join()
            self._commit_q.put(None)
            committer.join()
        finally:
            with self.lock:
                conns, self._conns = self._conns, []
            for c in conns:
                c.close()
            self.hasher.close()
        self.seconds = time.monotonic() - t0
        return list(zip(tasks, self._results))

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
                "seconds": round(self.seconds, 3), "concurrency": self.concurrency,
                "dir_syncs": self.dir_syncs, "fs_syncs": self.fs_syncs,
                "commit_batches": self.commit_batches,
                "durability": self.durability, "md5": self.hasher.stats(),
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
    source (the copy engine's client), verify the MD5, write nothing. Returns
    objects/s, bytes/s and the mean seconds per object seen by one stream, plus
    failures by reason."""
    lock = threading.Lock()
    out = {"objects": 0, "bytes": 0, "failures": collections.Counter(), "latencies": []}
    local = threading.local()
    budget = [max_bytes]
    conns = []

    def conn(base):
        pool = getattr(local, "pool", None)
        if pool is None:
            pool = local.pool = {}
        c = pool.get(base)
        if c is None:
            c = pool[base] = Connection(base, timeout=timeout)
            with lock:
                conns.append(c)
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
        path = "/" + quote(path_owner) + "/" + quote(object_id)
        t = time.monotonic()
        c = conn(base)
        try:
            r = c.request("GET", path)
            h = hashlib.md5()
            n = 0
            if r.status == 200:
                mv = getattr(local, "buf", None)
                if mv is None:
                    mv = local.buf = memoryview(bytearray(CHUNK))
                while True:
                    k = c.readinto(r, mv)
                    if not k:
                        break
                    h.update(mv[:k])
                    n += k
            else:
                c.discard(r)
            ok = r.status == 200 and base64.b64encode(h.digest()).decode() == md5
            reason = None if ok else (f"http_{r.status}" if r.status != 200 else "md5_mismatch")
        except (OSError, HTTPClientError) as exc:
            c.close()
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
    try:
        with ThreadPoolExecutor(max_workers=max(1, int(concurrency))) as pool:
            list(pool.map(one, tasks))
    finally:
        for c in conns:
            c.close()
    secs = max(time.monotonic() - t0, 1e-6)
    lat = out["latencies"]
    return {"objects": out["objects"], "bytes": out["bytes"], "seconds": round(secs, 4),
            "objects_per_second": round(out["objects"] / secs, 1),
            "bytes_per_second": round(out["bytes"] / secs, 1),
            "seconds_per_object": round(sum(lat) / len(lat), 5) if lat else None,
            "concurrency": int(concurrency), "failures": dict(out["failures"])}
