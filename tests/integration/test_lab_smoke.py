"""Lab smoke: the whole lab comes up, every endpoint answers, only loopback is
bound, the CLI rejects bad input, and the inventory is built from the running lab."""
import json
import os
import subprocess
import sys

import psycopg2
import requests
from kazoo.client import KazooClient

from labhandle import LAB, REPO


def test_status_lists_every_endpoint(lab):
    st = lab.status
    assert st["up"] is True
    cfg = lab.cfg
    assert st["zookeeper"]["connect"] == f"127.0.0.1:{cfg.port('zookeeper')}"
    assert set(st["apis"]) >= {"sapi", "imgapi", "vmapi"}
    assert len(st["shards"]) == cfg.shards == 2
    for name, sh in st["shards"].items():
        roles = sorted(p["role"] for p in sh["peers"])
        assert roles == ["async", "primary", "sync"], (name, sh["peers"])
        for p in sh["peers"]:
            assert "127.0.0.1" in p["dsn"]
        assert sh["morays"], name
    assert len(st["electric_moray"]) == cfg.emorays == 2
    for e in st["electric_moray"]:
        assert e["url"] and e["status_url"] and e["ring"]
    assert len(st["storage"]) == cfg.storage_nodes == 4
    assert len({s["datacenter"] for s in st["storage"]}) >= 2
    for s in st["storage"]:
        assert s["url"] and s["root"]


def test_every_endpoint_answers(lab):
    st = lab.status
    zk = KazooClient(hosts=st["zookeeper"]["connect"], timeout=5)
    zk.start(timeout=10)
    try:
        for name in st["shards"]:
            assert zk.exists(f"/manatee/{name}/state"), name
    finally:
        zk.stop()
        zk.close()
    for k in ("sapi", "imgapi", "vmapi"):
        assert requests.get(st["apis"][k] + "/ping", timeout=5).status_code == 200
    for e in st["electric_moray"]:
        s = requests.get(e["status_url"], timeout=5).json()
        assert s["pid"] > 0
        assert s["ring"]
    for name, sh in st["shards"].items():
        primary = next(p for p in sh["peers"] if p["role"] == "primary")
        with psycopg2.connect(primary["dsn"], connect_timeout=5) as conn:
            cur = conn.cursor()
            cur.execute("SELECT count(*) FROM pg_stat_replication")
            assert cur.fetchone()[0] == 1  # the sync; the async cascades from the sync
    for s in st["storage"]:
        r = requests.put(f"{s['url']}/smoke-owner/smoke-object", data=b"hello", timeout=5)
        assert r.status_code in (201, 204), r.status_code
        assert requests.get(f"{s['url']}/smoke-owner/smoke-object", timeout=5).content == b"hello"


def test_only_loopback_is_bound(lab):
    """Every listening socket owned by a lab process is on 127.0.0.1."""
    from manta_lab import procs
    cfg = lab.cfg
    pids = set()
    for name in procs.names(cfg):
        pid = procs.alive(cfg, name)
        if pid:
            pids.update([pid, *procs._pgid_members(pid, procs.read(cfg, name)["start"])])
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    checked = 0
    for line in out.splitlines():
        cols = line.split()
        local = cols[3]
        owners = {int(x.split("=")[1]) for x in cols[-1].split(",") if x.startswith("pid=")}
        if owners & pids:
            checked += 1
            assert local.startswith("127.0.0.1:"), line
    assert checked >= 10  # zk, 3 apis, 6 postgres, morays, emorays, nginx


def test_up_is_idempotent_and_fast(lab):
    before = {z["uuid"]: z["services"] for z in lab.status["zones"]}
    proc = lab.run("up")
    after = {z["uuid"]: z["services"] for z in lab.status["zones"]}
    assert before == after
    assert "up in" in proc.stderr


def test_inventory_comes_from_the_running_lab(lab):
    env = {**os.environ, "LAB_HOME": lab.home}
    out = subprocess.run([str(REPO / "inventories/lab/lab_inventory.py"), "--list"],
                         capture_output=True, text=True, env=env, check=True).stdout
    inv = json.loads(out)
    st = lab.status
    assert len(inv["storage"]["hosts"]) == len(st["storage"])
    assert len(inv["electric_moray"]["hosts"]) == len(st["electric_moray"])
    peers = sum(len(sh["peers"]) for sh in st["shards"].values())
    assert sum(len(inv[g]["hosts"]) for g in inv["postgres"]["children"]) == peers
    host = inv["storage"]["hosts"][0]
    assert inv["_meta"]["hostvars"][host]["manta_svcadm"].endswith(
        "svcadm " + inv["_meta"]["hostvars"][host]["zone_uuid"])
    assert inv["all"]["vars"]["manta_zk_servers"] == st["zookeeper"]["connect"]


def test_cli_rejects_bad_flags(tmp_path):
    def run(*args):
        return subprocess.run([*LAB, "--home", str(tmp_path), *args], capture_output=True, text=True)
    p = run("up", "--vnodes", "2000000")
    assert p.returncode == 2 and "--vnodes" in p.stderr
    p = run("up", "--shards", "zero")
    assert p.returncode == 2 and "--shards" in p.stderr
    p = run("seed", "--objects", "-5")
    assert p.returncode == 2 and "--objects" in p.stderr
    p = run("status")
    assert p.returncode == 2 and "lab up" in p.stderr
    assert not (tmp_path / "lab.json").exists()


def test_up_refuses_to_resize_an_existing_lab(lab):
    p = lab.run("up", "--shards", "3", check=False)
    assert p.returncode == 2
    assert "--shards 3" in p.stderr and "created with 2" in p.stderr


def test_a_failing_component_is_named_with_its_log(tmp_path):
    """A lab whose ZooKeeper cannot start says so, naming the component and its log."""
    import socket
    from manta_lab import config
    home = tmp_path / "lab"
    base = 29000  # a block no test lab uses (they take 12000..27000)
    cfg = config.LabConfig(home=str(home), base_port=base)
    cfg.save()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", cfg.port("zookeeper")))
    squatter.listen(1)
    try:
        p = subprocess.run([*LAB, "--home", str(home), "up"], capture_output=True, text=True,
                           timeout=120)
    finally:
        squatter.close()
        subprocess.run([*LAB, "--home", str(home), "down"], capture_output=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "lab: failed: zookeeper:" in p.stderr
    assert f"(log: {home / 'log' / 'zookeeper.log'})" in p.stderr
