#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: zk_lock
short_description: Take, release or inspect a named lock kept in ZooKeeper
version_added: 0.1.0
description:
  - Manages a lock stored as a persistent ZooKeeper znode. The znode exists exactly while the
    lock is held, and holds the holder's owner, purpose, host, plan id and time as compact JSON.
  - Taking and releasing are atomic. An absent lock is created with a ZooKeeper C(create). A held
    lock is changed with a C(set) or C(delete) conditioned on the version just read
    (compare-and-swap). A lost race is re-read and re-decided, so two holders can never both win.
  - In O(mode=exclusive) one owner holds the lock. Taking it again as the same owner changes
    nothing (re-entrant). Taking it as another owner fails, and the message names the holder.
  - In O(mode=shared) any number of owners hold the lock together (a counted lock). The znode
    is created by the first holder and deleted by the release of the last one. This is the mode
    for the global C(/pg_dump_lock) interlock, which stops manatee's pg_dump jobs while it
    exists. A C(/pg_dump_lock) created by hand (C(zkCli.sh create /pg_dump_lock x)) counts as
    a holder whose owner is reported as "(external)", so it keeps the node alive and is never removed by a release.
  - O(force=true) breaks a stale lock. The previous holders, the new owner, O(force_reason), the
    host and the time are recorded in the same ZooKeeper transaction as a persistent sequential
    node under C(/manta_ops/lock_breaks/).
