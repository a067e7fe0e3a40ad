"""Helpers for the evacuation integration tests (no tests here).

Everything is checked against the lab's real state: the shards' `manta` tables
(read on their primaries), the files under each storage node's root, the
job store (schema manta_evacuate on shard 1's primary).
"""
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from proctree import kill_tree

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / ".venv" / "bin" / "ansible-playbook"
ROTATION_LAG = 10          # two missed minnow beats (interval 5 s); production: 60


def md5_b64_file(path):
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for b in iter(lambda: fh.read(1 << 20), b""):
            h.update(b)
    return base64.b64encode(h.digest()).decode()


def play_env(lab):
    env = dict(os.environ)
    env.update(lab.env())
    env.update({"ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1", "PYTHONUNBUFFERED": "1",
                "ANSIBLE_DEPRECATION_WARNINGS": "0"})
    return env


def play_cmd(playbook, extra, check=False, inventory="inventories/lab"):
    cmd = [str(PLAYBOOK), "-i", inventory, f"playbooks/{playbook}", "-e", json.dumps(extra)]
    if check:
        cmd.append("--check")
    return cmd


def run_play(lab, playbook, extra, check=False, timeout=600, inventory="inventories/lab"):
    t0 = time.monotonic()
    p = subprocess.run(play_cmd(playbook, extra, check, inventory), cwd=REPO, env=play_env(lab),
                       capture_output=True, text=True, timeout=timeout)
    p.seconds = time.monotonic() - t0
    return p


