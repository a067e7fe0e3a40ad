# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Write a new LevelDB ring directly as table files (no log, no memtable, no compaction).

A LevelDB database is a CURRENT file naming a MANIFEST, the MANIFEST (a log
of version edits: comparator, file numbers, last sequence, and the table
files of each level) and immutable table files. A fresh ring is a known,
sorted key set, so it can be laid out directly as tables in the LevelDB table
format (uncompressed blocks of a little over 4 KiB with restart points and
masked CRC32C trailers, an index block, an empty metaindex block and the
48-byte footer), which is many times faster than pushing 2,000,000 keys
through LevelDB's write path. The result is an ordinary LevelDB database:
every LevelDB from 1.x on (node-fash's 1.20, mantav1's 1.11 with ``.sst``
names, plyvel's) reads it, and the interop tests compare its key/value dump
with node-fash's.

Layout: the ``/PNODE...`` keys in one table and ``/VNODE/...`` plus the
upper-case keys in another, both at the lowest level whose size budget they
fit (so opening the ring triggers no compaction). With an idle CPU and no
other threads, the two tables are built in parallel (a forked child builds
the second).

Speed: the decimal vnode keys are never sorted or built one by one. A run
of them (``/VNODE/<v>``, or one pnode's ``/PNODE/<p>/<v>``) is produced in
key order by a depth-first walk over decimal prefixes, in *units*: all keys
below a prefix ``y`` (``y``, ``y0``..``y9``, ``y00``..``y99``, ...), about a
block's worth. Within a unit every key shares ``prefix + y`` with the one
before it except at restart points (every 16 entries, as LevelDB), so a
unit's bytes are ``y.join(template)`` where the template depends only on the
owner pattern of the subtree; a fresh ring has as many patterns as pnodes.
Per 1,000,000 vnodes that is about 13,000 joins and 12,000 blocks instead of
2,000,000 Python-level entries (``_RingLayout.run_units``, :func:`_render`).

Needs the ``crc32c`` package (hardware CRC32C); without it callers fall back
to writing through plyvel.
"""
from __future__ import annotations

import os
import struct
import sys
import threading
from array import array
from itertools import compress


def _load_crc32c():
    """The ``crc32c`` package's C function, loaded without the package's ``__init__``.

    ``import crc32c`` pulls in ``importlib.metadata`` (over 100 ms, a fifth of
    creating a 1,000,000-vnode ring); the extension module alone loads in
    under a millisecond. Falls back to the normal import, then to None.
    """
    try:
        import importlib.machinery
        import importlib.util
        spec = importlib.util.find_spec("crc32c")
        for d in (spec.submodule_search_locations or []) if spec else []:
            for f in sorted(os.listdir(d)):
                if f.startswith("_crc32c.") and f.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
                    path = os.path.join(d, f)
                    loader = importlib.machinery.ExtensionFileLoader("crc32c._crc32c", path)
                    mspec = importlib.util.spec_from_file_location("crc32c._crc32c", path, loader=loader)
                    mod = importlib.util.module_from_spec(mspec)
                    loader.exec_module(mod)
                    if mod.crc32c(b"123456789") == 0xE3069283:
                        return mod.crc32c
    except Exception:  # pragma: no cover - layout changed: use the package
        pass
    try:
        import crc32c
        return crc32c.crc32c
    except ImportError:  # pragma: no cover - the plyvel writer is used instead
        return None


_crc32c_fn = _load_crc32c()

from .errors import RingError

BLOCK_SIZE = 4096
RESTART_INTERVAL = 16          # as LevelDB writes (readers take any spacing of restart points)
UNIT_BYTES = 6144              # a unit (one subtree of vnode keys) is sized to fill about one block
MAX_DEPTH = 4                  # deepest subtree a unit covers (11,111 keys)
TEMPLATE_CACHE = 4096          # unit templates kept per run
COMPARATOR = b"leveldb.BytewiseComparator"
TABLE_MAGIC = struct.pack("<Q", 0xDB4775248B80FB57)
MASK_DELTA = 0xA282EAD8
K_TYPE_VALUE = 1
SEQUENCE = 1
LOG_BLOCK_SIZE = 32768
TAG = struct.pack("<Q", (SEQUENCE << 8) | K_TYPE_VALUE)     # every key's sequence number and type

_ONE = b"1"
_PACK_I = struct.Struct("<I").pack


def available():
    return _crc32c_fn is not None


def masked_crc(data):
    c = _crc32c_fn(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + MASK_DELTA) & 0xFFFFFFFF


def varint(n):
    if n < 0x4000:
        return bytes((n,)) if n < 0x80 else bytes(((n & 0x7F) | 0x80, n >> 7))
    if n < 0x10000000:
        if n < 0x200000:
            return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14))
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, ((n >> 14) & 0x7F) | 0x80, n >> 21))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_V = [varint(i) for i in range(1024)]


def _var(n):
    return _V[n] if n < 1024 else varint(n)


_VK = [_var(i + 8) for i in range(128)]    # key delta lengths of entries spelling i bytes of their key
_D3 = [b"%03d," % i for i in range(1000)]


def _u32_array(values):
    a = array("I", values)
    if a.itemsize != 4:  # pragma: no cover
        a = array("L", values)
    if sys.byteorder != "little":  # pragma: no cover
        a.byteswap()
    return a.tobytes()


class _Unit(object):
    """Entries of keys ``prefix + y + rel`` rendered for any ``y`` of one length: the bytes are ``y.join(frags)``.

    ``restarts`` are the offsets of the restart points in those bytes,
    ``trailer`` the restart array of a block holding this unit alone,
    ``entries`` the ``(rel, value)`` pairs it was made from.
    """

    __slots__ = ("frags", "size", "restarts", "trailer", "first_rel", "last_rel", "count", "entries")


def _render(entries, prefix, ylen, tag):
    """A :class:`_Unit` for ``entries`` (sorted ``(rel, value)`` pairs, at least one).

    The first entry and every RESTART_INTERVAL-th after it spell the whole
    key (restart points); the others share ``prefix + y`` with the key
    before them and spell only ``rel``. So ``y`` appears once per restart
    point and a unit renders for every ``y`` with a single ``bytes.join``.
    """
    plen = len(prefix)
    kbase = plen + ylen + 8
    shared = _var(plen + ylen)
    vlen, tval = {}, {}
    for v in {v for _r, v in entries}:
        vlen[v] = _var(len(v))
        tval[v] = tag + v
    vk = _VK
    ent = [shared + vk[len(r)] + vlen[v] + r + tval[v] for r, v in entries]
    frags = []
    restarts = []
    pos = 0
    tail = b""
    for g in range(0, len(entries), RESTART_INTERVAL):
        r, v = entries[g]
        head = b"\x00" + _var(kbase + len(r)) + vlen[v] + prefix
        frags.append(tail + head)
        restarts.append(pos)
        tail = r + tval[v] + b"".join(ent[g + 1:g + RESTART_INTERVAL])
        pos += len(head) + ylen + len(tail)
    frags.append(tail)
    u = _Unit()
    u.frags = frags
    u.size = pos
    u.restarts = restarts
    u.trailer = _u32_array(restarts) + _PACK_I(len(restarts))
    u.first_rel = entries[0][0]
    u.last_rel = entries[-1][0]
    u.count = len(entries)
    u.entries = entries
    return u


class TableWriter(object):
    """Append sorted units of entries to one LevelDB table file.

    A unit is added whole to the current data block; the block is written
    once it holds BLOCK_SIZE bytes or more (as LevelDB's table builder
    does, with units instead of single entries), so blocks are a little
    over 4 KiB and every unit starts at a restart point.
    """

    def __init__(self, fh):
        self.fh = fh
        self.offset = 0
        self.tag = TAG
        self.parts = []
        self.restarts = []
        self.block_len = 0
        self.index = []            # (internal key >= the block's last key, (offset, size))
        self.first_key = None
        self.last = None           # (prefix, y, rel) of the last key added

    def _write_block(self, contents):
        crc = _crc32c_fn(b"\x00", _crc32c_fn(contents))
        crc = ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + MASK_DELTA) & 0xFFFFFFFF
        self.fh.write(contents)
        self.fh.write(b"\x00" + _PACK_I(crc))
        handle = (self.offset, len(contents))
        self.offset += len(contents) + 5
        return handle

    def _flush(self):
        if not self.parts:
            return
        contents = b"".join(self.parts) + _u32_array(self.restarts) + _PACK_I(len(self.restarts))
        prefix, y, rel = self.last
        self.index.append((prefix + y + rel + self.tag, self._write_block(contents)))
        self.parts = []
        self.restarts = []
        self.block_len = 0

    def add_unit(self, prefix, y, u):
        """The entries of ``u`` for ``y``: keys ``prefix + y + rel``, after every key added before."""
        if self.first_key is None:
            self.first_key = prefix + y + u.first_rel
        self.last = (prefix, y, u.last_rel)
        bl = self.block_len
        if not bl:
            if u.size >= BLOCK_SIZE:       # a block of its own: its restart array is the unit's
                self.index.append((prefix + y + u.last_rel + self.tag,
                                   self._write_block(y.join(u.frags) + u.trailer)))
                return
            self.restarts = list(u.restarts)
        else:
            self.restarts += [bl + r for r in u.restarts]
        self.parts.append(y.join(u.frags))
        bl += u.size
        if bl >= BLOCK_SIZE:
            self._flush()
        else:
            self.block_len = bl

    def add(self, key, value):
        self.add_unit(key, b"", _render([(b"", value)], key, 0, self.tag))

    def finish(self):
        """Write the last block, the metaindex and index blocks and the footer; return metadata."""
        self._flush()
        meta = self._write_block(struct.pack("<II", 0, 1))
        parts = []
        restarts = []
        off = 0
        for key, (o, sz) in self.index:
            h = _var(o) + _var(sz)
            e = b"\x00" + _var(len(key)) + _var(len(h)) + key + h
            restarts.append(off)
            parts.append(e)
            off += len(e)
        contents = b"".join(parts) + _u32_array(restarts or [0]) + _PACK_I(len(restarts or [0]))
        idx = self._write_block(contents)
        handles = _var(meta[0]) + _var(meta[1]) + _var(idx[0]) + _var(idx[1])
        footer = handles + b"\x00" * (40 - len(handles)) + TABLE_MAGIC
        self.fh.write(footer)
        self.offset += len(footer)
        prefix, y, rel = self.last
        return {"size": self.offset, "smallest": self.first_key + self.tag, "largest": prefix + y + rel + self.tag}


def _log_records(payload):
    """One logical record in LevelDB's log format (32 KiB blocks, FULL/FIRST/MIDDLE/LAST fragments)."""
    out = bytearray()
    left = 0
    pos = 0
    begin = True
    while True:
        block_left = LOG_BLOCK_SIZE - (len(out) % LOG_BLOCK_SIZE)
        if block_left < 7:
            out += b"\x00" * block_left
            block_left = LOG_BLOCK_SIZE
        avail = block_left - 7
        left = len(payload) - pos
        frag = min(avail, left)
        end = frag == left
        rtype = 1 if begin and end else 2 if begin else 4 if end else 3
        chunk = payload[pos:pos + frag]
        crc = masked_crc(bytes([rtype]) + chunk)
        out += struct.pack("<IHB", crc, frag, rtype) + chunk
        pos += frag
        begin = False
        if end:
            return bytes(out)


def _version_edit(files, next_file, last_seq):
    e = bytearray()
    e += _var(1) + _var(len(COMPARATOR)) + COMPARATOR       # comparator
    e += _var(2) + varint(0)                                  # log number
    e += _var(9) + varint(0)                                  # prev log number
    e += _var(3) + varint(next_file)                          # next file number
    e += _var(4) + varint(last_seq)                           # last sequence
    for level, number, meta in files:                        # new files
        e += _var(7) + varint(level) + varint(number) + varint(meta["size"])
        e += varint(len(meta["smallest"])) + meta["smallest"]
        e += varint(len(meta["largest"])) + meta["largest"]
    return bytes(e)


def _level_for(total_bytes):
    """Lowest level >= 1 whose size budget (10 MiB * 10^(L-1)) the tables fit: no compaction on open."""
    limit = 10 * 1048576.0
    for level in range(1, 6):
        if total_bytes < limit * 0.9:
            return level
        limit *= 10
    return 6


# ---------------------------------------------------------------------- ring layout
class _Shape(object):
    """The keys ``y + rel`` of a subtree below a decimal prefix ``y``, ``rel`` of 0 to ``depth`` digits.

    An owner pattern of a subtree concatenates the owners of its levels
    (``y``, then ``y0``..``y9``, then ``y00``..``y99``, ...); its index i
    stands for the key ``y + rel[i]``. A level cut short by the vnode count
    leaves no deeper level, so the keys present are the indices below the
    pattern's length, whatever the depth.
    """

    def __init__(self, depth):
        self.rel, self.kr = [], []
        for k in range(depth + 1):
            for r in range(10 ** k):
                self.rel.append(b"%0*d" % (k, r) if k else b"")
                self.kr.append((10 ** k, r))
        order = sorted(range(len(self.rel)), key=self.rel.__getitem__)
        self.rank = [0] * len(order)
        for pos, i in enumerate(order):
            self.rank[i] = pos
        self._lex = {}
        self._pairs = {}

    def pairs(self, value):
        """``(rel[i], value)`` for every index i."""
        got = self._pairs.get(value)
        if got is None:
            got = self._pairs[value] = [(r, value) for r in self.rel]
        return got

    def lex(self, size):
        """Indices below ``size`` in key order."""
        got = self._lex.get(size)
        if got is None:
            got = self._lex[size] = sorted(range(size), key=self.rank.__getitem__)
        return got


_SHAPES = {}


def _find_all(membership):
    """Indices of the 1 bytes of ``membership``."""
    return list(compress(range(len(membership)), membership))


def _shape(depth):
    s = _SHAPES.get(depth)
    if s is None:
        s = _SHAPES[depth] = _Shape(depth)
    return s


class _RingLayout(object):
    """The sorted key stream of a ring as splittable items, and how to render each into a table.

    Items, in key order: ``("key", key, value)``, ``("list", pid)`` (the
    ``/PNODE/<p>`` list), ``("data", pid, a, b)`` (``/PNODE/<p>/<v>`` for the
    a-th to b-th of p's vnodes in key order) and ``("vnode", a, b)``
    (``/VNODE/<v>`` for the a-th to b-th vnodes in key order).

    A run of decimal keys (all ``/VNODE/<v>``, or one pnode's
    ``/PNODE/<p>/<v>``) is walked in key order as a depth-first walk over
    decimal prefixes: a prefix ``y`` whose subtree (``y`` and every vnode
    number starting with it) holds about a block of the run's entries
    becomes one *unit*; larger prefixes are single keys and their children
    are walked. Units whose subtrees have the same owner pattern (and prefix
    length) are rendered once as a template and then, for each prefix, with
    one ``bytes.join`` (see :func:`_render`): a fresh ring of N vnodes over P
    pnodes has only P patterns, so no Python code runs per key.
    """

    def __init__(self, topo):
        from .jsenc import js_dumpb
        from .ring_writer import _meta_items

        self.topo = topo
        self.n = n = topo._n
        names, owner = topo._names, topo._owner
        if len(names) > 256:
            raise _Unsupported("more than 256 pnode ids")
        self.live = sorted((nm.encode("utf-8"), pid) for pid, nm in enumerate(names) if nm is not None)
        enc = [nm for nm, _pid in self.live]
        for a, b in zip(enc, enc[1:]):
            if b.startswith(a) and b[len(a):len(a) + 1] < b"/":
                raise _Unsupported("pnode %r is a prefix of %r" % (a, b))
        if owner.itemsize == 4 and sys.byteorder == "little":
            self.own_b = owner.tobytes()[::4]         # the low bytes: the pnode ids
        else:  # pragma: no cover
            self.own_b = array("B", owner).tobytes()
        self.counts = {pid: self.own_b.count(bytes([pid])) for _nm, pid in self.live}
        self.names = {pid: nm for nm, pid in self.live}
        self.pvals = [js_dumpb(nm) if nm is not None else b"null" for nm in names]
        self.denc = {v: js_dumpb(d) for v, d in topo._data.items()}
        meta = sorted(_meta_items(topo))
        pside = [("key", b"/PNODE", js_dumpb(topo.pnodes()))]
        for nm, pid in self.live:
            pside.append(("list", pid))
            if self.counts.get(pid):
                pside.append(("data", pid, 0, self.counts[pid]))
        vside = [("key", k, v) for k, v in meta if k < b"/VNODE/" and not k.startswith(b"/PNODE")]
        vside.append(("vnode", 0, n))
        vside += [("key", k, v) for k, v in meta if k > b"/VNODE/"]
        self.pside, self.vside = pside, vside

    # -------------------------------------------------------------- splitting
    @staticmethod
    def split(items, parts):
        """Cut ``items`` into ``parts`` chunks of about equal key counts (runs may be cut)."""
        def weight(it):
            return (it[3] - it[2]) if it[0] == "data" else (it[2] - it[1]) if it[0] == "vnode" else 1

        total = sum(weight(it) for it in items)
        target = max(1, -(-total // parts))
        chunks, cur, size = [], [], 0
        for it in items:
            while True:
                w = weight(it)
                room = target - size
                if w <= room or len(chunks) == parts - 1 or it[0] == "key" or it[0] == "list":
                    cur.append(it)
                    size += w
                    break
                if room > 0:
                    if it[0] == "data":
                        cur.append(("data", it[1], it[2], it[2] + room))
                        it = ("data", it[1], it[2] + room, it[3])
                    else:
                        cur.append(("vnode", it[1], it[1] + room))
                        it = ("vnode", it[1] + room, it[2])
                chunks.append(cur)
                cur, size = [], 0
            if size >= target and len(chunks) < parts - 1:
                chunks.append(cur)
                cur, size = [], 0
        if cur:
            chunks.append(cur)
        return [c for c in chunks if c]

    # -------------------------------------------------------------- rendering
    def _mask(self, pid):
        table = bytearray(256)
        table[pid] = 1
        return bytes(table)

    def asc_json(self, pid):
        """The ``/PNODE/<p>`` value: p's vnodes ascending, as a JSON list.

        Vnodes 1000k..1000k+999 are ``k`` followed by three digits, so each
        thousand renders as ``k.join(template)`` with the template cached by
        which of the thousand p owns.
        """
        n, sel = self.n, self.own_b.translate(self._mask(pid))
        head = [b"%d" % v for v in range(min(n, 1000)) if sel[v]]
        parts = [b",".join(head) + b","] if head else []
        cache = {}
        for k in range(1, -(-n // 1000)):
            m = sel[k * 1000:k * 1000 + 1000]
            t = cache.get(m)
            if t is None:
                t = [_D3[i] for i in compress(range(len(m)), m)]
                t = cache[m] = [b""] + t if t else None
                if len(cache) > TEMPLATE_CACHE:
                    cache.clear()
            if t is not None:
                parts.append((b"%d" % k).join(t))
        return b"[" + b"".join(parts)[:-1] + b"]"

    def run_units(self, pid):
        """The run of ``pid`` (None: the ``/VNODE/`` run) as ``(prefix, [(y, unit), ...])`` in key order."""
        n, ob, tag = self.n, self.own_b, TAG
        if pid is None:
            prefix = b"/VNODE/"
            count = n
            vlen = max(len(self.pvals[p]) for _nm, p in self.live)
            pvals = self.pvals
            mask = None
            dprefixes = ()
        else:
            prefix = b"/PNODE/" + self.names[pid] + b"/"
            count = self.counts.get(pid, 0)
            vlen = 1
            mask = self._mask(pid)
            denc = self.denc
            data = [b"%d" % v for v in denc if ob[v] == pid]
            dprefixes = {s[:j] for s in data for j in range(1, len(s) + 1)}
        out = []
        if not count:
            return prefix, out
        # keys (of all owners) in a subtree that make about UNIT_BYTES of this run's entries
        most = max(1, UNIT_BYTES * n // (count * (13 + vlen)))

        def value(v):
            return pvals[ob[v]] if pid is None else denc.get(v, _ONE)

        def selected(v):
            return pid is None or ob[v] == pid

        loose = [0] if selected(0) else []
        caches = {}
        stack = list(range(min(9, n - 1), 0, -1))
        pop, extend = stack.pop, stack.extend
        scales = [10 ** k for k in range(MAX_DEPTH + 1)]
        while stack:
            y = pop()
            c, lo, hi, d = 0, y, y + 1, -1
            while lo < n and c <= most:
                c += (hi if hi < n else n) - lo
                lo *= 10
                hi *= 10
                d += 1
            if c > most or d > MAX_DEPTH:     # too big for a unit: the key alone, then its children
                if selected(y):
                    loose.append(y)
                extend(range(min(10 * y + 9, n - 1), 10 * y - 1, -1))
                continue
            if loose:
                out.append((b"", _render([(b"%d" % v, value(v)) for v in loose], prefix, 0, tag)))
                loose = []
            ys = b"%d" % y
            key = b"".join([ob[y * s:(y + 1) * s] for s in scales[:d + 1]])
            if mask is not None:
                key = key.translate(mask)
                if dprefixes and ys in dprefixes:      # vnodes with data below: rendered for this prefix only
                    shape = _shape(d)
                    kr = shape.kr
                    idx = sorted(_find_all(key), key=shape.rank.__getitem__)
                    if idx:
                        out.append((ys, _render([(shape.rel[i], denc.get(y * kr[i][0] + kr[i][1], _ONE))
                                                 for i in idx], prefix, len(ys), tag)))
                    continue
            cache = caches.get(len(ys))
            if cache is None:
                cache = caches[len(ys)] = {}
            u = cache.get(key)
            if u is None:
                shape = _shape(d)
                if mask is None:
                    pairs = [shape.pairs(pv) for pv in pvals]
                    u = _render([pairs[key[i]][i] for i in shape.lex(len(key))], prefix, len(ys), tag)
                else:
                    idx = sorted(_find_all(key), key=shape.rank.__getitem__)
                    ones = shape.pairs(_ONE)
                    u = _render([ones[i] for i in idx], prefix, len(ys), tag) if idx else False
                if len(cache) >= TEMPLATE_CACHE:
                    cache.clear()
                cache[key] = u
            if u:
                out.append((ys, u))
        if loose:
            out.append((b"", _render([(b"%d" % v, value(v)) for v in loose], prefix, 0, tag)))
        return prefix, out

    def _write_run(self, w, pid, a, b):
        """Keys a to b (in key order) of the run of ``pid``."""
        prefix, units = self.run_units(pid)
        add = w.add_unit
        pos = 0
        for ys, u in units:
            end = pos + u.count
            if a <= pos and end <= b:
                add(prefix, ys, u)
            elif end > a and pos < b:       # the chunk starts or ends within this unit
                add(prefix, ys, _render(u.entries[max(0, a - pos):b - pos], prefix, len(ys), TAG))
            pos = end
            if pos >= b:
                break

    def write(self, items, path):
        with open(path, "wb", buffering=1 << 20) as fh:
            w = TableWriter(fh)
            for it in items:
                kind = it[0]
                if kind == "key":
                    w.add(it[1], it[2])
                elif kind == "list":
                    w.add(b"/PNODE/" + self.names[it[1]], self.asc_json(it[1]))
                elif kind == "data":
                    self._write_run(w, it[1], it[2], it[3])
                else:
                    self._write_run(w, None, it[1], it[2])
            return w.finish()


class _Unsupported(Exception):
    pass


def _build_child(fn, args, path):
    """Run fn(*args) in a forked child; returns (pid, read fd)."""
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            meta = fn(*args)
            msg = repr({"size": meta["size"], "smallest": meta["smallest"], "largest": meta["largest"]}).encode()
        except _Unsupported:
            msg, code = b"unsupported", 3
        except BaseException as exc:  # pragma: no cover
            msg, code = ("error %r" % (exc,)).encode(), 1
        try:
            os.write(wfd, msg)
            os.close(wfd)
        finally:
            os._exit(code)
    os.close(wfd)
    return pid, r


def _collect_child(pid, r):
    import ast
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    status = os.waitpid(pid, 0)[1]
    msg = b"".join(chunks)
    code = os.waitstatus_to_exitcode(status)
    if code == 3:
        raise _Unsupported(msg.decode())
    if code != 0:
        raise RingError("building ring table failed: %s" % msg.decode("utf-8", "replace"))
    return ast.literal_eval(msg.decode())


def _os_threads():
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _parallel_ok():
    """Fork only from a single-threaded process (LevelDB leaves a background thread behind once used)."""
    return (hasattr(os, "fork") and (os.cpu_count() or 1) > 1 and threading.active_count() == 1
            and _os_threads() == 1 and os.environ.get("MANTA_FASH_NO_FORK") != "1")


#: rings with fewer vnodes are written by one process
SPLIT_MIN_VNODES = 50000
#: tables for the /PNODE... keys and for the rest when 3 or more processes build them
SPLIT_PARTS = (2, 2)


def _idle_cpus():
    """CPUs not busy with other work, from the 1-minute load average."""
    cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        load = 0.0
    return max(1, min(cpus, int(cpus - load + 0.5)))


def _jobs_for(n):
    """``(pnode tables, other tables, processes)`` for a ring of n vnodes.

    Forking only pays when CPUs are idle: on a busy machine the children's
    copy-on-write faults cost more than the parallelism gains, so the tables
    are then built one after the other.
    """
    if n < SPLIT_MIN_VNODES:
        return 1, 1, 1
    procs = _idle_cpus()
    if os.environ.get("MANTA_FASH_PROCS", "").isdigit():
        procs = max(1, int(os.environ["MANTA_FASH_PROCS"]))
    if procs >= 3:
        return SPLIT_PARTS[0], SPLIT_PARTS[1], procs
    return 1, 1, procs


def write_ring(topo, path):
    """Write ``topo`` as a new LevelDB database at ``path`` (which must not exist). Falls back when unsupported."""
    from .ring_writer import _write_plyvel

    os.mkdir(path)
    try:
        layout = _RingLayout(topo)
    except _Unsupported:
        # pnode names whose keys interleave: let LevelDB sort them
        os.rmdir(path)
        return _write_plyvel(topo, path)
    kp, kv, procs = _jobs_for(topo._n)
    chunks = _RingLayout.split(layout.pside, kp) + _RingLayout.split(layout.vside, kv)
    files = [(2 + i, os.path.join(path, "%06d.ldb" % (2 + i))) for i in range(len(chunks))]
    metas = [None] * len(chunks)
    children = []
    try:
        if len(chunks) > 1 and procs > 1 and _parallel_ok():
            for i in range(1, len(chunks)):
                children.append((i,) + _build_child(layout.write, (chunks[i], files[i][1]), files[i][1]))
            metas[0] = layout.write(chunks[0], files[0][1])
        else:
            for i, chunk in enumerate(chunks):
                metas[i] = layout.write(chunk, files[i][1])
    finally:
        errors = []
        for i, pid, fd in children:
            try:
                metas[i] = _collect_child(pid, fd)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
        if errors:
            raise errors[0]
    level = _level_for(sum(m["size"] for m in metas))
    manifest = len(chunks) + 2
    edit = _version_edit([(level, num, m) for (num, _path), m in zip(files, metas)], next_file=manifest + 1,
                         last_seq=SEQUENCE)
    with open(os.path.join(path, "MANIFEST-%06d" % manifest), "wb") as fh:
        fh.write(_log_records(edit))
        fh.flush()
        os.fsync(fh.fileno())
    for _num, name in files:
        fd = os.open(name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    with open(os.path.join(path, "CURRENT"), "wb") as fh:
        fh.write(b"MANIFEST-%06d\n" % manifest)
        fh.flush()
        os.fsync(fh.fileno())
