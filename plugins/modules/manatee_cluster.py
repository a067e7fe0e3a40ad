#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: manatee_cluster
short_description: Freeze, unfreeze or establish a manatee shard's cluster state
version_added: 0.1.0
description:
  - Changes C(/manatee/<shard>/state) in ZooKeeper the way C(manatee-adm) and the sitters do.
    The state is read with its version and changed in memory, then written back in one
    ZooKeeper multi-op. The multi-op does a C(setData) conditioned on that version and creates
    a C(history) node. If another writer, such as a sitter reconciling its asyncs, got in
    between, the state is re-read and the change decided again, up to O(cas_retries) times.
  - Every state is validated before it is written, against the rules every sitter applies
    on every read, plus all five peer fields. A state that would make the sitters exit is never
    written.
  - O(state=frozen) freezes the shard with O(freeze_reason), as C(manatee-adm freeze -r) does.
    If the shard is already frozen with another reason, that freeze is reported (a warning and
    RV(foreign_freeze)) and left as it is, unless O(force=true) replaces it.
  - O(state=unfrozen) removes the freeze only if its reason is O(freeze_reason). This fills the
    gap C(manatee-adm unfreeze) leaves, since it does not check the reason. A freeze set by
    someone else is reported and left in place, unless O(force=true).
  - O(state=established) writes the first state of a new shard, as reshard's
    C(establish_cluster) does, but safely. The state has generation 1, all five fields of every
    peer, an empty C(deposed) list, a freeze with O(freeze_reason), and an C(initWal) that is the
    new primary's real WAL position. It is written with its C(history) node in the same
    transaction, after strict validation (consistent ids and URLs, IPv4 addresses, unique peers).
    If the shard already has a state with the same primary, sync and asyncs, nothing changes. If
    the state differs, the task fails and nothing is written.