def start_play(lab, playbook, extra, log_path):
    """Start a play in its own process group (so the test can SIGKILL all of it)."""
    fh = open(log_path, "w")
    return subprocess.Popen(play_cmd(playbook, extra), cwd=REPO, env=play_env(lab), stdout=fh,
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill_play(proc):
    """SIGKILL the play and every process it started (a controller crash)."""
    kill_tree(proc)


def base_vars(tmp_path, job, **kw):
    v = {"evacuate_job": job, "evacuate_work_dir": str(tmp_path / "work"),
         "evacuate_agent_dir": str(tmp_path / "agent"),
         "evacuate_rotation_lag": ROTATION_LAG, "evacuate_readonly_timeout": 120}
    v.update(kw)
    return v


class Lab:
    """Read views of a running lab for the assertions."""

    def __init__(self, lab):
        self.lab = lab
        st = lab.status
        self.st = st
        self.nodes = {s["storage_id"]: s for s in st["storage"]}
        self.dcs = {sid: s["datacenter"] for sid, s in self.nodes.items()}

    def primaries(self):
        out = {}
        for shard, sh in self.lab.status["shards"].items():
            for p in sh.get("peers", []):
                if p.get("role") == "primary":
                    out[shard] = p["dsn"]
        return out

    def index_shards(self):
        import requests
        r = requests.get(self.st["apis"]["sapi"] + "/applications", params={"name": "manta"},
                         headers={"Accept-Version": "~2"}, timeout=10)
        md = r.json()[0]["metadata"]
        return [e["host"] for e in md["INDEX_MORAY_SHARDS"]]

    def rows(self):
        """(shard, key, etag, value) of every object row of every index shard."""
        import psycopg2
        prim = self.primaries()
        for shard in self.index_shards():
            c = psycopg2.connect(prim[shard])
            try:
                with c.cursor() as cur:
                    cur.execute("SELECT _key, _etag, _value FROM manta WHERE type = 'object'")
                    for k, e, v in cur.fetchall():
                        yield shard, k, e.strip(), json.loads(v)
            finally:
                c.close()

    def objects(self):
        """{(shard, key): (etag, value)} of every object row of every index shard."""
        return {(shard, k): (e, v) for shard, k, e, v in self.rows()}

    def job_rows(self, job):
        import psycopg2
        c = psycopg2.connect(self.primaries()["1.moray." + self.st["domain"]])
        try:
            with c.cursor() as cur:
                cur.execute("SELECT to_regclass('manta_evacuate.objects') IS NOT NULL")
                if not cur.fetchone()[0]:
                    return []
                cur.execute("SELECT shard, key, node, status, reason, dest, attempts, fetched "
                            "FROM manta_evacuate.objects WHERE job = %s", (job,))
                cols = ("shard", "key", "node", "status", "reason", "dest", "attempts", "fetched")
                return [dict(zip(cols, r)) for r in cur.fetchall()]
        finally:
            c.close()

    def job(self, job):
        import psycopg2
        c = psycopg2.connect(self.primaries()["1.moray." + self.st["domain"]])
        try:
            with c.cursor() as cur:
                cur.execute("SELECT to_regclass('manta_evacuate.jobs') IS NOT NULL")
                if not cur.fetchone()[0]:
                    return None
                cur.execute("SELECT state, pause_reason, throttle FROM manta_evacuate.jobs "
                            "WHERE job = %s", (job,))
                r = cur.fetchone()
                return None if r is None else {"state": r[0], "pause_reason": r[1], "throttle": r[2]}
        finally:
            c.close()

    def files(self, sid):
        """{relative path: (size, mtime_ns)} under a node's root (excluding our temp dir)."""
        root = self.nodes[sid]["root"]
        out = {}
        for d, dirs, fnames in os.walk(root):
            if os.path.relpath(d, root).split(os.sep)[0] in ("manta_evacuate", "nginx_temp"):
                continue
            for f in fnames:
                p = os.path.join(d, f)
                st = os.stat(p)
                out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
        return out

    def path_of(self, sid, value):
        return os.path.join(self.nodes[sid]["root"], value.get("creator") or value["owner"],
                            value["objectId"])

    def zone(self, sid):
        return self.nodes[sid]["uuid"]

    def heartbeat_age(self, sid):
        import psycopg2
        c = psycopg2.connect(self.primaries()["1.moray." + self.st["domain"]])
        try:
            with c.cursor() as cur:
                cur.execute("SELECT _value FROM manta_storage WHERE _key = %s", (sid,))
                v = json.loads(cur.fetchone()[0])
        finally:
            c.close()
        return time.time() - v["timestamp"] / 1000.0

    def writable(self, sid):
        """Put a node back in rotation (minnow on, fresh heartbeat)."""
        self.lab.run("svcadm", self.zone(sid), "enable", "minnow")
        deadline = time.monotonic() + 60
        while self.heartbeat_age(sid) > 4:
            assert time.monotonic() < deadline, f"{sid}: no fresh heartbeat after enabling minnow"
            time.sleep(0.5)

    def minnow_online(self, sid):
        return next(s for s in self.lab.status["storage"]
                    if s["storage_id"] == sid)["services"]["minnow"] == "online"


def lab_inventory(lab):
    out = subprocess.check_output([str(REPO / ".venv" / "bin" / "ansible-inventory"), "-i",
                                   "inventories/lab", "--list"], cwd=REPO, env=play_env(lab))
    return json.loads(out)


def referencing(objs, sid):
    return {k: v for k, v in objs.items() if any(s["manta_storage_id"] == sid
                                                  for s in v[1].get("sharks") or [])}


def check_evacuated(L, before, after, evac, exempt=(), files_before=None, prefixes=None):
    """The invariants of a finished evacuation of the nodes ``evac``.

    * every object that referenced an evacuated node (except ``exempt`` keys)
      now references a destination, and every copy it names exists with the right MD5;
    * no object lost a copy; none holds two copies on one node;
    * the datacenter rule: a copy moved to another datacenter never joins a datacenter
      that already holds a copy;
    * nothing was written on the evacuated nodes (``files_before``).
    Returns the number of copies checked."""
    evac = set(evac)
    checked = 0
    for k, (etag, v) in before.items():
        if not any(s["manta_storage_id"] in evac for s in v.get("sharks") or []):
            continue
        if prefixes is not None and not k[1].startswith(tuple(prefixes)):
            continue
        if k not in after:
            continue                # deleted by the test itself
        a = after[k][1]
        if a.get("objectId") != v.get("objectId"):
            continue                # overwritten by the test itself
        ids = [s["manta_storage_id"] for s in a["sharks"]]
        assert len(a["sharks"]) == len(v["sharks"]), f"{k}: copy count changed {v['sharks']} -> {a['sharks']}"
        assert len(set(ids)) == len(ids), f"{k}: two copies on one node: {ids}"
        if k[1] in exempt:
            continue
        assert not evac & set(ids), f"{k} still references {evac & set(ids)}: {ids}"
        old = {s["manta_storage_id"]: s["datacenter"] for s in v["sharks"]}
        for s in a["sharks"]:
            sid = s["manta_storage_id"]
            if sid in old:
                continue            # a copy the evacuation did not make
            assert s["datacenter"] == L.dcs[sid], f"{k}: {sid} recorded in {s['datacenter']}"
            path = L.path_of(sid, a)
            assert os.path.exists(path), f"{k}: {sid} has no file {path}"
            assert md5_b64_file(path) == a["contentMD5"], f"{k}: bad MD5 of {path}"
            if True:
                moved_from = [o for o in old if o in evac and o not in ids]
                others = {dc for o, dc in old.items() if o not in moved_from}
                for o in moved_from:
                    assert s["datacenter"] == old[o] or s["datacenter"] not in others, \
                        f"{k}: copy of {o} ({old[o]}) went to {sid} in {s['datacenter']}, " \
                        f"which already holds a copy"
            checked += 1
        # every other field unchanged
        strip = lambda x: {f: x[f] for f in x if f not in ("sharks", "vnode")}  # noqa: E731
        assert strip(a) == strip(v), f"{k}: fields other than sharks changed"
    if files_before is not None:
        for sid in evac:
            assert L.files(sid) == files_before[sid], f"something was written on {sid}"
    return checked


def wait_for(pred, timeout=60, step=0.2, what="condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def seed(lab, n):
    p = lab.run("seed", "--objects", n)
    return json.loads(p.stdout)


def unique(name):
    import uuid
    return f"{name}-{uuid.uuid4().hex[:6]}"


sys.path.insert(0, str(REPO / "tests"))
