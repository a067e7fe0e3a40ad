"""Evacuation under faults, with the lab's real processes. Each must leave the
metadata pointing only at verified copies:

* bad source bytes (MD5 mismatch) and missing source files (404), with and without
  another good copy to fall back on; then ``retry_skipped``;
* a destination's web server killed mid-copy (automatic pause, then resume);
* a client overwriting or deleting objects during the move (electric-moray RPC), and
  a write landing between the metadata step's read and its conditional update;
* the play SIGKILLed mid-copy and run again (resumes; what was copied is not fetched again);
* a time budget (``max_duration``) ending a run cleanly, the next run finishing.
"""
import glob
import os
import re
import time

import psycopg2
import pytest

from modrun import run_module
from test_evacuate_support import (unique, REPO, ROTATION_LAG, Lab, base_vars, check_evacuated, kill_play,
                                   md5_b64_file, referencing, run_play, seed, start_play, wait_for)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def L(lab):
    return Lab(lab)


def plain_objects(objs, sid, prefixes, n, exclude=()):
    """n object keys on ``sid`` from this seed run: not MPU parts, not snaplinks."""
    out = []
    for k, (e, v) in sorted(referencing(objs, sid).items()):
        if not k[1].startswith(tuple(prefixes)) or "/links/" in k[1] or v.get("creator"):
            continue
        if k in exclude:
            continue
        out.append(k)
        if len(out) == n:
            break
    assert len(out) == n
    return out


def check_done_rows(L, job, sid):
    """Every copy the job says is done: the metadata names the destination (not the
    node) and the destination holds the right bytes."""
    objs = L.objects()
    n = 0
    for r in L.job_rows(job):
        if r["status"] != "done":
            continue
        v = objs[(r["shard"], r["key"])][1]
        ids = [s["manta_storage_id"] for s in v["sharks"]]
        assert r["dest"] in ids and sid not in ids, (r, ids)
        path = L.path_of(r["dest"], v)
        assert os.path.exists(path) and md5_b64_file(path) == v["contentMD5"], (r, path)
        n += 1
    assert n > 0
    return n


def other_copy(v, sid):
    return next(s["manta_storage_id"] for s in v["sharks"] if s["manta_storage_id"] != sid)


def corrupt(path):
    data = bytearray(open(path, "rb").read())
    data[0] ^= 0xFF
    with open(path, "r+b") as fh:
        fh.write(bytes(data))


