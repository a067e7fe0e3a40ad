# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Split plans: which vnodes of a shard to move so that rows (or bytes) end up balanced.

The reshard service moved every second vnode of the shard whatever the data
(reshard.md §3.2); RFD 103 picks vnodes by row count by hand. Here the choice
is a number-partitioning problem over the shard's vnodes, weighted by the
census:

* ``half``: two groups of equal weight (the shard keeps one, the new shard
  gets the other);
* ``fraction`` f: the new shard gets f of the weight, the shard keeps 1-f;
* ``shards`` N: N+1 groups of equal weight; the shard keeps the heaviest (so
  the fewest rows move) and each new shard gets one.

Algorithm: vnodes with weight, heaviest first, each to the group furthest
below its target (greedy LPT); then local search between the most-over and
most-under groups (single moves and swaps chosen by bisection) while the total
deviation from the targets shrinks. Vnodes with no rows are dealt out last so
that each group also gets its share of vnodes (future writes hash evenly over
vnodes). Ties break on vnode number, so a plan is deterministic.

:func:`evaluate` reports the same figures for an explicit vnode list.
"""
from __future__ import annotations

import bisect

from ansible_collections.manta.ops.plugins.module_utils.fash.vnodes import ranges

TARGETS = ("half", "fraction", "shards")
MEASURES = ("rows", "bytes")
MAX_NEW_SHARDS = 64
_MAX_ROUNDS = 200
_MAX_SWAP_CANDIDATES = 2000


class PlanError(ValueError):
    """The split request cannot be planned as asked; nothing was changed."""


def group_fractions(target, fraction=None, shards=None):
    """Target share of each group; group 0 is what stays on the shard."""
    if target == "half":
        return [0.5, 0.5]
    if target == "fraction":
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise PlanError(f"plan.fraction {fraction!r} is not valid for target=fraction; give the "
                            "share of the shard's rows to move, a number strictly between 0 and 1 "
                            "(e.g. 0.25)")
        return [1.0 - float(fraction), float(fraction)]
    if target == "shards":
        if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_NEW_SHARDS:
            raise PlanError(f"plan.new_shards {shards!r} is not valid for target=shards; give the number "
                            f"of new shards, an integer 1..{MAX_NEW_SHARDS} (the shard is split into "
                            "new_shards+1 equal parts)")
        return [1.0 / (shards + 1)] * (shards + 1)
    raise PlanError(f"plan.target {target!r} is not valid; valid targets: {', '.join(TARGETS)}")


class _Group:
    __slots__ = ("items", "load", "count")

    def __init__(self):
        self.items = []      # sorted [(weight, vnode)] of the weighted vnodes
        self.load = 0
        self.count = 0       # all vnodes, weighted or not

    def add(self, w, v):
        bisect.insort(self.items, (w, v))
        self.load += w
        self.count += 1

    def remove(self, w, v):
        i = bisect.bisect_left(self.items, (w, v))
        del self.items[i]
        self.load -= w
        self.count -= 1


def _closest(items, x):
    """Indices in sorted ``items`` whose weight is nearest ``x`` (at most two)."""
    i = bisect.bisect_left(items, (x, -1))
    return [j for j in (i - 1, i) if 0 <= j < len(items)]


def _gain(e_over, e_under, x):
    """Reduction of |over excess| + |under deficit| when net weight x moves over -> under."""
    return e_over + e_under - abs(e_over - x) - abs(e_under - x)


def _refine(groups, targets):
    for dummy in range(_MAX_ROUNDS):
        dev = [g.load - t for g, t in zip(groups, targets)]
        o = max(range(len(groups)), key=lambda i: (dev[i], -i))
        u = min(range(len(groups)), key=lambda i: (dev[i], i))
        e_o, e_u = dev[o], -dev[u]
        if e_o <= 0 or e_u <= 0:
            return
        go, gu = groups[o], groups[u]
        ideal = (e_o + e_u) / 2.0
        best = (0.0, None)
        for j in _closest(go.items, ideal):            # single move over -> under
            w = go.items[j][0]
            g = _gain(e_o, e_u, w)
            if g > best[0] + 1e-9:
                best = (g, ("move", go.items[j]))
        cand = gu.items
        if len(cand) > _MAX_SWAP_CANDIDATES:
            step = len(cand) / float(_MAX_SWAP_CANDIDATES)
            cand = [cand[int(k * step)] for k in range(_MAX_SWAP_CANDIDATES)]
        for wu, vu in cand:                              # swap: over gives wo, under gives wu
            for j in _closest(go.items, wu + ideal):
                wo = go.items[j][0]
                if wo <= wu:
                    continue
                g = _gain(e_o, e_u, wo - wu)
                if g > best[0] + 1e-9:
                    best = (g, ("swap", go.items[j], (wu, vu)))
        if best[1] is None:
            return
        if best[1][0] == "move":
            w, v = best[1][1]
            go.remove(w, v)
            gu.add(w, v)
        else:
            (wo, vo), (wu, vu) = best[1][1], best[1][2]
            go.remove(wo, vo)
            gu.remove(wu, vu)
            go.add(wu, vu)
            gu.add(wo, vo)


def partition(weights, vnodes, fractions):
    """Split ``vnodes`` into len(fractions) groups whose weights approach the fractions.

    ``weights`` maps vnode -> weight (missing = 0). Returns a list of sorted
    vnode lists, in the order of ``fractions``.
    """
    vnodes = sorted(set(vnodes))
    total = sum(max(0, int(weights.get(v, 0))) for v in vnodes)
    targets = [f * total for f in fractions]
    groups = [_Group() for dummy in fractions]
    zero = []
    weighted = []
    for v in vnodes:
        w = max(0, int(weights.get(v, 0)))
        (weighted if w > 0 else zero).append((w, v))
    weighted.sort(key=lambda wv: (-wv[0], wv[1]))
    k = len(groups)
    for w, v in weighted:
        if k == 2:
            g = 0 if targets[0] - groups[0].load >= targets[1] - groups[1].load else 1
        else:
            g = max(range(k), key=lambda i: (targets[i] - groups[i].load, -i))
        grp = groups[g]
        grp.items.append((w, v))        # sorted once below; insort here would be quadratic
        grp.load += w
        grp.count += 1
    for grp in groups:
        grp.items.sort()
    _refine(groups, targets)
    members = [[wv[1] for wv in g.items] for g in groups]
    n = len(vnodes)
    for dummy, v in zero:
        g = max(range(len(groups)), key=lambda i: (fractions[i] * n - groups[i].count, -i))
        groups[g].count += 1
        members[g].append(v)
    return [sorted(m) for m in members]


class Plan:
    """A split: group 0 stays on the shard, groups 1.. go to new shards."""

    def __init__(self, shard, groups, rows, nbytes, measure="rows", target="explicit",
                 fractions=None, fraction=None, new_shards=None):
        self.shard = shard
        self.groups = groups
        self.rows = rows
        self.bytes = nbytes
        self.measure = measure
        self.target = target
        self.fractions = fractions
        self.fraction = fraction
        self.new_shards = new_shards

    def _side(self, vnodes):
        r = sum(self.rows.get(v, 0) for v in vnodes)
        b = sum(self.bytes.get(v, 0) for v in vnodes)
        return r, b

    def to_result(self, list_limit=None):
        all_v = [v for g in self.groups for v in g]
        tot_r, tot_b = self._side(all_v)
        tot_m = tot_r if self.measure == "rows" else tot_b

        def share(r, b):
            m = r if self.measure == "rows" else b
            return round(m / tot_m, 6) if tot_m else 0.0

        sr, sb = self._side(self.groups[0])
        moves = []
        devs = []
        for i, g in enumerate(self.groups):
            r, b = self._side(g)
            if self.fractions:
                devs.append(abs(share(r, b) - self.fractions[i]))
            if i == 0:
                continue
            entry = {"new_shard": i, "vnode_count": len(g), "vnode_ranges": ranges(g),
                     "rows": r, "bytes": b, "share": share(r, b)}
            if self.fractions:
                entry["target_share"] = round(self.fractions[i], 6)
            if list_limit is None or len(g) <= list_limit:
                entry["vnodes"] = g
            moves.append(entry)
        out = {
            "shard": self.shard,
            "target": self.target,
            "balance": self.measure,
            "total": {"rows": tot_r, "bytes": tot_b, "vnodes": len(all_v)},
            "stay": {"rows": sr, "bytes": sb, "vnode_count": len(self.groups[0]),
                     "share": share(sr, sb)},
            "moves": moves,
            "rows_moved": sum(m["rows"] for m in moves),
            "bytes_moved": sum(m["bytes"] for m in moves),
        }
        if self.fractions:
            out["stay"]["target_share"] = round(self.fractions[0], 6)
            out["max_share_deviation"] = round(max(devs), 6) if devs else 0.0
        if self.fraction is not None:
            out["fraction"] = self.fraction
        if self.new_shards is not None:
            out["new_shards"] = self.new_shards
        if len(moves) == 1 and "vnodes" in moves[0]:
            out["vnodes"] = moves[0]["vnodes"]
        return out


def plan_split(shard, shard_vnodes, rows, nbytes=None, target="half", fraction=None, new_shards=None,
               measure="rows"):
    """A balanced :class:`Plan` for ``shard`` whose vnodes (per the ring) are ``shard_vnodes``.

    ``rows`` / ``nbytes`` map vnode -> rows / bytes (from the census).
    """
    if measure not in MEASURES:
        raise PlanError(f"plan.balance {measure!r} is not valid; valid: {', '.join(MEASURES)}")
    fractions = group_fractions(target, fraction, new_shards)
    nbytes = nbytes or {}
    if len(set(shard_vnodes)) < len(fractions):
        raise PlanError(f"shard {shard} owns {len(set(shard_vnodes))} vnode(s); it cannot be split into "
                        f"{len(fractions)} parts (each part needs at least one vnode)")
    weights = rows if measure == "rows" else nbytes
    groups = partition(weights, shard_vnodes, fractions)
    if target == "shards":
        # equal targets: keep the heaviest group on the shard, so the fewest rows move
        order = sorted(range(len(groups)),
                       key=lambda i: (-sum(weights.get(v, 0) for v in groups[i]), i))
        groups = [groups[i] for i in order]
    if any(not g for g in groups[1:]):
        raise PlanError(f"shard {shard}: the plan leaves a new shard with no vnodes; fewer new "
                        "shards or a larger fraction is needed")
    return Plan(shard, groups, rows, nbytes, measure=measure, target=target, fractions=fractions,
                fraction=fraction if target == "fraction" else None,
                new_shards=new_shards if target == "shards" else None)


def evaluate(shard, shard_vnodes, moved, rows, nbytes=None, measure="rows"):
    """The :class:`Plan` of an explicit list of vnodes to move (validated elsewhere)."""
    moved = sorted(set(moved))
    mset = set(moved)
    stay = sorted(v for v in set(shard_vnodes) if v not in mset)
    return Plan(shard, [stay, moved], rows, nbytes or {}, measure=measure, target="explicit")
