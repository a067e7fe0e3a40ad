# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Declarative ring changes, as the ``fash_ring`` module makes them.

The desired state is planned on an in-memory :class:`Topology` (a copy of
the ring, or a new one), which gives check mode its answer and the diff; only
then, and only outside check mode, are the same operations applied to the
LevelDB ring inside one transaction (one write batch).
"""
from __future__ import annotations

import os

from ..errors import RingError, RingInputError
from ..hashing import normalize_algorithm
from ..jsenc import js_dumps
from ..dbfiles import is_ring_dir, snapshot_ring
from ..leveldb_store import open_ring
from ..ring_writer import write_topology
from ..topology import Topology
from ..vnodes import check_pnode, parse_vnodes, ranges
from .diff import diff_rings, summarize_diff


class RingSpec(object):
    """What the caller wants. Every field is optional except ``path``."""

    def __init__(self, path, vnodes=None, pnodes=None, algorithm=None, remap=None, data=None,
                 absent_pnodes=None, src=None, dest=None, sst=False, strict_pnodes=True):
        self.path = path
        self.vnodes = vnodes
        self.pnodes = pnodes
        self.algorithm = algorithm
        self.remap = remap or []          # [{"vnodes": ..., "pnode": ...}]
        self.data = data or []            # [{"vnodes": ..., "value": "ro" | None}]
        self.absent_pnodes = absent_pnodes or []
        self.src = src                    # JSON topology file to import
        self.dest = dest                  # JSON file to export to
        self.sst = sst
        self.strict_pnodes = strict_pnodes


def _load_src(src):
    try:
        with open(src, "rb") as fh:
            text = fh.read()
    except OSError as exc:
        raise RingInputError("src %s cannot be read: %s" % (src, exc.strerror)) from None
    try:
        return Topology.from_json(text)
    except RingInputError as exc:
        raise RingInputError("src %s: %s" % (src, exc)) from None


def _actions_towards(before, target, strict_pnodes):
    """Operations turning ``before`` into ``target`` (same vnode count and hashing)."""
    if before.vnode_count != target.vnode_count:
        raise RingInputError("src has %d vnodes but the ring has %d; a ring's vnode count cannot change"
                             % (target.vnode_count, before.vnode_count))
    if before.interval != target.interval or before.algorithm_name != target.algorithm_name:
        raise RingInputError("src uses a different algorithm or VNODE_HASH_INTERVAL than the ring; "
                             "hashing cannot change in place")
    d = diff_rings(before, target)
    actions = []
    by_dst = {}
    for m in d["moved"]:
        by_dst.setdefault(m["to"], []).extend(m["vnodes"])
    for dst, vs in by_dst.items():
        check_pnode(dst, strict_pnodes)
        actions.append(("remap", sorted(vs), dst))
    for g in d["data"]:
        actions.append(("set_data", g["vnodes"], None if g["after"] == 1 else g["after"]))
    for p in d["pnodes_removed"]:
        actions.append(("remove_pnode", p))
    return actions


def plan(spec, before):
    """Plan ``spec`` against ``before`` (a Topology, or None when there is no ring).

    Returns ``(after, actions, create, warnings)``: the desired Topology,
    the operations to apply to an existing ring in order, whether a new
    ring must be written, and warnings for the caller. Raises :class:`RingInputError` on bad input or an
    impossible request, before anything is written.
    """
    warnings = []
    create = before is None
    if create:
        if spec.src:
            after = _load_src(spec.src)
            if spec.vnodes is not None and spec.vnodes != after.vnode_count:
                raise RingInputError("vnodes %d does not match src's %d vnodes" % (spec.vnodes, after.vnode_count))
        elif spec.vnodes is not None and spec.pnodes:
            after = Topology.create(spec.pnodes, spec.vnodes, spec.algorithm or "sha256",
                                    strict_pnodes=spec.strict_pnodes)
        else:
            raise RingInputError("there is no ring at %s; to create one give vnodes and pnodes (or src, a JSON "
                                 "topology to import)" % spec.path)
        for p in after.pnodes():
            check_pnode(p, spec.strict_pnodes)
        actions = []
    else:
        after = before.copy()
        if spec.vnodes is not None and spec.vnodes != before.vnode_count:
            raise RingInputError("vnodes %d does not match the existing ring at %s, which has %d vnodes; a "
                                 "ring's vnode count cannot change" % (spec.vnodes, spec.path, before.vnode_count))
        if spec.algorithm and normalize_algorithm(spec.algorithm) != before.algorithm_name:
            raise RingInputError("algorithm %s does not match the existing ring's %s"
                                 % (spec.algorithm, before.algorithm_name))
        if spec.pnodes:
            missing = [p for p in spec.pnodes if not before.has_pnode(p)]
            if missing:
                warnings.append("pnodes %s are not in the existing ring; pnodes are only used to create a ring "
                                "(remap vnodes to add a pnode)" % ", ".join(missing))
        actions = []
        if spec.src:
            target = _load_src(spec.src)
            actions.extend(_actions_towards(before, target, spec.strict_pnodes))
            for act in actions:
                _apply(after, act)
    n = after.vnode_count
    # validate every request before applying any
    remaps = []
    for i, item in enumerate(spec.remap):
        pnode = item.get("pnode")
        try:
            check_pnode(pnode, spec.strict_pnodes)
            vs = parse_vnodes(item.get("vnodes", []), n)
        except RingInputError as exc:
            raise RingInputError("remap[%d]: %s" % (i, exc)) from None
        remaps.append((vs, pnode))
    datas = []
    for i, item in enumerate(spec.data):
        try:
            vs = parse_vnodes(item.get("vnodes", []), n)
        except RingInputError as exc:
            raise RingInputError("data[%d]: %s" % (i, exc)) from None
        value = item.get("value")
        if value is not None:
            try:
                js_dumps(value)
            except (TypeError, ValueError):
                raise RingInputError("data[%d]: value %r is not JSON-serializable" % (i, value)) from None
        datas.append((vs, value))
    for p in spec.absent_pnodes:
        if not isinstance(p, str) or not p:
            raise RingInputError("absent_pnodes: %r is not a pnode name" % (p,))
    for vs, pnode in remaps:
        moved = after.remap(vs, pnode, strict=False, strict_pnode=spec.strict_pnodes)
        if moved and not create:
            actions.append(("remap", moved, pnode))
    for vs, value in datas:
        changed = after.set_data(vs, value)
        if changed and not create:
            actions.append(("set_data", changed, value))
    for p in spec.absent_pnodes:
        if after.has_pnode(p):
            left = after.counts()[p]
            if left:
                raise RingInputError("absent_pnodes: pnode %s still has %d vnodes after the requested remaps; "
                                     "remap them to other pnodes first" % (p, left))
            after.remove_pnode(p)
            if not create:
                actions.append(("remove_pnode", p))
    return after, actions, create, warnings


def _apply(target, action):
    kind = action[0]
    if kind == "remap":
        target.remap(action[1], action[2], strict=False, strict_pnode=False)
    elif kind == "set_data":
        target.set_data(action[1], action[2])
    elif kind == "remove_pnode":
        target.remove_pnode(action[1])
    else:  # pragma: no cover
        raise RingError("unknown action %r" % (kind,))


def describe(topo, path):
    """A few lines describing a ring, for before/after diffs."""
    if topo is None:
        return "ring %s: absent\n" % path
    lines = ["ring %s: %d vnodes, %s" % (path, topo.vnode_count, topo.algorithm_name)]
    for p, c in topo.counts().items():
        lines.append("  pnode %s: %d vnodes" % (p, c))
    data = topo.data_vnodes()
    groups = {}
    for v, d in data.items():
        groups.setdefault(js_dumps(d), []).append(v)
    for d, vs in sorted(groups.items()):
        text = ranges(vs)
        lines.append("  data %s: %d vnodes (%s)" % (d, len(vs), text if len(text) < 160 else text[:160] + "..."))
    return "\n".join(lines) + "\n"


def apply_spec(spec, check_mode=False):
    """Plan and (outside check mode) apply ``spec``. Returns the module result dict."""
    path = spec.path
    exists = os.path.isdir(path) and is_ring_dir(path)
    if not exists and os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise RingInputError("path %s exists but holds no ring (no LevelDB CURRENT file)" % path)
    result = {"changed": False, "ring": path}
    ring = None
    try:
        if exists:
            if check_mode:
                # copy-on-check: read a private copy; the ring is not even opened
                with snapshot_ring(path) as copy:
                    with open_ring(copy, readonly=True) as snap:
                        before = snap.topology()
            else:
                ring = open_ring(path)
                before = ring.topology()
        else:
            before = None
        after, actions, create, warnings = plan(spec, before)
        if before is None:
            d = None
            changed = True
        else:
            d = diff_rings(before, after, with_vnodes=False)
            changed = bool(actions)
        if changed and not check_mode:
            if create:
                write_topology(after, path, sst=spec.sst, strict_pnodes=spec.strict_pnodes)
            else:
                with ring.transaction():
                    for act in actions:
                        kind = act[0]
                        if kind == "remap":
                            ring.remap(act[1], act[2], strict=False, strict_pnode=spec.strict_pnodes)
                        elif kind == "set_data":
                            ring.set_data(act[1], act[2])
                        else:
                            ring.remove_pnode(act[1])
    finally:
        if ring is not None:
            ring.close()
    exported = False
    if spec.dest:
        text = after.to_json() + "\n"
        try:
            with open(spec.dest, "r", encoding="utf-8") as fh:
                same = fh.read() == text
        except OSError:
            same = False
        if not same:
            exported = True
            changed = True
            if not check_mode:
                tmp = spec.dest + ".tmp-%d" % os.getpid()
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(text)
                os.replace(tmp, spec.dest)
    result.update({
        "changed": changed,
        "created": create,
        "exported": exported,
        "vnode_count": after.vnode_count,
        "pnodes": after.counts(),
        "data_vnodes": len(after.data_vnodes()),
        "actions": [_action_summary(a) for a in actions] if not create else [{"action": "create"}],
        "ring_diff": d,
        "warnings": warnings,
        "diff": {"before": describe(before, path),
                 "after": describe(after, path) + "".join(
                     "  " + line + "\n" for line in (summarize_diff(d) if d else []))},
    })
    return result


def _action_summary(action):
    kind = action[0]
    if kind == "remap":
        text = ranges(action[1])
        return {"action": "remap", "pnode": action[2], "count": len(action[1]),
                "ranges": text if len(text) <= 300 else text[:300] + "..."}
    if kind == "set_data":
        text = ranges(action[1])
        return {"action": "set_data", "value": action[2], "count": len(action[1]),
                "ranges": text if len(text) <= 300 else text[:300] + "..."}
    return {"action": "remove_pnode", "pnode": action[1]}
