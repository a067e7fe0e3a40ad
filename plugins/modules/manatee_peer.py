#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: manatee_peer
short_description: Report on one manatee peer, or wait until it is a healthy async, caught up, or gone
version_added: 0.1.0
description:
  - Looks at one peer of a manatee shard. It reads the peer's role from the shard's state in
    ZooKeeper, its election node, and the status of its PostgreSQL and of its upstream's
    PostgreSQL.
  - O(state=query) reports the peer once. Use it to record a peer's WAL position
    (RV(peer.wal_lsn)) before its sitter is disabled.
  - O(state=healthy_async) waits until the peer is listed in the shard's C(async) chain, its
    PostgreSQL answers and is in recovery, and its upstream's C(pg_stat_replication) row for it
    is C(streaming) and C(async), from the peer's IP.
  - O(state=caught_up) waits until the peer has replayed at least O(lsn), or until the sentinel
    row described by O(sentinel) can be read on the peer itself, or both. O(lsn=primary) means
    the shard primary's current WAL position, read when the task starts.
  - O(state=absent) waits until the peer has left the shard. It must have no role in the state
    (primary, sync, async or deposed) and no election node, that is, its ZooKeeper session is
    gone.
  - The module never changes anything, so C(changed) is always false.
author:
  - manta.ops developers (@manta-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.zookeeper
  - manta.ops.zookeeper.manatee_postgres
attributes:
  check_mode:
    support: full
    details: Read-only; waits run in check mode too.
  diff_mode:
    support: full
    details: Before and after are the peer as seen when the task started and when it ended. The module itself changes nothing.
  platform:
    platforms: posix
options:
  shard:
    description: Shard name under C(/manatee/).
    type: str
    required: true
  peer:
    description:
      - The peer, by manatee id (C(<ip>:<pgPort>:<backupPort>)), zone uuid (C(zoneId)), C(pgUrl),
        or IP when only one peer of the shard has it.
    type: str
    required: true
  state:
    description: What to report on or wait for (see the description).
    type: str
    choices: [query, healthy_async, caught_up, absent]
    default: query
  lsn:
    description:
      - With O(state=caught_up), the LSN the peer must have replayed, for example V(0/3000148), or
        V(primary) for the primary's current WAL position at the start of the task.
    type: str
  sentinel:
    description:
      - With O(state=caught_up), a row that must be readable on the peer itself. This is
        reshard's proof that the peer has everything written before the sentinel.
    type: dict
    suboptions:
      table:
        description: Table (optionally C(schema.table)) holding the sentinel.
        type: str
        default: manta_reshard_sentinel
      key:
        description: Value of O(sentinel.key_column) that identifies the row.
        type: str
        required: true
      key_column:
        description: Column holding the key.
        type: str
        default: _key
      database:
        description: Database holding the table.
        type: str
        default: moray
      etag:
        description: Expected value of the C(_etag) column.
        type: str
      value:
        description: Expected C(_value), compared as JSON (deep equality).
        type: raw
  timeout:
    description: Seconds to wait before failing. The failure says which condition was not met and what was seen last.
    type: float
    default: 600
  interval:
    description: Seconds between checks while waiting.
    type: float
    default: 2
seealso:
  - module: manta.ops.manatee_info
  - module: manta.ops.manatee_cluster
"""

EXAMPLES = r"""
- name: Wait for the new peer to join the chain as a streaming async
  manta.ops.manatee_peer:
    shard: 2.moray.us-east.joyent.us
    peer: "{{ new_zone_uuid }}"
    state: healthy_async
    timeout: 7200

- name: Wait until it holds everything written before the sentinel
  manta.ops.manatee_peer:
    shard: 2.moray.us-east.joyent.us
    peer: "{{ new_zone_uuid }}"
    state: caught_up
    sentinel:
      key: sentinel
      etag: "{{ sentinel_put.etag }}"
      value: "{{ sentinel_value }}"

- name: Or by WAL position, against the primary's current one
  manta.ops.manatee_peer:
    shard: 2.moray.us-east.joyent.us
    peer: "{{ new_zone_uuid }}"
    state: caught_up
    lsn: primary

- name: Record the future primary's WAL position before disabling its sitter
  manta.ops.manatee_peer:
    shard: 2.moray.us-east.joyent.us
    peer: "{{ new_primary_uuid }}"
  register: np

- name: After disabling its sitter, wait until the peer has left the shard
  manta.ops.manatee_peer:
    shard: 2.moray.us-east.joyent.us
    peer: "{{ new_primary_uuid }}"
    state: absent
    timeout: 300
"""

RETURN = r"""
peer:
  description:
    - The peer as last seen, or null if it has no role in the shard's state.
    - It has the same keys as the entries of RV(manta.ops.manatee_info#module:manatee.peers),
      such as C(role), C(index), C(id), C(zoneId), C(ip), C(pgUrl), C(pg), C(in_recovery),
      C(wal_lsn), C(replay_lsn), C(lag), C(repl) and C(upstream_link).
  returned: always
  type: dict
  contains:
    role:
      description: V(primary), V(sync), V(async) or V(deposed).
      type: str
    index:
      description: Position in the async chain (asyncs and deposed), else null.
      type: int
    id:
      description: The manatee peer id.
      type: str
    zoneId:
      description: The zone uuid.
      type: str
    pg:
      description: V(ok), V(fail) or V(not probed) (deposed peers are not queried).
      type: str
    wal_lsn:
      description:
        - The peer's WAL position. On a primary it is the current WAL LSN, on a standby the
          replayed LSN.
        - Record it for the future primary before its sitter is disabled. It becomes the new
          shard's C(initWal).
      type: str
    lag:
      description: Time since the last replayed transaction, formatted like manatee-adm (V(1m05s)).
      type: str
    upstream_link:
      description: The upstream's C(pg_stat_replication) row for this peer (null when not connected).
      type: dict
  sample:
    role: async
    index: 1
    id: 10.77.77.53:5432:12345
    zoneId: 91c91f35-54e7-46b8-aa0c-40bee7f04547
    pg: ok
    in_recovery: true
    wal_lsn: 0/3000148
    lag: 0m00s
active:
  description: The peer's election node (name, sequence, data), or null when it has none.
  returned: always
  type: dict
met:
  description: Whether the condition of O(state) holds (always true on success; V(query) reports true).
  returned: always
  type: bool
reason:
  description: Why the condition holds, as text.
  returned: always
  type: str
  sample: healthy async
target_lsn:
  description: The LSN waited for (O(lsn=primary) resolved).
  returned: when O(lsn) is given
  type: str
sentinel_rows:
  description: Sentinel rows read on the peer.
  returned: when O(sentinel) is given
  type: list
  elements: dict
waited:
  description: Seconds spent waiting.
  returned: always
  type: float
checks:
  description: Number of checks made.
  returned: always
  type: int
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import lsn as lsnmod
from ansible_collections.manta.ops.plugins.module_utils import manatee_facts as mf
from ansible_collections.manta.ops.plugins.module_utils import manatee_pg as mpg
from ansible_collections.manta.ops.plugins.module_utils import manatee_state as ms
from ansible_collections.manta.ops.plugins.module_utils.zk import (
    Zk, ZkError, require_kazoo, zk_argument_spec)


def pg_opts(p):
    return {"user": p["pg_user"], "password": p["pg_password"],
            "connect_timeout": p["pg_connect_timeout"], "query_timeout": p["pg_query_timeout"]}


def observe(zk, p, want_upstream):
    """(peer entry or None, election entry or None, facts)."""
    state, _stat = ms.load(zk, p["shard"])
    found = ms.find_peer(state, p["peer"])
    ids = set()
    if found and found[0] != "deposed":
        ids.add(found[2]["id"])
        if want_upstream:
            up = mpg.upstream_of(state, found[0], found[1])
            if up:
                ids.add(up["id"])
    facts = mf.cluster_facts(zk, p["shard"], probe_postgres=bool(ids), pg_opts=pg_opts(p),
                             probe_ids=ids)
    if not facts["valid"]:
        raise ms.StateInvalid(f"shard {p['shard']}: the state fails validation: "
                              + "; ".join(facts["validation_errors"]), facts["validation_errors"])
    entry = mf.peer_facts(facts, p["peer"])
    active = mf.active_entry(facts, p["peer"], entry)
    return entry, active, facts


def main():
    spec = zk_argument_spec()
    spec.update(mpg.pg_argument_spec())
    spec.update(
        shard=dict(type="str", required=True),
        peer=dict(type="str", required=True),
        state=dict(type="str", default="query",
                   choices=["query", "healthy_async", "caught_up", "absent"]),
        lsn=dict(type="str"),
        sentinel=dict(type="dict", options=dict(
            table=dict(type="str", default="manta_reshard_sentinel"),
            key=dict(type="str", required=True, no_log=False),
            key_column=dict(type="str", default="_key", no_log=False),
            database=dict(type="str", default="moray"),
            etag=dict(type="str"),
            value=dict(type="raw"),
        )),
        timeout=dict(type="float", default=600.0),
        interval=dict(type="float", default=2.0),
    )
    module = AnsibleModule(
        argument_spec=spec,
        required_if=[("state", "caught_up", ("lsn", "sentinel"), True)],
        supports_check_mode=True,
    )
    require_kazoo(module)
    mpg.require_psycopg2(module)
    p = module.params
    if p["lsn"] not in (None, "primary") and not lsnmod.is_valid(p["lsn"]):
        module.fail_json(msg=f"lsn {p['lsn']!r} is neither an LSN like \"0/3000148\" nor primary")
    if p["timeout"] < 0 or p["interval"] <= 0:
        module.fail_json(msg=f"timeout must be >= 0 and interval > 0 seconds, found "
                             f"timeout={p['timeout']} interval={p['interval']}")
    sentinel = p["sentinel"]
    start = time.monotonic()
    deadline = start + p["timeout"]
    result = dict(changed=False, met=False, checks=0)
    try:
        ms.shard_paths(p["shard"])
        with Zk(p["zk_servers"], p["zk_timeout"]) as zk:
            target = p["lsn"]
            if target == "primary":
                state = ms.load(zk, p["shard"])[0]
                st = mpg.probe(state["primary"], "primary", **pg_opts(p))
                if st["error"] or not st["wal_lsn"]:
                    module.fail_json(msg=f"lsn=primary: cannot read the WAL position of the primary "
                                         f"{state['primary']['id']}: {st['error'] or 'none reported'}",
                                     changed=False)
                target = st["wal_lsn"]
            if target:
                result["target_lsn"] = target
            first = None
            while True:
                entry, active, _facts = observe(zk, p, want_upstream=p["state"] == "healthy_async")
                result["checks"] += 1
                if first is None:
                    first = entry
                if p["state"] == "query":
                    ok, why = True, ("found as " + entry["role"]) if entry else "not in the shard's state"
                elif p["state"] == "healthy_async":
                    ok, why = mf.healthy_async(entry)
                elif p["state"] == "absent":
                    ok, why = mf.gone(entry, active)
                else:
                    ok, why = True, ""
                    reasons = []
                    if target:
                        ok, w = mf.replayed(entry, target)
                        reasons.append(w)
                    if ok and sentinel:
                        ok, w = check_sentinel(entry, sentinel, p, result)
                        reasons.append(w)
                    why = "; ".join(reasons)
                result.update(peer=entry, active=active, met=ok, reason=why)
                if ok or time.monotonic() >= deadline:
                    break
                time.sleep(min(p["interval"], max(0.0, deadline - time.monotonic())))
    except ms.StateInvalid as exc:
        module.fail_json(msg=str(exc), validation_errors=exc.errors, changed=False)
    except (ms.ManateeError, ZkError) as exc:
        module.fail_json(msg=str(exc), changed=False)

    result["waited"] = round(time.monotonic() - start, 3)
    if module._diff:
        result["diff"] = dict(before=first or {}, after=result.get("peer") or {},
                              before_header=f"{p['peer']} (start)", after_header=f"{p['peer']} (end)")
    if not result["met"]:
        want = {"healthy_async": "become a healthy async",
                "caught_up": "catch up" + (f" to {target}" if target else "")
                             + (" and show the sentinel row" if sentinel else ""),
                "absent": "leave the shard"}[p["state"]]
        module.fail_json(msg=f"peer {p['peer']} of shard {p['shard']} did not {want} within "
                             f"{p['timeout']:g}s (checked {result['checks']} times); last seen: "
                             f"{result['reason']}", **result)
    module.exit_json(**result)


def check_sentinel(entry, s, p, result):
    if entry is None:
        return False, "not in the shard's state"
    peer = {"pgUrl": entry["pgUrl"]}
    try:
        rows = mpg.query_sentinel(peer, s["table"], s["key"], database=s["database"],
                                  key_column=s["key_column"], user=p["pg_user"],
                                  password=p["pg_password"], connect_timeout=p["pg_connect_timeout"],
                                  query_timeout=p["pg_query_timeout"])
    except mpg.PgError as exc:
        return False, f"cannot read the sentinel on the peer: {exc}"
    result["sentinel_rows"] = rows
    return mpg.sentinel_matches(rows, etag=s["etag"], value=s["value"])


if __name__ == "__main__":
    main()
