# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""In-memory ring topology and its JSON (de)serialization (reference/fash.md §3).

A :class:`Topology` is the whole ring in memory: the vnode -> pnode map (an
``array`` of pnode ids, so a 1,000,000-vnode ring costs 4 MB), the non-default
vnode data, the algorithm object and the pnode list in ``/PNODE`` order
(pnodes with no vnodes included). It is what check mode plans on, what
``diff_rings`` compares and what ``write_topology`` writes to LevelDB.

Serialization is deterministic and complete, unlike node-fash's LevelDB
serializer (§7 item 1): every vnode, pnodes in ring order, empty pnodes kept
as ``{}``. Deserialization validates that every vnode 0..N-1 appears exactly
once.
"""
from __future__ import annotations

import json
from array import array
from collections import Counter

from .errors import RingInputError, RingLookupError
from .hashing import (VERSION, Hasher, _hash_name, algorithm_record, check_version,
                      format_interval, parse_hex)
from .jsenc import is_no_data, js_dumps, js_key_order, js_sort_key
from .vnodes import check_pnode, check_pnodes, check_vnode_count, parse_vnodes

_UNSET = -1


def _pairs_no_dups(pairs):
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        for k, _v in pairs:
            if k in seen:
                raise RingInputError("JSON object has key %r more than once" % (k,))
            seen.add(k)
    return d


class Topology(object):
    """A complete ring in memory. Cheap to copy; mutators validate before changing anything."""

    __slots__ = ("_n", "_names", "_ids", "_owner", "_data", "algorithm", "_hasher", "version")

    def __init__(self, vnode_count, names, owner, data, algorithm, version=VERSION):
        self._n = vnode_count
        self._names = list(names)               # pnode id -> name (None once removed), in /PNODE order
        self._ids = {n: i for i, n in enumerate(self._names) if n is not None}
        self._owner = owner                     # array('i'): vnode -> pnode id
        self._data = dict(data)                 # vnode -> data, only data that is not 1
        self.algorithm = dict(algorithm)
        self._hasher = Hasher(self.algorithm["NAME"], parse_hex(self.algorithm["VNODE_HASH_INTERVAL"]), vnode_count)
        self.version = version

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, pnodes, vnodes, algorithm="sha256", strict_pnodes=False):
        """A new ring as ``fash create`` makes it: vnode v -> sorted(pnodes)[v % P].

        ``strict_pnodes`` also requires ``tcp://host:port`` names.
        """
        pnodes = check_pnodes(pnodes, strict=strict_pnodes)
        check_vnode_count(vnodes)
        algo = algorithm_record(algorithm, vnodes)
        ordered = sorted(pnodes, key=js_sort_key)
        names = js_key_order(ordered)           # /PNODE order (Object.keys of the sorted map)
        pos = {n: i for i, n in enumerate(names)}
        cycle = array("i", [pos[n] for n in ordered])
        reps = vnodes // len(cycle) + 1
        owner = (cycle * reps)[:vnodes]
        return cls(vnodes, names, owner, {}, algo)

    @classmethod
    def from_json(cls, text, strict_pnodes=False):
        """Parse a serialized ring (fash.md §3.1), validating it completely.

        Accepts str, bytes or an already-parsed dict. Raises
        :class:`RingInputError` naming what is wrong: missing fields, an
        unsupported algorithm or version, a vnode that is missing, repeated,
        out of range or not a decimal string.
        """
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8")
        if isinstance(text, str):
            try:
                obj = json.loads(text, object_pairs_hook=_pairs_no_dups)
            except RingInputError:
                raise
            except ValueError as exc:
                raise RingInputError("topology is not valid JSON: %s" % exc) from None
        else:
            obj = text
        if not isinstance(obj, dict):
            raise RingInputError("topology must be a JSON object with vnodes, pnodeToVnodeMap, algorithm, version")
        n = obj.get("vnodes")
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise RingInputError("topology field vnodes must be a positive integer, got %r" % (n,))
        pmap = obj.get("pnodeToVnodeMap")
        if not isinstance(pmap, dict):
            raise RingInputError("topology field pnodeToVnodeMap (object of pnode -> {vnode: data}) is required")
        algo = obj.get("algorithm")
        if not isinstance(algo, dict):
            raise RingInputError("topology field algorithm (object with NAME, MAX, VNODE_HASH_INTERVAL) is required")
        if "NAME" not in algo:
            raise RingInputError("topology field algorithm.NAME is required (sha256, sha1 or md5)")
        _hash_name(algo["NAME"])
        if "VNODE_HASH_INTERVAL" not in algo:
            raise RingInputError("topology field algorithm.VNODE_HASH_INTERVAL (hex) is required")
        interval = parse_hex(algo["VNODE_HASH_INTERVAL"], "algorithm.VNODE_HASH_INTERVAL")
        if interval <= 0:
            raise RingInputError("algorithm.VNODE_HASH_INTERVAL must be greater than zero")
        algo = dict(algo)
        algo["VNODE_HASH_INTERVAL"] = format_interval(interval)
        if "version" not in obj or not isinstance(obj["version"], str):
            raise RingInputError("topology field version (string, e.g. %r) is required" % VERSION)
        check_version(obj["version"])

        names = js_key_order(pmap.keys())
        owner = array("i", [_UNSET]) * n
        data = {}
        assigned = 0
        for pid, name in enumerate(names):
            check_pnode(name, strict_pnodes)
            vmap = pmap[name]
            if not isinstance(vmap, dict):
                raise RingInputError("pnodeToVnodeMap[%r] must be an object of vnode -> data" % (name,))
            for key, value in vmap.items():
                if not (key.isascii() and key.isdigit() and (key == "0" or key[0] != "0")):
                    raise RingInputError("pnodeToVnodeMap[%r] has vnode key %r, which is not a decimal integer"
                                         % (name, key))
                v = int(key)
                if v >= n:
                    raise RingInputError("pnodeToVnodeMap[%r] has vnode %d, out of range; valid vnodes are 0..%d"
                                         % (name, v, n - 1))
                if owner[v] != _UNSET:
                    raise RingInputError("vnode %d appears more than once: under %r and %r"
                                         % (v, names[owner[v]], name))
                owner[v] = pid
                if not is_no_data(value):
                    data[v] = value
            assigned += len(vmap)
        if assigned != n:
            missing = [v for v in range(n) if owner[v] == _UNSET]
            raise RingInputError("topology is missing %d of its %d vnodes (first missing: %s); every vnode "
                                 "0..%d must appear exactly once" % (len(missing), n, missing[:10], n - 1))
        return cls(n, names, owner, dict(sorted(data.items())), algo)

    # ------------------------------------------------------------------ serialization
    def to_json(self, include_empty=True):
        """The serialized ring as one line of JSON: every vnode, pnodes in ring order.

        ``include_empty=False`` omits pnodes that own no vnodes, which node-fash's
        ``deserialize-ring`` needs (it never completes on an empty pnode, §7 item 2).
        """
        buckets = self._buckets()
        parts = []
        data = self._data
        for pid, name in enumerate(self._names):
            if name is None:
                continue
            vs = buckets[pid]
            if not vs and not include_empty:
                continue
            if data:
                body = ",".join('"%d":%s' % (v, js_dumps(data[v])) if v in data else '"%d":1' % v for v in vs)
            else:
                body = ",".join(['"%d":1' % v for v in vs])
            parts.append("%s:{%s}" % (json.dumps(name, ensure_ascii=False), body))
        return '{"vnodes":%d,"pnodeToVnodeMap":{%s},"algorithm":%s,"version":%s}' % (
            self._n, ",".join(parts), js_dumps(self.algorithm), json.dumps(self.version))

    def to_dict(self, include_empty=True):
        return json.loads(self.to_json(include_empty))

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

    def pnodes(self):
        """Pnodes in ring (``/PNODE``) order, including those with no vnodes."""
        return [n for n in self._names if n is not None]

    def has_pnode(self, pnode):
        return pnode in self._ids

    def _pid(self, pnode):
        try:
            return self._ids[pnode]
        except (KeyError, TypeError):
            raise RingInputError("pnode %r is not in the ring; pnodes are: %s"
                                 % (pnode, ", ".join(self.pnodes()))) from None

    def _vnode(self, v):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < self._n:
            raise RingInputError("vnode %r is out of range; valid vnodes are 0..%d" % (v, self._n - 1))
        return v

    def pnode_of(self, v):
        return self._names[self._owner[self._vnode(v)]]

    def data_of(self, v):
        return self._data.get(self._vnode(v), 1)

    def vnode_of(self, key):
        """The vnode ``key`` hashes to (may equal vnode_count: fash does not clamp)."""
        return self._hasher.vnode_of(key)

    def get_node(self, key):
        """``(pnode, vnode, data)`` for a key, hashed as given (no Manta transform)."""
        v = self._hasher.vnode_of(key)
        if v >= self._n:
            raise RingLookupError("key %r hashes to vnode %d, past the last vnode %d (fash does not clamp)"
                                  % (key, v, self._n - 1))
        return self._names[self._owner[v]], v, self._data.get(v, 1)

    def vnodes_of(self, pnode):
        """The pnode's vnodes, ascending."""
        pid = self._pid(pnode)
        return [v for v, o in enumerate(self._owner) if o == pid]

    def counts(self):
        """``{pnode: number of vnodes}`` for every pnode, in ring order (0 for empty ones)."""
        c = Counter(self._owner)
        return {n: c.get(i, 0) for i, n in enumerate(self._names) if n is not None}

    def data_vnodes(self):
        """``{vnode: data}`` for every vnode whose data is not 1, ascending."""
        return dict(sorted(self._data.items()))

    def owners(self):
        """``list`` of pnode names indexed by vnode (a copy)."""
        names = self._names
        return [names[o] for o in self._owner]

    def _buckets(self):
        buckets = [[] for _n in self._names]
        for v, o in enumerate(self._owner):
            buckets[o].append(v)
        return buckets

    def copy(self):
        t = Topology.__new__(Topology)
        t._n = self._n
        t._names = list(self._names)
        t._ids = dict(self._ids)
        t._owner = array("i", self._owner)
        t._data = dict(self._data)
        t.algorithm = dict(self.algorithm)
        t._hasher = self._hasher
        t.version = self.version
        return t

    def __eq__(self, other):
        if not isinstance(other, Topology):
            return NotImplemented
        return (self._n == other._n and self.pnodes() == other.pnodes() and self.owners() == other.owners()
                and self.data_vnodes() == other.data_vnodes() and self.algorithm == other.algorithm)

    def __repr__(self):
        return "<Topology vnodes=%d pnodes=%s>" % (self._n, self.counts())

    # ------------------------------------------------------------------ mutations
    def remap(self, vnodes, pnode, strict=True, strict_pnode=True):
        """Move ``vnodes`` to ``pnode`` (created when new); data travels with them.

        With ``strict`` a vnode that already belongs to ``pnode`` is an error
        (as in node-fash); otherwise it is skipped. Returns the moved vnodes.
        """
        vs = parse_vnodes(vnodes, self._n)
        check_pnode(pnode, strict_pnode)
        pid = self._ids.get(pnode)
        owner = self._owner
        moved = []
        for v in vs:
            if owner[v] == pid:
                if strict:
                    raise RingInputError("vnode %d already belongs to pnode %s" % (v, pnode))
                continue
            moved.append(v)
        if moved:
            if pid is None:
                pid = len(self._names)
                self._names.append(pnode)
                self._ids[pnode] = pid
            for v in moved:
                owner[v] = pid
        return moved

    def set_data(self, vnodes, data):
        """Set ``data`` on ``vnodes`` (``None`` or ``1`` clears it). Returns the vnodes whose data changed."""
        vs = parse_vnodes(vnodes, self._n)
        clear = data is None or is_no_data(data)
        if not clear:
            js_dumps(data)  # must be JSON-serializable
        changed = []
        for v in vs:
            cur = self._data.get(v, 1)
            if clear:
                if v in self._data:
                    del self._data[v]
                    changed.append(v)
            elif not (type(cur) is type(data) and cur == data):
                self._data[v] = data
                changed.append(v)
        return changed

    def remove_pnode(self, pnode):
        """Remove a pnode that owns no vnodes; a pnode that still owns vnodes is refused."""
        pid = self._pid(pnode)
        count = self._owner.count(pid)
        if count:
            raise RingInputError("pnode %s still maps to %d vnodes; remap them to other pnodes before removing it"
                                 % (pnode, count))
        self._names[pid] = None
        del self._ids[pnode]

    def add_pnode(self, pnode, strict_pnode=True):
        """Add a pnode with no vnodes (it then appears in ``/PNODE``). No-op if present."""
        check_pnode(pnode, strict_pnode)
        if pnode not in self._ids:
            self._ids[pnode] = len(self._names)
            self._names.append(pnode)
