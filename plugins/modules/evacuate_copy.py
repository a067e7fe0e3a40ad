#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: evacuate_copy
short_description: Pull a round's object copies onto this storage node, verified and durable
version_added: 0.1.0
description:
  - Runs on a destination storage node. Reads the round's task file for this node (written by
    M(manta.ops.evacuate_plan) and copied here), and for every task makes
    C(<root>/<creator-or-owner>/<objectId>) hold the object, with internal concurrency (one
    module call moves thousands of objects).
  - "Per object: an existing file with the right size and MD5 is kept (nothing fetched);
    otherwise the object is fetched over HTTP from its first source, falling back along the list
    (other copies, then the evacuated node); the MD5 and length are checked while it streams into
    a temporary file on the same filesystem; the file is fsync'ed, renamed into place, and the
    directory fsync'ed. With O(verify_url) each copy is then read back through this node's own
    web server (C(HEAD)), so the metadata never names a node that cannot serve the copy."
  - Transport errors and HTTP 5xx are retried with back-off; a 404, an MD5 or a length mismatch
    tries the next source; when every source fails the object is skipped with the reason.
  - When transient failures dominate (O(pause_error_ratio) of the last O(pause_window) copies,
    or O(pause_consecutive) in a row) no new copy starts and RV(paused) says why (RFD 162's
    automatic pause); the play then pauses the job.
  - The results are written to O(results) (one line per object for the metadata step) and
    summarised in the module result. Nothing is ever deleted, on this node or on the sources.
  - Standard library only; it needs no Python package on the storage node.
