#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: fash_ring
short_description: Manage a node-fash LevelDB hash ring declaratively
version_added: 0.1.0
description:
  - Creates, changes, imports and exports the consistent-hash ring that decides which Manta metadata
    shard owns every key. The LevelDB files are byte-compatible with node-fash 3.0.x and are read
    unchanged by C(fash) and electric-moray.
  - Declares that the ring exists with a vnode count and pnodes; that given vnodes belong to a pnode
    (O(remap)); that given vnodes carry data such as V(ro) or none (O(data)); that pnodes are absent
    (O(absent_pnodes)); that the ring matches a JSON topology (O(src)); and exports it as JSON (O(dest)).
  - All changes of one run are written in a single LevelDB write batch, so a crash leaves either the old
    ring or the new one. Remapping 333,334 vnodes takes seconds.
  - In check mode the ring is read from a private copy and nothing is written; the result and the diff
    say what would change. The diff is compact, with pnode vnode counts and moved vnodes as ranges.
  - A ring held by a running process (electric-moray, C(fash)) cannot be changed; the module fails at
    once naming the ring's C(LOCK) file.
options:
  path:
    description: The ring's LevelDB directory.
    type: path
    required: true
  vnodes:
    description:
      - Number of vnodes. Used to create the ring; if the ring exists it must have this many vnodes.
    type: int
  pnodes:
    description:
      - Pnodes of a new ring, each C(tcp://<host>:<port>). Vnode V(v) goes to the V(v mod P)-th pnode in
        sorted order, as C(fash create) does.
      - Only used to create the ring; when the ring exists, pnodes that are missing give a warning.
    type: list
    elements: str
  algorithm:
    description:
      - Hash algorithm of a new ring (V(sha256) when not given). When given, an existing ring must use the
        same algorithm.
    type: str
    choices: [sha256, sha-256, SHA256, SHA-256, sha1, sha-1, SHA1, SHA-1, md5, MD5]
  remap:
    description:
      - Vnodes that must belong to a pnode, which is created when new. Vnodes already there are left alone.
        Their data moves with them.
    type: list
    elements: dict
    default: []
    suboptions:
      vnodes:
        description: Vnodes, as a list of integers, or a string like V(0-99,200 300) (ranges allowed).
        type: raw
        required: true
      pnode:
        description: The pnode, C(tcp://<host>:<port>).
        type: str
        required: true
  data:
    description:
      - Data the vnodes must carry. V(ro) makes electric-moray refuse writes to them; V(null) clears the data.
    type: list
    elements: dict
    default: []
    suboptions:
      vnodes:
        description: Vnodes, as a list of integers or a string with ranges.
        type: raw
        required: true
      value:
        description: The data, e.g. V(ro); V(null) (or omitted) for no data.
        type: raw
  absent_pnodes:
    description:
      - Pnodes that must not be in the ring. A pnode that still owns vnodes after the requested remaps is
        refused.
    type: list
    elements: str
    default: []
  src:
    description:
      - A serialized (JSON) ring to import. Creates the ring from it when absent; otherwise remaps vnodes,
        sets data and removes pnodes until the ring matches it. Every vnode must appear exactly once.
    type: path
  dest:
    description: Write the resulting ring as JSON (every vnode, empty pnodes kept) to this file.
    type: path
  sst:
    description:
      - Name the table files of a new ring C(.sst) so that mantav1's electric-moray (LevelDB 1.11) can read
        them. Rings already stored as C(.sst) stay so when changed.
    type: bool
    default: false
  strict_pnodes:
    description:
      - Require pnode names of the form C(tcp://<host>:<port>), which electric-moray needs.
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
requirements:
  - plyvel
notes:
  - The ring is read whole (about 1.5 s for 1,000,000 vnodes) to plan and report the change.
seealso:
  - module: manta.ops.fash_ring_info
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: Create a 1,000,000-vnode ring over three shards
  manta.ops.fash_ring:
    path: /var/tmp/hash_ring
    vnodes: 1000000
    pnodes:
      - tcp://1.moray.example.com:2020
      - tcp://2.moray.example.com:2020
      - tcp://3.moray.example.com:2020

- name: Mark the vnodes being moved read-only
  manta.ops.fash_ring:
    path: /var/tmp/hash_ring
    data:
      - vnodes: "{{ moving_vnodes }}"
        value: ro

- name: Move them to the new shard (on a pristine copy of the ring)
  manta.ops.fash_ring:
    path: /var/tmp/hash_ring_new
    remap:
      - vnodes: "{{ moving_vnodes }}"
        pnode: tcp://4.moray.example.com:2020
  check_mode: true
  diff: true

- name: Remove an emptied shard and export the ring
  manta.ops.fash_ring:
    path: /var/tmp/hash_ring
    absent_pnodes: [tcp://1.moray.example.com:2020]
    dest: /var/tmp/ring.json

- name: Build a ring from a serialized topology, readable by mantav1
  manta.ops.fash_ring:
    path: /var/tmp/hash_ring
    src: /var/tmp/ring.json
    sst: true
"""

RETURN = r"""
ring:
  description: The ring directory.
  returned: success
  type: str
created:
  description: Whether a new ring was (or, in check mode, would be) written.
  returned: success
  type: bool
exported:
  description: Whether O(dest) was (or would be) written.
  returned: success
  type: bool
vnode_count:
  description: Number of vnodes.
  returned: success
  type: int
  sample: 1000000
pnodes:
  description: Every pnode of the resulting ring with its number of vnodes, in C(/PNODE) order.
  returned: success
  type: dict
  sample: {"tcp://1.moray.example.com:2020": 333334, "tcp://2.moray.example.com:2020": 333333}
data_vnodes:
  description: Number of vnodes of the resulting ring that carry data.
  returned: success
  type: int
actions:
  description: The operations applied (or that would be), with counts and vnode ranges.
  returned: success
  type: list
  elements: dict
  sample: [{"action": "remap", "pnode": "tcp://4.moray.example.com:2020", "count": 3, "ranges": "0-2"}]
ring_diff:
  description:
    - Differences between the ring before and after; moved vnodes grouped by source and destination with
      counts and ranges, data changes grouped by before and after value. V(null) for a new ring.
  returned: success
  type: dict
warnings:
  description: Warnings, e.g. pnodes given that are not in an existing ring.
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible_collections.manta.ops.plugins.module_utils.fash.errors import RingError
    from ansible_collections.manta.ops.plugins.module_utils.fash.ops.plan import RingSpec, apply_spec
    IMPORT_ERROR = None
except ImportError as exc:  # plyvel missing
    IMPORT_ERROR = exc

ALGORITHMS = ["sha256", "sha-256", "SHA256", "SHA-256", "sha1", "sha-1", "SHA1", "SHA-1", "md5", "MD5"]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            vnodes=dict(type="int"),
            pnodes=dict(type="list", elements="str"),
            algorithm=dict(type="str", choices=ALGORITHMS),
            remap=dict(type="list", elements="dict", default=[], options=dict(
                vnodes=dict(type="raw", required=True),
                pnode=dict(type="str", required=True),
            )),
            data=dict(type="list", elements="dict", default=[], options=dict(
                vnodes=dict(type="raw", required=True),
                value=dict(type="raw"),
            )),
            absent_pnodes=dict(type="list", elements="str", default=[]),
            src=dict(type="path"),
            dest=dict(type="path"),
            sst=dict(type="bool", default=False),
            strict_pnodes=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR is not None:
        module.fail_json(msg="fash_ring needs the Python package plyvel on the target: %s" % IMPORT_ERROR)
    p = module.params
    spec = RingSpec(p["path"], vnodes=p["vnodes"], pnodes=p["pnodes"], algorithm=p["algorithm"],
                    remap=p["remap"], data=p["data"], absent_pnodes=p["absent_pnodes"], src=p["src"],
                    dest=p["dest"], sst=p["sst"], strict_pnodes=p["strict_pnodes"])
    try:
        result = apply_spec(spec, check_mode=module.check_mode)
    except RingError as exc:
        module.fail_json(msg=str(exc), ring=p["path"])
    except OSError as exc:
        module.fail_json(msg="%s: %s" % (getattr(exc, "filename", None) or p["path"], exc.strerror or exc))
    diff = result.pop("diff")
    if module._diff:
        result["diff"] = diff
    for w in result.get("warnings", []):
        module.warn(w)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
