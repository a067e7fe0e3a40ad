#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: fash_ring_info
short_description: Facts and queries about a node-fash hash ring
version_added: 0.1.0
description:
  - Reads a node-fash LevelDB ring (or a serialized JSON ring) and returns its pnodes with their vnode
    counts and the vnodes that carry data.
  - Answers queries - the vnodes of a pnode, the pnode, vnode and data for keys (hashed as given, like
    C(fash get-node)) or for Manta paths (with electric-moray's bucket-aware key transform), and the
    differences with another ring.
  - By default reads a private copy of the ring, so it works while electric-moray holds the ring and
    leaves the ring's files untouched.
options:
  path:
    description: The ring's LevelDB directory, or a JSON file with a serialized ring.
    type: path
    required: true
  pnode:
    description: Return the vnodes of this pnode (RV(vnodes), RV(vnode_ranges)).
    type: str
  keys:
    description: Keys to look up, hashed as given (no Manta transform), like C(fash get-node).
    type: list
    elements: str
    default: []
  paths:
    description: Manta keys to route the way electric-moray does for O(bucket).
    type: list
    elements: str
    default: []
  bucket:
    description:
      - Bucket of O(paths). V(manta) hashes the parent directory, V(manta_uploads) the directory of the
        part after the first colon; other buckets hash the key as given.
    type: str
    default: manta
  compare_to:
    description: Another ring (LevelDB directory or JSON file) to diff against; the result is RV(diff).
    type: path
  diff_vnodes:
    description: Include full vnode lists in RV(diff), not only counts and ranges.
    type: bool
    default: false
  verify:
    description: Check the ring's internal consistency; problems are returned in RV(problems).
    type: bool
    default: false
  snapshot:
    description:
      - Read a private copy of the ring directory. V(false) opens the ring itself, which fails at once
        naming its C(LOCK) file when another process holds it.
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: The module only reads.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - plyvel
seealso:
  - module: manta.ops.fash_ring
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: Which shard holds these Manta paths?
  manta.ops.fash_ring_info:
    path: /electric-moray/chash/leveldb-2021
    paths:
      - /poseidon/stor/foo/bar.txt
      - /a3829ca2-0966-60ce-9dc3-e4e9060f0950/stor
  register: where

- name: Vnodes of the shard to split
  manta.ops.fash_ring_info:
    path: /var/tmp/hash_ring
    pnode: tcp://1.moray.example.com:2020
  register: shard1

- name: What a new ring changes
  manta.ops.fash_ring_info:
    path: /var/tmp/hash_ring
    compare_to: /var/tmp/hash_ring_new
  register: ring_change
"""

RETURN = r"""
vnode_count:
  description: Number of vnodes.
  returned: always
  type: int
  sample: 1000000
algorithm:
  description: The stored ALGORITHM object (NAME, MAX, VNODE_HASH_INTERVAL).
  returned: always
  type: dict
version:
  description: The stored ring-format version.
  returned: always
  type: str
  sample: 2.1.0
pnodes:
  description: Every pnode (C(/PNODE) order), including pnodes emptied but not removed.
  returned: always
  type: list
  elements: str
pnode_counts:
  description: Number of vnodes of each pnode.
  returned: always
  type: dict
  sample: {"tcp://1.moray.example.com:2020": 333334}
data_vnodes:
  description: Vnodes (as strings) that carry data, with their data.
  returned: always
  type: dict
  sample: {"4": "ro"}
read_only_vnodes:
  description: Ranges of the vnodes whose data is V(ro).
  returned: always
  type: str
  sample: 4,7-9
vnodes:
  description: Vnodes of O(pnode), ascending.
  returned: when O(pnode) is given
  type: list
  elements: int
vnode_ranges:
  description: Vnodes of O(pnode) as ranges.
  returned: when O(pnode) is given
  type: str
nodes:
  description: One entry per key and path - key, bucket, hashed string, pnode, vnode, data.
  returned: when O(keys) or O(paths) are given
  type: list
  elements: dict
  sample: [{"key": "/poseidon/stor/foo", "bucket": "manta", "hashed": "/poseidon/stor",
            "pnode": "tcp://1.moray.example.com:2020", "vnode": 3, "data": 1, "read_only": false}]
problems:
  description: Consistency problems found.
  returned: when O(verify=true)
  type: list
  elements: str
diff:
  description: Differences from this ring to O(compare_to) - moved vnodes by source and destination, data changes.
  returned: when O(compare_to) is given
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible_collections.manta.ops.plugins.module_utils.fash.errors import RingError
    from ansible_collections.manta.ops.plugins.module_utils.fash.ops.info import ring_info
    IMPORT_ERROR = None
except ImportError as exc:
    IMPORT_ERROR = exc


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            pnode=dict(type="str"),
            keys=dict(type="list", elements="str", default=[], no_log=False),
            paths=dict(type="list", elements="str", default=[]),
            bucket=dict(type="str", default="manta"),
            compare_to=dict(type="path"),
            diff_vnodes=dict(type="bool", default=False),
            verify=dict(type="bool", default=False),
            snapshot=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR is not None:
        module.fail_json(msg="fash_ring_info needs the Python package plyvel on the target: %s" % IMPORT_ERROR)
    p = module.params
    try:
        info = ring_info(p["path"], pnode=p["pnode"], keys=p["keys"], paths=p["paths"], bucket=p["bucket"],
                         compare_to=p["compare_to"], diff_vnodes=p["diff_vnodes"], snapshot=p["snapshot"],
                         verify=p["verify"])
    except RingError as exc:
        module.fail_json(msg=str(exc), ring=p["path"])
    except OSError as exc:
        module.fail_json(msg="%s: %s" % (getattr(exc, "filename", None) or p["path"], exc.strerror or exc))
    module.exit_json(changed=False, **info)


if __name__ == "__main__":
    main()
