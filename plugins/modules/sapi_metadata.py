#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
module: sapi_metadata
short_description: Read, set or delete metadata keys of a SAPI application, service or instance
version_added: 0.1.0
description:
  - Reads, sets (shallow per-key merge, SAPI C(action=update)) or deletes
    (SAPI C(action=delete)) metadata keys of a SAPI application, service or
    instance, such as C(HASH_RING_IMAGE) on the C(manta) application or
    C(SHARD)/C(SERVICE_NAME) on a postgres instance.
  - SAPI never says whether a C(PUT) changed anything; this module reads the
    object first, computes the change itself and only writes the keys whose
    value differs. A second identical run reports C(changed=false).
  - An optional compare-and-swap guard O(expected) changes keys only if they
    still hold the values the caller last saw. A key that already holds its
    new value counts as done. SAPI has no etag, so the guard is checked on a
    fresh read immediately before the write.
  - Values of secret-looking keys (C(UFDS_ROOT_PW), C(*_PASSWORD),
    C(*_TOKEN), C(*_SECRET)...) are masked in the diff and the result.
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
    description:
      - Name or uuid of the application. Alone, the application itself is
        the target; with O(service), it scopes the service name lookup.
    type: str
  service:
    description:
      - Name or uuid of the service whose metadata is the target.
    type: str
  instance:
    description:
      - Uuid of the instance whose metadata is the target.
    type: str
  uuid:
    description:
      - Uuid of an application, service or instance, of unknown kind (looked
        up as C(sapiadm) does; application, then service, then instance).
    type: str
  state:
    description:
      - V(present) sets the keys of O(metadata) (and O(params)).
      - V(absent) deletes the keys listed in O(keys) (or the keys of
        O(metadata)).
      - V(read) changes nothing and returns the metadata, and in
        RV(key_values) the keys listed in O(keys).
    type: str
    choices: [present, absent, read]
    default: present
  metadata:
    description:
      - Keys to set, with their new JSON values. A value replaces the old
        value of the key whole (objects and arrays are not deep-merged).
      - With O(state=absent), the keys of this map are deleted and its values
        are ignored.
    type: dict
  keys:
    description:
      - With O(state=absent), the metadata keys to delete.
      - With O(state=read), the keys to return in RV(key_values).
    type: list
    elements: str
  params:
    description:
      - Params keys to set in the same update (shallow per-key merge), for
        example C(alias). Only with O(state=present).
    type: dict
  expected:
    description:
      - Compare-and-swap guard. Maps a metadata key to the value it must
        still hold for the change to be made; V(null) means the key must be
        absent.
      - If any key holds something else (another client changed it first),
        the module fails, naming the key, the expected and the found value,
        and changes nothing. A key that already holds its new value (from
        O(metadata)) or is already deleted is not a conflict.
    type: dict
  master:
    description:
      - Send C(master=true) with the update (multi-DC SAPI, objects stored in
        the master DC), as the Manta tools do.
    type: bool
    default: false
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: Install a new hash ring, but only if nobody changed it since we looked
  manta.ops.sapi_metadata:
    application: manta
    metadata:
      HASH_RING_IMAGE: "{{ new_ring_uuid }}"
    expected:
      HASH_RING_IMAGE: "{{ old_ring_uuid }}"

- name: Read the shard lists of the manta application
  manta.ops.sapi_metadata:
    application: manta
    state: read
    keys: [INDEX_MORAY_SHARDS, STORAGE_MORAY_SHARD]
  register: shards

- name: Point a detached peer at its new shard and rename it
  manta.ops.sapi_metadata:
    instance: "{{ peer_uuid }}"
    metadata:
      SERVICE_NAME: "3.moray.{{ domain }}"
      SHARD: "3"
      MANATEE_SHARD_PATH: "/manatee/3.moray.{{ domain }}"
    params:
      alias: "3.postgres.{{ domain }}-{{ peer_uuid[:8] }}"

- name: Drop a key from the postgres service
  manta.ops.sapi_metadata:
    service: postgres
    application: manta
    state: absent
    keys: [PG_CONFIG_OVERRIDES]
"""

RETURN = r"""
kind:
  description: Kind of the target object.
  returned: success
  type: str
  sample: application
uuid:
  description: Uuid of the target object.
  returned: success
  type: str
  sample: 6a1c3e0e-44a0-4d2b-9d6c-6f6f1b0a6a43
name:
  description: Name of the target application or service (null for an instance).
  returned: success
  type: str
  sample: manta
metadata:
  description:
    - The object's whole metadata after the change (predicted in check mode),
      with secret-looking values masked.
  returned: success
  type: dict
  sample: {"HASH_RING_IMAGE": "2c0a...", "DOMAIN_NAME": "us-east.example.com"}
key_values:
  description:
    - The keys of O(keys) (state read/absent) or O(metadata) (state present)
      that exist after the change, with their values.
  returned: success
  type: dict
  sample: {"HASH_RING_IMAGE": "2c0a..."}
changed_keys:
  description: Metadata keys that were (or in check mode would be) changed.
  returned: success
  type: list
  elements: str
  sample: [HASH_RING_IMAGE]
diff:
  description: Old and new values of the changed keys, under C(metadata) and C(params).
  returned: when diff mode is on
  type: dict
  sample: {"before": {"metadata": {"HASH_RING_IMAGE": "old"}}, "after": {"metadata": {"HASH_RING_IMAGE": "new"}}}
api_code:
  description: The restify C(code) of a failed API answer.
  returned: failure of an API call
  type: str
  sample: ResourceNotFound
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import sapi as S
from ansible_collections.manta.ops.plugins.module_utils.http_api import (
    ApiError, check_requests, client_kwargs, fail_api, require_url, triton_argument_spec)


