#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: manatee_info
short_description: Report a manatee shard's topology, freeze, replication and health
version_added: 0.1.0
description:
  - Reads a shard's cluster state and election nodes from ZooKeeper and queries the PostgreSQL
    of every peer that has a role (primary, sync, asyncs). It returns what C(manatee-adm show -v)
    and C(manatee-adm verify) show, as data.
  - The data includes the roles, generation, C(initWal), the freeze and its reason, and the
    active (election) peers. For each peer it includes the PostgreSQL status, recovery state, WAL
    positions, replication lag, and the C(pg_stat_replication) rows (SENT/WRITE/FLUSH/REPLAY).
  - The issues use the exact messages that C(manatee-adm verify) prints. The rendered
    C(manatee-adm show -v) text is also returned.
  - Deposed peers are listed but not queried, as in C(manatee-adm).
  - The state is also checked against the rules every sitter applies on every read. If it
    breaks them, the problems are listed in RV(manatee.validation_errors) and PostgreSQL is not
    queried.
author:
  - manta.ops developers (@manta-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.zookeeper
  - manta.ops.zookeeper.manatee_postgres
attributes:
  check_mode:
    support: full
    details: Read-only; it runs the same in check mode.
  diff_mode:
    support: none
    details: Nothing is changed, so there is nothing to diff.
  platform:
    platforms: posix
options:
  shard:
    description:
      - Shard name under C(/manatee/), for example V(1.moray.us-east.joyent.us). The state read is
        C(/manatee/<shard>/state).
    type: str
    required: true
  probe_postgres:
    description:
      - Query each peer's PostgreSQL. With V(false) only ZooKeeper is read, and RV(manatee.errors)
        and RV(manatee.warnings) are not computed.
    type: bool
    default: true
  missing_ok:
    description:
      - When the shard has no state object, return RV(manatee.exists=false) instead of failing.
    type: bool
    default: false
  fail_on_issues:
    description:
      - Fail when C(manatee-adm verify) would report an error or a warning, or when the state
        breaks the sitters' validation rules. The facts are still returned.
    type: bool
    default: false
notes:
  - PostgreSQL is reached at each peer's C(pgUrl), with a connect timeout and a statement
    timeout, so a dead peer shows as C(fail) and does not hang the task.
  - The downstream replication row of a peer is the C(pg_stat_replication) row whose
    C(application_name) is the downstream peer's C(pgUrl). If there is none, the first row is
    used, as C(manatee-adm) does.
seealso:
  - module: manta.ops.manatee_cluster
  - module: manta.ops.manatee_peer
"""

EXAMPLES = r"""
- name: Shard status (what manatee-adm show -v says)
  manta.ops.manatee_info:
    shard: 2.moray.us-east.joyent.us
  register: shard

- name: Print it like manatee-adm
  ansible.builtin.debug:
    msg: "{{ shard.manatee.show }}"

- name: Refuse to go on unless verify is clean and the shard is frozen by this plan
  ansible.builtin.assert:
    that:
      - shard.manatee.healthy
      - shard.manatee.frozen
      - shard.manatee.freeze_reason == 'reshard plan ' ~ plan_uuid
"""

RETURN = r"""
manatee:
  description: Facts about the shard.
  returned: always
  type: dict
  contains:
    shard:
      description: The shard name.
      type: str
      sample: 2.moray.us-east.joyent.us
    exists:
      description: Whether the shard has a state object (false only with O(missing_ok=true)).
      type: bool
    path:
      description: Znode of the state.
      type: str
      sample: /manatee/2.moray.us-east.joyent.us/state
    version:
      description: ZooKeeper data version of the state (for compare-and-swap).
      type: int
    state:
      description: The raw cluster state object.
      type: dict
    generation:
      description: The topology generation.
      type: int
      sample: 3
    init_wal:
      description: WAL position of the primary when this generation began.
      type: str
      sample: 0/174A4D0
    mode:
      description: V(normal) or V(singleton) (one-node-write mode).
      type: str
    frozen:
      description: Whether the shard is frozen.
      type: bool
    freeze_reason:
      description: The freeze reason (V(unknown) for a boolean freeze), or null when not frozen.
      type: str
      sample: reshard plan 6c8b9680-885a-4c8b-9680-885ac8b6c8b9
    freeze_date:
      description: When it was frozen.
      type: str
    topology:
      description: Peer ids by role (primary, sync, async, deposed).
      type: dict
    active:
      description: Active election entries (highest sequence per id, sorted by id as the sitters do).
      type: list
      elements: dict
    valid:
      description: Whether the state passes the sitters' validation rules and has all five peer fields.
      type: bool
    validation_errors:
      description: What is wrong with the state, if anything.
      type: list
      elements: str
    peers:
      description:
        - One entry per peer, in chain order, then deposed peers. Each entry has V(role),
          V(index), V(id), V(zoneId), V(label), V(ip), V(pgUrl), V(backupUrl), V(active), and
          V(upstream) and V(downstream) ids.
        - It also has V(pg) (V(ok), V(fail) or V(not probed)) and V(error). Queried peers add
          V(in_recovery), V(server_version_num), V(current_lsn), V(receive_lsn), V(replay_lsn),
          V(wal_lsn), V(lag_seconds) and V(lag).
        - V(replication) holds all C(pg_stat_replication) rows. V(repl) is the row of the link to
          the downstream peer. V(upstream_link) is the upstream's row for this peer.
      type: list
      elements: dict
    errors:
      description: Errors C(manatee-adm verify) would report (message texts without the prefix).
      type: list
      elements: str
      sample: ['peer "bb348824": downstream replication peer not connected']
    warnings:
      description: Warnings C(manatee-adm verify) would report.
      type: list
      elements: str
      sample: [cluster has no async peers]
    verify:
      description: The lines C(manatee-adm verify) would print.
      type: list
      elements: str
      sample: ['warning: cluster has no async peers']
    healthy:
      description: Whether verify would report nothing (and the state is valid).
      type: bool
    show:
      description: The text of C(manatee-adm show -v).
      type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import manatee_facts as mf
from ansible_collections.manta.ops.plugins.module_utils import manatee_pg as mpg
from ansible_collections.manta.ops.plugins.module_utils import manatee_state as ms
from ansible_collections.manta.ops.plugins.module_utils.zk import (
    Zk, ZkError, require_kazoo, zk_argument_spec)


def main():
    spec = zk_argument_spec()
    spec.update(mpg.pg_argument_spec())
    spec.update(
        shard=dict(type="str", required=True),
        probe_postgres=dict(type="bool", default=True),
        missing_ok=dict(type="bool", default=False),
        fail_on_issues=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_kazoo(module)
    p = module.params
    if p["probe_postgres"]:
        mpg.require_psycopg2(module)
    try:
        ms.shard_paths(p["shard"])
        with Zk(p["zk_servers"], p["zk_timeout"]) as zk:
            facts = mf.cluster_facts(zk, p["shard"], probe_postgres=p["probe_postgres"],
                                     pg_opts=pg_opts(p), zk_label=zk.servers)
    except ms.StateMissing as exc:
        if p["missing_ok"]:
            module.exit_json(changed=False, manatee={"shard": p["shard"], "exists": False,
                                                     "path": ms.shard_paths(p["shard"])["state"]})
        module.fail_json(msg=str(exc), changed=False)
    except (ms.ManateeError, ZkError) as exc:
        module.fail_json(msg=str(exc), changed=False)
    if p["fail_on_issues"] and (not facts["valid"] or facts["errors"] or facts["warnings"]):
        module.fail_json(msg=f"shard {p['shard']} is not healthy: " + "; ".join(facts["verify"]),
                         manatee=facts, changed=False)
    module.exit_json(changed=False, manatee=facts)


def pg_opts(p):
    return {"user": p["pg_user"], "password": p["pg_password"],
            "connect_timeout": p["pg_connect_timeout"], "query_timeout": p["pg_query_timeout"]}


if __name__ == "__main__":
    main()
