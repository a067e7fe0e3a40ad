"""playbooks/evacuate.yml and evacuate_status.yml on the lab: bad input, check mode,
a whole evacuation (verified copy by copy), resumption, status and metrics, several
nodes at once.

Objects are seeded by each test (`lab seed`: real bytes with contentMD5 on two
sharks in different datacenters, snaplinks, zero-byte objects, MPU parts).
Evacuated nodes are put back in rotation at the end of each test.
"""
import json
import re

import pytest

from test_evacuate_support import (unique, ROTATION_LAG, Lab, base_vars, check_evacuated, lab_inventory,
                                   referencing, run_play, seed, wait_for)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def L(lab):
    return Lab(lab)


def no_change_since(L, job, sid, before_objs):
    assert L.minnow_online(sid), f"{sid}: minnow was stopped"
    assert L.job(job) is None, f"job {job} was created"
    assert L.objects() == before_objs, "metadata changed"


def test_bad_input_fails_before_any_change(lab, L, tmp_path):
    seed(lab, 50)
    objs = L.objects()
    sid = "3.stor." + L.st["domain"]

    # unknown node
    p = run_play(lab, "evacuate.yml", base_vars(tmp_path, "bad-1", evacuate="9.stor"))
    assert p.returncode != 0
    assert "unknown storage node '9.stor'" in p.stdout, p.stdout[-3000:]
    assert "Valid storage nodes in the inventory: 1.stor." in p.stdout
    no_change_since(L, "bad-1", sid, objs)

    # a node Manta knows that the inventory does not have
    inv = tmp_path / "inv.json"
    hv = lab_inventory(lab)
    storage = {h: hv["_meta"]["hostvars"][h] for h in hv["storage"]["hosts"] if not h.startswith("4.")}
    allvars = {k: v for k, v in hv["_meta"]["hostvars"][hv["storage"]["hosts"][0]].items()
               if k.startswith(("manta_", "ansible_"))}
    inv.write_text(json.dumps({"all": {"vars": allvars, "children": {"storage": {"hosts": storage}}}}))
    p = run_play(lab, "evacuate.yml", base_vars(tmp_path, "bad-2", evacuate="4.stor"),
                 inventory=str(inv))
    assert p.returncode != 0
    assert "is a storage node Manta knows" in p.stdout and "not in the inventory" in p.stdout, \
        p.stdout[-3000:]
    assert L.minnow_online("4.stor." + L.st["domain"])

    # no destination in the node's own datacenter (3.stor is alone in lab-dc3)
    p = run_play(lab, "evacuate.yml", base_vars(tmp_path, "bad-3", evacuate="3.stor",
                                                evacuate_same_datacenter=True))
    assert p.returncode != 0
    assert "same_datacenter: no eligible destination in the datacenter of 3.stor" in p.stdout, \
        p.stdout[-3000:]
    no_change_since(L, "bad-3", sid, objs)

    # every destination full
    from manta_lab import storage as lstorage
    from manta_lab import zones
    cfg = lab.cfg
    others = [s for s in L.nodes if s != sid]
    saved = {}
    try:
        for o in others:
            z = zones.get(cfg, L.zone(o))
            saved[o] = z["metadata"].get("CAPACITY_MB", 10240)
            lstorage.set_capacity(cfg, z, 0.01)
        import psycopg2
        prim = L.primaries()["1.moray." + L.st["domain"]]

        def all_full():
            c = psycopg2.connect(prim)
            try:
                with c.cursor() as cur:
                    cur.execute("SELECT _value FROM manta_storage")
                    recs = [json.loads(r[0]) for r in cur.fetchall()]
            finally:
                c.close()
            return all(r["percentUsed"] >= 95 for r in recs if r["manta_storage_id"] in others)
        wait_for(all_full, timeout=60, what="minnow to report the new capacities")
        p = run_play(lab, "evacuate.yml", base_vars(tmp_path, "bad-4", evacuate="3.stor"))
        assert p.returncode != 0
        assert "every destination is full or out of rotation" in p.stdout, p.stdout[-3000:]
        no_change_since(L, "bad-4", sid, objs)
    finally:
        for o, cap in saved.items():
            lstorage.set_capacity(cfg, zones.get(cfg, L.zone(o)), cap)


def test_check_mode_plans_and_estimates_without_changing_anything(lab, L, tmp_path):
    seed(lab, 300)
    sid = "3.stor." + L.st["domain"]
    objs = L.objects()
    files = {s: L.files(s) for s in L.nodes}
    p = run_play(lab, "evacuate.yml", base_vars(tmp_path, "check-1", evacuate="3.stor"), check=True)
    assert p.returncode == 0, p.stdout[-4000:]
    out = re.sub(r"\s+", " ", p.stdout)       # the YAML callback wraps long lines
    n_ref = len(referencing(objs, sid))
    m = re.search(r"3\.stor\.\S+: (\d+) copies \(([\d.]+) MiB\); (\d+) to move", out)
    assert m, out[-4000:]
    assert int(m.group(1)) == n_ref
    assert "Destinations (fill before -> after):" in out and "% -> " in out
    assert "Cannot be placed: 0 copies" in out
    assert "skipped mpu_part" in out
    est = re.search(r"Estimated duration: ([\d.]+) s \(scan", out)
    assert est and float(est.group(1)) > 0
    # nothing changed anywhere
    no_change_since(L, "check-1", sid, objs)
    assert {s: L.files(s) for s in L.nodes} == files
    assert not (tmp_path / "work" / "check-1").exists()