def test_bad_and_missing_source_copies(lab, L, tmp_path):
    rep = seed(lab, 300)
    sid = "3.stor." + L.st["domain"]
    objs = L.objects()
    a, b, c, d = plain_objects(objs, sid, rep["prefixes"], 4)
    va, vb, vc, vd = (objs[k][1] for k in (a, b, c, d))
    good_a = open(L.path_of(sid, va), "rb").read()
    corrupt(L.path_of(sid, va))                                  # A: every copy corrupt
    corrupt(L.path_of(other_copy(va, sid), va))
    corrupt(L.path_of(other_copy(vb, sid), vb))                  # B: other copy corrupt
    os.unlink(L.path_of(sid, vc))                                # C: every copy missing
    os.unlink(L.path_of(other_copy(vc, sid), vc))
    os.unlink(L.path_of(other_copy(vd, sid), vd))                # D: other copy missing
    before = L.objects()
    files_before = {sid: L.files(sid)}
    mpu = {k[1] for k in before if "/uploads/" in k[1]}
    job = unique("faults-src")
    try:
        p = run_play(lab, "evacuate.yml", base_vars(tmp_path, job, evacuate="3.stor"))
        assert p.returncode == 0, p.stdout[-6000:]
        after = L.objects()
        # A and C, and any snaplink sharing their file, stay where they are
        stuck = {k[1] for k, (e, v) in before.items()
                 if v.get("objectId") in (va["objectId"], vc["objectId"])}
        check_evacuated(L, before, after, {sid}, exempt=mpu | stuck, files_before=files_before,
                        prefixes=rep["prefixes"])
        rows = {(r["shard"], r["key"]): r for r in L.job_rows(job)}
        assert (rows[a]["status"], rows[a]["reason"]) == ("skipped", "md5_mismatch")
        assert (rows[c]["status"], rows[c]["reason"]) == ("skipped", "source_not_found")
        assert rows[b]["status"] == "done" and rows[d]["status"] == "done"
        # A and C were not touched: their metadata still names their (unusable) copies
        assert after[a] == before[a] and after[c] == before[c]
        # B and D fell back to the evacuated node's good copy
        for k in (b, d):
            dest = rows[k]["dest"]
            assert L.path_of(dest, after[k][1]) and \
                md5_b64_file(L.path_of(dest, after[k][1])) == after[k][1]["contentMD5"]
        flat = re.sub(r"\s+", " ", p.stdout)                 # the YAML callback wraps lines
        assert re.search(r"skipped md5_mismatch: \d+ objects, [\d.]+ \w+; e\.g\. /", flat), \
            flat[-3000:]                                      # reason, counts, example keys

        # Repair A's copy on the evacuated node and retry what was skipped.
        with open(L.path_of(sid, va), "wb") as fh:
            fh.write(good_a)
        p = run_play(lab, "evacuate.yml", base_vars(tmp_path, job, evacuate="3.stor",
                                                    retry_skipped=True))
        assert p.returncode == 0, p.stdout[-6000:]
        rows = {(r["shard"], r["key"]): r for r in L.job_rows(job)}
        assert rows[a]["status"] == "done"
        assert (rows[c]["status"], rows[c]["reason"]) == ("skipped", "source_not_found")
        after2 = L.objects()
        assert sid not in [s["manta_storage_id"] for s in after2[a][1]["sharks"]]
        stuck_c = {k[1] for k, (e, v) in before.items() if v.get("objectId") == vc["objectId"]}
        check_evacuated(L, before, after2, {sid}, exempt=mpu | stuck_c, prefixes=rep["prefixes"])
    finally:
        L.writable(sid)


def test_destination_killed_mid_copy_pauses_then_resumes(lab, L, tmp_path):
    rep = seed(lab, 300)
    sid = "3.stor." + L.st["domain"]
    victim = "2.stor." + L.st["domain"]      # takes about two thirds of 3.stor's copies
    before = L.objects()
    mpu = {k[1] for k in before if "/uploads/" in k[1]}
    job = unique("faults-dest")
    log = tmp_path / "play.log"
    extra = base_vars(tmp_path, job, evacuate="3.stor", evacuate_max_bytes_per_sec=15000,
                      evacuate_copy_concurrency=2)
    proc = start_play(lab, "evacuate.yml", extra, log)
    try:
        agent = tmp_path / "agent" / job / victim
        wait_for(lambda: list(agent.glob("round-*.json")) or proc.poll() is not None, timeout=180,
                 what="the copy round to start")
        time.sleep(3)
        assert proc.poll() is None, log.read_text()[-4000:]
        lab.run("svcadm", L.zone(victim), "disable", "nginx")
        rc = proc.wait(timeout=300)
        out = log.read_text()
        assert rc != 0, out[-4000:]
        assert "is paused: automatic pause, transient errors" in out, out[-4000:]
        assert L.job(job)["state"] == "paused"
        # metadata names only verified copies
        check_done_rows(L, job, sid)
        rows = L.job_rows(job)
        done = [r for r in rows if r["status"] == "done"]
        left = [r for r in rows if r["status"] in ("pending", "assigned", "copied")]
        assert done and left, {r["status"] for r in rows}
    finally:
        if proc.poll() is None:
            kill_play(proc)
        lab.run("svcadm", L.zone(victim), "enable", "nginx")
    try:
        st = run_play(lab, "evacuate_status.yml", {"job": job, "resume": True,
                                                   "evacuate_work_dir": str(tmp_path / "work")})
        assert st.returncode == 0, st.stdout[-3000:]
        assert L.job(job)["state"] == "active"
        p = run_play(lab, "evacuate.yml", base_vars(tmp_path, job, evacuate="3.stor",
                                                    evacuate_max_bytes_per_sec=0,
                                                    evacuate_copy_concurrency=8))
        assert p.returncode == 0, p.stdout[-6000:]
        assert L.job(job)["state"] == "complete"
        check_evacuated(L, before, L.objects(), {sid}, exempt=mpu, prefixes=rep["prefixes"])
    finally:
        L.writable(sid)


