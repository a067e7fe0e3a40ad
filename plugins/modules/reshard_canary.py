#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: reshard_canary
short_description: Write and verify a reshard's canary objects end to end through electric-moray
version_added: 0.1.0
description:
  - RFD 103 step 2 and step 9, automated. A canary is a Manta object (bucket C(manta)) whose directory hashes to
    a chosen vnode (M(manta.ops.reshard_plan) picks the keys); some sit on moving vnodes, one on a vnode that
    stays as a control.
  - V(present) creates the sentinel table on the old shard's primary (as moray's putBucket would) and writes the
    canaries through electric-moray (putObject), unless they are there already.
  - V(verified) reads every canary through every given electric-moray (getObject) and checks its value and the
    shard electric-moray routed it to (C(_node.pnode)), that is the new shard for moving canaries once the final ring is
    in (O(expect=new)), the old shard before. With O(write=true) it also writes a new version through
    electric-moray and checks, with direct reads of both primaries, that the write landed on the expected shard.
    With O(exclusive=true) (after the delete) a canary must exist on exactly one shard.
  - V(absent) deletes the canaries through electric-moray.
options:
  state:
    description: What to do.
    type: str
    choices: [present, verified, absent]
    default: verified
  plan:
    description: The plan id; the canaries' etags are journaled under C(props.canary_etags).
    type: str
    required: true
  canaries:
    description: The canaries, C({vnode, key, moving}).
    type: list
    elements: dict
    required: true
  emoray_urls:
    description: Electric-moray endpoints to go through.
    type: list
    elements: str
    required: true
  shard:
    description: The old shard.
    type: str
    required: true
  new_shard:
    description: The new shard.
    type: str
    required: true
  owner:
    description: The owner uuid in the canaries' values (poseidon).
    type: str
    required: true
  expect:
    description: Where moving canaries must be routed, V(old) or V(new) shard.
    type: str
    choices: [old, new]
    default: new
  write:
    description: With V(verified), write a new version through electric-moray and find it on the expected shard.
    type: bool
    default: false
  exclusive:
    description: With V(verified), require each canary on exactly one shard (after the delete).
    type: bool
    default: false
  timeout:
    description: Seconds to keep retrying reads and writes that fail transiently.
    type: float
    default: 60
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.zookeeper
  - manta.ops.zookeeper.manatee_postgres
attributes:
  check_mode:
    support: full
    details: V(verified) reads only; V(present) and V(absent) report what they would write.
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: Canaries are served by the new shard and take writes there
  manta.ops.reshard_canary:
    state: verified
    plan: "{{ plan }}"
    canaries: "{{ canaries }}"
    emoray_urls: "{{ groups.electric_moray | map('extract', hostvars, 'emoray_url') | list }}"
    shard: 1.moray.example.com
    new_shard: 3.moray.example.com
    owner: "{{ poseidon }}"
    expect: new
    write: true
"""

RETURN = r"""
canaries:
  description: Per canary, what each electric-moray returned and where the row was found.
  returned: always
  type: list
problems:
  description: What did not match (the task fails when not empty).
  returned: always
  type: list
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import manatee_state as ms
from ansible_collections.manta.ops.plugins.module_utils import reshard_common as rc
from ansible_collections.manta.ops.plugins.module_utils import reshard_journal as rj
from ansible_collections.manta.ops.plugins.module_utils.manatee_pg import pg_argument_spec
from ansible_collections.manta.ops.plugins.module_utils.zk import (
    Zk, ZkError, require_kazoo, zk_argument_spec)


def canary_value(c, owner, plan, version):
    key = c["key"]
    d, dummy, n = key.rpartition("/")
    return {"dirname": d, "key": key, "headers": {}, "mtime": int(time.time() * 1000), "name": n,
            "owner": owner, "roles": [], "type": "object", "contentLength": 0,
            "contentMD5": "1B2M2Y8AsgTpgAmY7PhCfg==", "contentType": "text/plain",
            "etag": f"canary-{plan[:8]}-{c['vnode']}-{version}", "objectId": f"canary-{plan}-{c['vnode']}",
            "sharks": [], "manta_reshard_canary": {"plan": plan, "vnode": c["vnode"], "version": version}}