def compute(state, meta, params_cur, p):
    """(new_metadata, new_params, wanted_keys, deleting) for the requested state."""
    if state == "present":
        new_meta = S.apply_update(meta, p["metadata"] or {})
        new_params = S.apply_update(params_cur, p["params"] or {}) if p["params"] else params_cur
        return new_meta, new_params, sorted((p["metadata"] or {}).keys()), ()
    if state == "absent":
        keys = list(p["keys"] or []) + sorted((p["metadata"] or {}).keys())
        return S.apply_delete(meta, keys), params_cur, sorted(set(keys)), tuple(keys)
    return meta, params_cur, sorted(p["keys"] or []), ()


def main():
    spec = triton_argument_spec("sapi")
    spec.update(
        application=dict(type="str"),
        service=dict(type="str"),
        instance=dict(type="str"),
        uuid=dict(type="str"),
        state=dict(type="str", default="present", choices=["present", "absent", "read"]),
        metadata=dict(type="dict"),
        keys=dict(type="list", elements="str", no_log=False),
        params=dict(type="dict"),
        expected=dict(type="dict"),
        master=dict(type="bool", default=False),
    )
    module = AnsibleModule(
        argument_spec=spec,
        required_one_of=[("application", "service", "instance", "uuid")],
        mutually_exclusive=[("instance", "uuid"), ("instance", "service"), ("uuid", "service"),
                            ("uuid", "application"), ("instance", "application")],
        supports_check_mode=True,
    )
    p = module.params
    state = p["state"]
    if state == "present" and not p["metadata"] and not p["params"]:
        module.fail_json(msg="state=present needs metadata (keys to set) or params; "
                             "use state=read to only read")
    if state == "absent" and not p["keys"] and not p["metadata"]:
        module.fail_json(msg="state=absent needs keys (metadata keys to delete)")
    if p["params"] and state != "present":
        module.fail_json(msg=f"params can only be set with state=present, not state={state}")
    if p["expected"] and state == "read":
        module.fail_json(msg="expected (compare-and-swap) has no meaning with state=read")
    check_requests(module)
    url = require_url(module, "sapi")
    client = S.SapiClient(url, **client_kwargs(module))

    try:
        kind, obj = client.resolve(application=p["application"], service=p["service"],
                                   instance=p["instance"], uuid=p["uuid"])
    except LookupError as exc:
        module.fail_json(msg=f"SAPI object not found: {exc}", changed=False)
    except ApiError as exc:
        fail_api(module, exc, "cannot look up the SAPI object")

    meta = obj.get("metadata") or {}
    params_cur = obj.get("params") or {}
    new_meta, new_params, wanted, deleting = compute(state, meta, params_cur, p)
    mkeys = S.changed_keys(meta, new_meta)
    pkeys = S.changed_keys(params_cur, new_params)
    result = dict(changed=bool(mkeys or pkeys), kind=kind, uuid=obj.get("uuid"), name=obj.get("name"),
                  changed_keys=mkeys)

    lost = S.cas_conflicts(meta, p["expected"], desired=p["metadata"] if state == "present" else None,
                           deleting=deleting)
    if lost:
        module.fail_json(msg=f"compare-and-swap lost on SAPI {kind} {obj.get('uuid')}: "
                             f"{S.describe_conflicts(lost)}; nothing changed",
                         conflicts=[{"key": k, "expected": e, "found": f} for k, e, f in lost],
                         **result | {"changed": False})

    if result["changed"] and not module.check_mode:
        try:
            if p["expected"]:
                # Re-read right before writing: narrows the window in which
                # a concurrent writer could slip in (SAPI has no If-Match).
                fresh = client.get_object(kind, obj["uuid"]).get("metadata") or {}
                lost = S.cas_conflicts(fresh, p["expected"],
                                       desired=p["metadata"] if state == "present" else None,
                                       deleting=deleting)
                if lost:
                    module.fail_json(msg=f"compare-and-swap lost on SAPI {kind} {obj.get('uuid')}: "
                                         f"{S.describe_conflicts(lost)}; nothing changed",
                                     conflicts=[{"key": k, "expected": e, "found": f} for k, e, f in lost],
                                     **result | {"changed": False})
            if state == "present":
                written = client.update(kind, obj["uuid"], "update",
                                        metadata={k: new_meta[k] for k in mkeys} if mkeys else None,
                                        params={k: new_params[k] for k in pkeys} if pkeys else None,
                                        master=p["master"])
            else:
                written = client.update(kind, obj["uuid"], "delete",
                                        metadata={k: None for k in mkeys}, master=p["master"])
        except ApiError as exc:
            fail_api(module, exc, f"SAPI update of {kind} {obj['uuid']} failed", **result | {"changed": False})
        got = (written or {}).get("metadata") if isinstance(written, dict) else None
        if got is not None:
            bad = [k for k in mkeys if got.get(k, S.MISSING) != new_meta.get(k, S.MISSING)]
            if bad:
                module.fail_json(msg=f"SAPI accepted the update of {kind} {obj['uuid']} but its answer "
                                     f"shows {', '.join(bad)} as "
                                     f"{S.redact(S.subset(got, bad))}, expected "
                                     f"{S.redact(S.subset(new_meta, bad))} (a concurrent writer?)",
                                 **result)
            new_meta = got

    result["metadata"] = S.redact(new_meta)
    result["key_values"] = S.redact(S.subset(new_meta, wanted))
    if module._diff:
        before = {"metadata": S.redact(S.subset(meta, mkeys))}
        after = {"metadata": S.redact(S.subset(new_meta, mkeys))}
        if pkeys:
            before["params"] = S.subset(params_cur, pkeys)
            after["params"] = S.subset(new_params, pkeys)
        result["diff"] = {"before": before, "after": after}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
