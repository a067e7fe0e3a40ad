#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: moray_vnode_rows_info
short_description: Vnode census of a Moray shard (rows and bytes per vnode) and balanced split plans
version_added: 0.1.0
description:
  - Counts the rows, and the bytes of C(_value), of every vnode in every sharded table of
    O(shard) (every table with a C(_vnode) column, or O(tables)). This is step 1 of the RFD 103
    runbook (C(select _vnode, count(*) from manta group by _vnode order by count desc)) for all
    tables. Rows are exact and come from Moray's partial C(_vnode) index where the plan allows.
    Bytes come from a page sample by default (see O(bytes)), so the census costs about what a
    C(count(*)) of each table costs.
  - Reports per-table totals, the O(top) vnodes by rows, and optionally every vnode
    (O(per_vnode)).
  - With O(ring) it also reports how many rows sit in vnodes the ring gives to other shards. These are ghost rows left by a split
    whose cleanup has not run.
  - With O(plan) it chooses which vnodes of O(shard) to move. The choice balances rows (or
    bytes) between the shard and one new shard (V(half), or a V(fraction)), or among
    O(plan.new_shards) new shards. It reports the expected rows and bytes on each side. With
    O(plan.vnodes) it reports those figures for an explicit list instead, after checking that
    every listed vnode belongs to O(shard) in the ring.
  - Never changes anything.