def retry(fn, timeout, transient=("ConnectionError", "NoDatabaseError", "NoDatabasePeersError",
                                  "NoBackendsError", "InternalError")):
    t0 = time.monotonic()
    while True:
        try:
            return fn()
        except rc.EmError as exc:
            if exc.name not in transient or time.monotonic() - t0 > timeout:
                raise
            time.sleep(0.2)


def rows_on(zk, shard, keys, pg_opts):
    """{key: etag} of the canary rows on the shard's primary (direct read)."""
    try:
        st, dummy = ms.load(zk, shard)
    except ms.StateMissing:
        return None
    conn = rc.pg_connect(st["primary"]["pgUrl"], **pg_opts)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT _key, _etag FROM manta WHERE _key = ANY(%s)", (list(keys),))
            return {k: (e or "").strip() for k, e in cur.fetchall()}
    finally:
        conn.close()


def main():
    spec = zk_argument_spec()
    spec.update(pg_argument_spec())
    spec.update(state=dict(type="str", default="verified", choices=["present", "verified", "absent"]),
                plan=dict(type="str", required=True), canaries=dict(type="list", elements="dict", required=True),
                emoray_urls=dict(type="list", elements="str", required=True),
                shard=dict(type="str", required=True), new_shard=dict(type="str", required=True),
                owner=dict(type="str", required=True),
                expect=dict(type="str", default="new", choices=["old", "new"]),
                write=dict(type="bool", default=False), exclusive=dict(type="bool", default=False),
                timeout=dict(type="float", default=60))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_kazoo(module)
    p = module.params
    pg_opts = {"user": p["pg_user"], "password": p["pg_password"]}
    ems = [rc.EmClient(u, timeout=30) for u in p["emoray_urls"]]
    if not ems:
        module.fail_json(msg="emoray_urls is empty: the canaries are checked through electric-moray")
    res = {"changed": False, "canaries": [], "problems": []}
    pn_old, pn_new = rc.pnode(p["shard"]), rc.pnode(p["new_shard"])
    try:
        with Zk(p["zk_servers"], p["zk_timeout"]) as zk:
            j = rj.Journal(zk, p["plan"], check_mode=module.check_mode)
            etags = dict(j.props.get("canary_etags") or {})
            if p["state"] == "present":
                st, dummy = ms.load(zk, p["shard"])
                conn = rc.pg_connect(st["primary"]["pgUrl"], **pg_opts)
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (rc.SENTINEL_TABLE,))
                        have_table = cur.fetchone()[0]
                    if not have_table:
                        res["changed"] = True
                        if not module.check_mode:
                            rc.ensure_sentinel_table(conn)
                finally:
                    conn.close()
                for c in p["canaries"]:
                    try:
                        got = retry(lambda c=c: ems[0].get_object("manta", c["key"]), p["timeout"])
                        etags[c["key"]] = got.get("_etag") or got.get("etag")
                        res["canaries"].append({"key": c["key"], "vnode": c["vnode"], "existed": True})
                        continue
                    except rc.EmError as exc:
                        if exc.name != "ObjectNotFoundError":
                            raise
                    res["changed"] = True
                    if module.check_mode:
                        res["canaries"].append({"key": c["key"], "vnode": c["vnode"], "would_write": True})
                        continue
                    out = retry(lambda c=c: ems[0].put_object("manta", c["key"],
                                                              canary_value(c, p["owner"], p["plan"], 1)),
                                p["timeout"])
                    node = out.get("_node") or {}
                    if node.get("vnode") is not None and int(node["vnode"]) != int(c["vnode"]):
                        res["problems"].append(f"canary {c['key']} went to vnode {node.get('vnode')}, expected "
                                               f"{c['vnode']}")
                    etags[c["key"]] = out.get("etag")
                    res["canaries"].append({"key": c["key"], "vnode": c["vnode"], "etag": out.get("etag"),
                                            "pnode": node.get("pnode")})
                if not module.check_mode:
                    j.set_props({"canary_etags": etags})
            elif p["state"] == "absent":
                if not module.check_mode and not j.props.get("canaries_removed"):
                    j.set_props({"canaries_removed": False})
                for c in p["canaries"]:
                    res["changed"] = True
                    if module.check_mode:
                        continue
                    try:
                        retry(lambda c=c: ems[0].call("delObject", {"bucket": "manta", "key": c["key"],
                                                                    "options": {}}), p["timeout"])
                    except rc.EmError as exc:
                        if exc.name != "ObjectNotFoundError":
                            raise
                if not module.check_mode:
                    j.set_props({"canaries_removed": True}, event="canary objects removed")
            elif j.props.get("canaries_removed"):
                res["removed"] = True
            else:
                new_etags = {}
                for c in p["canaries"]:
                    want_pnode = pn_new if (c.get("moving") and p["expect"] == "new") else pn_old
                    row = {"key": c["key"], "vnode": c["vnode"], "moving": c.get("moving"),
                           "expected_pnode": want_pnode, "reads": []}
                    for i, em in enumerate(ems):
                        try:
                            got = retry(lambda em=em, c=c: em.get_object("manta", c["key"]), p["timeout"])
                        except rc.EmError as exc:
                            res["problems"].append(f"{c['key']} via {p['emoray_urls'][i]}: {exc}")
                            continue
                        node = got.get("_node") or {}
                        et = got.get("_etag") or got.get("etag")
                        row["reads"].append({"em": p["emoray_urls"][i], "pnode": node.get("pnode"),
                                             "etag": et})
                        if node.get("pnode") != want_pnode:
                            res["problems"].append(f"{c['key']} (vnode {c['vnode']}) routed to "
                                                   f"{node.get('pnode')} by {p['emoray_urls'][i]}, expected "
                                                   f"{want_pnode}")
                        if etags.get(c["key"]) and et != etags[c["key"]]:
                            res["problems"].append(f"{c['key']} has etag {et} via {p['emoray_urls'][i]}, "
                                                   f"expected {etags[c['key']]} (lost or foreign write)")
                    if p["write"] and not module.check_mode:
                        version = int(time.time())
                        try:
                            out = retry(lambda c=c: ems[-1].put_object(
                                "manta", c["key"], canary_value(c, p["owner"], p["plan"], version),
                                etag=etags.get(c["key"])), p["timeout"])
                            new_etags[c["key"]] = out.get("etag")
                            row["written"] = {"etag": out.get("etag"),
                                              "pnode": (out.get("_node") or {}).get("pnode")}
                        except rc.EmError as exc:
                            res["problems"].append(f"write of {c['key']} through electric-moray failed: {exc}")
                    res["canaries"].append(row)
                if new_etags:
                    res["changed"] = True
                    etags.update(new_etags)
                    j.set_props({"canary_etags": etags})
                if p["write"] or p["exclusive"]:
                    keys = [c["key"] for c in p["canaries"]]
                    old_rows = rows_on(zk, p["shard"], keys, pg_opts) or {}
                    new_rows = rows_on(zk, p["new_shard"], keys, pg_opts) or {}
                    for row, c in zip(res["canaries"], p["canaries"]):
                        on_new = c.get("moving") and p["expect"] == "new"
                        here, there = (new_rows, old_rows) if on_new else (old_rows, new_rows)
                        row["on_old"], row["on_new"] = old_rows.get(c["key"]), new_rows.get(c["key"])
                        if c["key"] not in here:
                            res["problems"].append(f"{c['key']} is not on {'the new' if on_new else 'the old'} "
                                                   "shard's primary")
                        elif p["write"] and new_etags.get(c["key"]) and here[c["key"]] != new_etags[c["key"]]:
                            res["problems"].append(f"the write of {c['key']} (etag {new_etags[c['key']]}) is "
                                                   f"not on the expected shard (it has {here[c['key']]})")
                        if p["exclusive"] and c["key"] in there:
                            res["problems"].append(f"{c['key']} is also on "
                                                   f"{'the old' if on_new else 'the new'} shard after the delete")
    except (ZkError, ms.ManateeError, rj.JournalError, rc.EmError) as exc:
        module.fail_json(msg=f"reshard canary: {exc}", **res)
    if res["problems"]:
        module.fail_json(msg="canary check failed: " + "; ".join(res["problems"][:10]), **res)
    module.exit_json(**res)


if __name__ == "__main__":
    main()
