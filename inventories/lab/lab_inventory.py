#!/usr/bin/env python3
"""Dynamic inventory for the lab: every group and connection variable comes
from the running lab's status (`<lab home>/status.json`, written by `lab up`).

Groups mirror a production inventory (inventories/example): zookeeper,
headnode (SAPI/IMGAPI/VMAPI), postgres (+ one group per shard), moray,
electric_moray, storage. Lab hosts are reached with the local connection; zone-local
service control goes through `manta_svcadm`, which is plain `svcadm` in production.
"""
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))
from manta_lab.config import default_home  # noqa: E402  (stdlib-only module)


def group_name(shard):
    return "shard_" + re.sub(r"[^A-Za-z0-9_]", "_", shard)


def build():
    home = Path(default_home()).resolve()
    status_file = home / "status.json"
    if not status_file.exists():
        # No lab yet: an empty inventory, so a play can run `lab up` on
        # localhost and then refresh the inventory.
        print(f"lab inventory: {status_file} not found (run `lab up`)", file=sys.stderr)
        return {"_meta": {"hostvars": {}}}
    st = json.loads(status_file.read_text())
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
    for shard, sh in st["shards"].items():
        g = group_name(shard)
        inv.setdefault("postgres", {"children": []}).setdefault("children", []).append(g)
        for p in sh.get("peers", []):
            if not p.get("alias"):
                continue  # a deposed peer whose zone is gone
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
    if len(sys.argv) > 1 and sys.argv[1] == "--host":
        print("{}")
    else:
        print(json.dumps(build(), indent=2))
