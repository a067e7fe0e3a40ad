# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Validation of vnode lists and pnode names, and compact range formatting."""
from __future__ import annotations

import re

from .errors import RingInputError

_PNODE_RE = re.compile(
    r"tcp://(?P<host>[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\])"
    r":(?P<port>[0-9]{1,5})\Z")
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_SPLIT_RE = re.compile(r"[,\s]+")


def pnode_problem(pnode):
    """Why ``pnode`` is not a valid Manta pnode (``tcp://host:port``), or None."""
    if not isinstance(pnode, str):
        return "pnode %r is not a string; expected tcp://<host>:<port>" % (pnode,)
    m = _PNODE_RE.match(pnode)
    if not m:
        return ("pnode %r is not of the form tcp://<host>:<port> "
                "(e.g. tcp://1.moray.example.com:2020)" % (pnode,))
    port = int(m.group("port"))
    if not 1 <= port <= 65535:
        return "pnode %r has port %d; valid ports are 1-65535" % (pnode, port)
    return None


def check_pnode(pnode, strict=True):
    """Raise :class:`RingInputError` for a bad pnode name.

    With ``strict`` the name must be ``tcp://host:port`` (what electric-moray
    needs); otherwise any non-empty string is accepted (as node-fash does).
    """
    if strict:
        problem = pnode_problem(pnode)
        if problem:
            raise RingInputError(problem)
    elif not isinstance(pnode, str) or not pnode:
        raise RingInputError("pnode %r must be a non-empty string" % (pnode,))
    return pnode


def check_pnodes(pnodes, strict=True):
    """Validate a list of new pnodes: non-empty, each valid, no duplicates."""
    if isinstance(pnodes, str):
        pnodes = split_list(pnodes)
    pnodes = list(pnodes or [])
    if not pnodes:
        raise RingInputError("pnodes: at least one pnode is required (e.g. tcp://1.moray.example.com:2020)")
    seen = set()
    for p in pnodes:
        check_pnode(p, strict)
        if p in seen:
            raise RingInputError("pnode %r is listed more than once; pnodes must be unique" % (p,))
        seen.add(p)
    return pnodes


def check_vnode_count(vnodes):
    if isinstance(vnodes, bool) or not isinstance(vnodes, int):
        raise RingInputError("vnodes %r is not an integer; the vnode count must be a positive integer" % (vnodes,))
    if vnodes < 1:
        raise RingInputError("vnodes %r is out of range; the vnode count must be at least 1" % (vnodes,))
    return vnodes


def split_list(text):
    """Split a CLI list (``"0, 3,6 ,9"``) on commas and whitespace, dropping empty pieces."""
    return [p for p in _SPLIT_RE.split(text.strip()) if p]


def parse_vnode(item, vnode_count=None):
    """One vnode from an int or a decimal string; raise naming the item."""
    if isinstance(item, bool):
        raise RingInputError("vnode %r is not an integer" % (item,))
    if isinstance(item, int):
        v = item
    elif isinstance(item, str) and _INT_RE.match(item.strip()):
        v = int(item.strip())
    elif isinstance(item, float) and item.is_integer():
        v = int(item)
    else:
        raise RingInputError("vnode %r is not an integer; vnodes are integers 0..N-1" % (item,))
    if v < 0 or (vnode_count is not None and v >= vnode_count):
        if vnode_count is None:
            raise RingInputError("vnode %d is out of range; vnodes are >= 0" % v)
        raise RingInputError("vnode %d is out of range; valid vnodes are 0..%d" % (v, vnode_count - 1))
    return v


def parse_vnodes(items, vnode_count=None, allow_duplicates=False):
    """Validate a vnode list (ints, decimal strings, ``"a-b"`` ranges, or a CLI string).

    Returns a list of ints in the given order. Raises :class:`RingInputError`
    naming the first bad item: not an integer, out of range, or duplicated.
    """
    if isinstance(items, str):
        items = split_list(items)
    elif isinstance(items, int) and not isinstance(items, bool):
        items = [items]
    fast = _fast_vnodes(items, vnode_count, allow_duplicates)
    if fast is not None:
        return fast
    out = []
    for item in items:
        if isinstance(item, str) and "-" in item.strip()[1:]:
            lo, _sep, hi = item.strip().partition("-")
            a, b = parse_vnode(lo, vnode_count), parse_vnode(hi, vnode_count)
            if b < a:
                raise RingInputError("vnode range %r is reversed; write low-high" % (item,))
            out.extend(range(a, b + 1))
        else:
            out.append(parse_vnode(item, vnode_count))
    if not allow_duplicates and len(set(out)) != len(out):
        seen = set()
        for v in out:
            if v in seen:
                raise RingInputError("vnode %d is listed more than once; each vnode may appear once" % v)
            seen.add(v)
    return out


def _fast_vnodes(items, vnode_count, allow_duplicates):
    """C-speed validation of long, clean lists (ints, or plain decimal strings); None to take the slow path."""
    if not isinstance(items, (list, tuple)) or len(items) < 64:
        return None
    kinds = set(map(type, items))
    if kinds == {int}:
        out = list(items)
    elif kinds == {str}:
        joined = "".join(items)
        if not (joined.isascii() and joined.isdigit()) or "" in items:
            return None
        out = list(map(int, items))
    else:
        return None
    if min(out) < 0 or (vnode_count is not None and max(out) >= vnode_count):
        return None                         # the slow path names the offending vnode
    if not allow_duplicates and len(set(out)) != len(out):
        return None
    return out


def ranges(vnodes):
    """Compact text of a vnode set: ``[0,1,2,3,7,9,10]`` -> ``"0-3,7,9-10"``."""
    vs = sorted(set(vnodes))
    parts = []
    i = 0
    n = len(vs)
    while i < n:
        j = i
        while j + 1 < n and vs[j + 1] == vs[j] + 1:
            j += 1
        parts.append(str(vs[i]) if i == j else "%d-%d" % (vs[i], vs[j]))
        i = j + 1
    return ",".join(parts)
