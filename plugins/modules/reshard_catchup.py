#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: reshard_catchup
short_description: Wait until a reshard's new peers are healthy asyncs that have caught up, with progress and ETA
version_added: 0.1.0
description:
  - Follows the new peers of a reshard while they restore and stream from the old cluster (reshard.md phase 4).
  - For every peer it reads the restore progress from the peer's status server (C(<backupUrl>/restore), giving size,
    completed, restore job uuid, which changes when a restore restarts), the WAL the peer still has to replay
    (the primary's current position minus the peer's replay position) and the replay rate, and computes an ETA.
    The progress is written to the plan's journal after every poll (shown by C(reshard_status.yml)).
  - A peer is caught up when it is listed as an async of the old shard, its upstream streams to it
    asynchronously, and a sentinel written to the old primary after the poll began can be read on the peer
    itself (a direct connection, since moray only ever reads the primary).
  - Returns after O(poll_for) seconds even when not done (RV(done) false) so that a task can loop with
    C(until) and show a heartbeat. It fails after O(timeout) seconds in total (measured from the journal).
options:
  plan:
    description: The plan id (progress is journaled under C(props.progress)).
    type: str
  shard:
    description: The old shard.
    type: str
    required: true
  peers:
    description: Zone uuids of the new peers.
    type: list
    elements: str
    required: true
  poll_for:
    description: Seconds to keep polling in this call.
    type: float
    default: 30
  interval:
    description: Seconds between polls.
    type: float
    default: 1
  timeout:
    description: Seconds allowed in total since the copy started; after that the task fails.
    type: float
    default: 86400
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.zookeeper
  - manta.ops.zookeeper.manatee_postgres
attributes:
  check_mode:
    support: full
    details: Only reads; the sentinel is not written and nothing is journaled.
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: Wait for the new peers to catch up
  manta.ops.reshard_catchup:
    plan: "{{ plan }}"
    shard: 1.moray.example.com
    peers: "{{ new_peer_uuids }}"
  register: cu
  until: cu.done
  retries: 2880
  delay: 0
"""

RETURN = r"""
done:
  description: Every peer is a healthy async and has the sentinel.
  returned: always
  type: bool
peers:
  description: Per peer, role, restore progress, bytes behind, rate, ETA and what is missing.
  returned: always
  type: list
text:
  description: One line of progress, like C(restore 1234/5678 MB (22%) 85 MB/s; est. 1m2s remains).
  returned: always
  type: str
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import lsn as lsnmod
from ansible_collections.manta.ops.plugins.module_utils import manatee_facts as mf
from ansible_collections.manta.ops.plugins.module_utils import manatee_state as ms
from ansible_collections.manta.ops.plugins.module_utils import reshard_common as rc
from ansible_collections.manta.ops.plugins.module_utils import reshard_journal as rj
from ansible_collections.manta.ops.plugins.module_utils.manatee_pg import pg_argument_spec
from ansible_collections.manta.ops.plugins.module_utils.zk import (
    Zk, ZkError, require_kazoo, zk_argument_spec)


def restore_of(backup_url):
    if not backup_url or not rc.HAS_REQUESTS:
        return None
    try:
        r = rc.requests.get(backup_url.rstrip("/") + "/restore", timeout=2)
        return (r.json() or {}).get("restore") if r.status_code == 200 else None
    except (rc.requests.RequestException, ValueError):
        return None


def mb(n):
    return f"{(n or 0) / 1048576:.0f}"