author:
  - manta.ops developers (@manta-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.zookeeper
  - manta.ops.zookeeper.manatee_postgres
attributes:
  check_mode:
    support: full
    details: Reads the state and reports the state that would be written, without writing it.
  diff_mode:
    support: full
    details: Before and after are the whole cluster state objects.
  platform:
    platforms: posix
options:
  shard:
    description: Shard name under C(/manatee/), for example V(2.moray.us-east.joyent.us).
    type: str
    required: true
  state:
    description:
      - V(frozen) freezes the shard with O(freeze_reason).
      - V(unfrozen) removes a freeze whose reason is O(freeze_reason).
      - V(established) creates the shard's first state from O(primary), O(sync) and O(asyncs).
    type: str
    required: true
    choices: [frozen, unfrozen, established]
  freeze_reason:
    description:
      - The freeze reason to set (V(frozen), V(established)), or to expect (V(unfrozen)),
        for example V(reshard plan 6c8b9680-885a-4c8b-9680-885ac8b6c8b9).
      - Required unless O(state=unfrozen) and O(force=true).
    type: str
  force:
    description:
      - With V(frozen), replace a freeze that has another reason. With V(unfrozen), remove a freeze
        whatever its reason.
      - Has no effect with V(established). A different existing state is never overwritten.
    type: bool
    default: false
  primary:
    description:
      - The new primary (O(state=established)). Give either the five manatee fields C(id), C(ip),
        C(pgUrl), C(zoneId) and C(backupUrl), or C(zone_id) and C(ip) plus optional C(pg_port)
        (default 5432) and C(backup_port) (default 12345), from which the others are derived.
    type: dict
  sync:
    description: The new sync (O(state=established)), in the same form as O(primary).
    type: dict
  asyncs:
    description: The new asyncs in replication order (O(state=established)), in the same form as O(primary).
    type: list
    elements: dict
    default: []
  init_wal:
    description:
      - C(initWal) of the new state (O(state=established)). This is the primary's WAL position
        when the generation begins. The sync may take over only after replaying this far.
      - An LSN such as V(0/3000148), or V(auto) to read it from the new primary's PostgreSQL
        (function C(pg_current_wal_lsn), or C(pg_last_wal_replay_lsn) if it is still a standby). With
        V(auto) the primary's PostgreSQL must be reachable.
      - When the new peers' PostgreSQL is stopped, record the primary-to-be's RV(manta.ops.manatee_peer#module:peer.wal_lsn)
        with M(manta.ops.manatee_peer) before it is stopped, and pass it here.
    type: str
    default: auto
  cas_retries:
    description: How many times to re-read and retry after losing a compare-and-swap race.
    type: int
    default: 10
notes:
  - Freezing does not stop the primary from adding or removing asyncs (reference/manatee.md 3.9).
  - Write O(state=established) before any sitter of the new shard is enabled, or while at most one
    is running. Otherwise a sitter may elect itself primary of an empty cluster. The task warns
    when it sees election nodes of peers that are not part of the new state.
seealso:
  - module: manta.ops.manatee_info
  - module: manta.ops.manatee_peer
"""

EXAMPLES = r"""
- name: Freeze the old shard for this plan (a freeze by an operator is reported and kept)
  manta.ops.manatee_cluster:
    shard: 2.moray.us-east.joyent.us
    state: frozen
    freeze_reason: "reshard plan {{ plan_uuid }}"
  register: frz

- name: Unfreeze only our own freeze
  manta.ops.manatee_cluster:
    shard: 2.moray.us-east.joyent.us
    state: unfrozen
    freeze_reason: "reshard plan {{ plan_uuid }}"

- name: Establish the new shard, frozen, with the new primary's real WAL position
  manta.ops.manatee_cluster:
    shard: 3.moray.us-east.joyent.us
    state: established
    freeze_reason: "reshard plan {{ plan_uuid }}"
    primary: {zone_id: "{{ new_primary }}", ip: 10.77.77.51}
    sync: {zone_id: "{{ new_sync }}", ip: 10.77.77.52}
    asyncs:
      - {zone_id: "{{ new_async }}", ip: 10.77.77.53}
    init_wal: "{{ journal.new_init_wal }}"
"""

RETURN = r"""
state:
  description: The cluster state after the task (the state that would be written, in check mode).
  returned: success
  type: dict
previous_state:
  description: The cluster state before the task (null when establishing a new shard).
  returned: success
  type: dict
manatee:
  description: A summary of RV(state).
  returned: success
  type: dict
  contains:
    shard:
      description: Shard name.
      type: str
    generation:
      description: Generation.
      type: int
    init_wal:
      description: initWal.
      type: str
    frozen:
      description: Whether the shard is frozen.
      type: bool
    freeze_reason:
      description: The freeze reason, or null.
      type: str
    freeze_date:
      description: The freeze date, or null.
      type: str
    topology:
      description: Peer ids by role.
      type: dict
freeze_matches:
  description:
    - Whether the shard's freeze reason is O(freeze_reason). For V(frozen) it is checked after the
      task, and for V(unfrozen) before it.
  returned: when O(state) is V(frozen) or V(unfrozen)
  type: bool
foreign_freeze:
  description: A freeze with another reason that was found (and left alone, or replaced with O(force=true)).
  returned: when such a freeze was found
  type: dict
  sample: {date: "2025-03-18T18:40:11.095Z", reason: "By nate for CM-129"}
attempts:
  description: Number of read-modify-write attempts (more than 1 after lost compare-and-swap races).
  returned: success
  type: int
init_wal:
  description: The initWal written (O(state=established)).
  returned: when O(state=established)
  type: str
  sample: 0/3000148
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import lsn as lsnmod
from ansible_collections.manta.ops.plugins.module_utils import manatee_pg as mpg
from ansible_collections.manta.ops.plugins.module_utils import manatee_state as ms
from ansible_collections.manta.ops.plugins.module_utils.zk import (
    Zk, ZkError, require_kazoo, zk_argument_spec)


def summary(shard, state, version=None):
    fr = ms.freeze_info(state)
    return {"shard": shard, "generation": state.get("generation"), "init_wal": state.get("initWal"),
            "frozen": fr["frozen"], "freeze_reason": fr["reason"], "freeze_date": fr["date"],
            "topology": ms.topology(state), "version": version}


def do_freeze(module, zk, p):
    want = p["freeze_reason"]
    note = {}

    def mutate(st):
        new, note["foreign"] = ms.plan_freeze(st, want, force=p["force"])
        return new

    res = ms.update_state(zk, p["shard"], mutate, check_mode=module.check_mode,
                          retries=p["cas_retries"])
    out = {"freeze_matches": ms.freeze_info(res["after"])["reason"] == want}
    foreign = note.get("foreign")
    if foreign:
        out["foreign_freeze"] = foreign
        if p["force"]:
            module.warn(f"shard {p['shard']} was frozen by someone else (reason "
                        f"{foreign['reason']!r}, since {foreign['date']}); "
                        "force=true replaced that freeze with ours")
        else:
            module.warn(f"shard {p['shard']} is already frozen by someone else (reason "
                        f"{foreign['reason']!r}, since {foreign['date']}); "
                        "it stays frozen with that reason and ours was not set")
    return res, out


def do_unfreeze(module, zk, p):
    want = p["freeze_reason"]
    note = {}

    def mutate(st):
        new, note["matches"], note["foreign"] = ms.plan_unfreeze(st, want, force=p["force"])
        return new

    res = ms.update_state(zk, p["shard"], mutate, check_mode=module.check_mode,
                          retries=p["cas_retries"])
    out = {"freeze_matches": bool(note.get("matches"))}
    foreign = note.get("foreign")
    if foreign:
        out["foreign_freeze"] = foreign
        if p["force"]:
            module.warn(f"shard {p['shard']} was frozen by someone else (reason "
                        f"{foreign['reason']!r}); force=true unfroze it anyway")
        else:
            module.warn(f"shard {p['shard']} is frozen by someone else (reason "
                        f"{foreign['reason']!r}, since {foreign['date']}, expected "
                        f"{want!r}); left frozen")
    return res, out


def do_establish(module, zk, p):
    try:
        primary = ms.peer_from_spec(p["primary"], "primary")
        sync = ms.peer_from_spec(p["sync"], "sync")
        asyncs = [ms.peer_from_spec(a, f"asyncs[{i}]") for i, a in enumerate(p["asyncs"] or [])]
    except ms.ManateeError as exc:
        module.fail_json(msg=str(exc), changed=False)
    shard = p["shard"]
    paths = ms.shard_paths(shard)
    raw, _stat = zk.get_or_none(paths["state"])
    init_wal = p["init_wal"]
    if raw is None:
        if init_wal == "auto":
            mpg.require_psycopg2(module)
            st = mpg.probe(primary, "primary", user=p["pg_user"], password=p["pg_password"],
                           connect_timeout=p["pg_connect_timeout"],
                           query_timeout=p["pg_query_timeout"])
            if st["error"] or not st["wal_lsn"]:
                module.fail_json(
                    changed=False,
                    msg=f"init_wal=auto: cannot read the WAL position of the new primary "
                        f"{primary['id']} at {primary['pgUrl']}: "
                        f"{st['error'] or 'no WAL position reported'}. Expected its PostgreSQL "
                        "to answer; if it is stopped, pass the LSN recorded before it was "
                        "stopped as init_wal")
            init_wal = st["wal_lsn"]
        elif not lsnmod.is_valid(init_wal):
            module.fail_json(changed=False,
                             msg=f"init_wal {init_wal!r} is neither an LSN like \"0/3000148\" nor auto")
    else:
        init_wal = init_wal if init_wal != "auto" else lsnmod.ZERO  # only compared by topology
    state = ms.new_cluster_state(primary, sync, asyncs, init_wal, p["freeze_reason"])
    members = {x["id"] for x in [primary, sync] + asyncs}
    strangers = [a["id"] for a in ms.active_peers(zk, shard, with_data=False)
                 if a["id"] and a["id"] not in members]
    res = ms.create_state(zk, shard, state, check_mode=module.check_mode)
    if res["changed"] and strangers:
        module.warn(f"shard {shard} has election nodes of peers that are not part of the new "
                    f"state: {', '.join(strangers)}; they will join as asyncs")
    res["attempts"] = 1
    return res, {"init_wal": res["after"].get("initWal")}


def main():
    spec = zk_argument_spec()
    spec.update(mpg.pg_argument_spec())
    spec.update(
        shard=dict(type="str", required=True),
        state=dict(type="str", required=True, choices=["frozen", "unfrozen", "established"]),
        freeze_reason=dict(type="str"),
        force=dict(type="bool", default=False),
        primary=dict(type="dict"),
        sync=dict(type="dict"),
        asyncs=dict(type="list", elements="dict", default=[]),
        init_wal=dict(type="str", default="auto"),
        cas_retries=dict(type="int", default=10),
    )
    module = AnsibleModule(
        argument_spec=spec,
        required_if=[("state", "frozen", ("freeze_reason",)),
                     ("state", "established", ("freeze_reason", "primary", "sync"))],
        supports_check_mode=True,
    )
    require_kazoo(module)
    p = module.params
    if p["state"] == "unfrozen" and not p["freeze_reason"] and not p["force"]:
        module.fail_json(msg="state=unfrozen needs freeze_reason (the reason of the freeze to "
                             "remove), or force=true to remove any freeze")
    if p["freeze_reason"] is not None and not p["freeze_reason"].strip():
        module.fail_json(msg="freeze_reason must not be empty")
    if p["cas_retries"] < 0:
        module.fail_json(msg=f"cas_retries must be >= 0, found {p['cas_retries']}")
    try:
        ms.shard_paths(p["shard"])
        with Zk(p["zk_servers"], p["zk_timeout"]) as zk:
            if p["state"] == "frozen":
                res, extra = do_freeze(module, zk, p)
            elif p["state"] == "unfrozen":
                res, extra = do_unfreeze(module, zk, p)
            else:
                res, extra = do_establish(module, zk, p)
    except ms.StateInvalid as exc:
        module.fail_json(msg=str(exc), validation_errors=exc.errors, changed=False)
    except (ms.ManateeError, ZkError) as exc:
        module.fail_json(msg=str(exc), changed=False)

    result = dict(changed=res["changed"], state=res["after"], previous_state=res["before"],
                  manatee=summary(p["shard"], res["after"], res.get("version")),
                  attempts=res.get("attempts", 1), **extra)
    if module._diff:
        result["diff"] = dict(before=res["before"] or {}, after=res["after"],
                              before_header=ms.shard_paths(p["shard"])["state"],
                              after_header=ms.shard_paths(p["shard"])["state"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