author:
  - manta.ops developers (@manta-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.zookeeper
attributes:
  check_mode:
    support: full
    details: Read-only; runs the same queries in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  shard:
    description: The shard to count, for example V(2.moray.us-east.joyent.us) (ring pnode C(tcp://<shard>:2020)).
    type: str
    required: true
  dsn:
    description:
      - libpq connection string or URL of O(shard)'s primary. If not set, the environment variable
        C(MANTA_PG_DSN_<SHARD>) is used (see M(manta.ops.moray_vnode_rows)), then manatee's state in
        ZooKeeper (O(zk_servers)).
    type: str
  pg_user:
    description: PostgreSQL user when the DSN does not name one.
    type: str
    default: moray
  pg_password:
    description: PostgreSQL password if the DSN has none. If not set, the value of the E(MANTA_PG_PASSWORD) environment variable is used.
    type: str
  pg_database:
    description: Database when the DSN does not name one.
    type: str
    default: moray
  connect_timeout:
    description: Seconds to wait for the PostgreSQL connection.
    type: int
    default: 10
  statement_timeout:
    description: Statement timeout in seconds for each census query (one per table).
    type: float
    default: 600
  tables:
    description: Count only these tables (each must exist and have a C(_vnode) column).
    type: list
    elements: str
  vnodes:
    description:
      - Count only these vnodes (list of integers, decimal strings or C(low-high) ranges, or one
        string). The census then probes the C(_vnode) index.
      - Not allowed together with O(plan), which needs the whole shard.
      - With O(ring), each must be in the ring's range.
    type: raw
  bytes:
    description:
      - How to measure the bytes of C(_value) per vnode. Rows are always exact.
      - V(sampled) counts rows from the C(_vnode) index and reads a page sample
        (C(TABLESAMPLE SYSTEM), sized for about 50,000 rows, repeatable) for the mean row size of each vnode.
        This is about as fast as C(count(*)). Tables under 50,000 rows, and censuses of O(vnodes), are measured exactly.
      - V(exact) reads every row (about 2.5 times a C(count(*)) on a large table).
      - V(none) skips bytes; the census is then answered from the C(_vnode) index alone.
    type: str
    choices: [sampled, exact, none]
    default: sampled
  top:
    description: How many of the heaviest vnodes (by rows) to list in RV(census.top).
    type: int
    default: 20
  per_vnode:
    description: Also return every vnode's rows, bytes and per-table rows in RV(census.per_vnode).
    type: bool
    default: false
  ring:
    description:
      - The ring (LevelDB ring directory, read through a private copy, or serialized ring JSON
        file). Needed for O(plan) and for RV(ownership).
    type: path
  plan:
    description: Plan a split of O(shard). Requires O(ring).
    type: dict
    suboptions:
      target:
        description:
          - V(half) gives the new shard half of the weight. V(fraction) gives it O(plan.fraction)
            of it. V(shards) cuts the shard into O(plan.new_shards)+1 equal parts, and the shard
            keeps the heaviest part so that the fewest rows move.
        type: str
        choices: [half, fraction, shards]
        default: half
      fraction:
        description: Share of the weight to move, strictly between 0 and 1 (O(plan.target=fraction)).
        type: float
      new_shards:
        description: Number of new shards, 1 to 64 (O(plan.target=shards)).
        type: int
      balance:
        description: Balance rows or bytes (V(bytes) needs O(bytes) other than V(none)).
        type: str
        choices: [rows, bytes]
        default: rows
      vnodes:
        description:
          - An explicit list of vnodes to move to one new shard instead of a computed plan. Every
            vnode must belong to O(shard) in O(ring).
        type: raw
      list_limit:
        description: Omit a group's full vnode list from the result when it has more vnodes than this (ranges are always given).
        type: int
        default: 100000
notes:
  - The census runs on the primary. With O(bytes=exact) each table is read once; on a big shard prefer the default
    O(bytes=sampled) or O(bytes=none) when the load is high.
requirements:
  - psycopg2 (Python library, on the host that runs the module)
seealso:
  - module: manta.ops.moray_vnode_rows
"""

EXAMPLES = r"""
- name: Which vnodes carry the data? (RFD 103 step 1)
  manta.ops.moray_vnode_rows_info:
    shard: 2.moray.us-east.joyent.us
    zk_servers: "{{ zk_connect }}"
    top: 20
  register: census

- name: Split shard 2 in half by rows
  manta.ops.moray_vnode_rows_info:
    shard: 2.moray.us-east.joyent.us
    dsn: "host={{ primary_ip }} port=5432 dbname=moray user=moray"
    ring: "{{ reshard_workdir }}/ring/hash_ring"
    plan:
      target: half
  register: split

- name: Use it
  ansible.builtin.debug:
    msg: "move {{ split.plan.moves[0].vnode_ranges }}: {{ split.plan.rows_moved }} rows move, {{ split.plan.stay.rows }} stay"

- name: Check an operator's own choice of vnodes (RFD 103 style, hot vnodes)
  manta.ops.moray_vnode_rows_info:
    shard: 2.moray.us-east.joyent.us
    ring: "{{ reshard_workdir }}/ring/hash_ring"
    bytes: none
    plan:
      vnodes: [0, 106, 943, 689]
"""

RETURN = r"""
census:
  description: The census.
  returned: always
  type: dict
  contains:
    shard:
      description: The shard counted.
      type: str
    tables:
      description:
        - Per table, its name, rows, bytes, bytes_method (V(exact), V(sampled <p>% of pages) or V(none)), vnodes
          holding rows, and the seconds its queries took.
      type: list
      elements: dict
    rows:
      description: Rows over all counted tables.
      type: int
    bytes:
      description: Bytes of C(_value) over all counted tables (null with O(bytes=none)); per table, C(bytes_method) says exact or sampled.
      type: int
    vnodes_with_rows:
      description: Vnodes holding at least one row.
      type: int
    top:
      description: The heaviest vnodes, each with vnode, rows, bytes and per-table rows.
      type: list
      elements: dict
      sample: [{"vnode": 0, "rows": 195, "bytes": 98311, "tables": {"manta": 190, "manta_directory_counts": 5}}]
    per_vnode:
      description: Every vnode holding rows (with O(per_vnode=true)).
      type: list
      elements: dict
    seconds:
      description: Time the census queries took.
      type: float
table_info:
  description: The tables counted, with extended-id detection and planner row estimates.
  returned: always
  type: list
  elements: dict
database:
  description: What the DSN reached.
  returned: always
  type: dict
ownership:
  description:
    - With O(ring), the shard's pnode, its vnode count, how many of its vnodes hold no rows, and the rows and vnodes
      found here that the ring gives to other shards (by owner).
  returned: when ring is given
  type: dict
plan:
  description:
    - The split. C(stay) is what the shard keeps; C(moves) has one entry per new shard, with C(vnodes) (up to
      O(plan.list_limit)), C(vnode_ranges), C(vnode_count), C(rows), C(bytes), C(share) and C(target_share).
      C(vnodes) at the top level repeats the single new shard's list. C(max_share_deviation) is the largest
      difference between a group's share and its target.
  returned: when plan is given
  type: dict
  sample:
    shard: 2.moray.us-east.joyent.us
    target: half
    balance: rows
    total: {rows: 1000000, bytes: 512000000, vnodes: 2048}
    stay: {rows: 500003, bytes: 256100000, vnode_count: 1030, share: 0.500003, target_share: 0.5}
    moves: [{new_shard: 1, vnode_count: 1018, vnode_ranges: "1,4-6,9", rows: 499997, bytes: 255900000,
             share: 0.499997, target_share: 0.5}]
    rows_moved: 499997
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import moray_pg, moray_ring


def argument_spec():
    spec = moray_pg.pg_argument_spec()
    spec.update(
        tables=dict(type="list", elements="str"),
        vnodes=dict(type="raw"),
        bytes=dict(type="str", choices=["sampled", "exact", "none"], default="sampled"),
        top=dict(type="int", default=20),
        per_vnode=dict(type="bool", default=False),
        ring=dict(type="path"),
        plan=dict(type="dict", options=dict(
            target=dict(type="str", choices=["half", "fraction", "shards"], default="half"),
            fraction=dict(type="float"),
            new_shards=dict(type="int"),
            balance=dict(type="str", choices=["rows", "bytes"], default="rows"),
            vnodes=dict(type="raw"),
            list_limit=dict(type="int", default=100000),
        )),
    )
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    moray_pg.require_psycopg2(module)
    from ansible_collections.manta.ops.plugins.module_utils import moray_report
    from ansible_collections.manta.ops.plugins.module_utils.moray_split_plan import PlanError
    from ansible_collections.manta.ops.plugins.module_utils.moray_tables import TableError

    p = module.params
    shard = p["shard"]
    plan = p["plan"]
    try:
        if p["top"] < 0:
            raise PlanError(f"top {p['top']} is out of range; valid: 0 or more")
        if p["connect_timeout"] < 1 or p["statement_timeout"] <= 0:
            raise PlanError("connect_timeout must be >= 1 and statement_timeout > 0 (seconds)")
        ring = None
        if p["ring"]:
            ring = moray_ring.load(p["ring"])
            moray_ring.require_shard(ring, shard, p["ring"])
        if plan:
            if ring is None:
                raise PlanError("plan needs the ring option: a split plan is made over the vnodes "
                                "the ring gives to the shard")
            if p["vnodes"] is not None:
                raise PlanError("vnodes limits the census to some vnodes, but a plan needs the whole "
                                "shard; use plan.vnodes for an explicit list of vnodes to move")
            if plan["balance"] == "bytes" and p["bytes"] == "none":
                raise PlanError("plan.balance=bytes needs bytes=sampled or bytes=exact (the census must "
                                "measure _value bytes)")
        vnodes = None
        if p["vnodes"] is not None:
            vnodes = moray_ring.parse_vnodes(p["vnodes"], ring)
        target = moray_pg.resolve(shard, dsn=p["dsn"], user=p["pg_user"], database=p["pg_database"],
                                  password=p["pg_password"], zk_servers=p["zk_servers"],
                                  zk_timeout=p["zk_timeout"])
        result = moray_report.report(
            shard, target, tables=p["tables"], vnodes=vnodes, bytes_mode=p["bytes"], top=p["top"],
            per_vnode=p["per_vnode"], ring=ring, ring_path=p["ring"], plan=plan,
            connect_timeout=p["connect_timeout"], statement_timeout=p["statement_timeout"],
            list_limit=plan["list_limit"] if plan else None)
    except (moray_ring.OwnershipError, moray_pg.MorayPgError, TableError, PlanError) as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # a bug: still a clean failure, with the traceback for -vvv
        module.fail_json(msg=f"moray_vnode_rows_info failed unexpectedly on shard {shard}: "
                             f"{type(exc).__name__}: {exc}", exception=traceback.format_exc())
    module.exit_json(changed=False, shard=shard, **result)


if __name__ == "__main__":
    main()
