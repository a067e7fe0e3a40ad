"""playbooks/reshard_abort.yml on a lab of its own (one lab for the module; each case starts from what the
previous one left, as test_reshard.py does):

  1. no unfinished plan: it says so and changes nothing;
  2. a plan paused before writes are blocked (pause_before=block_writes: peers copied, morays made, rings
     built and staged), under `lab load`: the abort is rehearsed first (--check --diff: ZooKeeper, SAPI,
     IMGAPI, VMAPI, rings and every table unchanged), then run; a second run changes nothing;
  3. a plan paused inside the write-blocked window (pause_before=verify_new_shard: transitional ring on every
     electric-moray, new peers detached, their cluster established, reprovisioned under the new shard; plus the
     new shard in INDEX_MORAY_SHARDS, as a crash between the two SAPI writes of install_ring leaves it), under
     `lab load`: the inventory shows the new shard's group, then the abort restores everything;
  4. after those aborts the same reshard.yml command starts a fresh plan; paused after the point of no return
     (pause_before=verify_canaries) the abort is refused before any change; resumed, the reshard completes.

After each abort: the rings on every electric-moray are the original ring, writes to the moving vnodes are
accepted through every electric-moray on the old shard, `lab load --verify` finds no acknowledged write lost,
the old cluster is unfrozen and has its own three peers, the locks are free, the new peers and morays are gone
(SAPI, VMAPI, zones, inventory), the new shard has no state, the journal shows the plan aborted.

Set RESHARD_ABORT_TEST_HOME to reuse a running lab (left up); RESHARD_ABORT_TEST_BASE_PORT picks its ports.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
from labhandle import seeded_lab  # noqa: E402
from test_reshard import (diff_snap, kill_group, plan_for, plans, snapshot, start_load,  # noqa: E402
                          stop_load, verify_load, zk)

ANSIBLE = str(REPO / ".venv" / "bin" / "ansible-playbook")
RESHARD = str(REPO / "playbooks" / "reshard.yml")
ABORT = str(REPO / "playbooks" / "reshard_abort.yml")
STATUS = str(REPO / "playbooks" / "reshard_status.yml")
FAST = ["-e", "reshard_catchup_poll=2", "-e", "reshard_timeout=120"]


@pytest.fixture(scope="module")
def alab():
    yield from seeded_lab("abort", 5000, "RESHARD_ABORT_TEST")


@pytest.fixture(scope="module")
def st(alab):
    return alab.status


def env(lab):
    e = dict(os.environ)
    e.update(LAB_HOME=lab.home, ANSIBLE_STDOUT_CALLBACK="default", ANSIBLE_NOCOLOR="1")
    e.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    return e


def play(lab, playbook, *args, timeout=900):
    cmd = [ANSIBLE, "-i", str(REPO / "inventories" / "lab"), playbook, *args]
    return subprocess.run(cmd, cwd=REPO, env=env(lab), capture_output=True, text=True, timeout=timeout)


def norm(text):
    """Output with YAML line folding undone."""
    return " ".join(text.split())


def recap_changed(out):
    line = next(ln for ln in out.splitlines() if ln.startswith("localhost") and "changed=" in ln)
    return int(line.split("changed=")[1].split()[0])


def inventory(lab):
    e = env(lab)
    r = subprocess.run([str(REPO / ".venv" / "bin" / "ansible-inventory"), "-i", str(REPO / "inventories" / "lab"),
                        "--list"], cwd=REPO, env=e, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def group_name(shard):
    return "shard_" + "".join(c if c.isalnum() or c == "_" else "_" for c in shard)


def manta_app(st):
    return requests.get(f"{st['apis']['sapi']}/applications", params={"name": "manta"},
                        timeout=10).json()[0]


def ring_view(st):
    """What routes requests: SAPI's ring and index shards, and each electric-moray's served ring."""
    md = manta_app(st)["metadata"]
    ems = {}
    for em in st["electric_moray"]:
        s = requests.get(em["status_url"], timeout=5).json()
        ems[em["uuid"]] = {"image": s["ring"]["image_uuid"], "hash": s["ring"]["hash"]}
    return {"HASH_RING_IMAGE": md["HASH_RING_IMAGE"],
            "INDEX_MORAY_SHARDS": [e["host"] for e in md["INDEX_MORAY_SHARDS"]], "electric_morays": ems}


def tagged(st, plan):
    insts = requests.get(f"{st['apis']['sapi']}/instances", timeout=10).json()
    return [i for i in insts if ((i.get("params") or {}).get("tags") or {}).get("manta_reshard_plan") == plan]


def old_state(st, shard):
    c = zk(st)
    try:
        return json.loads(c.get(f"/manatee/{shard}/state")[0])
    finally:
        c.stop()
        c.close()


def znode_exists(st, path):
    c = zk(st)
    try:
        return bool(c.exists(path))
    finally:
        c.stop()
        c.close()


def write_moving_vnodes(st, doc):
    """A fresh object on every moving canary key through every electric-moray: accepted, on the old shard."""
    from ansible_collections.manta.ops.plugins.module_utils import reshard_common as rc
    moving = [c for c in doc["props"]["canaries"] if c["moving"]]
    assert moving
    for em in st["electric_moray"]:
        cl = rc.EmClient(em["url"], timeout=30)
        for c in moving:
            key = c["key"] + ".after-abort"
            d, _, n = key.rpartition("/")
            val = {"dirname": d, "key": key, "name": n, "owner": "x", "type": "object", "etag": "e",
                   "objectId": "after-abort", "contentLength": 0, "sharks": [], "headers": {}, "roles": [],
                   "mtime": int(time.time() * 1000), "contentMD5": "1B2M2Y8AsgTpgAmY7PhCfg==",
                   "contentType": "text/plain"}
            out = cl.put_object("manta", c["key"], dict(val, key=c["key"]))
            assert (out.get("_node") or {}).get("pnode") == f"tcp://{doc['shard']}:2020", out
            cl.call("delObject", {"bucket": "manta", "key": c["key"], "options": {}})


def assert_restored(alab, st, doc, original, log):
    """Everything a completed abort promises."""
    shard, new = doc["shard"], doc["new_shard"]
    # rings: every electric-moray serves the original ring; SAPI names it; the new shard is not indexed
    assert ring_view(st) == original
    # journal: aborted, its history kept, the roll back done
    d = plan_for(st, shard, new)
    assert d["plan"] == doc["plan"] and d["state"] == "aborted"
    assert d["props"]["abort"]["done"] and d["phases"]
    # the new peers and morays are gone, and so is the new shard's state
    assert tagged(st, doc["plan"]) == []
    zones_now = {z["uuid"] for z in alab.status["zones"]}
    made = [p["uuid"] for p in d["props"].get("new_peers") or []] + list(d["props"].get("new_morays") or [])
    assert made and not (set(made) & zones_now)
    vms = {v["uuid"]: v for v in requests.get(f"{st['apis']['vmapi']}/vms", timeout=10).json()}
    assert all(vms[u]["state"] == "destroyed" for u in made if u in vms)
    assert not znode_exists(st, f"/manatee/{new}")
    inv = inventory(alab)
    assert group_name(new) not in inv and not any(v.get("shard") == new for v in inv["_meta"]["hostvars"].values())
    # the old cluster: unfrozen, its own three peers
    s = old_state(st, shard)
    assert not s.get("freeze"), s.get("freeze")
    chain = [s["primary"]] + ([s["sync"]] if s.get("sync") else []) + list(s.get("async") or [])
    assert len(chain) == 3 and not ({p["zoneId"] for p in chain} & set(made))
    # the locks are free
    assert not znode_exists(st, "/manta_ops/locks/reshard")
    assert not znode_exists(st, "/pg_dump_lock")
    # writes to the moving vnodes are accepted, on the old shard, through every electric-moray
    write_moving_vnodes(st, d)
    # no acknowledged write lost
    res = verify_load(alab, log)
    assert res["ok"], res
    assert res["acknowledged_writes"] > 100
    return d, res


@pytest.fixture(scope="module")
def original(st):
    """The routing before any reshard."""
    return ring_view(st)


# ---- 1. nothing to abort ----------------------------------------------------------------------------------

def test_no_unfinished_plan_changes_nothing(alab, st, original):
    before = snapshot(st, pg=False)
    r = play(alab, ABORT)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "no unfinished reshard plan: nothing to abort" in norm(r.stdout)
    assert recap_changed(r.stdout) == 0
    assert diff_snap(before, snapshot(st, pg=False)) == []
    assert not [p for p in plans(st) if p["state"] == "active"]


# ---- 2. before the write block --------------------------------------------------------------------------

def test_abort_before_writes_are_blocked(alab, st, original, tmp_path):
    d = st["domain"]
    shard, new = f"1.moray.{d}", f"3.moray.{d}"
    log = str(tmp_path / "load.log")
    load = start_load(alab, log, rate=20)
    try:
        time.sleep(2)
        r = play(alab, RESHARD, "-e", f"shard={shard}", "-e", f"new_shard={new}", "-e", "split=balanced",
                 "-e", "pause_before=block_writes", *FAST)
        assert r.returncode == 0, r.stdout[-4000:]
        assert "stopped cleanly before" in norm(r.stdout)
        doc = plan_for(st, shard, new)
        assert doc["state"] == "active" and doc["paused_before"] == "block_writes"
        assert len(tagged(st, doc["plan"])) == 6
        # rehearsal: changes nothing anywhere (ZooKeeper, SAPI, IMGAPI, VMAPI, rings; the tables take the
        # load's writes), says what it would do
        before = snapshot(st, pg=False)
        r = play(alab, ABORT, "--check", "--diff")
        assert r.returncode == 0, r.stdout[-4000:]
        out = norm(r.stdout)
        assert f"REHEARSAL of the abort of reshard plan {doc['plan']}" in out
        for needle in ("delete SAPI postgres instance", "delete SAPI moray instance", f"unfreeze {shard}",
                       "release the reshard lock", "ring image", "mark the plan aborted", "nothing was changed"):
            assert needle in out, needle
        assert diff_snap(before, snapshot(st, pg=False)) == []
        assert plan_for(st, shard, new)["state"] == "active"
        # the abort
        r = play(alab, ABORT)
        assert r.returncode == 0, r.stdout[-5000:]
        assert "TASK [manta.ops.reshard_abort : Aborted]" in r.stdout and doc["plan"] in r.stdout
        time.sleep(2)
    finally:
        stop_load(load)
    d2, res = assert_restored(alab, st, doc, original, log)
    # the second run: no unfinished plan, nothing changes
    before = snapshot(st, pg=False)
    r = play(alab, ABORT)
    assert r.returncode == 0 and recap_changed(r.stdout) == 0, r.stdout[-3000:]
    assert "no unfinished reshard plan" in norm(r.stdout)
    assert diff_snap(before, snapshot(st, pg=False)) == []
    s = play(alab, STATUS, "-e", f"plan={doc['plan']}")
    assert f"plan {doc['plan']}" in norm(s.stdout) and "state aborted" in norm(s.stdout), s.stdout[-3000:]
    print(f"abort before the window: {res['acknowledged_writes']} acknowledged writes verified")


# ---- 3. inside the write-blocked window -------------------------------------------------------------------

def test_abort_inside_the_window(alab, st, original, tmp_path):
    d = st["domain"]
    shard, new = f"1.moray.{d}", f"3.moray.{d}"
    log = str(tmp_path / "load.log")
    load = start_load(alab, log, rate=20)
    try:
        time.sleep(2)
        r = play(alab, RESHARD, "-e", f"shard={shard}", "-e", f"new_shard={new}", "-e", "split=balanced",
                 "-e", "pause_before=verify_new_shard", *FAST)
        assert r.returncode == 0, r.stdout[-4000:]
        assert "stopped cleanly before" in norm(r.stdout), r.stdout[-3000:]
        doc = plan_for(st, shard, new)
        assert doc["state"] == "active" and doc["phases"]["reconfigure_peers"]["status"] == "done"
        view = ring_view(st)
        assert view["HASH_RING_IMAGE"] == doc["props"]["transitional_image"]
        assert all(e["image"] == doc["props"]["transitional_image"] for e in view["electric_morays"].values())
        assert znode_exists(st, f"/manatee/{new}/state")
        # the inventory sees the new shard: its peers in their own group under postgres, its morays
        inv = inventory(alab)
        g = group_name(new)
        assert g in inv["postgres"]["children"] and len(inv[g]["hosts"]) == 3, inv.get(g)
        assert len([h for h, v in inv["_meta"]["hostvars"].items()
                    if v.get("shard") == new and "moray_url" in v]) == 3
        # as a crash between the two SAPI writes of install_ring would leave it: the new shard indexed
        app = manta_app(st)
        idx = [{k: v for k, v in e.items() if k != "last"} for e in app["metadata"]["INDEX_MORAY_SHARDS"]]
        idx.append({"host": new, "last": True})
        rr = requests.put(f"{st['apis']['sapi']}/applications/{app['uuid']}", timeout=10,
                          json={"action": "update", "metadata": {"INDEX_MORAY_SHARDS": idx}})
        assert rr.status_code == 200, rr.text
        # the abort, killed (as a controller crash) once it has put the old ring back in SAPI, while it swaps the
        # electric-morays back; then the same command again: it resumes and finishes
        t0 = time.monotonic()
        killed_log = tmp_path / "abort-killed.log"
        with open(killed_log, "w") as out:
            proc = subprocess.Popen([ANSIBLE, "-i", str(REPO / "inventories" / "lab"), ABORT, "-e", f"new_shard={new}"],
                                    cwd=REPO, env=env(alab), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while manta_app(st)["metadata"]["HASH_RING_IMAGE"] != original["HASH_RING_IMAGE"]:
                assert proc.poll() is None, killed_log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the abort never put the old ring back in SAPI"
                time.sleep(0.1)
        finally:
            kill_group(proc)
        mid = plan_for(st, shard, new)
        assert mid["state"] == "aborted" and mid["props"]["abort"]["started"] and not mid["props"]["abort"].get("done")
        r = play(alab, ABORT, "-e", f"new_shard={new}")
        elapsed = time.monotonic() - t0
        assert r.returncode == 0, r.stdout[-5000:]
        assert f"Resuming the abort of reshard plan {doc['plan']}" in norm(r.stdout)
        time.sleep(2)
    finally:
        stop_load(load)
    d2, res = assert_restored(alab, st, doc, original, log)
    rejects = [x for x in (json.loads(ln) for ln in open(log) if ln.strip().startswith("{"))
               if x.get("op") == "reject"]
    print(f"abort inside the window: {elapsed:.1f}s, {len(rejects)} writes refused while blocked, "
          f"{res['acknowledged_writes']} acknowledged writes verified")


# ---- 4. a fresh reshard after the aborts; refused past the point of no return; completed --------------------

def test_fresh_reshard_after_abort_refused_past_point_of_no_return_then_completes(alab, st, original, tmp_path):
    d = st["domain"]
    shard, new = f"1.moray.{d}", f"3.moray.{d}"
    aborted = {p["plan"] for p in plans(st) if p["state"] == "aborted"}
    assert len(aborted) >= 2
    args = ["-e", f"shard={shard}", "-e", f"new_shard={new}", "-e", "split=balanced", *FAST]
    r = play(alab, RESHARD, *args, "-e", "pause_before=verify_canaries")
    assert r.returncode == 0, r.stdout[-5000:]
    assert "stopped cleanly before" in norm(r.stdout), r.stdout[-3000:]
    doc = plan_for(st, shard, new)
    assert doc["plan"] not in aborted and doc["state"] == "active" and doc["paused_before"] == "verify_canaries"
    before = snapshot(st)
    r = play(alab, ABORT)
    out = r.stdout
    assert r.returncode != 0, out[-3000:]
    out = norm(out)
    assert f"reshard plan {doc['plan']}" in out and "is past the point of no return" in out, out[-3000:]
    assert "HASH_RING_IMAGE is the final ring" in out and "nothing was changed" in out
    assert "reshard the vnodes back" in out
    assert diff_snap(before, snapshot(st)) == []
    assert plan_for(st, shard, new)["state"] == "active"
    # the same command resumes and completes
    log = str(tmp_path / "load.log")
    load = start_load(alab, log, rate=20)
    try:
        time.sleep(2)
        r = play(alab, RESHARD, *args)
        assert r.returncode == 0, r.stdout[-5000:]
        time.sleep(2)
    finally:
        stop_load(load)
    doc = plan_for(st, shard, new)
    assert doc["state"] == "completed"
    res = verify_load(alab, log)
    assert res["ok"], res
    assert ring_view(st)["HASH_RING_IMAGE"] == doc["props"]["final_image"] != original["HASH_RING_IMAGE"]
    # and with no unfinished plan left, the abort changes nothing
    r = play(alab, ABORT)
    assert r.returncode == 0 and recap_changed(r.stdout) == 0, r.stdout[-3000:]
