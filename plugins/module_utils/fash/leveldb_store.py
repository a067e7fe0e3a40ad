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

An open ring is a :class:`LevelRing`: reads as electric-moray reads, and
mutations that validate everything, then write all their keys in one LevelDB
write batch, so a crash leaves the old ring or the new one. New rings are
written by :mod:`.ring_writer`; opening and locking is :mod:`.dbfiles`.
"""
from __future__ import annotations

import contextlib
import os
from array import array
from collections import deque
from itertools import compress, repeat

from .dbfiles import _open_db, _sst_style, is_ring_dir, rename_tables_to_sst, snapshot_ring  # noqa: F401
from .errors import RingCorruptError, RingError, RingInputError, RingLookupError, RingNotFoundError
from .hashing import Hasher, parse_hex, version_problem
from .jsenc import is_no_data, js_dumpb, js_loadb
from .keys import (K_ALGORITHM, K_COMPLETE, K_PNODE, K_VERSION, K_VNODE_COUNT, K_VNODE_DATA,  # noqa: F401
                   ONE as _ONE, VNODE_PREFIX, data_key, int_list_json, pnode_key, vnode_key)
from .topology import Topology
from .vnodes import check_pnode, parse_vnodes, ranges

_MISSING = object()


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
                data = self.get_vnode(v)[1]
                if not is_no_data(data):
                    out[v] = data
        return dict(sorted(out.items()))

    # ------------------------------------------------------------------ whole-ring views
    def _iter_keys(self, prefix):
        if self._txn:
            raise RingError("whole-ring reads are not available inside a pending transaction")
        return self._db.iterator(prefix=prefix, include_value=False)

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
            for k in self._iter_keys(pnode_key(p) + b"/"):
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
        writes = []
        listed = self.pnodes()
        owned = topo.counts()
        missing = [p for p in topo.pnodes() if p not in listed and owned[p]]
        if missing:
            writes.append((K_PNODE, js_dumpb(listed + missing)))
            fixes.append("added %s to /PNODE" % ", ".join(missing))
        for p in topo.pnodes():
            if self._get(pnode_key(p)) is None and (p in listed or owned[p]):
                writes.append((pnode_key(p), int_list_json(topo.vnodes_of(p))))
                fixes.append("rebuilt /PNODE/%s (%d vnodes)" % (p, owned[p]))
        if self._get(K_VNODE_DATA) is None:
            writes.append((K_VNODE_DATA, int_list_json(list(topo.data_vnodes()))))
            fixes.append("rebuilt VNODE_DATA")
        if writes:
            with self._writer() as (put, delete):
                for k, v in writes:
                    put(k, v)
        return fixes

    # ------------------------------------------------------------------ mutations
    @contextlib.contextmanager
    def _writer(self):
        """``(put, delete)`` for one operation's writes.

        Inside :meth:`transaction` they go to the transaction's overlay;
        otherwise straight into a LevelDB write batch, written when the
        operation's block ends without an exception.
        """
        self._writable()
        txn = self._txn
        if txn is not None:
            yield txn.__setitem__, lambda k: txn.__setitem__(k, None)
            return
        wb = self._db.write_batch()
        yield wb.put, wb.delete
        wb.write()
        self._dirty = True

    def _getter(self):
        """The raw getter: LevelDB's own when no transaction overlay is pending (faster)."""
        return self._raw if self._txn else self._db.get

    def _data_raws(self, old_key, old_list, svs):
        """Raw data values under ``old_key`` of the vnodes spelled ``svs``: point reads, or one scan for many."""
        prefix = old_key + b"/"
        if not self._txn and len(svs) >= 1000 and 4 * len(svs) >= len(old_list):
            plen = len(prefix)
            found = {k[plen:]: d for k, d in self._db.iterator(prefix=prefix)}
            raws = list(map(found.get, svs))
        else:
            raws = list(map(self._getter(), map(prefix.__add__, svs)))
        if None in raws:
            s = svs[raws.index(None)]
            raise self._corrupt("key %s%s is missing" % (prefix.decode("utf-8", "replace"), s.decode()))
        return [_ONE if d == _ONE else d for d in raws]

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
        # read and validate everything first
        plist = self.pnodes()
        new_key = pnode_key(pnode)
        new_list = self._get(new_key)
        pval = js_dumpb(pnode)
        svs = [b"%d" % v for v in vs]
        rs = list(map(self._getter(), map(VNODE_PREFIX.__add__, svs)))
        owners = {}
        for r in set(rs):
            if r is None:
                raise self._corrupt("key /VNODE/%d is missing" % vs[rs.index(None)])
            owners[r] = js_loadb(r)
        if pval in owners:
            if strict:
                raise RingInputError("vnode %d already belongs to pnode %s" % (vs[rs.index(pval)], pnode))
            keep = [r != pval for r in rs]
            vs = list(compress(vs, keep))
            svs = list(compress(svs, keep))
            rs = list(compress(rs, keep))
            del owners[pval]
        if not vs:
            return []
        if len(owners) == 1:
            groups = {next(iter(owners)): (vs, svs)}
        else:
            groups = {r: ([], []) for r in owners}
            for v, sv, r in zip(vs, svs, rs):
                g = groups[r]
                g[0].append(v)
                g[1].append(sv)
        plan = []
        for r, (lst, slst) in groups.items():
            old = owners[r]
            if not isinstance(old, str):
                raise self._corrupt("key /VNODE/%d is not a pnode string" % lst[0])
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
            plan.append((old_key, remaining, slst, self._data_raws(old_key, old_list, slst)))
        new_prefix = new_key + b"/"
        consume = deque(maxlen=0).extend
        with self._writer() as (put, delete):
            for old_key, remaining, slst, raws in plan:
                put(old_key, int_list_json(remaining))
                consume(map(delete, map((old_key + b"/").__add__, slst)))
                consume(map(put, map(new_prefix.__add__, slst), raws))
                consume(map(put, map(VNODE_PREFIX.__add__, slst), repeat(pval)))
            put(new_key, int_list_json((new_list or []) + vs))
            if pnode not in plist:
                put(K_PNODE, js_dumpb(plist + [pnode]))
        return vs

    def set_data(self, vnodes, data):
        """Set ``data`` (e.g. ``"ro"``) on ``vnodes``; ``None`` or ``1`` clears it. One batch.

        Updates ``/PNODE/<p>/<v>`` and ``VNODE_DATA`` (numbers, in the order
        vnodes were marked). Returns the vnodes whose data changed.
        """
        self._writable()
        vs = parse_vnodes(vnodes, self._n)
        clear = data is None or is_no_data(data)
        enc = _ONE if clear else js_dumpb(data)
        vd_orig = self._get(K_VNODE_DATA)
        if vd_orig is not None and not isinstance(vd_orig, list):
            raise self._corrupt("key VNODE_DATA is not a list")
        raw = self._getter()
        names = {}
        keys = []
        changed = []
        for v in vs:
            r = raw(b"/VNODE/%d" % v)
            pnode = names.get(r)
            if pnode is None:
                if r is None:
                    raise self._corrupt("key /VNODE/%d is missing" % v)
                pnode = names[r] = js_loadb(r)
            dk = data_key(pnode, v)
            cur = raw(dk)
            if cur is None:
                raise self._corrupt("key /PNODE/%s/%d is missing" % (pnode, v))
            keys.append(dk)
            if cur != enc:
                changed.append(v)
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
        with self._writer() as (put, delete):
            for dk in keys:
                put(dk, enc)
            if vd_orig is None or new != vd_orig:
                put(K_VNODE_DATA, int_list_json(new))
        return changed

    def remove_pnode(self, pnode):
        """Remove a pnode that owns no vnodes (``/PNODE/<p>`` and its ``/PNODE`` entry).

        A pnode that still owns vnodes is refused, checked against its list
        and against every ``/VNODE`` key.
        """
        self._writable()
        if not isinstance(pnode, str):
            raise RingInputError("pnode %r is not a string" % (pnode,))
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
        for k, r in self._db.iterator(prefix=VNODE_PREFIX):
            if txn:
                r = txn.get(k, r)
            if r == pval:
                raise self._corrupt("/PNODE/%s is empty but %s still maps to it" % (pnode, k.decode()))
        with self._writer() as (put, delete):
            delete(key)
            if pnode in plist:
                put(K_PNODE, js_dumpb([p for p in plist if p != pnode]))
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


def read_topology(path, snapshot=False):
    """Read a whole LevelDB ring into a :class:`Topology` (takes and releases the lock).

    ``snapshot=True`` reads a private copy instead (see :func:`snapshot_ring`).
    """
    if snapshot:
        with snapshot_ring(path) as copy:
            return read_topology(copy)
    with open_ring(path, readonly=True) as ring:
        return ring.topology()


def __getattr__(name):
    # create_ring/write_topology moved to ring_writer; keep old imports working
    if name in ("create_ring", "write_topology", "ring_items"):
        from . import ring_writer
        return getattr(ring_writer, name)
    raise AttributeError(name)
