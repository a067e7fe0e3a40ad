#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: moray_vnode_rows
short_description: Delete the rows of vnodes a Moray shard no longer owns, fast, throttled, resumable and verified
version_added: 0.1.0
description:
  - After a reshard both shards hold the rows of the moved vnodes. This module deletes the rows
    of the given O(vnodes) from O(shard), the shard that no longer owns them, in every sharded
    table (every table with a C(_vnode) column, or O(tables)), and then verifies that none is
    left. It is the reshard service's C(delete_data) phase (reshard.md section 4) made fast and
    safe to leave running.
  - Before anything is deleted, the module checks the request against the ring O(ring) (every
    vnode an integer in range, none owned by O(shard), all owned by O(owner_shard)) and checks
    that O(owner_shard) really holds the rows about to be deleted (see O(owner_min_ratio)).
    Any problem fails the task with a message naming the bad input and what would be valid.
  - C(manta_directory_counts) is purged first, then the other tables in name order. Rows are
    deleted in batches of at most O(batch_size) rows keyed by C(_id), then by C(_idx) where
    extended ids are in use, then by C(_key) for rows with neither, over O(connections)
    connections to the primary. Each batch is its own transaction.
  - Per table the module picks a plan from the census (O(strategy=auto)). For a small share of
    the table it works vnode group by vnode group through Moray's C(_vnode) index. For 20% or
    more of the table (a split in half) it walks the C(_id) index in ranges. Each range is read
    once, as a single C(DELETE ... WHERE _vnode = ANY(...)) would read it, but in bounded
    batches.
  - "Throttles can be changed while it runs: write a JSON object such as
    C({\"max_rows_per_second\": 500, \"connections\": 1}) to O(throttle_file). It is re-read
    between batches; an invalid file is ignored and reported in the progress file."
  - Progress (rows done, rows/s, ETA, per table, the throttles in force) is written to
    O(progress_file) about every O(progress_interval) seconds. The file also records which
    (table, vnode) pairs are finished. Running the same request again after an interruption
    resumes and skips them. A finished vnode that holds rows again fails the task, because
    something still writes it.
  - A second run of a finished request finds no rows and reports C(changed=false).
author:
  - manta.ops developers (@manta-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.zookeeper
attributes:
  check_mode:
    support: full
    details: Validates everything and runs the owner check, then reports the rows that would be
      deleted per table and vnode (RV(would_delete)). Nothing is deleted and no file is written.
  diff_mode:
    support: full
    details: Before and after are the row counts per table and vnode (after is empty once deleted).
  platform:
    platforms: posix
options:
  shard:
    description:
      - The shard to delete the rows from, for example V(2.moray.us-east.joyent.us). Its ring
        pnode is C(tcp://<shard>:2020). A name already written as a pnode URL is used as is.
    type: str
    required: true
  dsn:
    description:
      - libpq connection string or C(postgresql://) URL of O(shard)'s primary, for example
        V(host=10.0.0.5 port=5432 dbname=moray user=moray).
      - If not set, the environment variable C(MANTA_PG_DSN_<SHARD>) is used. C(<SHARD>) is the
        shard name upper-cased with each non-alphanumeric character replaced by C(_), for example
        C(MANTA_PG_DSN_2_MORAY_US_EAST_JOYENT_US). The short form C(MANTA_PG_DSN_2) is also
        tried. Failing both, the primary is looked up in manatee's state in ZooKeeper
        (O(zk_servers)).
      - The connection must reach the primary; a standby is refused.
    type: str
  pg_user:
    description: PostgreSQL user when the DSN does not name one (and for ZooKeeper discovery).
    type: str
    default: moray
  pg_password:
    description:
      - PostgreSQL password, if the DSN does not carry one. If not set, the value of the
        E(MANTA_PG_PASSWORD) environment variable is used.
    type: str
  pg_database:
    description: Database when the DSN does not name one.
    type: str
    default: moray
  connect_timeout:
    description: Seconds to wait for each PostgreSQL connection.
    type: int
    default: 10
  statement_timeout:
    description:
      - Statement timeout, in seconds, for every query (census, each delete batch, verification).
      - A batch that hits it fails the task, saying so. Lower O(batch_size) or raise this, then
        rerun to resume.
    type: float
    default: 600
  vnodes:
    description:
      - The vnodes whose rows are deleted from O(shard). Give a list of integers, decimal strings
        or C(low-high) ranges (V([0, 5, "10-19"])), or one string such as V(0-99,120).
      - Each must be an integer in C(0..N-1) for the ring's N vnodes, must not be owned by
        O(shard) in O(ring), and must be owned by O(owner_shard) when that is given.
    type: raw
    required: true
  ring:
    description:
      - The ring now in force, as a LevelDB ring directory (as electric-moray holds it; it is read
        through a private copy and never changed) or a serialized ring JSON file.
      - It decides who owns each vnode.
    type: path
    required: true
  owner_shard:
    description:
      - The shard that owns O(vnodes) in O(ring) and must hold their rows, usually the new shard
        of a split. Its primary is found like O(shard)'s (O(owner_dsn), environment, ZooKeeper).
      - Required unless O(force=true).
    type: str
  owner_dsn:
    description: Connection string of O(owner_shard)'s primary (same rules as O(dsn)).
    type: str
  owner_min_ratio:
    description:
      - "The owner check. For every table and vnode with rows on O(shard), O(owner_shard) must
        hold at least C(ceil(rows_on_shard * owner_min_ratio)) rows. The check runs before
        anything is deleted; deficits are listed in the failure and in RV(owner_check)."
      - Lower it (for example to V(0.9)) when rows were legitimately deleted on the owner since
        the split.
    type: float
    default: 1.0
  force:
    description:
      - Delete even when the owner check fails (the deficits are reported as a warning), or
        without an owner check at all when O(owner_shard) is not given.
      - The ring checks are never skipped.
    type: bool
    default: false
  state:
    description: V(absent) makes sure no row of O(vnodes) is left on O(shard).
    type: str
    choices: [absent]
    default: absent
  tables:
    description:
      - Restrict the work to these tables (each must exist and have a C(_vnode) column). The
        default is every table with a C(_vnode) column.
    type: list
    elements: str
  strategy:
    description:
      - V(auto) chooses per table. It takes V(id_range) when the rows to delete are at least 20%
        of the table, and V(vnode) otherwise.
      - V(vnode) works on groups of vnodes through the C(_vnode) index. V(id_range) walks the
        C(_id) index in ranges with a vnode filter.
    type: str
    choices: [auto, vnode, id_range]
    default: auto
  batch_size:
    description: Most rows deleted by one DELETE statement (1..100000).
    type: int
    default: 500
  pause_ms:
    description: Milliseconds each connection sleeps after a batch that deleted rows (0..60000).
    type: int
    default: 20
  connections:
    description: PostgreSQL connections deleting at once (1..64).
    type: int
    default: 2
  max_rows_per_second:
    description: Ceiling on rows deleted per second over all connections; V(0) means none.
    type: int
    default: 5000
  throttle_file:
    description:
      - JSON file whose keys (V(batch_size), V(pause_ms), V(connections),
        V(max_rows_per_second)) override the four options above while the job runs. It is
        re-read between batches. A missing file means the options apply.
      - An invalid file is ignored as a whole (the settings in force stay) and the error appears
        in the progress file and in RV(throttle_error).
    type: path
  progress_file:
    description:
      - JSON file rewritten atomically with the job's progress and its resume markers.
      - The default is C(/var/tmp/manta.ops/moray_vnode_rows/<shard>.json).
      - A lock file C(<progress_file>.lock) stops two runs from sharing one progress file. It
        names its holder (pid, host, shard, start time) while a run holds it.
    type: path
  lock_wait:
    description:
      - Seconds to wait for another run that holds the lock of O(progress_file) to finish.
      - V(0) fails at once, naming the holder. After a wait the rows are counted afresh, so a
        run that waited for an identical one finds nothing left to delete and changes nothing.
      - When the wait times out, the task fails naming the holder and how long it waited.
      - Not used in check mode, which takes no lock.
    type: float
    default: 0
  progress_interval:
    description: Seconds between progress file updates.
    type: float
    default: 1.0
notes:
  - Deleting half of a big shard takes a while even at full speed. Run the task with C(async) and
    C(poll), and watch O(progress_file) (for example C(watch jq .percent,.eta <file>)).
  - The default throttle (500 rows per batch, 20 ms pause, 2 connections, at most 5000 rows/s) was measured on
    a lab shard to keep the p99 latency of other writes within twice its idle value. The reshard
    service's defaults deleted about 100 rows/s. See docs/bench-moray.md.
  - Nothing here freezes or unfreezes the manatee clusters. Deleting does not need a frozen cluster, because every
    batch commits on its own and a failover only interrupts the run, which a rerun resumes.
  - No VACUUM is run; autovacuum reclaims the space.
requirements:
  - psycopg2 (Python library, on the host that runs the module)
seealso:
  - module: manta.ops.moray_vnode_rows_info
"""

EXAMPLES = r"""
- name: After the split, delete from the old shard the rows of the vnodes the new shard owns
  manta.ops.moray_vnode_rows:
    shard: 2.moray.us-east.joyent.us
    dsn: "host={{ old_primary_ip }} port=5432 dbname=moray user=moray"
    owner_shard: 37.moray.us-east.joyent.us
    owner_dsn: "host={{ new_primary_ip }} port=5432 dbname=moray user=moray"
    ring: "{{ reshard_workdir }}/new_ring/hash_ring"
    vnodes: "{{ moved_vnodes }}"
    throttle_file: "{{ reshard_workdir }}/delete-throttle.json"
  async: 86400
  poll: 30
  register: cleanup

- name: Rehearse it - counts per table and vnode, nothing deleted
  manta.ops.moray_vnode_rows:
    shard: 2.moray.us-east.joyent.us
    owner_shard: 37.moray.us-east.joyent.us
    zk_servers: "{{ zk_connect }}"
    ring: "{{ reshard_workdir }}/new_ring/hash_ring"
    vnodes: "0-99,4000"
  check_mode: true
  diff: true

- name: Faster overnight, slower again in the morning (while the task runs)
  ansible.builtin.copy:
    dest: "{{ reshard_workdir }}/delete-throttle.json"
    content: '{"max_rows_per_second": 20000, "connections": 4, "batch_size": 2000}'
    mode: "0644"
"""

RETURN = r"""
shard:
  description: The shard rows were deleted from.
  returned: always
  type: str
  sample: 2.moray.us-east.joyent.us
vnodes:
  description: The requested vnodes, as compact ranges.
  returned: always
  type: str
  sample: "0-99,4000"
vnode_count:
  description: How many vnodes were requested.
  returned: always
  type: int
tables:
  description: The tables worked on, in the order they are purged.
  returned: always
  type: list
  elements: str
  sample: [manta_directory_counts, manta, manta_uploads]
table_info:
  description: Per table, whether extended ids (C(_idx)) are in use and the planner's row estimate.
  returned: always
  type: list
  elements: dict
database:
  description: What the DSN reached (database, server, system identifier, version).
  returned: always
  type: dict
rows_before:
  description: Rows per table and vnode (vnode numbers as strings) before the task, only vnodes holding rows.
  returned: always
  type: dict
  sample: {"manta": {"17": 120, "33": 4}, "manta_directory_counts": {"17": 3}}
rows_to_delete:
  description: Rows found for the requested vnodes, over all tables.
  returned: always
  type: int
would_delete:
  description: In check mode, the rows that would be deleted, per table and vnode.
  returned: check mode
  type: dict
rows_after:
  description: Rows per table and vnode after the task (empty maps once verified).
  returned: always
  type: dict
deleted:
  description: Rows deleted per table by this run.
  returned: success, not in check mode
  type: dict
  sample: {"manta": 498001, "manta_directory_counts": 18686}
rows_deleted:
  description: Rows deleted by this run, over all tables.
  returned: success, not in check mode
  type: int
verified:
  description: True once a census of the requested vnodes found no row left in any table.
  returned: success, not in check mode
  type: bool
strategy:
  description: The plan used per table (V(vnode), V(id_range), or null when it had nothing to delete).
  returned: always
  type: dict
owner_check:
  description:
    - The owner check. C(ok) is true when every (table, vnode) passed and null when not checked
      (O(force) without O(owner_shard)). It also reports C(rule), C(pairs_checked),
      C(source_rows), C(owner_rows), C(deficit_count), the first C(deficits) and C(forced).
  returned: always
  type: dict
progress:
  description: rows_total, rows_done, percent, rows_per_second (recent), average_rows_per_second, elapsed_seconds, eta_seconds.
  returned: when rows were deleted
  type: dict
throttle:
  description: The throttle settings in force at the end (options overlaid by O(throttle_file)).
  returned: always
  type: dict
  sample: {"batch_size": 500, "pause_ms": 20, "connections": 2, "max_rows_per_second": 5000}
throttle_error:
  description: Why O(throttle_file) was ignored, if it was.
  returned: success, not in check mode
  type: str
progress_file:
  description: The progress file.
  returned: always
  type: str
resumed:
  description: True when this run continued an interrupted run of the same request.
  returned: always
  type: bool
skipped_done:
  description: (table, vnode) pairs an interrupted run had already finished (resumed runs).
  returned: always
  type: int
seconds:
  description: Time spent in census, owner_check, delete, verify and total, and waiting for the
    progress file's lock (lock_wait).
  returned: always
  type: dict
leftovers:
  description: On a verification failure, every (table, vnode, rows) left.
  returned: failure
  type: list
  elements: dict
"""

import os

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import moray_pg
from ansible_collections.manta.ops.plugins.module_utils import moray_ring
from ansible_collections.manta.ops.plugins.module_utils import throttle as throttle_mod

DEFAULT_PROGRESS_DIR = "/var/tmp/manta.ops/moray_vnode_rows"
DIFF_VNODES = 2000


def argument_spec():
    spec = moray_pg.pg_argument_spec()
    d = throttle_mod.DEFAULTS
    spec.update(
        vnodes=dict(type="raw", required=True),
        ring=dict(type="path", required=True),
        owner_shard=dict(type="str"),
        owner_dsn=dict(type="str", no_log=True),
        owner_min_ratio=dict(type="float", default=1.0),
        force=dict(type="bool", default=False),
        state=dict(type="str", choices=["absent"], default="absent"),
        tables=dict(type="list", elements="str"),
        strategy=dict(type="str", choices=["auto", "vnode", "id_range"], default="auto"),
        batch_size=dict(type="int", default=d["batch_size"]),
        pause_ms=dict(type="int", default=d["pause_ms"]),
        connections=dict(type="int", default=d["connections"]),
        max_rows_per_second=dict(type="int", default=d["max_rows_per_second"]),
        throttle_file=dict(type="path"),
        progress_file=dict(type="path"),
        progress_interval=dict(type="float", default=1.0),
        lock_wait=dict(type="float", default=0.0),
    )
    return spec


def default_progress_file(shard):
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in shard)
    return os.path.join(DEFAULT_PROGRESS_DIR, f"{safe}.json")


def _diff_side(counts):
    out = {}
    for table, per in counts.items():
        items = sorted(per.items(), key=lambda kv: int(kv[0]))
        entry = {"rows": sum(per.values()), "vnodes": dict(items[:DIFF_VNODES])}
        if len(items) > DIFF_VNODES:
            entry["vnodes_not_shown"] = len(items) - DIFF_VNODES
        out[table] = entry
    return out


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    moray_pg.require_psycopg2(module)

    from ansible_collections.manta.ops.plugins.module_utils import moray_delete
    from ansible_collections.manta.ops.plugins.module_utils.moray_owner_check import OwnerCheckError
    from ansible_collections.manta.ops.plugins.module_utils.moray_tables import TableError
    from ansible_collections.manta.ops.plugins.module_utils.progress import ProgressFileError

    p = module.params
    shard = p["shard"]
    owner_shard = p["owner_shard"]
    fail_extra = {}
    try:
        if not p["force"] and not owner_shard:
            raise moray_ring.OwnershipError(
                "owner_shard is required: name the shard that now owns the vnodes and must hold "
                "their rows (the owner check runs before anything is deleted), or set force=true "
                "to delete without checking")
        if owner_shard and moray_ring.pnode(owner_shard) == moray_ring.pnode(shard):
            raise moray_ring.OwnershipError(
                f"owner_shard {owner_shard} is the shard being deleted from; it must be the other "
                "side of the split, the shard that now owns the vnodes")
        if not 0 < p["owner_min_ratio"] <= 1:
            raise moray_ring.OwnershipError(
                f"owner_min_ratio {p['owner_min_ratio']} is out of range; valid: greater than 0, at most 1")
        if p["connect_timeout"] < 1 or p["statement_timeout"] <= 0 or p["progress_interval"] <= 0:
            raise moray_ring.OwnershipError(
                "connect_timeout must be >= 1, statement_timeout and progress_interval > 0 (seconds)")
        if p["lock_wait"] < 0:
            raise moray_ring.OwnershipError(
                f"lock_wait {p['lock_wait']:g} is negative; valid: seconds >= 0 to wait for another "
                "run holding the progress file's lock (0 = fail at once)")
        throttle = throttle_mod.Throttle(
            {k: p[k] for k in throttle_mod.KEYS}, path=p["throttle_file"])
        ring_path = p["ring"]
        ring = moray_ring.load(ring_path)
        moray_ring.require_shard(ring, shard, ring_path)
        vnodes = moray_ring.parse_vnodes(p["vnodes"], ring)
        moray_ring.require_not_owned(ring, vnodes, shard, ring_path)
        owner_target = None
        if owner_shard:
            moray_ring.require_shard(ring, owner_shard, ring_path, what="owner shard")
            moray_ring.require_owned(ring, vnodes, owner_shard, ring_path,
                                     "owner_shard must be the shard that owns the vnodes now")
        conn_kw = dict(user=p["pg_user"], database=p["pg_database"], password=p["pg_password"],
                       zk_servers=p["zk_servers"], zk_timeout=p["zk_timeout"])
        target = moray_pg.resolve(shard, dsn=p["dsn"], **conn_kw)
        if owner_shard:
            owner_target = moray_pg.resolve(owner_shard, dsn=p["owner_dsn"], what="owner shard", **conn_kw)
        progress_path = p["progress_file"] or default_progress_file(shard)
        result = moray_delete.delete_vnode_rows(
            shard, target, vnodes, tables=p["tables"], owner_shard=owner_shard,
            owner_target=owner_target, owner_min_ratio=p["owner_min_ratio"], force=p["force"],
            throttle=throttle, strategy=p["strategy"], progress_path=progress_path,
            check_mode=module.check_mode, connect_timeout=p["connect_timeout"],
            statement_timeout=p["statement_timeout"], progress_interval=p["progress_interval"],
            warn=module.warn, lock_wait=p["lock_wait"])
    except moray_delete.VerifyError as exc:
        module.fail_json(msg=str(exc), leftovers=exc.leftovers, table=exc.table, vnode=exc.vnode)
    except moray_delete.DeleteError as exc:
        fail_extra.update(table=exc.table, vnode=exc.vnode)
        module.fail_json(msg=str(exc), **fail_extra)
    except (moray_ring.OwnershipError, moray_pg.MorayPgError, TableError, OwnerCheckError,
            throttle_mod.ThrottleError, ProgressFileError) as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # a bug: still a clean failure, with the traceback for -vvv
        module.fail_json(msg=f"moray_vnode_rows failed unexpectedly on shard {shard}: "
                             f"{type(exc).__name__}: {exc}", exception=traceback.format_exc())

    changed = result["rows_to_delete"] > 0
    out = dict(changed=changed, **result)
    if module._diff:
        out["diff"] = {"before": _diff_side(result["rows_before"]),
                       "after": _diff_side(result["rows_after"]),
                       "before_header": f"{shard}: rows of {result['vnode_count']} vnodes",
                       "after_header": f"{shard}: rows of {result['vnode_count']} vnodes"}
    module.exit_json(**out)


if __name__ == "__main__":
    main()
