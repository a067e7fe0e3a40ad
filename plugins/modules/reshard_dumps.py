#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: reshard_dumps
short_description: Wait until no pg_dump runs against a manatee shard
version_added: 0.1.0
description:
  - RFD 103 step 6 ("make sure Manatee dumps are not running", done by hand with C(ptree | grep pg_dump.sh) in
    every postgres zone), through PostgreSQL itself. Every peer of the shards named is asked for sessions of
    C(pg_dump) (C(pg_stat_activity.application_name)), and the task waits until there are none.
  - Take the shared C(/pg_dump_lock) (M(manta.ops.zk_lock)) first, so that no new dump starts while this waits.
options:
  shards:
    description: Shards whose peers are checked.
    type: list
    elements: str
    required: true
  timeout:
    description: Seconds to wait for running dumps to finish; then the task fails naming them.
    type: float
    default: 3600
  interval:
    description: Seconds between checks.
    type: float
    default: 2
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.zookeeper
  - manta.ops.zookeeper.manatee_postgres
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: No dump runs on the shard
  manta.ops.reshard_dumps:
    shards: [1.moray.example.com]
"""

RETURN = r"""
dumps:
  description: The pg_dump sessions seen at the last check (empty when done).
  returned: always
  type: list
waited:
  description: Seconds waited.
  returned: always
  type: float
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import manatee_state as ms
from ansible_collections.manta.ops.plugins.module_utils import reshard_common as rc
from ansible_collections.manta.ops.plugins.module_utils.manatee_pg import pg_argument_spec
from ansible_collections.manta.ops.plugins.module_utils.zk import (
    Zk, ZkError, require_kazoo, zk_argument_spec)


def dumps_on(peer, pg_opts):
    conn = rc.pg_connect(peer["pgUrl"], dbname="postgres", **pg_opts)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid, datname, application_name, backend_start::text, state FROM pg_stat_activity "
                        "WHERE application_name ILIKE 'pg_dump%%' AND pid <> pg_backend_pid()")
            return [{"peer": peer["id"], "pid": r[0], "db": r[1], "application": r[2], "since": r[3],
                     "state": r[4]} for r in cur.fetchall()]
    finally:
        conn.close()


def main():
    spec = zk_argument_spec()
    spec.update(pg_argument_spec())
    spec.update(shards=dict(type="list", elements="str", required=True),
                timeout=dict(type="float", default=3600), interval=dict(type="float", default=2))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_kazoo(module)
    p = module.params
    pg_opts = {"user": p["pg_user"], "password": p["pg_password"]}
    t0 = time.monotonic()
    found = []
    try:
        with Zk(p["zk_servers"], p["zk_timeout"]) as zk:
            while True:
                found = []
                for shard in p["shards"]:
                    st, dummy = ms.load(zk, shard)
                    for role, _i, peer in ms.peers(st):
                        if role == "deposed":
                            continue
                        try:
                            found.extend(dumps_on(peer, pg_opts))
                        except Exception as exc:  # noqa: BLE001
                            module.fail_json(msg=f"cannot ask {peer['id']} ({shard}) for running dumps: "
                                                 f"{str(exc).strip().splitlines()[0]}")
                if not found or module.check_mode:
                    break
                if time.monotonic() - t0 > p["timeout"]:
                    module.fail_json(msg=f"pg_dump still running after {p['timeout']:g}s: {found}", dumps=found)
                time.sleep(p["interval"])
    except (ZkError, ms.ManateeError) as exc:
        module.fail_json(msg=f"reshard dumps: {exc}")
    module.exit_json(changed=False, dumps=found, waited=round(time.monotonic() - t0, 3))


if __name__ == "__main__":
    main()