author:
  - manta.ops developers (@manta-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Verifies what is already here and reports what would be fetched; writes nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  src:
    description: The task file on this node (JSON written by M(manta.ops.evacuate_plan)).
    type: path
    required: true
  results:
    description: Where to write the results (default O(src) with C(.result.json)).
    type: path
  root:
    description: The node's object root (mako's C(/manta)); default the one in the task file.
    type: path
  tmp_dir:
    description: Temporary files, on the same filesystem as O(root) (default C(<root>/manta_evacuate/tmp)).
    type: path
  concurrency:
    description: Copies in flight at once on this node.
    type: int
    default: 8
  max_bytes_per_sec:
    description: Bytes per second this node may read in total (V(0) unlimited).
    type: int
    default: 0
  timeout:
    description: Seconds to wait for a source to connect or send data.
    type: float
    default: 30
  retries:
    description: Retries of a source after a transport error or HTTP 5xx, before the next source.
    type: int
    default: 2
  verify_url:
    description: This node's own web server (for example V(http://3.stor.example.com)); each copy is read back through it.
    type: str
  deadline:
    description: Time (seconds since the epoch) after which no new copy starts; the rest is reported not attempted.
    type: float
  durability:
    description:
      - How a copy is made durable before it counts (always data first, then the rename, then
        the directory entry).
      - V(file) fsyncs each file, then its directory (directory syncs are group-committed).
      - V(batch) (Linux) does the same with one C(syncfs) of the filesystem shared by all
        copies in flight, instead of one flush per file.
      - V(auto) picks V(batch) where C(syncfs) exists, V(file) elsewhere.
      - The default is V(file). On ZFS (the storage nodes' filesystem) the intent log batches
        concurrent fsyncs anyway; V(batch) helps on Linux filesystems dedicated to the objects
        (syncfs flushes the whole filesystem, so it is slower where other writers share it).
    type: str
    choices: [auto, file, batch]
    default: file
  pause_window:
    description: How many recent copies the automatic pause looks at.
    type: int
    default: 50
  pause_error_ratio:
    description: Share of transient failures in that window that pauses (V(1.0) never).
    type: float
    default: 0.5
  pause_consecutive:
    description: Transient failures in a row that pause.
    type: int
    default: 20
seealso:
  - module: manta.ops.evacuate_plan
  - module: manta.ops.evacuate_metadata
"""

EXAMPLES = r"""
- name: Copy this round's objects here
  manta.ops.evacuate_copy:
    src: /var/tmp/manta-evacuate/round-3.json
    verify_url: "{{ storage_url }}"
    concurrency: 16
    max_bytes_per_sec: 200000000
  register: copied
"""

RETURN = r"""
objects:
  description: Tasks in the file.
  returned: always
  type: int
copied:
  description: Objects now here and verified (fetched or already present).
  returned: always
  type: int
fetched:
  description: Objects fetched (the rest were already here).
  returned: always
  type: int
bytes_fetched:
  description: Bytes fetched.
  returned: always
  type: int
skipped_by_reason:
  description: Objects skipped, by reason (md5_mismatch, source_not_found, size_mismatch, ...).
  returned: always
  type: dict
transient_by_reason:
  description: Objects that failed transiently (back to pending), by reason.
  returned: always
  type: dict
not_attempted:
  description: Objects not started (pause or deadline).
  returned: always
  type: int
paused:
  description: Why the node stopped starting copies (automatic pause), or null.
  returned: always
  type: str
seconds:
  description: Wall time.
  returned: always
  type: float
objects_per_second:
  description: Copies per second.
  returned: always
  type: float
md5_engine:
  description:
    - How the MD5 of the fetched bytes was computed.
    - V(md5_lanes/avx512) or V(md5_lanes/avx2) hash the chunks of concurrent transfers
      together in SIMD lanes (the library is compiled on the host on first use);
      V(hashlib) where no C compiler or no AVX2 is available.
  returned: always
  type: str
  sample: md5_lanes/avx512
results_file:
  description: Path of the results file.
  returned: always
  type: str
"""

import collections
import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import evacuate_args as A
from ansible_collections.manta.ops.plugins.module_utils import evacuate_copy as EC


def main():
    module = AnsibleModule(
        argument_spec=A.argument_spec(
            src=dict(type="path", required=True),
            results=dict(type="path"),
            root=dict(type="path"),
            tmp_dir=dict(type="path"),
            concurrency=dict(type="int", default=8),
            max_bytes_per_sec=dict(type="int", default=0),
            timeout=dict(type="float", default=30.0),
            retries=dict(type="int", default=2),
            verify_url=dict(type="str"),
            deadline=dict(type="float"),
            pause_window=dict(type="int", default=50),
            pause_error_ratio=dict(type="float", default=0.5),
            pause_consecutive=dict(type="int", default=20),
            durability=dict(type="str", default="file", choices=["auto", "file", "batch"]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if not 1 <= p["concurrency"] <= 1024:
        module.fail_json(msg=f"concurrency must be between 1 and 1024, got {p['concurrency']}")
    if p["max_bytes_per_sec"] < 0 or p["retries"] < 0 or p["timeout"] <= 0:
        module.fail_json(msg="max_bytes_per_sec and retries must be >= 0, timeout > 0")
    try:
        a = EC.load_assignment(p["src"])
    except (OSError, ValueError, EC.CopyError) as exc:
        module.fail_json(msg=f"cannot read the task file {p['src']}: {exc}")
    root = p["root"] or a.get("root") or "/manta"
    if not os.path.isdir(root):
        module.fail_json(msg=f"root {root} is not a directory: expected this node's object root "
                             "(mako's /manta)")
    results_path = p["results"] or (p["src"][:-5] if p["src"].endswith(".json") else p["src"]) \
        + ".result.json"
    copier = EC.Copier(root, a.get("sources") or {}, tmp_dir=p["tmp_dir"],
                       concurrency=p["concurrency"], max_bytes_per_sec=p["max_bytes_per_sec"] or None,
                       source_bytes_per_sec=a.get("source_bytes_per_sec") or {},
                       timeout=p["timeout"], retries=p["retries"], verify_url=p["verify_url"],
                       deadline=p["deadline"], pause_window=p["pause_window"],
                       pause_error_ratio=p["pause_error_ratio"],
                       pause_consecutive=p["pause_consecutive"], check_mode=module.check_mode,
                       durability=p["durability"])
    t0 = time.monotonic()
    try:
        pairs = copier.run(a["tasks"])
    except OSError as exc:
        module.fail_json(msg=f"cannot copy into {root}: {exc}")
    secs = time.monotonic() - t0
    skipped, transient = collections.Counter(), collections.Counter()
    copied = fetched = na = 0
    would_fetch = 0
    for _task, o in pairs:
        if o.status == EC.COPIED:
            if o.reason == "would_fetch":
                would_fetch += 1
            else:
                copied += 1
            fetched += 1 if o.fetched else 0
        elif o.status == EC.SKIPPED:
            skipped[o.reason] += 1
        elif o.status == EC.NOT_ATTEMPTED:
            na += 1
        else:
            transient[o.reason] += 1
    stats = copier.stats()
    out = dict(changed=fetched > 0 or (module.check_mode and would_fetch > 0),
               objects=len(pairs), copied=copied, fetched=fetched,
               bytes_fetched=stats["bytes_fetched"], skipped_by_reason=dict(skipped),
               transient_by_reason=dict(transient), not_attempted=na, paused=copier.paused,
               stopped=copier.stopped, seconds=round(secs, 3),
               objects_per_second=round(len(pairs) / secs, 1) if secs > 0 else None,
               results_file=results_path, dest=a.get("dest"), round=a.get("round"),
               md5_engine=stats["md5"]["engine"])
    if module.check_mode:
        out["would_fetch"] = would_fetch
        module.exit_json(**out)
    try:
        EC.write_json_atomic(results_path, {"job": a.get("job"), "round": a.get("round"),
                                            "dest": a.get("dest"), "stats": stats,
                                            "results": EC.result_rows(pairs)})
    except OSError as exc:
        module.fail_json(msg=f"cannot write the results file {results_path}: {exc}", **out)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
