#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
module: sapi_index_shards
short_description: Add, remove and mark read-only the Moray shards listed in SAPI INDEX_MORAY_SHARDS
version_added: 0.1.0
description:
  - Edits the shard list C(INDEX_MORAY_SHARDS) (or C(BUCKETS_MORAY_SHARDS))
    in the metadata of the C(manta) SAPI application, an array of
    C({"host", "readOnly"?, "last"?}) entries.
  - Marks shards read-only (C(readOnly=true), the reshard's write block) or
    read-write (C(readOnly) deleted), appends a missing shard, or removes one.
  - Unlike C(manta-shardadm set -i), which rewrites the list as bare
    C({host}) entries and so silently lifts every write block, only the named
    entries change. Every other entry is kept exactly as it is, and C(last=true)
    stays on the final entry only.
  - Electric-moray reads the list at process start, so a change takes effect
    only after its config is re-rendered and the processes restart.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.triton_api
  - manta.ops.triton_api.sapi
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  application:
    description: Name or uuid of the application holding the list.
    type: str
    default: manta
  key:
    description: The metadata key holding the shard list.
    type: str
    choices: [INDEX_MORAY_SHARDS, BUCKETS_MORAY_SHARDS]
    default: INDEX_MORAY_SHARDS
  shards:
    description:
      - Shard names, short (V(2.moray)) or full (V(2.moray.us-east.example.com)).
        As C(manta-shardadm) does, the suffix C(.<DOMAIN_NAME>) of the
        application metadata is appended unless the name already ends with it.
      - May be empty with O(state=read).
    type: list
    elements: str
    default: []
  state:
    description:
      - V(present) makes sure each shard is listed (see O(missing)), then
        applies O(read_only) to the named shards.
      - V(absent) removes the shards from the list.
      - V(read) changes nothing and returns the list.
    type: str
    choices: [present, absent, read]
    default: present
  read_only:
    description:
      - With O(state=present), V(true) sets C(readOnly=true) on the named
        shards, V(false) deletes their C(readOnly) flag. Omitted, flags are
        left as they are (new entries are read-write).
    type: bool
  missing:
    description:
      - What O(state=present) does with a shard that is not listed yet.
        V(add) appends it at the end (it becomes the C(last) entry).
        V(fail) fails without changing anything, naming the missing shard
        (use it where a missing shard means something went wrong, such as
        when marking shards read-write again after a reshard).
    type: str
    choices: [add, fail]
    default: add
  master:
    description: Send C(master=true) with the update, as the Manta tools do.
    type: bool
    default: false
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: Block writes to the old and the new shard (reshard phase 7)
  manta.ops.sapi_index_shards:
    shards: ["1.moray", "3.moray"]
    read_only: true

- name: Lift the write block (reshard phase 15); both must already be listed
  manta.ops.sapi_index_shards:
    shards: ["1.moray", "3.moray"]
    read_only: false
    missing: fail

- name: Show the index shards
  manta.ops.sapi_index_shards:
    state: read
  register: index
"""

RETURN = r"""
shards:
  description: The list after the change (predicted in check mode), as stored.
  returned: success
  type: list
  elements: dict
  sample: [{"host": "1.moray.lab.example.com", "readOnly": true}, {"host": "2.moray.lab.example.com", "last": true}]
before:
  description: The list as it was read.
  returned: success
  type: list
  elements: dict
summary:
  description: One C({host, read_only}) per entry of the new list.
  returned: success
  type: list
  elements: dict
  sample: [{"host": "1.moray.lab.example.com", "read_only": true}]
hosts:
  description: The full names the O(shards) option resolved to.
  returned: success
  type: list
  elements: str
application_uuid:
  description: Uuid of the application.
  returned: success
  type: str
diff:
  description: The list before and after, keyed by the metadata key.
  returned: when diff mode is on
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import index_shards as IS
from ansible_collections.manta.ops.plugins.module_utils.http_api import (
    ApiError, check_requests, client_kwargs, fail_api, require_url, triton_argument_spec)
from ansible_collections.manta.ops.plugins.module_utils.sapi import SapiClient


def main():
    spec = triton_argument_spec("sapi")
    spec.update(
        application=dict(type="str", default="manta"),
        key=dict(type="str", default="INDEX_MORAY_SHARDS", choices=list(IS.KEYS), no_log=False),
        shards=dict(type="list", elements="str", default=[]),
        state=dict(type="str", default="present", choices=["present", "absent", "read"]),
        read_only=dict(type="bool"),
        missing=dict(type="str", default="add", choices=["add", "fail"]),
        master=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    key = p["key"]
    if p["state"] != "read" and not p["shards"]:
        module.fail_json(msg=f"shards is required with state={p['state']}: list the shard names "
                             "(for example ['2.moray'])")
    if p["state"] != "present" and p["read_only"] is not None:
        module.fail_json(msg=f"read_only only applies to state=present, not state={p['state']}")
    check_requests(module)
    client = SapiClient(require_url(module, "sapi"), **client_kwargs(module))

    try:
        app = client.find_application(p["application"])
    except (ApiError, LookupError) as exc:
        fail_api(module, exc, f"cannot look up SAPI application {p['application']!r}")
    if app is None:
        module.fail_json(msg=f"no SAPI application {p['application']!r}: expected one application "
                             "with that name or uuid, found none", changed=False)

    meta = app.get("metadata") or {}
    domain = meta.get("DOMAIN_NAME")
    try:
        before = IS.validate(meta.get(key), key)
        names = [IS.full_name(n, domain) for n in p["shards"]]
        if p["state"] == "read":
            after = before
        else:
            after = IS.ensure(before, names, state=p["state"], read_only=p["read_only"],
                              missing=p["missing"])
    except IS.ShardListError as exc:
        module.fail_json(msg=f"SAPI application {app['uuid']} {key}: {exc}; nothing changed",
                         changed=False, shards=meta.get(key))

    changed = after != before
    result = dict(changed=changed, application_uuid=app["uuid"], hosts=names, before=before)
    if changed and not module.check_mode:
        try:
            # Re-read: if someone else edited the list since, recompute from
            # theirs rather than overwrite it with a stale copy.
            fresh = (client.get_object("application", app["uuid"]).get("metadata") or {}).get(key)
            if fresh != meta.get(key):
                fresh = IS.validate(fresh, key)
                after = IS.ensure(fresh, names, state=p["state"], read_only=p["read_only"],
                                  missing=p["missing"])
                result["before"] = before = fresh
                changed = result["changed"] = after != before
            if changed:
                written = client.update("application", app["uuid"], "update", metadata={key: after},
                                        master=p["master"])
                got = ((written or {}).get("metadata") or {}).get(key) if isinstance(written, dict) else after
                if got != after:
                    module.fail_json(msg=f"SAPI accepted the {key} update but answered with {got!r}, "
                                         f"expected {after!r} (a concurrent writer?)", **result)
        except IS.ShardListError as exc:
            module.fail_json(msg=f"SAPI application {app['uuid']} {key} changed under us: {exc}; "
                                 "nothing changed", changed=False)
        except ApiError as exc:
            fail_api(module, exc, f"SAPI update of {key} failed", **result | {"changed": False})

    result.update(shards=after, summary=IS.summary(after))
    if module._diff:
        result["diff"] = {"before": {key: before}, "after": {key: after}}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
