# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""The node-fash LevelDB ring store, byte-exact (reference/fash.md §4).

Keys (UTF-8, no prefix) and values (``JSON.stringify`` text):

==========================  ============================================
``VNODE_COUNT``             N
``VNODE_DATA``              vnodes whose data is not 1 (numbers)
``/VNODE/<v>``              the pnode owning v (routing uses this)
``/PNODE``                  every pnode, empty ones included
``/PNODE/<p>``              p's vnodes (ascending after create; appended by remaps)
``/PNODE/<p>/<v>``          v's data under its current pnode (1 = none)
``ALGORITHM``               {"NAME","MAX","VNODE_HASH_INTERVAL"}
``VERSION``                 "2.1.0"
``COMPLETE``                1
==========================  ============================================

Every multi-key change of a :class:`LevelRing` is one LevelDB write batch:
a crash leaves the old ring or the new one. A new ring is written into a
temporary directory and renamed into place, so it appears whole or not at all.
"""
from __future__ import annotations

import contextlib
import glob
import os
import queue
import shutil
import threading
from array import array

try:
    import plyvel
except ImportError:  # pragma: no cover - reported by open_ring/create_ring
    plyvel = None

from .errors import (RingCorruptError, RingError, RingExistsError, RingInputError,
                     RingLockedError, RingLookupError, RingNotFoundError)
from .hashing import Hasher, parse_hex, version_problem
from .jsenc import is_no_data, js_dumpb, js_loadb
from .topology import Topology
from .vnodes import check_pnode, parse_vnodes, ranges

K_VNODE_COUNT = b"VNODE_COUNT"
K_VNODE_DATA = b"VNODE_DATA"
K_PNODE = b"/PNODE"
K_ALGORITHM = b"ALGORITHM"
K_VERSION = b"VERSION"
K_COMPLETE = b"COMPLETE"
VNODE_PREFIX = b"/VNODE/"
PNODE_PREFIX = b"/PNODE/"

#: LevelDB options matching fash create (no Snappy compression, §4.1)
WRITE_BUFFER_SIZE = 64 << 20
_MISSING = object()
_ONE = b"1"


def vnode_key(v):
    return b"/VNODE/%d" % v


def pnode_key(pnode):
    return PNODE_PREFIX + pnode.encode("utf-8")


def data_key(pnode, v):
    return PNODE_PREFIX + pnode.encode("utf-8") + b"/%d" % v


def int_list_json(values):
    return ("[" + ",".join(map(str, values)) + "]").encode("ascii")


def _need_plyvel():
    if plyvel is None:
        raise RingError("the Python package plyvel is required for LevelDB rings (pip install plyvel)")


def _lock_path(path):
    return os.path.join(path, "LOCK")


def _translate_open_error(path, exc):
    msg = exc.args[0] if exc.args else str(exc)
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    msg = str(msg)
    if "lock" in msg.lower():
        lock = _lock_path(path)
        return RingLockedError(
            "ring %s is in use: cannot lock %s (%s). Another process (electric-moray, fash, another "
            "module run) holds it; stop it or work on a copy of the ring." % (path, lock, msg.strip()), lock)
    if plyvel is not None and isinstance(exc, plyvel.CorruptionError):
        return RingCorruptError("ring %s is corrupt: %s" % (path, msg))
    return RingError("cannot open ring %s: %s" % (path, msg))


# Rings this process has open. LevelDB refuses a second open of the same
# directory in one process, but in doing so it closes a descriptor of the LOCK
# file, which drops the process's fcntl lock: another process could then open
# the ring too. So a second open is refused here, before LevelDB sees it.
_OPEN = set()
_OPEN_GUARD = threading.Lock()


def _open_db(path, create=False):
    _need_plyvel()
    real = os.path.realpath(path)
    with _OPEN_GUARD:
        if real in _OPEN:
            lock = _lock_path(path)
            raise RingLockedError(
                "ring %s is in use: cannot lock %s (this process already has the ring open; close it "
                "first)" % (path, lock), lock)
        try:
            db = plyvel.DB(path, create_if_missing=create, error_if_exists=create, compression=None,
                           write_buffer_size=WRITE_BUFFER_SIZE)
        except plyvel.Error as exc:
            raise _translate_open_error(path, exc) from None
        _OPEN.add(real)
    return _DB(db, real)


class _DB(object):
    """A plyvel DB that leaves the open-ring registry when closed."""

    __slots__ = ("db", "real", "get", "iterator", "write_batch", "compact_range")

    def __init__(self, db, real):
        self.db = db
        self.real = real
        self.get = db.get
        self.iterator = db.iterator
        self.write_batch = db.write_batch
        self.compact_range = db.compact_range

    def put(self, key, value):
        self.db.put(key, value)

    def delete(self, key):
        self.db.delete(key)

    @property
    def closed(self):
        return self.db.closed

    def close(self):
        if not self.db.closed:
            self.db.close()
            with _OPEN_GUARD:
                _OPEN.discard(self.real)


def is_ring_dir(path):
    """True when ``path`` looks like a LevelDB directory (has CURRENT)."""
    return os.path.isfile(os.path.join(path, "CURRENT"))


def _sst_style(path):
    files = os.listdir(path)
    return any(f.endswith(".sst") for f in files) and not any(f.endswith(".ldb") for f in files)


def rename_tables_to_sst(path):
    """Rename ``*.ldb`` to ``*.sst`` so LevelDB 1.11 (mantav1 electric-moray) can read them (§4.5)."""
    for f in glob.glob(os.path.join(glob.escape(path), "*.ldb")):
        os.rename(f, f[:-4] + ".sst")


def make_sst(path):
    """Compact a ring into table files and name them ``.sst`` (readable by LevelDB 1.11 and later)."""
    db = _open_db(path)
    try:
        db.compact_range()
    finally:
        db.close()
    rename_tables_to_sst(path)


class LevelRing(object):
    """An open LevelDB ring. Holds the LevelDB lock until :meth:`close`.

    Lookups read LevelDB as electric-moray does (``/VNODE/<v>`` then
    ``/PNODE/<p>/<v>``), using the stored interval. Mutators validate
    everything, then write all their keys in one batch; several mutators
    inside ``with ring.transaction():`` share one batch.
    """

    def __init__(self, path, db, readonly=False):
        self.path = path
        self.readonly = readonly
        self._db = db
        self._txn = None
        self._dirty = False
        self._sst = _sst_style(path)
        try:
            self._load_header()
        except BaseException:
            db.close()
            raise

    # ------------------------------------------------------------------ low level
    def _raw(self, key):
        txn = self._txn
        if txn is not None:
            r = txn.get(key, _MISSING)
            if r is not _MISSING:
                return r
        return self._db.get(key)

    def _get(self, key, default=None):
        raw = self._raw(key)
        if raw is None:
            return default
        try:
            return js_loadb(raw)
        except ValueError:
            raise RingCorruptError("ring %s: value of key %s is not JSON: %r"
                                   % (self.path, key.decode("utf-8", "replace"), raw[:80])) from None

    def _put(self, key, raw):
        self._txn[key] = raw

    def _delete(self, key):
        self._txn[key] = None

    def _corrupt(self, what):
        return RingCorruptError("ring %s is corrupt or incomplete: %s" % (self.path, what))

    def _load_header(self):
        db = self._db
        if db.get(K_COMPLETE) is None:
            raise self._corrupt("key COMPLETE is missing (the create or deserialize that wrote it did not finish)")
        version = self._get(K_VERSION, _MISSING)
        if version is _MISSING:
            raise self._corrupt("key VERSION is missing")
        problem = version_problem(version)
        if problem:
            raise self._corrupt("VERSION: " + problem)
        self.version = version
        n = self._get(K_VNODE_COUNT)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise self._corrupt("key VNODE_COUNT is missing or not a positive integer (%r)" % (n,))
        self._n = n
        last = self._get(vnode_key(n - 1))
        if not isinstance(last, str):
            raise self._corrupt("key /VNODE/%d (the last vnode) is missing or not a pnode string" % (n - 1))
        algo = self._get(K_ALGORITHM)
        if not isinstance(algo, dict) or "NAME" not in algo or "VNODE_HASH_INTERVAL" not in algo:
            raise self._corrupt("key ALGORITHM is missing or lacks NAME/VNODE_HASH_INTERVAL (%r)" % (algo,))
        try:
            self._hasher = Hasher(algo["NAME"], parse_hex(algo["VNODE_HASH_INTERVAL"]), n)
        except RingInputError as exc:
            raise self._corrupt("ALGORITHM: %s" % exc) from None
        self.algorithm = algo

    def _writable(self):
        if self.readonly:
            raise RingError("ring %s was opened read-only" % self.path)
        if self._db is None:
            raise RingError("ring %s is closed" % self.path)

    @contextlib.contextmanager
    def transaction(self):
        """Group several mutations into one atomic LevelDB write batch."""
        self._writable()
        if self._txn is not None:
            yield self
            return
        self._txn = {}
        try:
            yield self
        except BaseException:
            self._txn = None
            raise
        pending, self._txn = self._txn, None
        self._commit(pending)

    def _commit(self, pending):
        if not pending:
            return
        wb = self._db.write_batch()
        put, delete = wb.put, wb.delete
        pop = pending.popitem
        while pending:              # frees the overlay while the batch grows (333,334 vnodes: 1M keys)
            k, v = pop()
            if v is None:
                delete(k)
            else:
                put(k, v)
        wb.write()
        self._dirty = True

    # ------------------------------------------------------------------ lifecycle
    def close(self):
        """Release the LevelDB lock. A ring stored as ``.sst`` tables stays so."""
        if self._db is None:
            return
        db, self._db = self._db, None
        try:
            if self._dirty and self._sst:
                db.compact_range()
        finally:
            db.close()
        if self._dirty and self._sst:
            rename_tables_to_sst(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if self._db is not None:
                self._db.close()
        except Exception:
            pass

    @property
    def closed(self):
        return self._db is None

    # ------------------------------------------------------------------ queries
    @property
    def vnode_count(self):
        return self._n

    @property
    def interval(self):
        return self._hasher.interval

    @property
    def algorithm_name(self):
        return self._hasher.name

    def vnode_of(self, key):
        """The vnode ``key`` hashes to with the stored NAME and interval (may equal N: no clamping)."""
        return self._hasher.vnode_of(key)

    def get_vnode(self, v):
        """``(pnode, data)`` of vnode ``v``."""
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < self._n:
            raise RingInputError("vnode %r is out of range; valid vnodes are 0..%d" % (v, self._n - 1))
        pnode = self._get(vnode_key(v))
        if not isinstance(pnode, str):
            raise self._corrupt("key /VNODE/%d is missing" % v)
        data = self._get(data_key(pnode, v), _MISSING)
        if data is _MISSING:
            raise self._corrupt("key /PNODE/%s/%d is missing (vnode %d's data under its pnode)" % (pnode, v, v))
        return pnode, data

    def get_node(self, key):
        """``(pnode, vnode, data)`` for ``key``, hashed as given (no Manta transform)."""
        v = self._hasher.vnode_of(key)
        if v >= self._n:
            raise RingLookupError("key %r hashes to vnode %d, past the last vnode %d (fash does not clamp)"
                                  % (key, v, self._n - 1))
        pnode, data = self.get_vnode(v)
        return pnode, v, data

    def pnodes(self):
        """The ``/PNODE`` list: every pnode, including emptied ones not yet removed."""
        p = self._get(K_PNODE)
        if not isinstance(p, list):
            raise self._corrupt("key /PNODE is missing or not a list")
        return p

    def vnodes_of(self, pnode):
        """The ``/PNODE/<pnode>`` list as stored (unsorted after remaps)."""
        lst = self._get(pnode_key(pnode)) if isinstance(pnode, str) else None
        if lst is None:
            known = self.pnodes()
            if pnode in known:
                raise self._corrupt("key /PNODE/%s (its vnode list) is missing" % pnode)
            raise RingInputError("pnode %r is not in the ring; pnodes are: %s" % (pnode, ", ".join(known)))
        return lst

    def pnode_counts(self):
        """``{pnode: number of vnodes}`` from the ``/PNODE/<p>`` lists, in ``/PNODE`` order."""
        return {p: len(self._get(pnode_key(p)) or []) for p in self.pnodes()}

    def data_vnodes(self):
        """``{vnode: data}`` for the vnodes listed in VNODE_DATA, ascending."""
        out = {}
        for item in self._get(K_VNODE_DATA) or []:
            try:
                v = int(item)
            except (TypeError, ValueError):
                continue
            if 0 <= v < self._n and v not in out:
                _, data = self.get_vnode(v)
                if not is_no_data(data):
                    out[v] = data
        return dict(sorted(out.items()))

    # ------------------------------------------------------------------ whole-ring views
    def _iter(self, prefix):
        if self._txn:
            raise RingError("whole-ring reads are not available inside a pending transaction")
        return self._db.iterator(prefix=prefix)

    def topology(self):
        """The whole ring as a :class:`Topology` (reads every ``/VNODE`` and ``/PNODE/<p>/<v>`` key)."""
        n = self._n
        names = list(self.pnodes())
        ids = {name: i for i, name in enumerate(names)}
        owner = array("i", [-1]) * n
        cache = {}
        seen = 0
        for k, raw in self._iter(VNODE_PREFIX):
            suffix = k[7:]
            if not suffix.isdigit():
                continue
            v = int(suffix)
            if v >= n:
                continue
            pid = cache.get(raw)
            if pid is None:
                name = js_loadb(raw)
                if not isinstance(name, str):
                    raise self._corrupt("key /VNODE/%d is not a pnode string" % v)
                pid = ids.get(name)
                if pid is None:
                    pid = ids[name] = len(names)
                    names.append(name)
                cache[raw] = pid
            owner[v] = pid
            seen += 1
        if seen != n:
            missing = [v for v in range(n) if owner[v] == -1]
            raise self._corrupt("%d of %d /VNODE keys are missing (first: %s)" % (len(missing), n, missing[:10]))
        data = {}
        for pid, name in enumerate(names):
            prefix = pnode_key(name) + b"/"
            plen = len(prefix)
            for k, raw in self._iter(prefix):
                if raw == _ONE:
                    continue
                rest = k[plen:]
                if not rest.isdigit():
                    continue
                v = int(rest)
                if v < n and owner[v] == pid:
                    data[v] = js_loadb(raw)
        return Topology(n, names, owner, dict(sorted(data.items())), self.algorithm, self.version)

    def to_json(self, include_empty=True):
        return self.topology().to_json(include_empty)

    def dump(self):
        """Every ``(key, value)`` as raw bytes, in LevelDB key order."""
        return list(self._iter(b""))

    def verify(self):
        """Check the whole ring's consistency; return a list of problems (empty when sound)."""
        problems = []
        try:
            topo = self.topology()
        except RingError as exc:
            return [str(exc)]
        listed = self.pnodes()
        owned = topo.counts()
        for p in owned:
            if p not in listed and owned[p]:
                problems.append("pnode %s owns vnodes but is not in /PNODE" % p)
        vd = self._get(K_VNODE_DATA)
        if vd is None:
            problems.append("key VNODE_DATA is missing")
        for p in topo.pnodes():
            lst = self._get(pnode_key(p))
            if lst is None:
                if p in listed:
                    problems.append("key /PNODE/%s is missing" % p)
                continue
            want = set(topo.vnodes_of(p))
            if len(lst) != len(set(lst)) or set(lst) != want:
                problems.append("list /PNODE/%s does not match /VNODE (%d listed, %d owned)" % (p, len(lst), len(want)))
            got = 0
            for k, _ in self._iter(pnode_key(p) + b"/"):
                rest = k[len(pnode_key(p)) + 1:]
                if rest.isdigit():
                    if int(rest) in want:
                        got += 1
                    elif (p + "/" + rest.decode()) not in listed:
                        problems.append("stray key %s (vnode not owned by %s)" % (k.decode("utf-8", "replace"), p))
            if got != len(want):
                problems.append("%d data keys /PNODE/%s/<v> are missing" % (len(want) - got, p))
        if vd is not None:
            listed_data = set()
            for item in vd:
                try:
                    listed_data.add(int(item))
                except (TypeError, ValueError):
                    problems.append("VNODE_DATA has a non-vnode element %r" % (item,))
            actual = set(topo.data_vnodes())
            if listed_data != actual:
                problems.append("VNODE_DATA lists %s but vnodes with data are %s"
                                % (ranges(listed_data) or "none", ranges(actual) or "none"))
        return problems

    def repair(self):
        """Rebuild what ``/VNODE`` implies but is missing, in one batch; return what was fixed.

        Covers node-fash's ``create`` race (a lost ``/PNODE/<p>`` list, fash.md
        §7 item 3: the real 2014 electric-moray test ring has one), pnodes
        owning vnodes but absent from ``/PNODE``, a missing ``VNODE_DATA``.
        Routing (``/VNODE``, ``/PNODE/<p>/<v>``) is never changed.
        """
        self._writable()
        topo = self.topology()
        fixes = []
        with self.transaction():
            listed = self.pnodes()
            owned = topo.counts()
            missing = [p for p in topo.pnodes() if p not in listed and owned[p]]
            if missing:
                self._put(K_PNODE, js_dumpb(listed + missing))
                fixes.append("added %s to /PNODE" % ", ".join(missing))
            for p in topo.pnodes():
                if self._get(pnode_key(p)) is None and (p in listed or owned[p]):
                    self._put(pnode_key(p), int_list_json(topo.vnodes_of(p)))
                    fixes.append("rebuilt /PNODE/%s (%d vnodes)" % (p, owned[p]))
            if self._get(K_VNODE_DATA) is None:
                self._put(K_VNODE_DATA, int_list_json(list(topo.data_vnodes())))
                fixes.append("rebuilt VNODE_DATA")
        return fixes

    # ------------------------------------------------------------------ mutations
    def remap(self, vnodes, pnode, strict=True, strict_pnode=True):
        """Move ``vnodes`` to ``pnode`` in one batch, creating the pnode if new.

        Same keys as node-fash's ``remap-vnode`` applied vnode by vnode: the
        vnodes are spliced out of their old ``/PNODE/<old>`` lists and appended
        to ``/PNODE/<pnode>`` in the given order, their data moves with them,
        ``/VNODE/<v>`` points at ``pnode``, and a new pnode is appended to
        ``/PNODE``. With ``strict`` (node-fash's behaviour) a vnode already on
        ``pnode`` is an error; otherwise it is skipped. Returns the moved vnodes.
        """
        self._writable()
        vs = parse_vnodes(vnodes, self._n)
        check_pnode(pnode, strict_pnode)
        with self.transaction():
            plist = self.pnodes()
            new_key = pnode_key(pnode)
            new_list = self._get(new_key)
            raw = self._raw
            loads = js_loadb
            by_old = {}
            moved = []
            for v in vs:
                r = raw(b"/VNODE/%d" % v)
                if r is None:
                    raise self._corrupt("key /VNODE/%d is missing" % v)
                old = loads(r)
                if old == pnode:
                    if strict:
                        raise RingInputError("vnode %d already belongs to pnode %s" % (v, pnode))
                    continue
                lst = by_old.get(old)
                if lst is None:
                    lst = by_old[old] = []
                lst.append(v)
                moved.append(v)
            if not moved:
                return []
            plan = []
            for old, lst in by_old.items():
                old_key = pnode_key(old)
                old_list = self._get(old_key)
                if not isinstance(old_list, list):
                    raise self._corrupt("key /PNODE/%s (the vnode list of the pnode vnode %d is on) is missing"
                                        % (old, lst[0]))
                mv = set(lst)
                remaining = [x for x in old_list if x not in mv]
                if len(old_list) - len(remaining) < len(mv):
                    present = set(old_list)
                    v = next(x for x in lst if x not in present)
                    raise self._corrupt("vnode %d does not exist in old pnode %s's list /PNODE/%s" % (v, old, old))
                prefix = old_key + b"/"
                raws = []
                for v in lst:
                    d = raw(prefix + b"%d" % v)
                    if d is None:
                        raise self._corrupt("key /PNODE/%s/%d is missing" % (old, v))
                    raws.append(_ONE if d == _ONE else d)
                plan.append((old_key, prefix, remaining, lst, raws))
            txn = self._txn
            pval = js_dumpb(pnode)
            new_prefix = new_key + b"/"
            for old_key, prefix, remaining, lst, raws in plan:
                txn[old_key] = int_list_json(remaining)
                for v, d in zip(lst, raws):
                    s = b"%d" % v
                    txn[prefix + s] = None
                    txn[new_prefix + s] = d
                    txn[VNODE_PREFIX + s] = pval
            txn[new_key] = int_list_json((new_list or []) + moved)
            if pnode not in plist:
                txn[K_PNODE] = js_dumpb(plist + [pnode])
        return moved

    def set_data(self, vnodes, data):
        """Set ``data`` (e.g. ``"ro"``) on ``vnodes``; ``None`` or ``1`` clears it. One batch.

        Updates ``/PNODE/<p>/<v>`` and ``VNODE_DATA`` (numbers, in the order
        vnodes were marked). Returns the vnodes whose data changed.
        """
        self._writable()
        vs = parse_vnodes(vnodes, self._n)
        clear = data is None or is_no_data(data)
        enc = _ONE if clear else js_dumpb(data)
        with self.transaction():
            vd_orig = self._get(K_VNODE_DATA)
            if vd_orig is not None and not isinstance(vd_orig, list):
                raise self._corrupt("key VNODE_DATA is not a list")
            keys = []
            changed = []
            for v in vs:
                pnode = self._get(vnode_key(v))
                if not isinstance(pnode, str):
                    raise self._corrupt("key /VNODE/%d is missing" % v)
                dk = data_key(pnode, v)
                cur = self._raw(dk)
                if cur is None:
                    raise self._corrupt("key /PNODE/%s/%d is missing" % (pnode, v))
                keys.append(dk)
                if cur != enc:
                    changed.append(v)
            for dk in keys:
                self._put(dk, enc)
            norm = []
            seen = set()
            for item in vd_orig or []:
                try:
                    x = int(item)
                except (TypeError, ValueError):
                    continue
                if x not in seen:
                    seen.add(x)
                    norm.append(x)
            if clear:
                drop = set(vs)
                new = [x for x in norm if x not in drop]
            else:
                new = norm + [v for v in vs if v not in seen]
            if vd_orig is None or new != vd_orig:
                self._put(K_VNODE_DATA, int_list_json(new))
        return changed

    def remove_pnode(self, pnode):
        """Remove a pnode that owns no vnodes (``/PNODE/<p>`` and its ``/PNODE`` entry).

        A pnode that still owns vnodes is refused, checked against its list
        and against every ``/VNODE`` key.
        """
        self._writable()
        if not isinstance(pnode, str):
            raise RingInputError("pnode %r is not a string" % (pnode,))
        with self.transaction():
            plist = self.pnodes()
            key = pnode_key(pnode)
            lst = self._get(key)
            if lst is None:
                raise RingInputError("pnode %s does not exist in the ring; pnodes are: %s"
                                     % (pnode, ", ".join(plist)))
            if lst:
                raise RingInputError("pnode %s still maps to %d vnodes (%s); remap them to other pnodes first"
                                     % (pnode, len(lst), _short_ranges(lst)))
            pval = js_dumpb(pnode)
            txn = self._txn
            for k, raw in self._db.iterator(prefix=VNODE_PREFIX):
                r = txn.get(k, raw) if txn else raw
                if r == pval:
                    raise self._corrupt("/PNODE/%s is empty but %s still maps to it" % (pnode, k.decode()))
            self._delete(key)
            if pnode in plist:
                self._put(K_PNODE, js_dumpb([p for p in plist if p != pnode]))
        return True


