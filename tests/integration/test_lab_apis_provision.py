"""SAPI/VMAPI against the whole lab (`lab up`, the session fixture): the
bootstrap describes the lab, and SAPI CreateInstance / UpgradeInstance /
DeleteInstance of ``postgres`` and ``moray`` really create, reprovision and
destroy zones. Every test leaves the lab as it found it."""
import time
import uuid as uuidlib
from pathlib import Path

import psycopg2
import pytest
import requests

from manta_lab import moray, shard, zones

V2 = {"Accept-Version": "~2"}


def _api(lab):
    st = lab.status
    return st["apis"]["sapi"], st["apis"]["imgapi"], st["apis"]["vmapi"]


def _manta(lab):
    sapi, _, _ = _api(lab)
    app = requests.get(sapi + "/applications", params={"name": "manta", "include_master": "true"},
                       headers=V2, timeout=10).json()[0]
    svcs = {s["name"]: s for s in requests.get(sapi + "/services", headers=V2, timeout=10,
                                               params={"application_uuid": app["uuid"]}).json()}
    return app, svcs


def _peers(cfg, name):
    return shard.describe(cfg, name).get("peers", [])


def _wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_bootstrap_describes_the_running_lab(lab):
    cfg = lab.cfg
    sapi, imgapi, vmapi = _api(lab)
    app, svcs = _manta(lab)
    md = app["metadata"]
    hosts = [e["host"] for e in md["INDEX_MORAY_SHARDS"]]
    assert hosts[:cfg.shards] == [cfg.shard_name(n) for n in range(1, cfg.shards + 1)]
    assert md["INDEX_MORAY_SHARDS"][-1]["last"] is True
    assert md["ZK_SERVERS"][0]["port"] == cfg.port("zookeeper")
    # the ring builder published the ring and pointed SAPI at it
    img = requests.get(f"{imgapi}/images/{md['HASH_RING_IMAGE']}", timeout=10).json()
    assert img["name"] == "manta-hash-ring" and img["state"] == "active"
    assert md["HASH_RING_IMGAPI_SERVICE"]
    # every zone is a VM and an instance of its service, with production metadata
    insts = {i["uuid"]: i for i in requests.get(sapi + "/instances", headers=V2, timeout=10).json()}
    vms = {v["uuid"]: v for v in requests.get(vmapi + "/vms", timeout=10,
                                              params={"state": "active",
                                                      "owner_uuid": app["owner_uuid"]}).json()}
    for z in zones.all_zones(cfg):
        inst, vm = insts[z["uuid"]], vms[z["uuid"]]
        assert inst["service_uuid"] == svcs[z["kind"]]["uuid"]
        assert vm["alias"] == z["alias"] and vm["server_uuid"] == z["server_uuid"]
        assert vm["tags"]["manta_role"] == z["kind"]
        imd = inst["metadata"]
        assert imd["DATACENTER"] == z["datacenter"]
        if z["kind"] == "postgres":
            assert imd["SERVICE_NAME"] == z["shard"] and imd["SHARD"] == z["shard"].split(".")[0]
            assert imd["MANATEE_SHARD_PATH"] == f"/manatee/{z['shard']}"
        if z["kind"] == "storage":
            assert imd["MANTA_STORAGE_ID"] == vm["tags"]["manta_storage_id"]
        assert "ZK_SERVERS" not in imd   # application-level keys stay on the application


def test_unknown_server_is_refused_before_any_change(lab):
    cfg = lab.cfg
    sapi, _, _ = _api(lab)
    _, svcs = _manta(lab)
    before = {z["uuid"] for z in zones.all_zones(cfg)}
    n_inst = len(requests.get(sapi + "/instances", headers=V2, timeout=10).json())
    r = requests.post(sapi + "/instances", timeout=60, json={
        "service_uuid": svcs["postgres"]["uuid"],
        "params": {"server_uuid": str(uuidlib.uuid4())}, "metadata": {"SHARD": "1"}})
    assert r.status_code == 409
    assert r.json()["code"] == "ValidationFailed"
    assert r.json()["errors"][0]["field"] == "server_uuid"
    r = requests.post(sapi + "/instances", timeout=60, json={
        "service_uuid": svcs["postgres"]["uuid"], "params": {"server_uuid": cfg.servers[0]["uuid"]}})
    assert r.status_code == 409 and "SHARD" in r.json()["message"]
    assert {z["uuid"] for z in zones.all_zones(cfg)} == before
    assert len(requests.get(sapi + "/instances", headers=V2, timeout=10).json()) == n_inst


