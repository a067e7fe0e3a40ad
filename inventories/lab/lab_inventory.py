#!/usr/bin/env python3
"""Dynamic inventory for the lab: every group and connection variable comes
from the running lab, computed when the inventory is read.

The lab's own code computes the status (`manta_lab.cli.status`: the zone
records under `<lab home>/zones/`, the manatee states in ZooKeeper, the
processes), the same view `lab status --json` prints. So zones provisioned
after `lab up` through the lab's SAPI (a reshard's new peers and morays, the
new shard's group) appear, and destroyed zones are gone, without running
`lab up` again. The script re-executes itself under the checkout's
`.venv/bin/python` (the lab's interpreter) when started by another one. When
the lab is down, or its code cannot run, `<lab home>/status.json` is used (the
last view written by `lab up`, `lab status` and the lab VMAPI after each zone
change, atomically), without the zones whose record is gone.

Groups mirror a production inventory (inventories/example): zookeeper,
headnode (SAPI/IMGAPI/VMAPI), postgres (+ one group per shard), moray,
electric_moray, storage. Lab hosts are reached with the local connection; zone-local
service control goes through `manta_svcadm`, which is plain `svcadm` in production.
"""
import json
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
sys.path.insert(0, str(REPO / "lab"))
from manta_lab.config import default_home  # noqa: E402  (stdlib-only module)

REEXEC_GUARD = "MANTA_LAB_INVENTORY_REEXEC"


def _reexec_under_lab_python():
    """Run under the lab's interpreter (it has the lab's dependencies: kazoo for ZooKeeper)."""
    if os.environ.get(REEXEC_GUARD) or not VENV_PYTHON.exists():
        return
    if Path(sys.prefix).resolve() == (REPO / ".venv").resolve():
        return
    os.environ[REEXEC_GUARD] = "1"
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])


def _zone_alive(home, zuuid):
    return bool(zuuid) and (home / "zones" / f"{zuuid}.json").exists()


def _prune(home, st):
    """A status.json read back: drop the zones whose record is gone (destroyed since it was written)."""
    for sh in (st.get("shards") or {}).values():
        sh["peers"] = [p for p in sh.get("peers") or [] if _zone_alive(home, p.get("zone"))]
        sh["morays"] = [m for m in sh.get("morays") or [] if _zone_alive(home, m.get("uuid"))]
    st["shards"] = {k: v for k, v in (st.get("shards") or {}).items() if v.get("peers") or v.get("morays")}
    for key in ("electric_moray", "storage", "zones"):
        st[key] = [z for z in st.get(key) or [] if _zone_alive(home, z.get("uuid"))]
    return st


def lab_status(home):
    """The lab's status now: computed live while the lab runs, else status.json pruned; None if no lab."""
    status_file = home / "status.json"
    try:
        from manta_lab import cli, config, procs
        cfg = config.load(str(home))
        if not cfg.path("lab.json").exists():
            return None
        if procs.alive(cfg, "zookeeper"):
            return cli.status(cfg)
    except Exception as exc:  # noqa: BLE001 - the lab's code could not run here: use the file
        print(f"lab inventory: live status unavailable ({type(exc).__name__}: {exc}); "
              f"using {status_file}", file=sys.stderr)
    if not status_file.exists():
        return None
    return _prune(home, json.loads(status_file.read_text()))


def group_name(shard):
    return "shard_" + re.sub(r"[^A-Za-z0-9_]", "_", shard)


def build():
    home = Path(default_home()).resolve()
    st = lab_status(home)
    if st is None:
        # No lab yet: an empty inventory, so a play can run `lab up` on
        # localhost and then refresh the inventory.
        print(f"lab inventory: no lab at {home} (run `lab up`)", file=sys.stderr)
        return {"_meta": {"hostvars": {}}}
    venv = REPO / ".venv"
    lab_cmd = f"{venv / 'bin' / 'lab'} --home {home}"
    inv = {"_meta": {"hostvars": {}}, "all": {"children": [], "vars": {}}}
    hv = inv["_meta"]["hostvars"]

    def add(group, host, **vars_):
        inv.setdefault(group, {"hosts": []})
        inv[group].setdefault("hosts", []).append(host)
        hv.setdefault(host, {}).update(vars_)

    inv["all"]["vars"] = {
        "ansible_connection": "local",
        "ansible_python_interpreter": str(venv / "bin" / "python"),
        "manta_lab": True,
        "manta_lab_home": str(home),
        "manta_domain": st["domain"],
        "manta_region": st["region"],
        "manta_zk_servers": st["zookeeper"]["connect"],
        "manta_sapi_url": st["apis"]["sapi"],
        "manta_imgapi_url": st["apis"]["imgapi"],
        "manta_vmapi_url": st["apis"]["vmapi"],
        "manta_servers": st["servers"],
        "manta_index_shards": sorted(st["shards"]),
    }
    add("zookeeper", "zk-lab", zk_connect=st["zookeeper"]["connect"])
    add("headnode", "headnode-lab", sapi_url=st["apis"]["sapi"],
        imgapi_url=st["apis"]["imgapi"], vmapi_url=st["apis"]["vmapi"])
    # the shard a zone belongs to is its own (SERVICE_NAME): a peer moved to a new shard by a reprovision
    # may still be named by its old shard's state until that shard's primary drops it
    zone_shard = {z["uuid"]: z.get("shard") for z in st.get("zones") or [] if z.get("kind") == "postgres"}
    for shard, sh in st["shards"].items():
        g = group_name(shard)
        peers = [p for p in sh.get("peers", []) if p.get("alias")  # no alias: a deposed peer whose zone is gone
                 and zone_shard.get(p.get("zone"), shard) == shard]
        if peers:
            inv.setdefault("postgres", {"children": []}).setdefault("children", []).append(g)
        for p in peers:
            host = p["alias"]
            add(g, host, zone_uuid=p["zone"], manatee_role=p.get("role"), shard=shard, pg_dsn=p.get("dsn"),
                pg_port=p.get("pg_port"), manatee_id=p.get("id"),
                datacenter=p.get("datacenter"),
                manta_svcadm=f"{lab_cmd} svcadm {p['zone']}")
        for m in sh.get("morays", []):
            add("moray", m["alias"], zone_uuid=m["uuid"], shard=shard, moray_url=m.get("url"),
                manta_svcadm=f"{lab_cmd} svcadm {m['uuid']}")
    for e in st.get("electric_moray", []):
        add("electric_moray", e["alias"], zone_uuid=e["uuid"], emoray_url=e.get("url"),
            emoray_status_url=e.get("status_url"), ring_path=e.get("ring"),
            manta_svcadm=f"{lab_cmd} svcadm {e['uuid']}")
    for s in st.get("storage", []):
        add("storage", s["storage_id"], zone_uuid=s["uuid"], manta_storage_id=s["storage_id"],
            storage_url=s.get("url"), storage_root=s.get("root"), datacenter=s.get("datacenter"),
            manta_svcadm=f"{lab_cmd} svcadm {s['uuid']}")
    inv["all"]["children"] = sorted(k for k in inv if k not in ("_meta", "all"))
    return inv


if __name__ == "__main__":
    _reexec_under_lab_python()
    if len(sys.argv) > 1 and sys.argv[1] == "--host":
        print("{}")
    else:
        print(json.dumps(build(), indent=2))