def main():
    spec = zk_argument_spec()
    spec.update(pg_argument_spec())
    spec.update(plan=dict(type="str"), shard=dict(type="str", required=True),
                peers=dict(type="list", elements="str", required=True),
                poll_for=dict(type="float", default=30), interval=dict(type="float", default=1),
                timeout=dict(type="float", default=86400))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_kazoo(module)
    p = module.params
    pg_opts = {"user": p["pg_user"], "password": p["pg_password"]}
    res = {"changed": False, "done": False, "peers": [], "text": ""}
    hist = {}       # zone -> [(t, replay lsn int)]
    restore_ids = {}
    try:
        with Zk(p["zk_servers"], p["zk_timeout"]) as zk:
            j = rj.Journal(zk, p["plan"], check_mode=module.check_mode) if p["plan"] else None
            started = None
            if j and j.doc:
                started = ((j.doc.get("phases") or {}).get("create_manatee_peers") or {}).get("start_ts")
            sentinel = None
            t_end = time.monotonic() + p["poll_for"]
            while True:
                facts = mf.cluster_facts(zk, p["shard"], probe_postgres=True, pg_opts=pg_opts)
                state = facts["state"]
                if sentinel is None and not module.check_mode:
                    conn = rc.pg_connect(state["primary"]["pgUrl"], **pg_opts)
                    try:
                        rc.ensure_sentinel_table(conn)
                        sentinel = rc.write_sentinel(conn, p["plan"] or "-", "catch-up check")
                    finally:
                        conn.close()
                prim = next((x for x in facts["peers"] if x["role"] == "primary"), {})
                head = prim.get("wal_lsn")
                rows = []
                all_ok = True
                now = time.time()
                for z in p["peers"]:
                    e = mf.peer_facts(facts, z)
                    row = {"zone": z, "role": e["role"] if e else None, "ok": False}
                    ok, why = mf.healthy_async(e)
                    row["healthy_async"] = ok
                    row["why"] = why
                    peer = next((x for dummy, dummy, x in ms.peers(state) if x["zoneId"] == z), None) if state else None
                    rs = restore_of((peer or {}).get("backupUrl"))
                    if rs:
                        row["restore"] = {k: rs.get(k) for k in ("uuid", "size", "completed", "done")}
                        if restore_ids.get(z) and restore_ids[z] != rs.get("uuid"):
                            module.warn(f"peer {z}: the restore restarted (job {restore_ids[z]} -> {rs.get('uuid')})")
                        restore_ids[z] = rs.get("uuid")
                    if e and e.get("wal_lsn") and head:
                        behind = max(0, lsnmod.diff(head, e["wal_lsn"]))
                        row["bytes_behind"] = behind
                        h = hist.setdefault(z, [])
                        h.append((now, lsnmod.to_int(e["wal_lsn"])))
                        del h[:-30]
                        if len(h) >= 2 and h[-1][0] > h[0][0]:
                            rate = (h[-1][1] - h[0][1]) / (h[-1][0] - h[0][0])
                            row["replay_bytes_per_s"] = round(rate, 1)
                            row["eta_s"] = round(behind / rate, 1) if rate > 0 else None
                    if ok and sentinel and peer:
                        try:
                            conn = rc.pg_connect(peer["pgUrl"], **pg_opts)
                            try:
                                got = rc.read_sentinel(conn)
                            finally:
                                conn.close()
                            row["sentinel"] = got[0] == sentinel[0] and got[1] == sentinel[1]
                        except Exception as exc:  # noqa: BLE001
                            row["sentinel"] = False
                            row["why"] = str(exc).strip().splitlines()[0]
                        if not row["sentinel"]:
                            row["why"] = row.get("why") if row["why"] != why else "sentinel not replayed yet"
                    elif ok and module.check_mode:
                        row["sentinel"] = None
                    row["ok"] = ok and (row.get("sentinel") or module.check_mode)
                    all_ok = all_ok and bool(row["ok"])
                    rows.append(row)
                parts = []
                for r in rows:
                    if r["ok"]:
                        parts.append(f"{r['zone'][:8]} caught up")
                        continue
                    rs = r.get("restore") or {}
                    if rs.get("size") and not rs.get("done"):
                        pct = 100.0 * (rs.get("completed") or 0) / rs["size"]
                        parts.append(f"{r['zone'][:8]} restore {mb(rs.get('completed'))}/{mb(rs['size'])} MB "
                                     f"({pct:.0f}%)")
                    elif r.get("bytes_behind") is not None:
                        eta = r.get("eta_s")
                        rate = r.get("replay_bytes_per_s")
                        parts.append(f"{r['zone'][:8]} {r['bytes_behind'] / 1048576:.1f} MB behind"
                                     + (f", {rate / 1048576:.1f} MB/s, est. {rj.fmt_duration(eta)} remains"
                                        if rate and eta is not None else "")
                                     + f" ({r['why']})")
                    else:
                        parts.append(f"{r['zone'][:8]}: {r['why']}")
                text = "; ".join(parts)
                res.update(peers=rows, text=text, done=all_ok)
                if j and j.doc and not module.check_mode:
                    j.set_props({"progress": {"phase": "create_manatee_peers", "text": text, "at": rj.now_iso(),
                                              "peers": rows}})
                if all_ok or module.check_mode or time.monotonic() >= t_end:
                    break
                if started and time.time() - started > p["timeout"]:
                    module.fail_json(msg=f"the new peers did not catch up within {p['timeout']:g}s: {text}", **res)
                time.sleep(p["interval"])
    except (ZkError, ms.ManateeError, rj.JournalError) as exc:
        module.fail_json(msg=f"reshard catch-up: {exc}", **res)
    module.exit_json(**res)


if __name__ == "__main__":
    main()