author:
  - manta.ops developers (@manta-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.zookeeper
attributes:
  check_mode:
    support: full
    details: Reads the lock and reports what would change. With O(wait=true), it waits (reading only) for the lock to become free.
  diff_mode:
    support: full
    details: Before and after are the lock's mode and holders (empty when free).
  platform:
    platforms: posix
options:
  name:
    description:
      - Name of the lock. Its znode is O(lock_root)/O(name).
      - Exactly one of O(name) and O(path) is required.
    type: str
  path:
    description:
      - Full znode path of the lock, for locks with a fixed, well-known path such as
        V(/pg_dump_lock).
    type: str
  lock_root:
    description: Parent znode of locks given by O(name). Missing parents are created.
    type: str
    default: /manta_ops/locks
  mode:
    description:
      - V(exclusive) for a lock with one owner. V(shared) for a counted lock with any number of
        owners, which exists while at least one owner holds it.
      - Exclusive and shared requests on the same lock conflict.
    type: str
    choices: [exclusive, shared]
    default: exclusive
  state:
    description:
      - V(present) takes the lock for O(owner). V(absent) releases O(owner)'s hold.
      - V(query) only reports the lock's holders and never changes anything.
      - Releasing a free lock, or a shared lock that O(owner) does not hold, changes nothing.
        Releasing an exclusive lock held by another owner fails unless O(force=true).
    type: str
    choices: [present, absent, query]
    default: present
  owner:
    description:
      - Who holds the lock, for example V(plan:6c8b9680-...) or V(zone:<zonename>). It is the
        identity used for re-entrance and release.
      - Required when O(state) is V(present) or V(absent).
    type: str
  purpose:
    description: What the lock is held for. It is stored with the holder and shown in errors.
    type: str
  host:
    description: Host recorded with the holder. The default is the host name of the machine running the module.
    type: str
  plan:
    description: Plan id recorded with the holder.
    type: str
  wait:
    description:
      - When the lock is held by someone else, wait until it can be taken instead of failing at
        once. The module wakes on a ZooKeeper watch of the lock znode.
    type: bool
    default: false
  timeout:
    description: Seconds to wait when O(wait=true). The task fails after this long, naming the holder.
    type: float
    default: 300
  force:
    description:
      - Break the lock when another owner holds it. With O(state=present) the other holders are
        replaced by O(owner). With O(state=absent) the lock is removed whoever holds it.
      - The break is recorded under C(/manta_ops/lock_breaks/). Use it only for a holder known to
        be dead.
    type: bool
    default: false
  force_reason:
    description: Why the current holder is stale. Required with O(force=true); it is recorded with the break.
    type: str
notes:
  - A lock is only as good as its users. Everyone that touches a resource must take the same lock.
  - Locks are persistent nodes, not ephemeral ones, so they survive the end of the play. This is
    what a multi-hour reshard needs. It also means that a crashed play leaves its lock held until
    it is released or broken.
seealso:
  - module: manta.ops.manatee_cluster
"""

EXAMPLES = r"""
- name: Enter the reshard critical section (one plan at a time)
  manta.ops.zk_lock:
    name: critical_section
    owner: "plan:{{ plan_uuid }}"
    purpose: reshard critical section
    plan: "{{ plan_uuid }}"
    wait: true
    timeout: 3600

- name: Stop manatee pg_dump jobs for the duration of this reshard (shared with other reshards)
  manta.ops.zk_lock:
    path: /pg_dump_lock
    mode: shared
    owner: "plan:{{ plan_uuid }}"
    purpose: reshard pg_dump interlock

- name: Release our hold on /pg_dump_lock (the node goes away with the last holder)
  manta.ops.zk_lock:
    path: /pg_dump_lock
    mode: shared
    owner: "plan:{{ plan_uuid }}"
    state: absent

- name: Who holds the critical section?
  manta.ops.zk_lock:
    name: critical_section
    state: query
  register: cs

- name: Break a lock left behind by a plan that was abandoned
  manta.ops.zk_lock:
    name: critical_section
    owner: "operator:jane"
    state: absent
    force: true
    force_reason: "plan 1234 abandoned, see CM-129"
"""

RETURN = r"""
lock:
  description: The lock after the task (predicted in check mode).
  returned: always
  type: dict
  contains:
    path:
      description: Znode path of the lock.
      type: str
      sample: /manta_ops/locks/critical_section
    exists:
      description: Whether the znode exists, that is, whether the lock is held by anyone.
      type: bool
      sample: true
    mode:
      description: V(exclusive), V(shared), V(external) (a node not written by manta.ops), or null when free.
      type: str
      sample: exclusive
    version:
      description: ZooKeeper data version of the lock znode (null when free or predicted).
      type: int
      sample: 0
    holders:
      description: One entry per holder.
      type: list
      elements: dict
      sample:
        - owner: plan:6c8b9680-885a-4c8b-9680-885ac8b6c8b9
          purpose: reshard critical section
          host: ops1.example.com
          plan: 6c8b9680-885a-4c8b-9680-885ac8b6c8b9
          time: "2025-03-18T18:40:11.095Z"
previous:
  description: The lock before the task, in the same form as RV(lock).
  returned: always
  type: dict
held:
  description: Whether O(owner) holds the lock after the task (predicted in check mode).
  returned: when O(owner) is given
  type: bool
  sample: true
broken:
  description: Record of a lock broken by O(force=true). It is also stored under C(/manta_ops/lock_breaks/).
  returned: when a lock held by others was broken
  type: dict
  sample:
    path: /manta_ops/locks/critical_section
    broken_by: "operator:jane"
    reason: "plan 1234 abandoned"
    time: "2025-03-18T18:40:11.095Z"
    host: ops1.example.com
    previous: {path: /manta_ops/locks/critical_section, exists: true, mode: exclusive, version: 0, holders: []}
waited:
  description: Seconds spent waiting for the lock (O(wait=true)).
  returned: when O(state=present)
  type: float
  sample: 12.5
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import zk_lock as zl
from ansible_collections.manta.ops.plugins.module_utils.zk import (
    Zk, ZkError, require_kazoo, zk_argument_spec)


def main():
    spec = zk_argument_spec()
    spec.update(
        name=dict(type="str"),
        path=dict(type="str"),
        lock_root=dict(type="str", default=zl.LOCK_ROOT),
        mode=dict(type="str", default="exclusive", choices=["exclusive", "shared"]),
        state=dict(type="str", default="present", choices=["present", "absent", "query"]),
        owner=dict(type="str"),
        purpose=dict(type="str"),
        host=dict(type="str"),
        plan=dict(type="str"),
        wait=dict(type="bool", default=False),
        timeout=dict(type="float", default=300.0),
        force=dict(type="bool", default=False),
        force_reason=dict(type="str"),
    )
    module = AnsibleModule(
        argument_spec=spec,
        mutually_exclusive=[("name", "path")],
        required_one_of=[("name", "path")],
        required_if=[("state", "present", ("owner",)), ("state", "absent", ("owner",)),
                     ("force", True, ("force_reason",))],
        supports_check_mode=True,
    )
    require_kazoo(module)
    p = module.params
    try:
        path = zl.lock_path(name=p["name"], path=p["path"], root=p["lock_root"])
        if p["owner"] is not None:
            zl.check_owner(p["owner"])
    except zl.LockError as exc:
        module.fail_json(msg=str(exc))
    if p["timeout"] < 0:
        module.fail_json(msg=f"timeout must be >= 0 seconds, found {p['timeout']}")

    result = dict(changed=False)
    try:
        with Zk(p["zk_servers"], p["zk_timeout"]) as zk:
            if p["state"] == "query":
                view = zl.read(zk, path)
                result.update(lock=zl.public(view), previous=zl.public(view))
                if p["owner"]:
                    result["held"] = p["owner"] in view["holders"]
                module.exit_json(**result)
            kw = dict(force=p["force"], force_reason=p["force_reason"], check_mode=module.check_mode)
            if p["state"] == "present":
                kw.update(purpose=p["purpose"], host=p["host"], plan=p["plan"])
                if p["wait"]:
                    res = zl.acquire_wait(zk, path, p["mode"], p["owner"], p["timeout"], **kw)
                else:
                    res = zl.acquire(zk, path, p["mode"], p["owner"], **kw)
                    res["waited"] = 0.0
                result["waited"] = res["waited"]
            else:
                res = zl.release(zk, path, p["mode"], p["owner"], host=p["host"], **kw)
    except zl.LockHeld as exc:
        module.fail_json(msg=str(exc), lock=zl.public(exc.view), held=False, changed=False)
    except (zl.LockError, ZkError) as exc:
        module.fail_json(msg=str(exc), changed=False)

    result.update(
        changed=res["changed"],
        lock=zl.public(res["after"]),
        previous=zl.public(res["before"]),
        held=p["owner"] in res["after"]["holders"],
    )
    if res["broken"]:
        result["broken"] = res["broken"]
    if module._diff:
        result["diff"] = dict(before=zl.diff_view(res["before"]), after=zl.diff_view(res["after"]),
                              before_header=path, after_header=path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