def _short_ranges(vs, limit=200):
    text = ranges(vs)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------- open / create / write
def open_ring(path, readonly=False):
    """Open an existing LevelDB ring; use as a context manager or call ``close()``.

    Fails at once (never blocks) with :class:`RingLockedError` naming
    ``<path>/LOCK`` when another process holds the ring, with
    :class:`RingNotFoundError` when there is no ring, and with
    :class:`RingCorruptError` for an incomplete ring (no COMPLETE, no
    ``/VNODE/<N-1>``, a VERSION node-fash rejects...). Nothing is created
    at ``path`` when it holds no ring.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise RingNotFoundError("no ring at %s: the directory does not exist" % path)
    if not is_ring_dir(path):
        raise RingNotFoundError("no ring at %s: the directory has no LevelDB CURRENT file" % path)
    db = _open_db(path)
    return LevelRing(path, db, readonly=readonly)


def _check_target(path):
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise RingExistsError("cannot write a ring at %s: it exists and is not a directory" % path)
        if is_ring_dir(path):
            raise RingExistsError("cannot write a ring at %s: it already holds a ring (remove it or choose "
                                  "another path)" % path)
        if os.listdir(path):
            raise RingExistsError("cannot write a ring at %s: the directory is not empty" % path)


def _vnode_data_order(topo):
    """VNODE_DATA as deserialize writes it: pnode (ring) order, then ascending vnode; as numbers."""
    data = topo._data
    if not data:
        return []
    owner = topo._owner
    order = {pid: i for i, pid in enumerate(i for i, n in enumerate(topo._names) if n is not None)}
    return sorted(data, key=lambda v: (order[owner[v]], v))


def ring_items(topo):
    """Every ``(key, value)`` of the LevelDB ring for ``topo`` (unsorted), as bytes."""
    names = topo._names
    owner = topo._owner
    data = topo._data
    pvals = [js_dumpb(n) if n is not None else None for n in names]
    pkeys = [pnode_key(n) + b"/" if n is not None else None for n in names]
    buckets = topo._buckets()
    denc = {v: js_dumpb(d) for v, d in data.items()}
    for v in range(topo._n):
        pid = owner[v]
        s = b"%d" % v
        yield VNODE_PREFIX + s, pvals[pid]
        yield pkeys[pid] + s, denc.get(v, _ONE)
    for pid, n in enumerate(names):
        if n is not None:
            yield pnode_key(n), int_list_json(buckets[pid])
    yield from _meta_items(topo)


def _meta_items(topo):
    yield K_PNODE, js_dumpb(topo.pnodes())
    yield K_VNODE_COUNT, b"%d" % topo._n
    yield K_VNODE_DATA, int_list_json(_vnode_data_order(topo))
    yield K_ALGORITHM, js_dumpb(topo.algorithm)
    yield K_VERSION, js_dumpb(topo.version)
    yield K_COMPLETE, _ONE


def _write_plyvel(topo, path, chunk=100000):
    """Write ``topo`` into a new LevelDB at ``path`` with pipelined plyvel batches."""
    db = _open_db(path, create=True)
    errors = []
    q = queue.Queue(maxsize=2)

    def writer():
        while True:
            wb = q.get()
            if wb is None:
                return
            if not errors:
                try:
                    wb.write()
                except Exception as exc:  # pragma: no cover - disk full and the like
                    errors.append(exc)

    th = threading.Thread(target=writer, name="fash-ring-writer", daemon=True)
    th.start()
    try:
        names, owner = topo._names, topo._owner
        pvals = [js_dumpb(n) if n is not None else None for n in names]
        pkeys = [pnode_key(n) + b"/" if n is not None else None for n in names]
        denc = {v: js_dumpb(d) for v, d in topo._data.items()}
        n = topo._n
        for start in range(0, n, chunk):
            wb = db.write_batch()
            put = wb.put
            if denc:
                for v in range(start, min(n, start + chunk)):
                    pid = owner[v]
                    s = b"%d" % v
                    put(b"/VNODE/" + s, pvals[pid])
                    put(pkeys[pid] + s, denc.get(v, _ONE))
            else:
                for v in range(start, min(n, start + chunk)):
                    pid = owner[v]
                    s = b"%d" % v
                    put(b"/VNODE/" + s, pvals[pid])
                    put(pkeys[pid] + s, _ONE)
            q.put(wb)
            if errors:
                break
        q.put(None)
        th.join()
        if errors:
            raise RingError("writing ring %s failed: %s" % (path, errors[0]))
        wb = db.write_batch()
        buckets = topo._buckets()
        for pid, name in enumerate(names):
            if name is not None:
                wb.put(pnode_key(name), int_list_json(buckets[pid]))
        for k, v in _meta_items(topo):
            wb.put(k, v)           # COMPLETE goes in the last batch
        wb.write()
        db.compact_range()
    finally:
        if th.is_alive():
            q.put(None)
            th.join()
        db.close()


def write_topology(topology, path, sst=False, strict_pnodes=True, engine="auto"):
    """Write ``topology`` as a new LevelDB ring at ``path`` (which must not hold a ring).

    The keys are those ``fash deserialize-ring`` writes (``VNODE_DATA`` as
    numbers; empty pnodes kept with ``[]``). The ring is built in a
    temporary directory beside ``path`` and renamed into place. ``sst=True``
    names the table files ``.sst`` for mantav1's LevelDB 1.11 (§4.5).
    ``strict_pnodes`` refuses pnode names that are not ``tcp://host:port``.
    """
    if not isinstance(topology, Topology):
        raise RingInputError("write_topology needs a Topology, got %r" % (type(topology).__name__,))
    path = os.fspath(path)
    for p in topology.pnodes():
        check_pnode(p, strict_pnodes)
    _need_plyvel()
    _check_target(path)
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, ".%s.fash-tmp-%d-%d" % (os.path.basename(os.path.abspath(path)), os.getpid(),
                                                      threading.get_ident() % 100000))
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_engine(engine)(topology, tmp)
        if sst:
            rename_tables_to_sst(tmp)
        if os.path.isdir(path):
            os.rmdir(path)  # empty, checked above
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_engine(engine):
    if engine in ("auto", "sstable"):
        from . import sstable
        if sstable.available():
            return sstable.write_ring
        if engine == "sstable":
            raise RingError("the sstable writer needs the crc32c package")
    if engine in ("auto", "plyvel"):
        return _write_plyvel
    raise RingInputError("engine %r is not one of auto, sstable, plyvel" % (engine,))


def create_ring(path, pnodes, vnodes, algorithm="sha256", sst=False, engine="auto"):
    """Create a new ring exactly as ``fash create -b leveldb`` does (same keys and values).

    ``pnodes`` must be ``tcp://host:port`` names (a list, or a string split
    on commas/spaces); vnode v goes to ``sorted(pnodes)[v % len(pnodes)]``.
    Refuses when ``path`` already holds a ring.
    """
    topo = Topology.create(pnodes, vnodes, algorithm, strict_pnodes=True)
    write_topology(topo, path, sst=sst, strict_pnodes=True, engine=engine)


@contextlib.contextmanager
def snapshot_ring(path):
    """A private copy of a ring directory (without its LOCK), removed afterwards.

    Reading the copy leaves the ring itself untouched (a LevelDB open rewrites
    CURRENT/MANIFEST/log files even to read) and works while another process
    holds the ring. Check mode and the info module read through it.
    """
    import tempfile
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise RingNotFoundError("no ring at %s: the directory does not exist" % path)
    if not is_ring_dir(path):
        raise RingNotFoundError("no ring at %s: the directory has no LevelDB CURRENT file" % path)
    tmp = tempfile.mkdtemp(prefix="fash-snapshot-")
    copy = os.path.join(tmp, "ring")
    try:
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns("LOCK"))
        yield copy
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_topology(path, snapshot=False):
    """Read a whole LevelDB ring into a :class:`Topology` (takes and releases the lock).

    ``snapshot=True`` reads a private copy instead (see :func:`snapshot_ring`).
    """
    if snapshot:
        with snapshot_ring(path) as copy:
            return read_topology(copy)
    with open_ring(path, readonly=True) as ring:
        return ring.topology()


def dump_ring(path):
    """``[(key, value)]`` raw bytes of a ring in key order (takes and releases the lock)."""
    path = os.fspath(path)
    if not is_ring_dir(path):
        raise RingNotFoundError("no LevelDB database at %s" % path)
    db = _open_db(path)
    try:
        return list(db.iterator())
    finally:
        db.close()
