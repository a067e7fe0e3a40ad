# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""LevelDB directories: opening with the ring's options, the lock, ``.sst`` names, private copies.

Opening never blocks: a ring held by another process (electric-moray,
``fash``) fails at once with :class:`RingLockedError` naming ``<path>/LOCK``.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import threading

try:
    import plyvel
except ImportError:  # pragma: no cover - reported when a ring is opened
    plyvel = None

from .errors import RingCorruptError, RingError, RingLockedError, RingNotFoundError

#: LevelDB options matching fash create (no Snappy compression, §4.1)
WRITE_BUFFER_SIZE = 64 << 20


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
