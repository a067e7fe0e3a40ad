# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Read-only queries on a ring, as the ``fash_ring_info`` module answers them."""
from __future__ import annotations

import contextlib
import os

from ..errors import RingInputError
from ..dbfiles import is_ring_dir, snapshot_ring
from ..leveldb_store import open_ring
from ..routing import route
from ..topology import Topology
from ..vnodes import ranges
from .diff import as_topology, diff_rings


@contextlib.contextmanager
def open_any(path, snapshot=True):
    """A LevelRing (directory) or a Topology (JSON file) for read-only queries."""
    if os.path.isdir(path):
        if not is_ring_dir(path):
            raise RingInputError("path %s is a directory without a LevelDB ring (no CURRENT file)" % path)
        if snapshot:
            with snapshot_ring(path) as copy:
                with open_ring(copy, readonly=True) as ring:
                    yield ring
        else:
            with open_ring(path, readonly=True) as ring:
                yield ring
    elif os.path.isfile(path):
        with open(path, "rb") as fh:
            yield Topology.from_json(fh.read())
    else:
        raise RingInputError("path %s is neither a ring directory nor a JSON topology file" % path)


def ring_info(path, pnode=None, keys=None, paths=None, bucket="manta", compare_to=None,
              diff_vnodes=False, snapshot=True, verify=False):
    """Facts about a ring plus the answers to the requested queries."""
    out = {}
    with open_any(path, snapshot=snapshot) as ring:
        is_level = not isinstance(ring, Topology)
        counts = ring.pnode_counts() if is_level else ring.counts()
        out.update({
            "vnode_count": ring.vnode_count,
            "algorithm": dict(ring.algorithm),
            "version": ring.version,
            "pnodes": list(counts),
            "pnode_counts": counts,
        })
        data = ring.data_vnodes()
        out["data_vnodes"] = {str(v): d for v, d in data.items()}
        out["read_only_vnodes"] = ranges(v for v, d in data.items() if d == "ro")
        if pnode is not None:
            vs = ring.vnodes_of(pnode)
            out["vnodes"] = sorted(vs)
            out["vnode_ranges"] = ranges(vs)
        nodes = []
        for key in keys or []:
            p, v, d = ring.get_node(key)
            nodes.append({"key": key, "hashed": key, "pnode": p, "vnode": v, "data": d})
        for mpath in paths or []:
            r = route(ring, bucket, mpath)
            nodes.append({"key": mpath, "bucket": bucket, "hashed": r["hashed"], "pnode": r["pnode"],
                          "vnode": r["vnode"], "data": r["data"], "read_only": r["read_only"]})
        if keys or paths:
            out["nodes"] = nodes
        if verify:
            out["problems"] = ring.verify() if is_level else []
        if compare_to is not None:
            mine = ring.topology() if is_level else ring
            with open_any(compare_to, snapshot=snapshot) as other:
                out["diff"] = diff_rings(mine, as_topology(other), with_vnodes=diff_vnodes)
    return out
