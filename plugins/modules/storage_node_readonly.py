#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: storage_node_readonly
short_description: Take a Manta storage node out of the pickers' rotation (read-only), and check it is out
version_added: 0.1.0
description:
  - A storage node becomes read-only when its capacity heartbeat (C(minnow)) stops. Its
    C(manta_storage) record then goes stale and, once older than storinfo's C(lag), storinfo and
    the muskie pickers stop choosing the node for new objects (reference/evacuate.md §1.4, §3.10).
    The rebalancer left this to the operator (MANTA-4462); this module does it and verifies it.
  - With O(state=readonly) it disables the heartbeat service in the node's zone
    (C(<svcadm> disable <service>)), then waits until the node's C(manta_storage) record is older
    than O(lag) and has stopped advancing, and optionally asks each storinfo to refresh
    (O(storinfo_urls)).
  - With O(state=writable) it enables the service again and waits for a fresh heartbeat (to
    abandon an evacuation).
  - Runs on the storage node (the service command is zone-local); it reads the heartbeat from the
    primary of the shard holding C(manta_storage), found in ZooKeeper.
  - The result is V(changed) when the node was in rotation and is taken out (or the reverse); a
    second run finds it already out and changes nothing, but still makes sure the service stays
    disabled.
author:
  - manta.ops developers (@manta-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.evacuate
attributes:
  check_mode:
    support: full
    details: Reports whether the node is in rotation and what would be done; runs no command.
  diff_mode:
    support: full
    details: V(in_rotation) before and after.
  platform:
    platforms: posix
options:
  storage_id:
    description: The node's C(manta_storage_id), for example V(3.stor.us-east.example.com).
    type: str
    required: true
  state:
    description: V(readonly) takes the node out of rotation; V(writable) puts it back.
    type: str
    choices: [readonly, writable]
    default: readonly
  svcadm:
    description:
      - The zone-local service control command, without the action, for example V(svcadm) (the
        default, as in a storage zone), or the inventory's C(manta_svcadm).
      - It is run as C(<svcadm> disable <service>) / C(<svcadm> enable <service>).
    type: str
    default: svcadm
  service:
    description: The heartbeat service (its SMF FMRI or name).
    type: str
    default: minnow
  lag:
    description:
      - Seconds after which a heartbeat is stale and the node out of the pickers' rotation
        (storinfo's and muskie's C(lag), 60 s in Manta's templates).
    type: float
    default: 60
  wait:
    description: Wait until the node is verified out of (or back in) rotation.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait for that before failing.
    type: float
    default: 300
  storinfo_urls:
    description: Storinfo base URLs to POST C(/flush) to once the node is out, so they drop it at once.
    type: list
    elements: str
    default: []
  heartbeat_dsn:
    description:
      - libpq connection string of the database holding C(manta_storage), instead of finding the
        storage shard's primary in ZooKeeper. Never shown.
    type: str
  storage_shard:
    description: The shard holding C(manta_storage) (default SAPI C(STORAGE_MORAY_SHARD)).
    type: str
  pg_query_timeout:
    description: Statement timeout in seconds.
    type: float
    default: 30
notes:
  - Muskie keeps its own picker cache; with storinfo's C(lag) elapsed both have dropped the node.
    Objects written while the node was still in rotation are found by the scan, which must run
    after this module (the play orders it so).
seealso:
  - module: manta.ops.evacuate_scan
"""

EXAMPLES = r"""
- name: Make the nodes read-only and check they are out of rotation
  manta.ops.storage_node_readonly:
    storage_id: "{{ manta_storage_id }}"
    svcadm: "{{ manta_svcadm | default('svcadm') }}"
    zk_servers: "{{ manta_zk_servers }}"
    sapi_url: "{{ manta_sapi_url }}"

- name: Abandon the evacuation, put the node back in rotation
  manta.ops.storage_node_readonly:
    storage_id: 3.stor.us-east.example.com
    state: writable
"""

RETURN = r"""
in_rotation:
  description: Whether the node is in rotation at the end (fresh heartbeat).
  returned: always
  type: bool
was_in_rotation:
  description: Whether it was at the start.
  returned: always
  type: bool
heartbeat:
  description: The node's heartbeat at the end (age_seconds, timestamp, availableMB, percentUsed, datacenter).
  returned: always
  type: dict
waited:
  description: Seconds spent waiting for the node to leave (or rejoin) the rotation.
  returned: always
  type: float
command:
  description: The service command run (none in check mode, or when nothing was needed).
  returned: always
  type: str
"""

import shlex
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

from ansible_collections.manta.ops.plugins.module_utils import evacuate_args as A
from ansible_collections.manta.ops.plugins.module_utils import evacuate_common as C
from ansible_collections.manta.ops.plugins.module_utils import storage_nodes as SN


def heartbeat(ctx, p):
    if p["heartbeat_dsn"]:
        conn = C.pg_connect(dsn=p["heartbeat_dsn"], connect_timeout=p["pg_connect_timeout"],
                            query_timeout=p["pg_query_timeout"])
        try:
            beats = SN.read_heartbeats(conn)
        finally:
            conn.close()
    else:
        beats = SN.read_heartbeats(ctx.shard_conn(ctx.storage_shard()))
    return beats


def view(rec, now=None):
    if rec is None:
        return None
    return {"age_seconds": round(SN.age_seconds(rec, now) or 0, 1), "timestamp": rec.get("timestamp"),
            "availableMB": rec.get("availableMB"), "percentUsed": rec.get("percentUsed"),
            "datacenter": rec.get("datacenter")}


def main():
    spec = A.argument_spec(
        "connection",
        storage_id=dict(type="str", required=True),
        state=dict(type="str", default="readonly", choices=["readonly", "writable"]),
        svcadm=dict(type="str", default="svcadm"),
        service=dict(type="str", default="minnow"),
        lag=dict(type="float", default=60.0),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="float", default=300.0),
        storinfo_urls=dict(type="list", elements="str", default=[]),
        heartbeat_dsn=dict(type="str", no_log=True),
        pg_query_timeout=dict(type="float", default=30.0),  # a heartbeat read, not a scan
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    C.require_psycopg2(module)
    p = module.params
    if p["lag"] <= 0:
        module.fail_json(msg=f"lag must be > 0 seconds, got {p['lag']}")
    sid = p["storage_id"]
    ctx = C.Context(dict(p, job_dsn=None, job_schema=C.DEFAULT_SCHEMA))
    want_out = p["state"] == "readonly"
    result = dict(changed=False, command="", waited=0.0)
    with C.module_errors(module, ctx, result, "storage_node_readonly"):
        beats = heartbeat(ctx, p)
        rec = beats.get(sid)
        if rec is None:
            raise C.EvacError(f"no manta_storage heartbeat record for {sid}: it is not a storage "
                              f"node Manta knows (known: {', '.join(sorted(beats)) or 'none'})")
        was = SN.in_rotation(rec, p["lag"])
        result.update(was_in_rotation=was, in_rotation=was, heartbeat=view(rec))
        changed = was if want_out else not was
        result["changed"] = changed
        if module._diff:
            result["diff"] = {"before": {"in_rotation": was}, "after": {"in_rotation": not want_out}}
        if module.check_mode:
            result["in_rotation"] = not want_out
            ctx.close()
            module.exit_json(**result)
        # The command is idempotent (disable of a disabled service is a no-op), and is
        # always issued: a stale heartbeat may be a crashed minnow that would come back.
        argv = shlex.split(p["svcadm"]) + ["disable" if want_out else "enable", p["service"]]
        rc, out, err = module.run_command(argv)
        result["command"] = " ".join(shlex.quote(a) for a in argv)
        if rc != 0:
            raise C.EvacError(f"{result['command']} failed (rc {rc}): {(err or out).strip()[:500]}")
        if p["wait"]:
            t0 = time.monotonic()
            first_ts = rec.get("timestamp")
            while True:
                beats = heartbeat(ctx, p)
                rec = beats.get(sid)
                now = time.time()
                inrot = SN.in_rotation(rec, p["lag"], now)
                if want_out:
                    # Out means: older than lag. While waiting, the timestamp must stop
                    # moving (a still-running minnow would keep it fresh).
                    if not inrot:
                        break
                    remaining = p["lag"] - (SN.age_seconds(rec, now) or 0)
                else:
                    if inrot and rec.get("timestamp") != first_ts:
                        break
                    remaining = 1.0
                if time.monotonic() - t0 > p["wait_timeout"]:
                    raise C.EvacError(
                        f"{sid} is still {'in' if want_out else 'out of'} rotation after "
                        f"{p['wait_timeout']:.0f}s (heartbeat {SN.age_seconds(rec, now):.0f}s old, "
                        f"lag {p['lag']:.0f}s): is {p['service']} really "
                        f"{'stopped' if want_out else 'running'}?")
                time.sleep(max(0.5, min(5.0, remaining + 0.2)))
            result["waited"] = round(time.monotonic() - t0, 1)
            result["in_rotation"] = SN.in_rotation(rec, p["lag"])
            result["heartbeat"] = view(rec)
        if want_out and p["storinfo_urls"]:
            flushed = []
            for u in p["storinfo_urls"]:
                try:
                    with open_url(u.rstrip("/") + "/flush", data=b"", method="POST", timeout=10) as r:
                        flushed.append({"url": u, "status": r.status})
                except Exception as exc:  # noqa: BLE001
                    module.warn(f"storinfo flush {u} failed: {exc}")
                    flushed.append({"url": u, "error": str(exc)})
            result["storinfo_flushed"] = flushed
    module.exit_json(**result)


if __name__ == "__main__":
    main()