def module_env(lab):
    return lab.env()


def test_client_writes_during_the_move(lab, L, tmp_path):
    """Scan and copy, then a client overwrites / rewrites metadata / deletes objects
    through electric-moray before the metadata step."""
    from manta_lab import rpc, seed as lseed
    rep = seed(lab, 200)
    sid = "3.stor." + L.st["domain"]
    env = module_env(lab)
    job = unique("faults-client")
    storage_hosts = {s: {"manta_storage_id": s, "datacenter": n["datacenter"],
                         "storage_url": n["url"], "storage_root": n["root"]}
                     for s, n in L.nodes.items()}
    work = str(tmp_path / "work")
    r = run_module("evacuate_job", {"job": job, "evacuate": ["3.stor"], "domain": L.st["domain"],
                                    "storage_hosts": storage_hosts}, env=env)
    assert not r.get("failed"), r
    r = run_module("storage_node_readonly", {"storage_id": sid, "lag": ROTATION_LAG,
                                             "svcadm": f"{REPO}/.venv/bin/lab --home {lab.home} "
                                                       f"svcadm {L.zone(sid)}"}, env=env)
    assert not r.get("failed") and not r["in_rotation"], r
    try:
        r = run_module("evacuate_scan", {"job": job}, env=env)
        assert r["complete"], r
        before = L.objects()
        e_key, f_key, g_key, h_key = plain_objects(before, sid, rep["prefixes"], 4)
        plan = run_module("evacuate_plan", {"job": job, "storage_hosts": storage_hosts,
                                            "work_dir": work, "rotation_lag": ROTATION_LAG}, env=env)
        assert not plan.get("failed"), plan
        results = []
        for host, a in plan["assignments"].items():
            c = run_module("evacuate_copy", {"src": a["file"], "verify_url": a["verify_url"]})
            # (copies left unusable by earlier tests are skipped; this seed's are all copied)
            assert not c.get("failed") and c["copied"] > 0, c
            results.append(c["results_file"])
        em = rpc.Client(L.st["electric_moray"][0]["url"])
        ev, fv, hv = before[e_key][1], before[f_key][1], before[h_key][1]
        # E: overwritten with a new object on other nodes
        new_e = dict(ev, objectId="e0000000-0000-4000-8000-00000000000e",
                     etag="e0000000-0000-4000-8000-00000000000e",
                     sharks=[s for s in ev["sharks"] if s["manta_storage_id"] != sid] +
                     [{"datacenter": L.dcs["4.stor." + L.st["domain"]],
                       "manta_storage_id": "4.stor." + L.st["domain"]}]
                     if L.dcs[other_copy(ev, sid)] != L.dcs["4.stor." + L.st["domain"]] else
                     [s for s in ev["sharks"] if s["manta_storage_id"] != sid] +
                     [{"datacenter": L.dcs["2.stor." + L.st["domain"]],
                       "manta_storage_id": "2.stor." + L.st["domain"]}])
        em.put_object("manta", e_key[1], {k: x for k, x in new_e.items() if k != "vnode"})
        # F: a metadata-only update (same object, new header): the swap must keep it
        new_f = dict(fv, headers={"m-during-move": "yes"})
        em.put_object("manta", f_key[1], {k: x for k, x in new_f.items() if k != "vnode"})
        # G: deleted
        em.del_object("manta", g_key[1])
        # H: overwritten by a new version that (still) names the evacuated node
        hid = "e0000000-0000-4000-8000-0000000000aa"
        data = lseed.content_for(hid, 777)
        for s in hv["sharks"]:
            path = os.path.join(L.nodes[s["manta_storage_id"]]["root"], hv["owner"], hid)
            with open(path, "wb") as fh:
                fh.write(data)
        new_h = dict(hv, objectId=hid, etag=hid, contentLength=777,
                     contentMD5=lseed.md5_b64(data))
        em.put_object("manta", h_key[1], {k: x for k, x in new_h.items() if k != "vnode"})

        md = run_module("evacuate_metadata", {"job": job, "round": plan["round"],
                                              "results": results}, env=env)
        assert not md.get("failed"), md
        assert md["metadata"]["skipped"].get("object_changed") == 1, md
        assert md["metadata"]["skipped"].get("object_deleted") == 1, md
        assert md["metadata"]["refreshed"] == 1, md
        rows = {(r["shard"], r["key"]): r for r in L.job_rows(job)}
        assert (rows[e_key]["status"], rows[e_key]["reason"]) == ("skipped", "object_changed")
        assert (rows[g_key]["status"], rows[g_key]["reason"]) == ("skipped", "object_deleted")
        assert rows[f_key]["status"] == "done"
        assert rows[h_key]["status"] == "pending"
        after = L.objects()
        assert g_key not in after
        assert after[e_key][1]["objectId"] == new_e["objectId"]          # newer write kept
        assert after[e_key][1]["sharks"] == new_e["sharks"]
        assert after[f_key][1]["headers"] == {"m-during-move": "yes"}     # newer write kept ...
        assert sid not in [s["manta_storage_id"] for s in after[f_key][1]["sharks"]]   # ... and swapped

        # the new version of H moves in the next round
        plan = run_module("evacuate_plan", {"job": job, "storage_hosts": storage_hosts,
                                            "work_dir": work, "rotation_lag": ROTATION_LAG}, env=env)
        results = []
        for host, a in plan["assignments"].items():
            c = run_module("evacuate_copy", {"src": a["file"], "verify_url": a["verify_url"]})
            results.append(c["results_file"])
        run_module("evacuate_metadata", {"job": job, "round": plan["round"], "results": results},
                   env=env)
        final = L.objects()
        assert final[h_key][1]["objectId"] == hid
        assert sid not in [s["manta_storage_id"] for s in final[h_key][1]["sharks"]]
        mpu = {k[1] for k in before if "/uploads/" in k[1]}
        check_evacuated(L, before, final, {sid}, exempt=mpu | {e_key[1], f_key[1], g_key[1], h_key[1]},
                        prefixes=rep["prefixes"])
    finally:
        L.writable(sid)


