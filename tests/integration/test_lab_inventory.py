"""inventories/lab follows the running lab (the session lab): zones provisioned through the lab's SAPI after
`lab up` appear in `ansible-inventory -i inventories/lab --list`, with the same host variables as the zones
`lab up` made, in the right groups (a new shard gets its own group under `postgres`), and are gone once
deleted; `<home>/status.json` and `lab status --json` follow too. Every test leaves the lab as it found it."""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

from manta_lab import zones

REPO = Path(__file__).resolve().parents[2]
INVENTORY = str(REPO / "inventories" / "lab")
V2 = {"Accept-Version": "~2"}


def inventory(lab):
    env = dict(os.environ, LAB_HOME=lab.home, ANSIBLE_NOCOLOR="1")
    env.pop("MANTA_LAB_INVENTORY_REEXEC", None)
    r = subprocess.run([str(REPO / ".venv" / "bin" / "ansible-inventory"), "-i", INVENTORY, "--list"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def group_name(shard):
    return "shard_" + "".join(c if c.isalnum() or c == "_" else "_" for c in shard)


def hosts_of(inv, group):
    return set((inv.get(group) or {}).get("hosts") or [])


def status_file(lab):
    return json.loads((Path(lab.home) / "status.json").read_text())


def zone_uuids_in(st):
    out = set()
    for sh in st["shards"].values():
        out |= {p.get("zone") for p in sh.get("peers") or []}
        out |= {m.get("uuid") for m in sh.get("morays") or []}
    return out


def wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def peer_id_of(zone):
    return f"127.0.0.1:{zone['ports']['pg']}:{zone['ports']['backup']}"


def left_shard(lab, shard, peer_id):
    """Leave the lab as found: the shard's primary has dropped the deleted peer from its state."""
    wait(lambda: all(p.get("id") != peer_id for p in lab.status["shards"][shard]["peers"]), 120,
         f"{shard}'s state to drop {peer_id}")


def manta(lab):
    sapi = lab.status["apis"]["sapi"]
    app = requests.get(sapi + "/applications", params={"name": "manta"}, headers=V2, timeout=10).json()[0]
    svcs = {s["name"]: s for s in requests.get(sapi + "/services", headers=V2, timeout=10,
                                               params={"application_uuid": app["uuid"]}).json()}
    return sapi, app, svcs


def create(sapi, svc, server, metadata, timeout=600):
    r = requests.post(sapi + "/instances", timeout=timeout, json={
        "service_uuid": svc["uuid"], "params": {"server_uuid": server["uuid"]}, "metadata": metadata})
    assert r.status_code == 200, r.text
    return r.json()["uuid"]


def delete(sapi, uuid):
    r = requests.delete(f"{sapi}/instances/{uuid}", timeout=600)
    assert r.status_code in (204, 404), r.text


@pytest.fixture(scope="module")
def before(lab):
    """The inventory as `lab up` left it, and the host variables its hosts have, per kind."""
    inv = inventory(lab)
    hv = inv["_meta"]["hostvars"]
    pg = sorted(h for g in inv["postgres"]["children"] for h in hosts_of(inv, g))
    return {"inv": inv, "peer_keys": set(hv[pg[0]]), "moray_keys": set(hv[sorted(hosts_of(inv, "moray"))[0]])}


def test_lab_inventory_is_the_live_status(lab, before):
    """Without any change, the inventory is exactly what `lab status --json` describes."""
    st = lab.status
    inv = before["inv"]
    for shard, sh in st["shards"].items():
        assert hosts_of(inv, group_name(shard)) == {p["alias"] for p in sh["peers"] if p.get("alias")}
        assert group_name(shard) in inv["postgres"]["children"]
    assert hosts_of(inv, "moray") == {m["alias"] for sh in st["shards"].values() for m in sh["morays"]}
    assert hosts_of(inv, "electric_moray") == {e["alias"] for e in st["electric_moray"]}
    assert {"zone_uuid", "manatee_role", "shard", "pg_dsn", "pg_port", "manatee_id", "datacenter",
            "manta_svcadm"} <= before["peer_keys"]


def test_peer_provisioned_through_sapi_appears_then_goes(lab, before):
    """A postgres peer created through SAPI after `lab up`: in its shard's group with the same host
    variables as the peers `lab up` made (a real, working zone: its role comes from the shard); in
    `lab status --json` and in status.json (rewritten by the lab VMAPI). Deleted: gone from all three."""
    cfg = lab.cfg
    sapi, app, svcs = manta(lab)
    name = cfg.shard_name(1)
    server = cfg.servers[-1]
    uuid = create(sapi, svcs["postgres"], server, {"SHARD": "1", "SERVICE_NAME": name,
                                                   "MANATEE_SHARD_PATH": f"/manatee/{name}",
                                                   "DATACENTER": server["datacenter"]})
    try:
        alias = zones.get(cfg, uuid)["alias"]
        peer_id = peer_id_of(zones.get(cfg, uuid))
        inv = inventory(lab)
        assert alias in hosts_of(inv, group_name(name)), sorted(hosts_of(inv, group_name(name)))
        hv = inv["_meta"]["hostvars"][alias]
        assert set(hv) == before["peer_keys"]
        zone = zones.get(cfg, uuid)
        assert hv["zone_uuid"] == uuid and hv["shard"] == name
        assert hv["pg_port"] == zone["ports"]["pg"] and f"port={zone['ports']['pg']}" in hv["pg_dsn"]
        assert hv["datacenter"] == server["datacenter"]
        assert hv["manta_svcadm"].endswith(f"svcadm {uuid}")
        # the sitter puts it in the chain: the inventory shows the role the shard gives it
        wait(lambda: inventory(lab)["_meta"]["hostvars"][alias]["manatee_role"] == "async", 120,
             "the new peer to be an async in the inventory")
        assert uuid in zone_uuids_in(lab.status)
        wait(lambda: uuid in zone_uuids_in(status_file(lab)), 30, "status.json to list the new peer")
    finally:
        delete(sapi, uuid)
    inv = inventory(lab)
    assert alias not in hosts_of(inv, group_name(name))
    assert alias not in inv["_meta"]["hostvars"]
    assert uuid not in zone_uuids_in(lab.status)
    wait(lambda: uuid not in zone_uuids_in(status_file(lab)), 30, "status.json to drop the peer")
    left_shard(lab, name, peer_id)


def test_new_shard_gets_its_own_group(lab, before):
    """Zones of a shard `lab up` never made (what a reshard creates): a moray of the new shard in `moray`,
    and a peer reprovisioned into the new shard (as a reshard's reconfigure_peers does) in a new
    `shard_<name>` group under `postgres`, each with the usual host variables. Deleted: the group goes."""
    cfg = lab.cfg
    sapi, app, svcs = manta(lab)
    old, new = cfg.shard_name(1), f"9.moray.{cfg.domain}"
    server = cfg.servers[0]
    made = []
    try:
        mo = create(sapi, svcs["moray"], server, {"SHARD": "9", "SERVICE_NAME": new,
                                                  "DATACENTER": server["datacenter"]}, timeout=300)
        made.append(mo)
        pg = create(sapi, svcs["postgres"], server, {"SHARD": "1", "SERVICE_NAME": old,
                                                     "MANATEE_SHARD_PATH": f"/manatee/{old}",
                                                     "DATACENTER": server["datacenter"]})
        made.append(pg)
        peer_id = peer_id_of(zones.get(cfg, pg))
        r = requests.put(f"{sapi}/instances/{pg}", timeout=30, json={"metadata": {
            "SHARD": "9", "SERVICE_NAME": new, "MANATEE_SHARD_PATH": f"/manatee/{new}"}})
        assert r.status_code == 200, r.text
        r = requests.put(f"{sapi}/instances/{pg}/upgrade", timeout=600,
                         json={"image_uuid": svcs["postgres"]["params"]["image_uuid"]})
        assert r.status_code == 200, r.text
        inv = inventory(lab)
        g = group_name(new)
        assert g in inv["postgres"]["children"], inv["postgres"]
        palias, malias = zones.get(cfg, pg)["alias"], zones.get(cfg, mo)["alias"]
        assert hosts_of(inv, g) == {palias}
        assert palias not in hosts_of(inv, group_name(old))
        assert set(inv["_meta"]["hostvars"][palias]) == before["peer_keys"]
        assert inv["_meta"]["hostvars"][palias]["shard"] == new
        assert malias in hosts_of(inv, "moray")
        mhv = inv["_meta"]["hostvars"][malias]
        assert set(mhv) == before["moray_keys"]
        assert mhv["shard"] == new and mhv["moray_url"].startswith("http://127.0.0.1:")
        wait(lambda: {pg, mo} <= zone_uuids_in(status_file(lab)), 30, "status.json to list the new shard")
    finally:
        for u in made:
            delete(sapi, u)
        from kazoo.client import KazooClient
        c = KazooClient(hosts=lab.status["zookeeper"]["connect"], timeout=10)
        c.start(timeout=10)
        try:
            if c.exists(f"/manatee/{new}"):
                c.delete(f"/manatee/{new}", recursive=True)
        finally:
            c.stop()
            c.close()
    inv = inventory(lab)
    assert group_name(new) not in inv and group_name(new) not in inv["postgres"]["children"]
    assert not any(v.get("shard") == new for v in inv["_meta"]["hostvars"].values())
    assert new not in lab.status["shards"]
    left_shard(lab, old, peer_id)


def test_inventory_falls_back_to_status_json_without_destroyed_zones(lab):
    """When the lab's code cannot run (another interpreter), status.json is used, without zones whose record
    is gone."""
    env = dict(os.environ, LAB_HOME=lab.home, MANTA_LAB_INVENTORY_REEXEC="1")
    r = subprocess.run(["/usr/bin/python3", "-I", "-S", str(REPO / "inventories" / "lab" / "lab_inventory.py"),
                        "--list"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "live status unavailable" in r.stderr
    inv = json.loads(r.stdout)
    st = lab.status
    assert hosts_of(inv, "electric_moray") == {e["alias"] for e in st["electric_moray"]}
    for shard, sh in st["shards"].items():
        assert hosts_of(inv, group_name(shard)) == {p["alias"] for p in sh["peers"] if p.get("alias")}
