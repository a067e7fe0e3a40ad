# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Write a new LevelDB ring directly as table files (no log, no memtable, no compaction).

A LevelDB database is a CURRENT file naming a MANIFEST, the MANIFEST (a log
of version edits: comparator, file numbers, last sequence, and the table
files of each level) and immutable table files. A fresh ring is a known,
sorted key set, so it can be laid out directly as tables in the LevelDB table
format (uncompressed 4 KiB blocks with restart points and masked CRC32C
trailers, an index block, an empty metaindex block and the 48-byte footer),
which is several times faster than pushing 2,000,000 keys through LevelDB's
write path. The result is an ordinary LevelDB database: every LevelDB from
1.x on (node-fash's 1.20, mantav1's 1.11 with ``.sst`` names, plyvel's) reads
it, and the interop tests compare its key/value dump with node-fash's.

Layout: the ``/PNODE...`` keys in one table and ``/VNODE/...`` plus the
upper-case keys in another, both at the lowest level whose size budget they
fit (so opening the ring triggers no compaction). With more than one CPU and
no other threads, the two tables are built in parallel (a forked child builds
the first).

Needs the ``crc32c`` package (hardware CRC32C); without it callers fall back
to writing through plyvel.
"""
from __future__ import annotations

import os
import struct
import sys
import threading
from array import array
from collections import Counter
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
RESTART_INTERVAL = 32          # LevelDB writes 16; readers take any interval
SLICE = 65536                 # keys built per step (a multiple of RESTART_INTERVAL)
MAX_FAST_SUFFIX = 64          # suffixes at least this long take the slow path
COMPARATOR = b"leveldb.BytewiseComparator"
TABLE_MAGIC = struct.pack("<Q", 0xDB4775248B80FB57)
MASK_DELTA = 0xA282EAD8
K_TYPE_VALUE = 1
SEQUENCE = 1
LOG_BLOCK_SIZE = 32768

_ONE = b"1"


def available():
    return _crc32c_fn is not None


def masked_crc(data):
    c = _crc32c_fn(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + MASK_DELTA) & 0xFFFFFFFF


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_V = [varint(i) for i in range(1024)]


def _var(n):
    return _V[n] if n < 1024 else varint(n)


def _u32_array(values):
    a = array("I", values)
    if a.itemsize != 4:  # pragma: no cover
        a = array("L", values)
    if sys.byteorder != "little":  # pragma: no cover
        a.byteswap()
    return a.tobytes()


class TableWriter(object):
    """Append sorted runs of keys to one LevelDB table file."""

    def __init__(self, fh):
        self.fh = fh
        self.offset = 0
        self.tag = struct.pack("<Q", (SEQUENCE << 8) | K_TYPE_VALUE)
        self.groups = []
        self.restarts = []
        self.block_len = 0
        self.index = []
        self.first_key = None
        self.last_key = None

    def _write_block(self, contents):
        trailer = b"\x00" + struct.pack("<I", masked_crc(contents + b"\x00"))
        self.fh.write(contents)
        self.fh.write(trailer)
        handle = (self.offset, len(contents))
        self.offset += len(contents) + 5
        return handle

    def _flush(self):
        if not self.groups:
            return
        contents = b"".join(self.groups) + _u32_array(self.restarts) + struct.pack("<I", len(self.restarts))
        handle = self._write_block(contents)
        self.index.append((self.last_key + self.tag, handle))
        self.groups = []
        self.restarts = []
        self.block_len = 0

    def add_run(self, prefix, suffixes, values=None, value_ids=None, const=None):
        """Keys ``prefix + s`` for ``s`` in ``suffixes`` (sorted, all after the previous keys).

        Values: ``const`` for all, or ``values[value_ids[k]]`` for the k-th key.
        Entries are prefix-compressed on ``prefix`` with a restart point every
        32 keys (the first of each group spells the whole key). The run is
        built slice by slice so memory is reused; per entry, only one list
        comprehension step runs in Python.
        """
        n = len(suffixes)
        if not n:
            return
        tag = self.tag
        plen = len(prefix)
        vp = _var(plen)
        table, ids = ([const], None) if const is not None else (values, value_ids)
        if self.first_key is None:
            self.first_key = prefix + suffixes[0]
        tvt = [tag + v for v in table]
        # entry heads by (value, suffix length): non-restart and restart (whole key) forms
        pre = [[vp + _var(ls + 8) + _var(len(v)) for ls in range(MAX_FAST_SUFFIX)] for v in table]
        full = [[b"\x00" + _var(plen + ls + 8) + _var(len(v)) + prefix for ls in range(MAX_FAST_SUFFIX)]
                for v in table]
        groups, restarts, block_len = self.groups, self.restarts, self.block_len
        for a in range(0, n, SLICE):
            sfx = suffixes[a:a + SLICE]
            if max(map(len, sfx)) >= MAX_FAST_SUFFIX:
                heads = self._slow_heads(prefix, sfx, table, None if ids is None else ids[a:a + SLICE], const)
                join = b"".join
            elif ids is None:
                p0, f0 = pre[0], full[0]
                heads = [p0[len(x)] + x for x in sfx]
                heads[::RESTART_INTERVAL] = [f0[len(x)] + x for x in sfx[::RESTART_INTERVAL]]
                tv = tvt[0]

                def join(part, tv=tv):
                    return tv.join(part) + tv
            else:
                gids = ids[a:a + SLICE]
                if len(table) == 1 or len({len(v) for v in table}) == 1:
                    p0 = pre[0]
                    heads = [p0[len(x)] + x + tvt[j] for x, j in zip(sfx, gids)]
                else:
                    heads = [pre[j][len(x)] + x + tvt[j] for x, j in zip(sfx, gids)]
                heads[::RESTART_INTERVAL] = [full[j][len(x)] + x + tvt[j] for x, j in
                                             zip(sfx[::RESTART_INTERVAL], gids[::RESTART_INTERVAL])]
                join = b"".join
            m = len(heads)
            for g in range(0, m, RESTART_INTERVAL):
                blob = join(heads[g:g + RESTART_INTERVAL])
                restarts.append(block_len)
                groups.append(blob)
                block_len += len(blob)
                if block_len >= BLOCK_SIZE:
                    self.last_key = prefix + sfx[min(g + RESTART_INTERVAL, m) - 1]
                    self.block_len = block_len
                    self._flush()
                    groups, restarts, block_len = self.groups, self.restarts, 0
        self.block_len = block_len
        self.last_key = prefix + suffixes[-1]

    def _slow_heads(self, prefix, sfx, table, ids, const):
        """Whole entries (value included) for suffixes of any length."""
        tag, plen, vp = self.tag, len(prefix), _var(len(prefix))
        out = []
        for k, x in enumerate(sfx):
            v = const if ids is None else table[ids[k]]
            if k % RESTART_INTERVAL == 0:
                out.append(b"\x00" + _var(plen + len(x) + 8) + _var(len(v)) + prefix + x + tag + v)
            else:
                out.append(vp + _var(len(x) + 8) + _var(len(v)) + x + tag + v)
        return out

    def add(self, key, value):
        self.add_run(key, [b""], const=value)

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
        contents = b"".join(parts) + _u32_array(restarts or [0]) + struct.pack("<I", len(restarts or [0]))
        idx = self._write_block(contents)
        handles = _var(meta[0]) + _var(meta[1]) + _var(idx[0]) + _var(idx[1])
        footer = handles + b"\x00" * (40 - len(handles)) + TABLE_MAGIC
        self.fh.write(footer)
        self.offset += len(footer)
        return {"size": self.offset, "smallest": self.first_key + self.tag, "largest": self.last_key + self.tag}


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
class _RingLayout(object):
    """The sorted key stream of a ring as splittable items, and how to render each into a table.

    Items, in key order: ``("key", key, value)``, ``("list", pid)`` (the
    ``/PNODE/<p>`` list), ``("data", pid, a, b)`` (``/PNODE/<p>/<v>`` for the
    a-th to b-th of p's vnodes in key order) and ``("vnode", a, b)``
    (``/VNODE/<v>`` for the a-th to b-th vnodes in key order).
    """

    def __init__(self, topo):
        from .jsenc import js_dumpb
        from .ring_writer import _meta_items

        self.topo = topo
        n = topo._n
        names, owner = topo._names, topo._owner
        self.live = sorted((nm.encode("utf-8"), pid) for pid, nm in enumerate(names) if nm is not None)
        enc = [nm for nm, _pid in self.live]
        for a, b in zip(enc, enc[1:]):
            if b.startswith(a) and b[len(a):len(a) + 1] < b"/":
                raise _Unsupported("pnode %r is a prefix of %r" % (a, b))
        self.dec = [b"%d" % v for v in range(n)]                  # numeric order
        self.strs = sorted(self.dec)                               # key (bytewise) order
        if len(names) <= 255:
            self.own_b = array("B", owner).tobytes()
            counts = {pid: self.own_b.count(pid) for _nm, pid in self.live}
        else:
            self.own_b = None
            counts = Counter(owner)
        self.pvals = [js_dumpb(nm) if nm is not None else b"null" for nm in names]
        self.denc = {b"%d" % v: js_dumpb(d) for v, d in topo._data.items()}
        self._lex = {}
        self._num = {}
        self._asc = None
        meta = sorted(_meta_items(topo))
        pside = [("key", b"/PNODE", js_dumpb(topo.pnodes()))]
        for nm, pid in self.live:
            pside.append(("list", pid))
            if counts.get(pid):
                pside.append(("data", pid, 0, counts[pid]))
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

    def _numeric_bucket(self, pid):
        """p's vnodes as decimal bytes, ascending."""
        b = self._num.get(pid)
        if b is None:
            if self.own_b is not None:
                b = list(compress(self.dec, self.own_b.translate(self._mask(pid))))
            else:
                if self._asc is None:
                    self._asc = self.topo._buckets()
                b = [self.dec[v] for v in self._asc[pid]]
            self._num[pid] = b
        return b

    def lex_bucket(self, pid):
        """p's vnodes as decimal bytes, in key order."""
        b = self._lex.get(pid)
        if b is None:
            b = self._lex[pid] = sorted(self._numeric_bucket(pid))
        return b

    def asc_json(self, pid):
        """The ``/PNODE/<p>`` value: p's vnodes ascending, as JSON."""
        return b"[" + b",".join(self._numeric_bucket(pid)) + b"]"

    def owners(self, a, b):
        """Pnode ids of the a-th to b-th vnodes in key order."""
        return list(map(self.topo._owner.__getitem__, map(int, self.strs[a:b])))

    def write(self, items, path):
        names = {pid: nm for nm, pid in self.live}
        with open(path, "wb", buffering=1 << 20) as fh:
            w = TableWriter(fh)
            for it in items:
                kind = it[0]
                if kind == "key":
                    w.add(it[1], it[2])
                elif kind == "list":
                    w.add(b"/PNODE/" + names[it[1]], self.asc_json(it[1]))
                elif kind == "data":
                    sfx = self.lex_bucket(it[1])[it[2]:it[3]]
                    prefix = b"/PNODE/" + names[it[1]] + b"/"
                    denc = self.denc
                    if denc and any(s in denc for s in sfx):
                        table, pos, ids = [_ONE], {_ONE: 0}, []
                        for s in sfx:
                            d = denc.get(s, _ONE)
                            j = pos.get(d)
                            if j is None:
                                j = pos[d] = len(table)
                                table.append(d)
                            ids.append(j)
                        w.add_run(prefix, sfx, values=table, value_ids=ids)
                    else:
                        w.add_run(prefix, sfx, const=_ONE)
                else:
                    a, b = it[1], it[2]
                    w.add_run(b"/VNODE/", self.strs[a:b], values=self.pvals, value_ids=self.owners(a, b))
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
