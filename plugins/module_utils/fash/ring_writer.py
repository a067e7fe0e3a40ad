# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Writing a new ring: ``create_ring`` and ``write_topology`` (fash create / deserialize-ring).

The ring is built in a temporary directory beside the target and renamed
into place, so it appears whole or not at all. The direct table writer
(:mod:`.sstable`) is used when available; otherwise keys go through plyvel
write batches, pipelined with a writer thread, then compacted into tables.
"""
from __future__ import annotations

import os
import queue
import shutil
import threading

from .dbfiles import _need_plyvel, _open_db, is_ring_dir, rename_tables_to_sst
from .errors import RingError, RingExistsError, RingInputError
from .jsenc import js_dumpb
from .keys import (K_ALGORITHM, K_COMPLETE, K_PNODE, K_VERSION, K_VNODE_COUNT, K_VNODE_DATA, ONE as _ONE,
                   VNODE_PREFIX, int_list_json, pnode_key)
from .topology import Topology
from .vnodes import check_pnode


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
    name = os.path.basename(os.path.abspath(path))
    tmp = os.path.join(parent, ".%s.fash-tmp-%d-%d" % (name, os.getpid(), threading.get_ident() % 100000))
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
