# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""The node-fash consistent-hash ring, in Python, byte-compatible with node-fash 3.0.x.

Public API (see docs/fash.md)::

    create_ring(path, pnodes, vnodes, algorithm="sha256", sst=False) -> None
    open_ring(path, readonly=False) -> LevelRing          # context manager, holds the LevelDB lock
    LevelRing: get_node(key) -> (pnode, vnode, data), vnode_of(key), pnodes(), vnodes_of(p),
               data_vnodes(), vnode_count, remap(vnodes, p), set_data(vnodes, data_or_None),
               remove_pnode(p), topology(), transaction(), verify(), close()
    Topology: create(pnodes, vnodes, algorithm), from_json(text), to_json(), vnode_count,
              pnode_of(v), data_of(v), get_node(key), pnodes(), vnodes_of(p), ...
    write_topology(topology, path, sst=False), read_topology(path)
    transform_key(bucket, key), node_for_path(ring_or_topology, bucket, key)
    diff_rings(a, b) -> dict
    RingError, RingLockedError, RingInputError (+ RingCorruptError, RingNotFoundError,
    RingExistsError, RingLookupError)
"""
from __future__ import annotations

from .errors import (RingCorruptError, RingError, RingExistsError, RingInputError,
                     RingLockedError, RingLookupError, RingNotFoundError)
from .hashing import (ALGORITHM_NAMES, VERSION, Hasher, algorithm_record, check_version,
                      compute_interval, format_interval, normalize_algorithm, vnode_for_key)
from .dbfiles import dump_ring, is_ring_dir, make_sst, snapshot_ring
from .leveldb_store import LevelRing, open_ring, read_topology
from .ring_writer import create_ring, write_topology
from .ops.diff import diff_rings, node_style_diff, summarize_diff
from .routing import node_dirname, node_for_path, route, transform_key
from .topology import Topology
from .vnodes import check_pnode, parse_vnodes, ranges

__all__ = [
    "ALGORITHM_NAMES", "VERSION", "Hasher", "LevelRing", "RingCorruptError", "RingError",
    "RingExistsError", "RingInputError", "RingLockedError", "RingLookupError", "RingNotFoundError",
    "Topology", "algorithm_record", "check_pnode", "check_version", "compute_interval",
    "create_ring", "diff_rings", "dump_ring", "format_interval", "is_ring_dir", "make_sst", "node_dirname",
    "node_for_path", "node_style_diff", "normalize_algorithm", "open_ring", "parse_vnodes",
    "ranges", "read_topology", "route", "snapshot_ring", "summarize_diff", "transform_key", "vnode_for_key",
    "write_topology",
]
