#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: reshard_rows
short_description: Count, delete and verify the rows each side of a reshard no longer owns
version_added: 0.1.0
description:
  - After the final ring is in, the old shard still holds the rows of the moved vnodes and the new shard holds a
    copy of every other row of the old shard. This module removes them (reshard.md section 4, RFD 103 step 12).
  - On the old shard the ghost vnodes are the moving vnodes; on the new shard, every vnode present that is not a
    moving vnode. Both shards are processed at the same time, each over O(connections) direct connections to its
    primary (from ZooKeeper).
  - Tables are every moray table with a C(_vnode) column, C(manta_directory_counts) first (libmanta's trigger on
    C(manta) updates it, and does nothing once its row is gone). Rows are deleted per vnode in batches of
    O(batch_size) by primary key, sleeping O(pause) after each non-empty batch, until a batch deletes nothing.
  - Each finished table is journaled, so a re-run resumes at the first unfinished table (the delete itself is
    idempotent). Progress (rows deleted, rate) is journaled every few seconds.
  - Then it verifies that no ghost vnode has a row left in any table; any row left fails the task.
  - Both clusters must be frozen (by this plan, with O(freeze_reason)) while rows are deleted, as manta-reshard
    required.
  - V(counted) (and check mode) only counts what would be deleted.
