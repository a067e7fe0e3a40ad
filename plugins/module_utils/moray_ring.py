# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Vnode ownership for row work: read the ring, name shards as pnodes, validate vnode lists.

* :func:`load` reads a ring from a LevelDB directory (the format electric-moray
  and ``fash`` use; read through a private snapshot, so the ring is never
  touched or locked) or from a serialized JSON topology file (``fash
  serialize-ring``), with the collection's fash library.
* :func:`pnode` maps a shard name to its ring pnode, ``tcp://<shard>:2020``;
  a name that is already ``tcp://...`` is used as is.
* :func:`parse_vnodes` validates an operator's vnode list (integers, decimal
  strings, ``"a-b"`` ranges) against the ring's vnode count.
* :func:`require_owned` / :func:`require_not_owned` enforce the ownership
  rules, naming the first offending vnode and its real owner.
"""
from __future__ import annotations

import os

from ansible_collections.manta.ops.plugins.module_utils.fash.errors import RingError
from ansible_collections.manta.ops.plugins.module_utils.fash.vnodes import parse_vnodes as _parse
from ansible_collections.manta.ops.plugins.module_utils.fash.vnodes import ranges

MORAY_PORT = 2020


class OwnershipError(ValueError):
    """A vnode list does not fit the ring; nothing was changed."""


def load(path):
    """A fash Topology for the ring at ``path`` (LevelDB directory or JSON file)."""
    from ansible_collections.manta.ops.plugins.module_utils.fash.topology import Topology
    if not path:
        raise OwnershipError("no ring given: the ring option must name a LevelDB ring directory "
                             "or a serialized ring (JSON) file")
    path = os.fspath(path)
    try:
        if os.path.isdir(path):
            from ansible_collections.manta.ops.plugins.module_utils.fash import read_topology
            return read_topology(path, snapshot=True)
        if not os.path.exists(path):
            raise OwnershipError(f"ring {path} does not exist; give a LevelDB ring directory "
                                 "(e.g. electric-moray's ring-location) or a serialized ring JSON file")
        with open(path, "rb") as fh:
            return Topology.from_json(fh.read())
    except RingError as exc:
        raise OwnershipError(f"cannot read ring {path}: {exc}") from None
    except OSError as exc:
        raise OwnershipError(f"cannot read ring {path}: {exc}") from None


def pnode(shard):
    if shard.startswith("tcp://"):
        return shard
    return f"tcp://{shard}:{MORAY_PORT}"


def require_shard(topology, shard, ring_path, what="shard"):
    """The shard's pnode, or an 'unknown shard' error listing the ring's pnodes."""
    p = pnode(shard)
    if not topology.has_pnode(p):
        raise OwnershipError(f"unknown {what} {shard}: ring {ring_path} has no pnode {p}; "
                             f"its pnodes are: {', '.join(topology.pnodes())}")
    return p


def parse_vnodes(items, topology=None, what="vnodes"):
    """Sorted unique vnode ints. Raises OwnershipError naming the bad item and the valid range."""
    if items is None or (isinstance(items, (list, tuple, str)) and len(items) == 0):
        raise OwnershipError(f"{what} is empty; give at least one vnode (integers"
                             + (f" 0..{topology.vnode_count - 1}" if topology else "") + ")")
    if isinstance(items, bool) or not isinstance(items, (list, tuple, str, int)):
        raise OwnershipError(f"{what} {items!r} is not a list of vnodes; give a list of integers "
                             "or \"low-high\" ranges, or a string like \"0-99,120\"")
    try:
        vs = _parse(items, topology.vnode_count if topology else None)
    except RingError as exc:
        raise OwnershipError(f"{what}: {exc}") from None
    return sorted(vs)


def owners(topology, vnodes):
    """{pnode: [vnodes]} for the given vnodes."""
    out = {}
    for v in vnodes:
        out.setdefault(topology.pnode_of(v), []).append(v)
    return out


def require_owned(topology, vnodes, shard, ring_path, why):
    """Every vnode must belong to ``shard`` in the ring."""
    p = pnode(shard)
    mine = set(topology.vnodes_of(p))
    bad = [v for v in vnodes if v not in mine]
    if bad:
        v = bad[0]
        raise OwnershipError(
            f"vnode {v} is owned by {topology.pnode_of(v)}, not by {shard} ({p}), in ring "
            f"{ring_path}" + (f" ({len(bad)} listed vnodes are not: {_short(bad)})" if len(bad) > 1 else "")
            + f"; {why}. {shard} owns {len(mine)} vnodes: {_short(sorted(mine))}")
    return p


def require_not_owned(topology, vnodes, shard, ring_path):
    """No vnode may belong to ``shard`` (their rows there are live data)."""
    p = pnode(shard)
    mine = set(topology.vnodes_of(p))
    bad = [v for v in vnodes if v in mine]
    if bad:
        raise OwnershipError(
            f"vnode {bad[0]} is owned by {shard} ({p}) in ring {ring_path}"
            + (f" (so are {len(bad) - 1} more listed vnodes: {_short(bad)})" if len(bad) > 1 else "")
            + f": its rows on {shard} are live data and are never deleted. Only rows of vnodes "
            "the ring assigns to another shard can be deleted from a shard")
    return p


def _short(vnodes, limit=12):
    text = ranges(vnodes)
    parts = text.split(",")
    if len(parts) > limit:
        return ",".join(parts[:limit]) + f",... ({len(vnodes)} vnodes)"
    return text