def test_write_between_read_and_conditional_update(lab, L):
    """A client write that lands after the metadata step read a row and before its
    etag-conditional UPDATE: the UPDATE misses it, the row is read again under lock
    and the swap re-applied to the new value (never overwriting it)."""
    from manta_lab import rpc
    from ansible_collections.manta.ops.plugins.module_utils import evacuate_metadata as M
    seed(lab, 50)
    objs = L.objects()
    sid = "1.stor." + L.st["domain"]
    fake = "99.stor." + L.st["domain"]
    keys = [k for k in sorted(referencing(objs, sid)) if "/uploads/" not in k[1]
            and not objs[k][1].get("creator")][:3]
    shard = keys[0][0]
    keys = [k for k in keys if k[0] == shard]
    rows = [{"oid": i, "key": k[1], "node": sid, "dest": fake, "object_id": objs[k][1]["objectId"],
             "md5": objs[k][1]["contentMD5"]} for i, k in enumerate(keys)]
    em = rpc.Client(L.st["electric_moray"][0]["url"])
    done = {"n": 0}

    class RacingCursor(psycopg2.extensions.cursor):
        """Lets a client write land right after the writer's first read."""

        def execute(self, q, args=None):
            r = super().execute(q, args)
            if isinstance(q, str) and q.startswith("SELECT _key, _etag, _value FROM manta WHERE") \
                    and "FOR UPDATE" not in q and not done["n"]:
                done["n"] += 1
                v = dict(objs[keys[0]][1], headers={"m-raced": "1"})
                em.put_object("manta", keys[0][1], {k: x for k, x in v.items() if k != "vnode"})
            return r

    prim = L.primaries()[shard]
    w = M.ShardWriter(shard, lambda: psycopg2.connect(prim, cursor_factory=RacingCursor),
                      {fake: "lab-dc9"}, parallel=1)
    fates = w.apply(rows)
    w.close()
    assert done["n"] == 1
    assert w.stats["conflicts"] == 1, w.stats
    assert {f[1] for f in fates} == {"done"}, fates
    after = L.objects()
    v = after[keys[0]][1]
    assert v["headers"] == {"m-raced": "1"}                      # the client's write survived
    assert fake in [s["manta_storage_id"] for s in v["sharks"]]  # and the swap was re-applied
    # put the lab back as it was (the fake node does not exist)
    back = [dict(r, node=fake, dest=sid) for r in rows]
    w2 = M.ShardWriter(shard, lambda: psycopg2.connect(prim), {sid: L.dcs[sid]}, parallel=1)
    assert {f[1] for f in w2.apply(back)} == {"done"}
    w2.close()