options:
  state:
    description: V(deleted) deletes and verifies; V(counted) counts only.
    type: str
    choices: [deleted, counted]
    default: deleted
  plan:
    description: The plan id.
    type: str
    required: true
  shard:
    description: The old shard.
    type: str
    required: true
  new_shard:
    description: The new shard.
    type: str
    required: true
  vnodes:
    description: The moving vnodes (list, ranges text, or the journal's packed form).
    type: raw
    required: true
  freeze_reason:
    description: The freeze both clusters must carry; V(null) skips the check.
    type: str
  batch_size:
    description: Rows per DELETE.
    type: int
    default: 1000
  pause:
    description: Seconds to sleep after a non-empty batch, per connection.
    type: float
    default: 0.05
  connections:
    description: Connections per shard (vnodes deleted in parallel).
    type: int
    default: 4
  poll_for:
    description: Return after this many seconds with RV(done) false (for a heartbeat loop); 0 runs to the end.
    type: float
    default: 0
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.zookeeper
  - manta.ops.zookeeper.manatee_postgres
attributes:
  check_mode:
    support: full
    details: Counts the rows that would be deleted.
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - manta.ops developers
"""

EXAMPLES = r"""
- name: Delete on each side the rows it no longer owns
  manta.ops.reshard_rows:
    plan: "{{ plan }}"
    shard: 1.moray.example.com
    new_shard: 3.moray.example.com
    vnodes: "0,106,943"
    freeze_reason: "reshard plan {{ plan }}"
"""

RETURN = r"""
done:
  description: Both sides deleted and verified.
  returned: always
  type: bool
sides:
  description: Per shard, the ghost vnodes, rows to delete (or deleted) per table, rate, leftovers.
  returned: always
  type: dict
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import manatee_state as ms
from ansible_collections.manta.ops.plugins.module_utils import reshard_common as rc
from ansible_collections.manta.ops.plugins.module_utils import reshard_journal as rj
from ansible_collections.manta.ops.plugins.module_utils import reshard_rows as rr
from ansible_collections.manta.ops.plugins.module_utils.manatee_pg import pg_argument_spec
from ansible_collections.manta.ops.plugins.module_utils.zk import (
    Zk, ZkError, require_kazoo, zk_argument_spec)


def main():
    spec = zk_argument_spec()
    spec.update(pg_argument_spec())
    spec.update(state=dict(type="str", default="deleted", choices=["deleted", "counted"]),
                plan=dict(type="str", required=True), shard=dict(type="str", required=True),
                new_shard=dict(type="str", required=True), vnodes=dict(type="raw", required=True),
                freeze_reason=dict(type="str"), batch_size=dict(type="int", default=1000),
                pause=dict(type="float", default=0.05), connections=dict(type="int", default=4),
                poll_for=dict(type="float", default=0))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_kazoo(module)
    p = module.params
    if p["batch_size"] < 1 or p["connections"] < 1 or p["pause"] < 0:
        module.fail_json(msg="batch_size and connections must be >= 1 and pause >= 0")
    pg_opts = {"user": p["pg_user"], "password": p["pg_password"]}
    moving = set(rj.unpack_vnodes(p["vnodes"]))
    res = {"changed": False, "done": False, "sides": {}}
    count_only = module.check_mode or p["state"] == "counted"
    try:
        with Zk(p["zk_servers"], p["zk_timeout"]) as zk:
            j = rj.Journal(zk, p["plan"], check_mode=module.check_mode)
            dstate = dict(j.props.get("delete") or {})
            lock = threading.Lock()
            sides = {}
            for shard in (p["shard"], p["new_shard"]):
                try:
                    st, _ = ms.load(zk, shard)
                except ms.StateMissing:
                    if count_only:
                        sides[shard] = {"skipped": f"{shard} has no state yet"}
                        continue
                    raise
                fr = ms.freeze_info(st)
                if p["freeze_reason"] and not count_only and (not fr["frozen"] or fr["reason"] != p["freeze_reason"]):
                    module.fail_json(msg=f"{shard} must be frozen by this plan ({p['freeze_reason']!r}) while "
                                         f"its rows are deleted; it is "
                                         f"{'frozen: ' + str(fr['reason']) if fr['frozen'] else 'not frozen'}",
                                     **res)
                sides[shard] = {"primary": st["primary"]["pgUrl"]}
            for shard, side in sides.items():
                if "primary" not in side:
                    continue
                conn = rc.pg_connect(side["primary"], query_timeout=600, **pg_opts)
                try:
                    tables = rr.sharded_tables(conn)
                    if shard == p["shard"]:
                        ghosts = sorted(moving)
                    else:
                        ghosts = sorted(rr.vnodes_present(conn, tables) - moving)
                    cen = rr.census(conn, tables, with_bytes=False)
                finally:
                    conn.close()
                gset = set(ghosts)
                side["per_table"] = {t: sorted(v for v in cen["tables"][t] if v in gset) for t in tables}
                side.update(tables=tables, ghosts=len(ghosts), ghost_list=ghosts,
                            to_delete={t: sum(n for v, (n, _b) in cen["tables"][t].items() if v in set(ghosts))
                                       for t in tables})
                side["rows_to_delete"] = sum(side["to_delete"].values())
                done_tables = (dstate.get(shard) or {}).get("tables_done") or []
                side["tables_done"] = list(done_tables)
            if count_only:
                for s in sides.values():
                    s.pop("ghost_list", None)
                    s.pop("per_table", None)
                res["sides"] = sides
                res["changed"] = any(s.get("rows_to_delete") for s in sides.values())
                module.exit_json(**res)

            stop = threading.Event()
            progress = {}

            def report(shard, doc):
                with lock:
                    progress[shard] = doc
                    text = "; ".join(f"{s}: {d['deleted']} rows deleted "
                                     f"({d.get('rows_per_second') or 0:.0f}/s) in {d.get('table')}"
                                     for s, d in progress.items())
                try:
                    j.set_props({"progress": {"phase": "delete_data", "text": text, "at": rj.now_iso(),
                                              "sides": dict(progress)}})
                except Exception:  # noqa: BLE001 - progress is best effort
                    pass

            def table_done(shard, table):
                with lock:
                    cur = dict(j.props.get("delete") or {})
                    s = dict(cur.get(shard) or {})
                    s["tables_done"] = sorted(set(s.get("tables_done") or []) | {table})
                    cur[shard] = s
                    j.set_props({"delete": cur}, event=f"delete_data: {shard} table {table} done")

            def run_side(shard, side):
                if not side["ghost_list"]:
                    return {}
                d = rr.Deleter(lambda: rc.pg_connect(side["primary"], query_timeout=600, **pg_opts),
                               side["ghost_list"], p["batch_size"], p["pause"], p["connections"],
                               progress=lambda doc, s=shard: report(s, doc),
                               done_tables=side["tables_done"],
                               on_table_done=lambda t, s=shard: table_done(s, t), stop=stop,
                               per_table=side["per_table"])
                t0 = time.monotonic()
                out = d.run(side["tables"])
                side["deleted"] = out
                side["seconds"] = round(time.monotonic() - t0, 3)
                return out

            timer = None
            if p["poll_for"] > 0:
                timer = threading.Timer(p["poll_for"], stop.set)
                timer.start()
            t0 = time.monotonic()
            with ThreadPoolExecutor(max_workers=2) as ex:
                futs = [ex.submit(run_side, s, side) for s, side in sides.items()]
                for f in futs:
                    f.result()
            if timer:
                timer.cancel()
            res["changed"] = any(sum((s.get("deleted") or {}).values()) for s in sides.values())
            if stop.is_set():
                for s in sides.values():
                    s.pop("ghost_list", None)
                    s.pop("per_table", None)
                res["sides"] = sides
                module.exit_json(**res)
            # verify (reshard.md section 4 step 5)
            problems = []
            for shard, side in sides.items():
                conn = rc.pg_connect(side["primary"], query_timeout=600, **pg_opts)
                try:
                    left = rr.leftovers(conn, side["tables"], side["ghost_list"])
                finally:
                    conn.close()
                side["leftovers"] = left[:50]
                if left:
                    problems.append(f"{shard}: rows left after the delete in {len(left)} (table, vnode) pairs, "
                                    f"e.g. {left[:5]}")
                side.pop("ghost_list", None)
                side.pop("per_table", None)
            res["sides"] = sides
            res["seconds"] = round(time.monotonic() - t0, 3)
            total = sum(sum((s.get("deleted") or {}).values()) for s in sides.values())
            res["rows_deleted"] = total
            res["rows_per_second"] = round(total / res["seconds"], 1) if res["seconds"] else None
            if problems:
                module.fail_json(msg="found rows left after deletion: " + "; ".join(problems), **res)
            res["done"] = True
    except (ZkError, ms.ManateeError, rj.JournalError) as exc:
        module.fail_json(msg=f"reshard delete: {exc}", **res)
    module.exit_json(**res)


if __name__ == "__main__":
    main()