@pytest.mark.slow
def test_postgres_instance_is_a_real_peer(lab):
    """CreateInstance starts a peer that joins its shard as an async (by base
    backup); UpgradeInstance restarts it under merged metadata keeping its
    data; DeleteInstance destroys it and it leaves the shard."""
    cfg = lab.cfg
    sapi, _, vmapi = _api(lab)
    _, svcs = _manta(lab)
    name = cfg.shard_name(1)
    server = cfg.servers[-1]
    n_before = len(_peers(cfg, name))
    body = {"service_uuid": svcs["postgres"]["uuid"],
            "params": {"server_uuid": server["uuid"]},
            "metadata": {"SHARD": "1", "SERVICE_NAME": name, "MANATEE_SHARD_PATH": f"/manatee/{name}",
                         "DATACENTER": server["datacenter"]}}
    r = requests.post(sapi + "/instances", json=body, timeout=600)
    assert r.status_code == 200, r.text
    inst = r.json()
    uuid = inst["uuid"]
    try:
        # the zone exists and is on the asked server; VMAPI knows the VM
        zone = zones.get(cfg, uuid)
        assert zone["kind"] == "postgres" and zone["shard"] == name
        assert zone["server_uuid"] == server["uuid"]
        vm = requests.get(f"{vmapi}/vms/{uuid}", timeout=10).json()
        assert vm["state"] == "running" and vm["server_uuid"] == server["uuid"]
        assert vm["alias"] == zone["alias"] == inst["params"]["alias"]
        assert vm["alias"] == f"1.postgres.{cfg.domain}-{uuid[:8]}"
        assert vm["tags"]["manta_role"] == "postgres"
        # it joins its shard as an async, streaming from the chain
        peer = _wait(lambda: next((p for p in _peers(cfg, name) if p.get("zone") == uuid
                                   and p.get("role") == "async"), None), 120, "the new async")
        assert len(_peers(cfg, name)) == n_before + 1
        primary = next(p for p in _peers(cfg, name) if p["role"] == "primary")
        with psycopg2.connect(primary["dsn"], connect_timeout=5) as c1, \
                psycopg2.connect(peer["dsn"], connect_timeout=5) as c2:
            k1, k2 = c1.cursor(), c2.cursor()
            k1.execute("SELECT system_identifier FROM pg_control_system()")
            k2.execute("SELECT system_identifier FROM pg_control_system(), pg_is_in_recovery()")
            sysid = k1.fetchone()[0]
            assert k2.fetchone()[0] == sysid       # a base backup of this shard
        c1.close()
        c2.close()
        marker = Path(zone["paths"]["data"]) / "lab-apis-test-marker"
        marker.write_text("kept")
        # UpgradeInstance: reprovision under the merged metadata, data kept
        r = requests.put(f"{sapi}/instances/{uuid}", timeout=10,
                         json={"metadata": {"PG_CONFIG_OVERRIDES": {"work_mem": "8MB"}}})
        assert r.status_code == 200
        r = requests.put(f"{sapi}/instances/{uuid}/upgrade", timeout=600,
                         json={"image_uuid": svcs["postgres"]["params"]["image_uuid"]})
        assert r.status_code == 200, r.text
        zone = zones.get(cfg, uuid)
        assert zone["metadata"]["PG_CONFIG_OVERRIDES"] == {"work_mem": "8MB"}
        assert zone["metadata"]["INSTANCE_UUID"] == uuid
        assert marker.read_text() == "kept"
        peer = _wait(lambda: next((p for p in _peers(cfg, name) if p.get("zone") == uuid
                                   and p.get("role") == "async" and p.get("service") == "online"),
                                  None), 120, "the reprovisioned async")
        with psycopg2.connect(peer["dsn"], connect_timeout=5) as c2:
            k2 = c2.cursor()
            k2.execute("SELECT system_identifier FROM pg_control_system()")
            assert k2.fetchone()[0] == sysid
        c2.close()
        jobs = requests.get(f"{vmapi}/vms/{uuid}/jobs", timeout=10).json()
        assert [j["params"]["task"] for j in jobs][:2] == ["reprovision", "provision"]
        assert all(j["execution"] == "succeeded" for j in jobs)
    finally:
        r = requests.delete(f"{sapi}/instances/{uuid}", timeout=600)
    assert r.status_code == 204, r.text
    with pytest.raises(Exception):
        zones.get(cfg, uuid)
    assert requests.get(f"{vmapi}/vms/{uuid}", timeout=10).json()["state"] == "destroyed"
    assert requests.get(f"{sapi}/instances/{uuid}", timeout=10).status_code == 404
    _wait(lambda: all(p.get("zone") != uuid for p in _peers(cfg, name))
          and len(_peers(cfg, name)) == n_before, 120, "the peer to leave the shard")


def test_moray_instance_makes_a_moray_zone(lab):
    cfg = lab.cfg
    sapi, _, vmapi = _api(lab)
    _, svcs = _manta(lab)
    name = cfg.shard_name(2)
    before = {z["uuid"] for z in zones.all_zones(cfg, kind="moray", shard=name)}
    r = requests.post(sapi + "/instances", timeout=300, json={
        "service_uuid": svcs["moray"]["uuid"], "params": {"server_uuid": cfg.servers[1]["uuid"]},
        "metadata": {"SHARD": "2", "SERVICE_NAME": name}})
    assert r.status_code == 200, r.text
    uuid = r.json()["uuid"]
    try:
        zone = zones.get(cfg, uuid)
        assert zone["kind"] == "moray" and zone["shard"] == name
        assert zones.states(cfg, zone) == {s: "online" for s in zones.states(cfg, zone)}
        assert moray.url(zone) in moray.resolve(cfg, name)   # reachable by name, like SRV
        assert requests.get(moray.url(zone) + "/ping", timeout=10).status_code == 200
        assert requests.get(f"{vmapi}/vms/{uuid}", timeout=10).json()["alias"] == zone["alias"]
    finally:
        r = requests.delete(f"{sapi}/instances/{uuid}", timeout=300)
    assert r.status_code == 204
    assert {z["uuid"] for z in zones.all_zones(cfg, kind="moray", shard=name)} == before