def test_sigkill_mid_run_then_resume(lab, L, tmp_path):
    rep = seed(lab, 500)
    sid = "3.stor." + L.st["domain"]
    before = L.objects()
    mpu = {k[1] for k in before if "/uploads/" in k[1]}
    job = unique("faults-kill")
    log = tmp_path / "play.log"
    proc = start_play(lab, "evacuate.yml", base_vars(tmp_path, job, evacuate="3.stor",
                                                     evacuate_max_bytes_per_sec=30000,
                                                     evacuate_copy_concurrency=2), log)
    try:
        wait_for(lambda: glob.glob(str(tmp_path / "agent" / job / "*" / "round-*.json"))
                 or proc.poll() is not None, timeout=180, what="the copy round to start")
        time.sleep(4)
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        kill_play(proc)
    try:
        rows = L.job_rows(job)
        assigned = [r for r in rows if r["status"] == "assigned"]
        assert assigned, {r["status"] for r in rows}
        there = set()
        for r in assigned:
            v = before[(r["shard"], r["key"])][1]
            p = L.path_of(r["dest"], v)
            if os.path.exists(p) and md5_b64_file(p) == v["contentMD5"]:
                there.add((r["shard"], r["key"]))
        assert there, "some copies were made before the kill"
        p = run_play(lab, "evacuate.yml", base_vars(tmp_path, job, evacuate="3.stor",
                                                    evacuate_max_bytes_per_sec=0,
                                                    evacuate_copy_concurrency=8))
        assert p.returncode == 0, p.stdout[-6000:]
        assert "requeued" in p.stdout
        rows = {(r["shard"], r["key"]): r for r in L.job_rows(job)}
        refetched = [k for k in there if rows[k]["fetched"]]
        assert not refetched, f"{len(refetched)} copies made before the kill were fetched again"
        assert all(rows[k]["status"] == "done" for k in there)
        assert L.job(job)["state"] == "complete"
        check_evacuated(L, before, L.objects(), {sid}, exempt=mpu, prefixes=rep["prefixes"])
    finally:
        L.writable(sid)


def test_max_duration_ends_a_run_cleanly(lab, L, tmp_path):
    rep = seed(lab, 300)
    sid = "3.stor." + L.st["domain"]
    before = L.objects()
    mpu = {k[1] for k in before if "/uploads/" in k[1]}
    job = unique("faults-budget")
    try:
        p = run_play(lab, "evacuate.yml", base_vars(tmp_path, job, evacuate="3.stor",
                                                    max_duration="40s",
                                                    evacuate_max_bytes_per_sec=3000,
                                                    evacuate_copy_concurrency=1))
        assert p.returncode == 0, p.stdout[-6000:]
        rows = L.job_rows(job)
        st = {r["status"] for r in rows}
        assert "done" in st and st & {"pending", "assigned"}, st
        assert L.job(job)["state"] == "active"
        assert p.seconds < 40 + 30, p.seconds          # the budget, plus set-up and read-only
        check_done_rows(L, job, sid)
        p = run_play(lab, "evacuate.yml", base_vars(tmp_path, job, evacuate="3.stor",
                                                    evacuate_max_bytes_per_sec=0,
                                                    evacuate_copy_concurrency=8))
        assert p.returncode == 0, p.stdout[-6000:]
        assert L.job(job)["state"] == "complete"
        check_evacuated(L, before, L.objects(), {sid}, exempt=mpu, prefixes=rep["prefixes"])
    finally:
        L.writable(sid)