def test_evacuate_one_node_end_to_end(lab, L, tmp_path):
    rep = seed(lab, 600)
    sid = "3.stor." + L.st["domain"]
    before = L.objects()
    files_before = {sid: L.files(sid)}
    mpu = {k[1] for k, v in referencing(before, sid).items() if "/uploads/" in k[1]}
    job = unique("e2e-1")
    try:
        p = run_play(lab, "evacuate.yml", base_vars(tmp_path, job, evacuate="3.stor"))
        assert p.returncode == 0, p.stdout[-6000:]
        assert f"job {job}: complete" in p.stdout
        after = L.objects()
        checked = check_evacuated(L, before, after, {sid}, exempt=mpu, files_before=files_before,
                                  prefixes=rep["prefixes"])
        assert checked == len([k for k in referencing(before, sid)
                               if k[1].startswith(tuple(rep["prefixes"]))])
        # snaplinks: creator != owner, the copy lives under the creator
        links = [v for k, (e, v) in after.items() if v.get("creator") and v["creator"] != v["owner"]
                 and k[1].startswith(tuple(rep["prefixes"]))]
        assert links, "the seed makes snaplinks"
        rows = L.job_rows(job)
        mine = [r for r in rows if r["key"].startswith(tuple(rep["prefixes"]))]
        assert mine and all(r["status"] == "done" for r in mine), {r["status"] for r in mine}
        assert all((r["status"], r["reason"]) == ("skipped", "mpu_part") for r in rows
                   if "/uploads/" in r["key"])
        n_done = sum(1 for r in rows if r["status"] == "done")
        n_skip = sum(1 for r in rows if r["status"] == "skipped")
        assert n_done >= len(mine)
        assert L.heartbeat_age(sid) > ROTATION_LAG and not L.minnow_online(sid)

        # metrics file for node_exporter
        prom = (tmp_path / "work" / "manta_evacuate.prom").read_text()
        assert f'manta_evacuate_objects{{job="{job}",node="{sid}",status="done"}} {n_done}' in prom
        assert f'manta_evacuate_complete{{job="{job}"}} 1' in prom
        assert "# TYPE manta_evacuate_eta_seconds gauge" in prom

        # a second run changes nothing (verification scan only)
        p2 = run_play(lab, "evacuate.yml", base_vars(tmp_path, job, evacuate="3.stor"))
        assert p2.returncode == 0, p2.stdout[-4000:]
        assert re.findall(r"changed=(\d+)", p2.stdout) and \
            all(c == "0" for c in re.findall(r"changed=(\d+)", p2.stdout)), p2.stdout[-4000:]
        assert L.objects() == after

        # the status playbook: per node counts, reasons with examples, live throttle change
        st = run_play(lab, "evacuate_status.yml",
                      {"job": job, "evacuate_copy_concurrency": 12,
                       "evacuate_work_dir": str(tmp_path / "work")})
        assert st.returncode == 0, st.stdout[-3000:]
        assert re.search(rf"{re.escape(sid)}\s+{n_done}\s+{n_skip}\s+0\s+0", st.stdout), \
            st.stdout[-3000:]
        assert "skipped mpu_part" in st.stdout and "/uploads/" in st.stdout
        assert L.job(job)["throttle"]["copy_concurrency"] == 12
    finally:
        L.writable(sid)


def test_evacuate_two_nodes_in_one_run(lab, L, tmp_path):
    rep = seed(lab, 400)
    dom = L.st["domain"]
    evac = {"1.stor." + dom, "4.stor." + dom}           # both nodes of lab-dc1
    before = L.objects()
    files_before = {s: L.files(s) for s in evac}
    mpu = {k[1] for k in before if "/uploads/" in k[1]}
    try:
        p = run_play(lab, "evacuate.yml", base_vars(tmp_path, "two-1", evacuate="1.stor,4.stor",
                                                    evacuate_copy_concurrency=4))
        assert p.returncode == 0, p.stdout[-6000:]
        after = L.objects()
        n = check_evacuated(L, before, after, evac, exempt=mpu, files_before=files_before, prefixes=rep["prefixes"])
        assert n > 0
        # lab-dc1 has no other node: every moved copy went to a datacenter without a copy
        for k, (e, v) in after.items():
            dcs = [s["datacenter"] for s in v["sharks"]]
            if k in before and before[k][1]["objectId"] == v["objectId"] and k[1] not in mpu:
                assert len(set(dcs)) == len(dcs), f"{k}: two copies in one datacenter {dcs}"
        assert L.job("two-1")["state"] == "complete"
    finally:
        for s in evac:
            L.writable(s)
