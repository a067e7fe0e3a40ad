#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: reshard_rings
short_description: Build a reshard's transitional and final hash rings and publish them to IMGAPI
version_added: 0.1.0
description:
  - Downloads the current ring (O(old_image)) and builds, with the fash library, two rings as fresh LevelDB
    directories byte-compatible with node-fash, each stamped with its image uuid
    (C(manta_hash_ring_stamp.json)), as follows.
  - the B(transitional) ring, the old mapping with data V(ro) on every moving vnode, so that electric-moray
    refuses writes to exactly those vnodes while reads go on;
  - the B(final) ring, the moving vnodes remapped to the new pnode (created in the ring).
  - Each is packed as C(hash_ring/) in a gzip tarball and imported into IMGAPI as C(manta-hash-ring) owned by
    the manta application's owner, with tags C(manta_reshard_plan), C(manta_reshard_ring)
    (V(transitional)/V(final)) and C(manta_reshard_transition).
  - Idempotent by those tags. An active image already tagged for the plan and role is reused (after checking it
    describes the wanted ring); an unactivated one (a crash during the upload) is deleted and rebuilt; more
    than one active image for a role is an error.
  - In check mode nothing is built or uploaded; the ring diff is computed in memory.
options:
  plan:
    description: The plan id.
    type: str
    required: true
  old_image:
    description: The current ring image (C(HASH_RING_IMAGE) when the plan was made).
    type: str
    required: true
  pnode:
    description: The old shard's pnode, C(tcp://<shard>:2020).
    type: str
    required: true
  new_pnode:
    description: The new shard's pnode.
    type: str
    required: true
  vnodes:
    description: The moving vnodes (list, ranges text, or the journal's packed form).
    type: raw
    required: true
  owner:
    description: Owner uuid of the images (the manta application's C(owner_uuid)).
    type: str
    required: true
  workdir:
    description: Scratch directory.
    type: path
    default: /var/tmp/manta-reshard
  dest:
    description:
      - Also write the final ring as a serialized (JSON) ring to this file (for M(manta.ops.moray_vnode_rows)),
        and return the old shard's vnodes in it (RV(old_pnode_vnodes)). Not written in check mode.
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.triton_api
  - manta.ops.triton_api.imgapi
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
requirements: [plyvel, requests]
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: Build and publish the rings
  manta.ops.reshard_rings:
    plan: "{{ plan }}"
    old_image: "{{ old_image }}"
    pnode: tcp://1.moray.example.com:2020
    new_pnode: tcp://3.moray.example.com:2020
    vnodes: "0,106,943"
    owner: "{{ poseidon_uuid }}"
"""

RETURN = r"""
transitional_image:
  description: Uuid of the transitional ring image.
  returned: always
  type: str
final_image:
  description: Uuid of the final ring image.
  returned: always
  type: str
ring_diff:
  description: Old -> final (moved vnodes, pnode counts) and old -> transitional (data changes), compact.
  returned: always
  type: dict
reused:
  description: Roles whose image already existed.
  returned: always
  type: list
old_pnode_vnodes:
  description: The vnodes the old shard keeps in the final ring, as ranges text.
  returned: always
  type: str
seconds:
  description: Time spent building and uploading.
  returned: always
  type: float
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import reshard_journal as rj
from ansible_collections.manta.ops.plugins.module_utils import reshard_plan as rp
from ansible_collections.manta.ops.plugins.module_utils import reshard_ring as rring
from ansible_collections.manta.ops.plugins.module_utils.http_api import (
    ApiError, check_requests, client_kwargs, require_url, triton_argument_spec)


def compact_diff(d):
    return {k: d.get(k) for k in ("moved_count", "data_changed_count", "pnodes_added", "counts")} | {
        "moved": [{k: m.get(k) for k in ("from", "to", "count", "ranges")} for m in d.get("moved") or []],
        "data": [{k: x.get(k) for k in ("before", "after", "count", "ranges")} for x in d.get("data") or []]}


def main():
    spec = triton_argument_spec("imgapi")
    spec.update(plan=dict(type="str", required=True), old_image=dict(type="str", required=True),
                pnode=dict(type="str", required=True), new_pnode=dict(type="str", required=True),
                vnodes=dict(type="raw", required=True), owner=dict(type="str", required=True),
                workdir=dict(type="path", default="/var/tmp/manta-reshard"), dest=dict(type="path"))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    check_requests(module)
    p = module.params
    from ansible_collections.manta.ops.plugins.module_utils.fash import diff_rings
    from ansible_collections.manta.ops.plugins.module_utils.imgapi import ImgapiClient
    imgapi = ImgapiClient(require_url(module, "imgapi"), **client_kwargs(module))
    vnodes = rj.unpack_vnodes(p["vnodes"])
    res = {"changed": False, "reused": [], "transitional_image": None, "final_image": None}
    t0 = time.monotonic()
    try:
        old, _stamp = rp.load_ring_image(imgapi, p["old_image"], p["workdir"])
        bad = [v for v in vnodes if old.pnode_of(v) not in (p["pnode"], p["new_pnode"])]
        if bad:
            module.fail_json(msg=f"vnodes {rj.ranges_text(bad)[:200]} are not on {p['pnode']} in ring "
                                 f"{p['old_image']}", **res)
        trans = old.copy()
        trans.set_data(vnodes, "ro")
        final = old.copy()
        final.remap(vnodes, p["new_pnode"], strict=False)
        res["ring_diff"] = {"final": compact_diff(diff_rings(old, final, with_vnodes=False)),
                            "transitional": compact_diff(diff_rings(old, trans, with_vnodes=False))}
        transition = f"move {len(vnodes)} vnodes of {p['pnode']} to new shard {p['new_pnode']}"
        for role, topo in (("transitional", trans), ("final", final)):
            imgs = imgapi.list_images(name=rring.IMAGE_NAME, owner=p["owner"], state="all",
                                      tags={"manta_reshard_plan": p["plan"], "manta_reshard_ring": role})
            active = [i for i in imgs if i.get("state") == "active"]
            stale = [i for i in imgs if i.get("state") != "active"]
            if len(active) > 1:
                module.fail_json(msg=f"IMGAPI has {len(active)} active {role} ring images for plan {p['plan']} "
                                     f"({', '.join(i['uuid'] for i in active)}); delete the extra ones", **res)
            if active:
                got, dummy = rp.load_ring_image(imgapi, active[0]["uuid"], p["workdir"])
                if got != topo:
                    module.fail_json(msg=f"image {active[0]['uuid']} is tagged as the {role} ring of plan "
                                         f"{p['plan']} but describes another ring; delete it and re-run", **res)
                res[f"{role}_image"] = active[0]["uuid"]
                res["reused"].append(role)
                continue
            res["changed"] = True
            if module.check_mode:
                res[f"{role}_image"] = f"(new {role} image)"
                continue
            for i in stale:
                imgapi.delete_image(i["uuid"])
            uuid, sha1, size, _st = rring.publish(imgapi, topo, p["workdir"], p["owner"], p["plan"], role,
                                                  transition)
            res[f"{role}_image"] = uuid
            res[f"{role}_sha1"] = sha1
            res[f"{role}_size"] = size
    except ApiError as exc:
        module.fail_json(msg=f"reshard rings: {exc}", **res)
    except Exception as exc:  # noqa: BLE001 - fash errors
        module.fail_json(msg=f"reshard rings: {type(exc).__name__}: {exc}", **res)
    res["old_pnode_vnodes"] = rj.ranges_text(final.vnodes_of(p["pnode"]))
    if p["dest"] and not module.check_mode:
        try:
            os.makedirs(os.path.dirname(p["dest"]) or ".", exist_ok=True)
            tmp = p["dest"] + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(final.to_json())
            os.replace(tmp, p["dest"])
        except OSError as exc:
            module.fail_json(msg=f"cannot write the final ring to {p['dest']}: {exc}", **res)
    res["seconds"] = round(time.monotonic() - t0, 3)
    if module._diff:
        res["diff"] = {"before": {"rings": p["old_image"]},
                       "after": {"transitional": res["transitional_image"], "final": res["final_image"],
                                 "moved": res["ring_diff"]["final"]["moved"]}}
    module.exit_json(**res)


if __name__ == "__main__":
    main()
