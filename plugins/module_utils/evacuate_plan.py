# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Where each copy goes, and where it is read from.

Rules for one copy of an object on evacuated node N (reference/evacuate.md §3.5,
§8, and what the rebalancer got wrong in §7.3):

* never a node that already holds a copy of the object (including N, the
  other evacuated nodes, and the destinations already chosen for the
  object's other copies);
* never a datacenter that already holds a copy, unless it is N's own
  datacenter (so the object's datacenter spread never gets worse);
* capacity-aware: a destination takes a copy only while its used bytes plus
  what this job has placed on it stay under ``max_fill_percent`` of its size
  (every byte is charged, not floored MiB);
* spread: within the allowed datacenters, N's own datacenter first (the copy
  count per datacenter stays the same and the traffic stays inside the
  datacenter), then the others; inside a tier the destination with the
  lowest fill of its headroom wins, so bytes spread over every eligible
  node in proportion to its free space. Snaplinked keys of the same file and
  copies retried after an interrupted round go back to the same destination
  when still eligible, so the file is not fetched twice.
* per round, each destination takes at most its share (objects and bytes a
  round can move at its throttle); what does not fit waits for the next
  round instead of being skipped.

Sources, in order (the copy falls back along the list): by default the other
copies (those in the destination's datacenter first), then the evacuated
node itself (it is healthy, only read-only), then other evacuated nodes.
"""
from __future__ import annotations

import heapq
import json
import zlib

INF = float("inf")
SOURCE_PREFERENCES = ("other_copy", "evacuated_node", "same_datacenter")


class Dest:
    __slots__ = ("id", "dc", "url", "headroom", "planned_bytes", "planned_objects",
                 "round_bytes_limit", "round_objects_limit", "round_bytes", "round_objects",
                 "before")

    def __init__(self, storage_id, dc, headroom, url=None, round_bytes_limit=INF,
                 round_objects_limit=INF, before=None):
        self.id = storage_id
        self.dc = dc
        self.url = url
        self.headroom = max(0, int(headroom))
        self.planned_bytes = 0
        self.planned_objects = 0
        self.round_bytes_limit = round_bytes_limit
        self.round_objects_limit = round_objects_limit
        self.round_bytes = 0
        self.round_objects = 0
        self.before = before or {}

    def key(self):
        return self.planned_bytes / float(self.headroom or 1)

    def fits(self, size):
        return self.planned_bytes + size <= self.headroom

    def round_full(self):
        return (self.round_objects >= self.round_objects_limit
                or self.round_bytes >= self.round_bytes_limit)

    def take(self, size):
        self.planned_bytes += size
        self.planned_objects += 1
        self.round_bytes += size
        self.round_objects += 1


def parse_sharks(text):
    """[[dc, id], ...] from the job store's compact form (or Manta's dict form)."""
    if not text:
        return []
    v = json.loads(text) if isinstance(text, str) else text
    out = []
    for s in v or []:
        if isinstance(s, dict):
            out.append((s.get("datacenter"), s.get("manta_storage_id")))
        else:
            out.append((s[0], s[1]))
    return out


class Planner:
    """Greedy placement over per-datacenter heaps of destinations.

    ``evac``: {storage_id: datacenter} of every evacuated node.
    ``node_dcs``: {storage_id: datacenter} of every node known (for sources).
    """

    def __init__(self, dests, evac, same_datacenter=False, source_preference="other_copy",
                 node_dcs=None):
        if source_preference not in SOURCE_PREFERENCES:
            raise ValueError(f"source_preference must be one of {', '.join(SOURCE_PREFERENCES)}, "
                             f"got {source_preference!r}")
        self.dests = {d.id: d for d in dests}
        self.evac = dict(evac)
        self.same_dc = bool(same_datacenter)
        self.source_pref = source_preference
        self.node_dcs = dict(node_dcs or {})
        self.node_dcs.update(self.evac)
        for d in dests:
            self.node_dcs[d.id] = d.dc
        self.heaps = {}
        self.exhausted = set()
        self._seq = 0
        for d in dests:
            self._push(d)
        self.group_dest = {}          # (path_owner, object_id, node) -> dest id this run
        self.stats = {"assigned": 0, "deferred": 0, "skipped": {}}

    def _push(self, d):
        self._seq += 1
        heapq.heappush(self.heaps.setdefault(d.dc, []), (d.key(), self._seq, d.id))

    @property
    def all_exhausted(self):
        return len(self.exhausted) >= len(self.dests)

    # -- one copy ------------------------------------------------------------------------
    def _eligible(self, d, holders, allowed_dcs, size):
        return (d.id not in holders and d.id not in self.evac and d.dc in allowed_dcs
                and d.fits(size) and d.id not in self.exhausted)

    def _pop_best(self, dcs, holders, allowed, size, why):
        """Best eligible destination over the heaps of ``dcs``; ineligible entries are
        put back afterwards. ``why`` counts rejections."""
        best = None
        aside = []
        for dc in dcs:
            h = self.heaps.get(dc) or []
            while h:
                k, seq, did = heapq.heappop(h)
                d = self.dests[did]
                if did in self.exhausted:
                    continue            # dropped for this round
                if abs(k - d.key()) > 1e-12:
                    continue            # stale entry (a newer one is in the heap)
                if did in holders:
                    why["held"] += 1
                    aside.append(d)
                    continue
                if not d.fits(size):
                    why["space"] += 1
                    aside.append(d)
                    continue
                if best is None or d.key() < best.key():
                    if best is not None:
                        aside.append(best)
                    best = d
                else:
                    aside.append(d)
                break
        for d in aside:
            self._push(d)
        return best

    def place(self, row, planned_siblings=None):
        """Place one copy. ``row``: dict with oid, key, node, object_id, path_owner,
        size, sharks (compact text or list), dest (preferred), siblings (JSON list of
        [node, dest, status] of the same key's other evacuated copies).

        Returns ("assign", dest_id, [source ids]) | ("skip", reason, detail) | ("defer",).
        """
        node = row["node"]
        node_dc = self.evac.get(node) or self.node_dcs.get(node)
        size = int(row.get("size") or 0)
        sharks = parse_sharks(row.get("sharks"))
        eff = list(sharks)
        sib = row.get("siblings")
        if isinstance(sib, str):
            sib = json.loads(sib)
        for snode, sdest, sstatus in (sib or []):
            if sdest and sstatus in ("assigned", "copied", "done"):
                eff = [(self.node_dcs.get(sdest), sdest) if i == snode else (dc, i) for dc, i in eff]
                if sdest not in [i for dummy, i in eff]:
                    eff.append((self.node_dcs.get(sdest), sdest))
        for snode, sdest in (planned_siblings or {}).items():
            eff = [(self.node_dcs.get(sdest), sdest) if i == snode else (dc, i) for dc, i in eff]
        holders = {i for dummy, i in eff}
        held_dcs = {dc for dc, i in eff if i != node}
        all_dcs = set(self.heaps) | {d.dc for d in self.dests.values()}
        if self.same_dc:
            allowed = {node_dc}
        else:
            allowed = {node_dc} | (all_dcs - held_dcs)

        def take(d):
            d.take(size)
            self._push(d)
            if d.round_full():
                self.exhausted.add(d.id)
            self.group_dest[(row.get("path_owner"), row.get("object_id"), node)] = d.id
            self.stats["assigned"] += 1
            return ("assign", d.id, self.sources(row, d, eff))

        # 1. where this file already is or is going
        for pref in (row.get("dest"),
                     self.group_dest.get((row.get("path_owner"), row.get("object_id"), node))):
            d = self.dests.get(pref) if pref else None
            if d is not None and self._eligible(d, holders, allowed, size):
                return take(d)
        # 2. own datacenter, then the other allowed ones
        why = {"held": 0, "space": 0}
        tiers = [[node_dc]] if node_dc in allowed else []
        others = sorted(dc for dc in allowed if dc != node_dc)
        if others:
            tiers.append(others)
        for dcs in tiers:
            d = self._pop_best(dcs, holders, allowed, size, why)
            if d is not None:
                return take(d)
        # 3. nothing: wait for the next round, or skip with the most telling reason
        for did in self.exhausted:
            d = self.dests[did]
            if did not in holders and did not in self.evac and d.dc in allowed and d.fits(size):
                self.stats["deferred"] += 1
                return ("defer",)
        in_allowed = [d for d in self.dests.values() if d.dc in allowed]
        if self.same_dc and not in_allowed:
            reason = "no_destination_in_datacenter"
            detail = f"same_datacenter: no eligible destination in {node_dc}"
        elif why["space"] or any(not d.fits(size) for d in in_allowed if d.id not in holders):
            reason = "destination_insufficient_space"
            detail = (f"{size} bytes do not fit under max_fill_percent on any eligible "
                      f"destination in {', '.join(sorted(map(str, allowed)))}")
        elif in_allowed:
            reason = "object_already_on_dest_shark"
            detail = f"every destination in {', '.join(sorted(map(str, allowed)))} holds a copy"
        elif self.dests:
            reason = "object_already_in_datacenter"
            detail = (f"copies already in {', '.join(sorted(map(str, held_dcs)))}; the only "
                      f"destinations are there and {node_dc} has none")
        else:
            reason = "no_destination_in_datacenter"
            detail = "no destination at all"
        self.stats["skipped"][reason] = self.stats["skipped"].get(reason, 0) + 1
        return ("skip", reason, detail)

    def sources(self, row, dest, eff):
        """Source storage ids for a copy to ``dest``, best first."""
        node = row["node"]
        others = [i for dc, i in eff if i != node and i not in self.evac and i != dest.id]
        other_evac = [i for dc, i in eff if i != node and i in self.evac]
        same = [i for i in others if self.node_dcs.get(i) == dest.dc]
        rest = [i for i in others if i not in same]
        if self.source_pref == "other_copy":
            order = same + rest + [node] + other_evac
        elif self.source_pref == "evacuated_node":
            order = [node] + same + rest + other_evac
        else:
            local = [i for i in [node] + other_evac + others if self.node_dcs.get(i) == dest.dc]
            order = local + [i for i in same + rest + [node] + other_evac if i not in local]
        seen, out = set(), []
        for i in order:
            if i and i not in seen:
                seen.add(i)
                out.append(i)
        return out


def plan_rows(planner, rows):
    """Place a batch of rows ordered by (path_owner, object_id, shard, key, node).

    Returns (assignments, skips, deferred): assignments are (row, dest, sources),
    skips (row, reason, detail). Copies of the same key are placed together so
    that they never share a node or (outside their own datacenters) a datacenter.
    """
    assignments, skips, deferred = [], [], []
    i = 0
    n = len(rows)
    while i < n:
        j = i + 1
        while j < n and rows[j]["shard"] == rows[i]["shard"] and rows[j]["key"] == rows[i]["key"]:
            j += 1
        planned = {}
        for row in rows[i:j]:
            res = planner.place(row, planned_siblings=planned)
            if res[0] == "assign":
                planned[row["node"]] = res[1]
                assignments.append((row, res[1], res[2]))
            elif res[0] == "skip":
                skips.append((row, res[1], res[2]))
            else:
                deferred.append(row)
        i = j
    return assignments, skips, deferred


def stable_hash(text):
    return zlib.crc32(text.encode()) & 0xFFFFFFFF


def fill_report(dests):
    """Per destination: bytes and objects planned, fill before and after."""
    out = {}
    for d in dests:
        total = d.before.get("total") or 0
        used = d.before.get("used") or 0
        out[d.id] = {
            "datacenter": d.dc, "objects": d.planned_objects, "bytes": d.planned_bytes,
            "percent_used_before": round(100.0 * used / total, 2) if total else None,
            "percent_used_after": round(100.0 * (used + d.planned_bytes) / total, 2) if total else None,
            "headroom_bytes": d.headroom,
        }
    return out
