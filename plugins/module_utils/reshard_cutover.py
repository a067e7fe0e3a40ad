# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""The middle of the write-blocked window: detach, establish, reconfigure, verify, switch SAPI.

Each step is one reshard phase. It starts by looking at the real state (the
old and new manatee states in ZooKeeper, election nodes, SAPI instance
metadata and reprovision markers, VMAPI jobs, SAPI application metadata) and
at the journal, does only what is missing, and journals what later steps
need. Everything here is time-critical (writes to the moving vnodes are
blocked), so independent work runs in parallel and waits poll every 50 ms.

Steps (reshard.md section 1, manatee.md section 5):

``detach_peers``      a sentinel written to the old primary is read back on
                      every new peer (each has every write made before the
                      block); then, tail first (async, sync, primary), each
                      new peer's WAL position and manatee peer object are
                      journaled and its sitter disabled; we wait for its
                      election node to go before the next one, so no peer can
                      be re-pointed upstream and get ahead of its new upstream.
``establish_cluster`` the new shard's first state (generation 1, frozen with
                      the plan's reason, initWal = the new primary's real WAL
                      position) written *before* the sitters come back under
                      the new shard path, so they cannot self-elect.
``reconfigure_peers`` SAPI metadata (SERVICE_NAME, SHARD, MANATEE_SHARD_PATH)
                      and alias, VMAPI alias (Duplicate = done) and a
                      reprovision onto the same image, at most once per
                      marker, for the three peers in parallel.
``verify_new_shard``  the new cluster is up (primary writable, sync and async
                      streaming); a sentinel is written through one of the new
                      shard's morays (found in SAPI and VMAPI, not in any
                      inventory), read back through every one of them and read
                      straight from the new async: moray -> new primary ->
                      sync -> async, end to end.
``switch_sapi``       (start of ``install_ring``) the new shard appended to
                      INDEX_MORAY_SHARDS before any electric-moray loads a
                      ring naming it, and HASH_RING_IMAGE compare-and-swapped
                      from the transitional image to the final one.
"""
from __future__ import annotations

import copy
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.manta.ops.plugins.module_utils import lsn as lsnmod
from ansible_collections.manta.ops.plugins.module_utils import manatee_pg as mpg
from ansible_collections.manta.ops.plugins.module_utils import manatee_state as ms
from ansible_collections.manta.ops.plugins.module_utils import reshard_common as rc
from ansible_collections.manta.ops.plugins.module_utils import reshard_journal as rj
from ansible_collections.manta.ops.plugins.module_utils import reshard_ring as rring

MARKER_KEY = "MANTA_OPS_REPROVISION"
TAIL_FIRST = ("async", "sync", "primary")


class CutoverError(rc.ReshardError):
    pass


def chain(state):
    out = [state["primary"]]
    if state.get("sync"):
        out.append(state["sync"])
    return out + list(state.get("async") or [])


class Cutover:
    def __init__(self, zk, journal, params, sapi=None, vmapi=None, log=None, check_mode=False):
        self.zk = zk
        self.j = journal
        self.p = params
        self.sapi = sapi
        self.vmapi = vmapi
        self.log = log or (lambda msg: None)
        self.check = check_mode
        self.timings = {}
        self.pg_opts = {"user": params.get("pg_user"), "password": params.get("pg_password")}

    # ---- helpers -----------------------------------------------------------------------------
    @property
    def plan(self):
        return self.j.plan

    @property
    def props(self):
        return self.j.props

    def new_peers(self):
        peers = self.props.get("new_peers") or []
        if len(peers) != 3:
            raise CutoverError(f"the journal lists {len(peers)} new peers; expected 3 (phase "
                               "create_manatee_peers must be done)")
        return peers

    def zone_cmd(self, zone, action, service):
        tmpl = self.p["zone_svcadm"]
        cmd = tmpl.format(zone=zone, action=action, service=service)
        args = shlex.split(cmd)
        # The zone command runs inside the module process (no AnsibleModule here to run_command with).
        r = subprocess.run(args, capture_output=True, text=True, check=False,  # pylint: disable=ansible-bad-function
                           timeout=self.p.get("timeout", 300))
        if r.returncode != 0:
            raise CutoverError(f"'{cmd}' failed ({r.returncode}): {(r.stderr or r.stdout).strip()[:400]}")
        return r.stdout

    def load_state(self, shard):
        try:
            st, dummy = ms.load(self.zk, shard)
            return st
        except ms.StateMissing:
            return None

    def election_ids(self, shard):
        return {e["id"] for e in ms.active_peers(self.zk, shard, with_data=False) if e.get("id")}

    def wait(self, what, fn, timeout, poll=0.05):
        t0 = time.monotonic()
        last = None
        while True:
            ok, last = fn()
            if ok:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise CutoverError(f"timed out after {timeout:g}s waiting for {what}: {last}")
            time.sleep(poll)

    def hold(self, step):
        """Test hook: die (SIGKILL) inside ``step``, after its first change, as a crash would."""
        if self.p.get("test_hold") == step:
            import os
            import signal
            self.j.set_props({"test_hold_reached": step}, event=f"test crash inside {step}")
            os.kill(os.getpid(), signal.SIGKILL)

    # ---- start-up: one worker per plan, and the transitional ring everywhere ------------------------------
    def worker_lock(self, timeout):
        """An ephemeral znode: one cutover process per plan at a time. A process started after a killed
        controller waits here for the orphaned one to finish (its session ends with it)."""
        from kazoo.exceptions import NodeExistsError as KNodeExists
        path = f"{rj.ROOT}/workers/{self.plan}"
        t0 = time.monotonic()
        while True:
            try:
                self.zk.client.create(path, rj.now_iso().encode(), ephemeral=True, makepath=True)
                return time.monotonic() - t0
            except KNodeExists:
                if time.monotonic() - t0 > timeout:
                    raise CutoverError(f"another cutover process for plan {self.plan} is still running "
                                       f"({path}); waited {timeout:g}s")
                time.sleep(0.1)

    def wait_transitional(self, urls, image, timeout):
        """Wait until every electric-moray serves the transitional ring; returns {url: serving_ts}."""
        out = {}

        def ready():
            for u in urls:
                st = rc.em_status(u, timeout=2.0)
                if rc.status_image(st) != image:
                    return False, f"{u} serves {rc.status_image(st)}"
                out[u] = rring.serving_ts(st)
            return True, "all transitional"
        self.wait("every electric-moray to serve the transitional ring", ready, timeout, poll=0.05)
        return out

    # ---- checkpoint_peers (before the window) ----------------------------------------------------------
    def checkpoint_peers(self):
        """Make the new peers' restart cheap: a checkpoint on the old primary, replayed by every new peer
        (proven by a sentinel), then a CHECKPOINT on each (a restartpoint). A peer's sitter stops postgres
        without a shutdown checkpoint, so at its restart under the new shard postgres replays every WAL
        record since its last restartpoint; after a big copy (or the VACUUM that follows a bulk load) that
        can be hundreds of MB and seconds of recovery, inside the window. Done before the window opens."""
        shard = self.p["shard"]
        t0 = time.monotonic()
        state = self.load_state(shard)
        by_zone = {p["zoneId"]: p for p in chain(state)}
        peers = [by_zone[x["uuid"]] for x in self.new_peers() if x["uuid"] in by_zone]
        if not peers:
            return {"checkpointed": []}
        conn = rc.pg_connect(state["primary"]["pgUrl"], dbname="postgres", query_timeout=600, **self.pg_opts)
        try:
            with conn.cursor() as cur:
                cur.execute("CHECKPOINT")
        finally:
            conn.close()
        conn = rc.pg_connect(state["primary"]["pgUrl"], **self.pg_opts)
        try:
            etag, value = rc.write_sentinel(conn, self.plan, "checkpoint: replayed by the new peers")
        finally:
            conn.close()
        with ThreadPoolExecutor(max_workers=3) as ex:
            for f in [ex.submit(rc.wait_sentinel, p["pgUrl"], etag, value, self.p["catchup_timeout"],
                                self.pg_opts) for p in peers]:
                f.result()

        def restartpoint(peer):
            c = rc.pg_connect(peer["pgUrl"], dbname="postgres", query_timeout=600, **self.pg_opts)
            try:
                with c.cursor() as cur:
                    cur.execute("CHECKPOINT")
            finally:
                c.close()
        with ThreadPoolExecutor(max_workers=3) as ex:
            for f in [ex.submit(restartpoint, p) for p in peers]:
                f.result()
        self.timings["checkpoint_peers"] = round(time.monotonic() - t0, 3)
        return {"checkpointed": [p["id"] for p in peers]}

    # ---- detach_peers -------------------------------------------------------------------------------
    def detach_peers(self):
        shard = self.p["shard"]
        peers = self.new_peers()
        zones = [x["uuid"] for x in peers]
        detached = copy.deepcopy(self.props.get("detached") or {})
        state = self.load_state(shard)
        if state is None:
            raise CutoverError(f"shard {shard} has no state")
        if not state.get("freeze"):
            raise CutoverError(f"the old cluster {shard} is not frozen; refusing to detach peers")
        t0 = time.monotonic()
        by_zone = {p["zoneId"]: p for p in chain(state)}
        present = [z for z in zones if z in by_zone]
        # 1. every new peer still attached has every write made before the block
        if present and len(detached) < 3:
            conn = rc.pg_connect(state["primary"]["pgUrl"], **self.pg_opts)
            try:
                etag, value = rc.write_sentinel(conn, self.plan, "detach: flush before the write block")
            finally:
                conn.close()
            with ThreadPoolExecutor(max_workers=3) as ex:
                futs = [ex.submit(rc.wait_sentinel, by_zone[z]["pgUrl"], etag, value,
                                  self.p["catchup_timeout"], self.pg_opts) for z in present]
                for f in futs:
                    f.result()
            self.timings["flush"] = round(time.monotonic() - t0, 3)
            self.j.set_props({"flush": {"etag": etag, "at": rj.now_iso()}}, event="sentinel flushed to "
                             f"{len(present)} new peers")
        # 2. tail first
        for role in TAIL_FIRST:
            if role in detached:
                rec = detached[role]
                if rec["peer"]["id"] in self.election_ids(shard):
                    self.zone_cmd(rec["zone"], "disable", "manatee-sitter")
                continue
            state = self.load_state(shard)
            ch = chain(state)
            tail = ch[-1]
            remaining = [z for z in zones if z not in {d["zone"] for d in detached.values()}]
            if tail["zoneId"] not in remaining:
                raise CutoverError(f"the tail of {shard}'s chain is {tail['id']} ({tail['zoneId']}), not one "
                                   f"of this plan's new peers ({', '.join(remaining)}); expected them at the "
                                   "end of the chain")
            if len(ch) < 2 or tail is state["primary"]:
                raise CutoverError(f"{shard}: refusing to detach its primary")
            rec = {"zone": tail["zoneId"], "peer": {k: tail.get(k) for k in ms.PEER_FIELDS}}
            if role == "primary":
                probe = mpg.probe(tail, "async", None, self.pg_opts.get("user"), self.pg_opts.get("password"))
                if probe.get("error") or not probe.get("wal_lsn"):
                    raise CutoverError(f"cannot read the WAL position of {tail['id']} before detaching it: "
                                       f"{probe.get('error')}")
                rec["lsn"] = probe["wal_lsn"]
            rec["at"] = rj.now_iso()
            detached[role] = rec
            self.j.set_props({"detached": detached}, event=f"detaching new {role} {tail['zoneId']}")
            t1 = time.monotonic()
            self.zone_cmd(tail["zoneId"], "disable", "manatee-sitter")
            self.timings[f"sitter_disable_{role}"] = round(time.monotonic() - t1, 3)
            if role == "async":
                self.hold("detach_peers")
            self.wait(f"{tail['id']} to leave the election of {shard}",
                      lambda t=tail: (t["id"] not in self.election_ids(shard), "still has an election node"),
                      self.p["timeout"])
            # its SAPI side for reconfigure_peers, while the next one is detached (nothing restarts it)
            self._prefetch(role, rec)
        # 3. the old primary has dropped them
        ids = {d["peer"]["id"] for d in detached.values()}

        def dropped():
            st = self.load_state(shard)
            left = [p["id"] for p in chain(st) + list(st.get("deposed") or []) if p["id"] in ids]
            return not left, f"still listed: {left}"
        self.wait(f"{shard}'s primary to drop the detached peers", dropped, self.p["timeout"])
        self.timings["detach_peers"] = round(time.monotonic() - t0, 3)
        return {"detached": detached}

    # ---- establish_cluster ----------------------------------------------------------------------------
    def establish_cluster(self):
        new_shard = self.p["new_shard"]
        d = self.props.get("detached") or {}
        if set(d) != set(TAIL_FIRST):
            raise CutoverError(f"detach_peers recorded {sorted(d)}; expected primary, sync and async")
        prim, sync, asyn = (dict(d[r]["peer"]) for r in ("primary", "sync", "async"))
        init_wal = d["primary"].get("lsn") or "0/00000000"
        st = ms.new_cluster_state(prim, sync, [asyn], lsnmod.normalize(init_wal), self.p["freeze_reason"])
        res = ms.create_state(self.zk, new_shard, st, check_mode=self.check)
        self.hold("establish_cluster")
        return {"established": {"changed": res["changed"], "init_wal": init_wal,
                                "generation": (res.get("after") or {}).get("generation")}}

    # ---- reconfigure_peers ------------------------------------------------------------------------------
    def reconfigure_one(self, role, rec):
        t0 = time.monotonic()
        try:
            return self._reconfigure_one(role, rec)
        finally:
            self.timings[f"reconfigure_{role}"] = round(time.monotonic() - t0, 3)

    def prepare_one(self, role, rec):
        """The SAPI half of reconfiguring one detached peer, which restarts nothing: its SAPI metadata
        (SERVICE_NAME, SHARD, MANATEE_SHARD_PATH) and alias, its image from VMAPI, and its reprovision marker
        set to pending (with the VMAPI reprovision jobs seen before). Run as soon as the peer is detached
        (its sitter is disabled, so nothing reads its new metadata until the reprovision), while the next
        peer is being detached. Returns {"out", "pending"}; pending None = nothing left to reprovision."""
        zone = rec["zone"]
        new_shard, new_short, domain = self.p["new_shard"], self.p["new_short"], self.p["domain"]
        alias = f"{new_short}.postgres.{domain}-{zone[:8]}"
        want = {"SERVICE_NAME": new_shard, "SHARD": new_short, "MANATEE_SHARD_PATH": f"/manatee/{new_shard}"}
        inst = self.sapi.get_object("instance", zone)
        md = inst.get("metadata") or {}
        out = {"zone": zone, "alias": alias}
        if any(md.get(k) != v for k, v in want.items()) or (inst.get("params") or {}).get("alias") != alias:
            self.sapi.update("instance", zone, "update", metadata=want, params={"alias": alias})
            out["sapi_updated"] = True
        vm = self.vmapi.get_vm(zone)
        # The VMAPI alias is cosmetic (the reprovision below does not need it): it is set after the
        # window, in sapi_cleanup, so that its job does not queue ahead of the reprovision.
        image = vm.get("image_uuid")
        marker = f"{self.plan}-{role}"
        rec_m = md.get(MARKER_KEY) if isinstance(md.get(MARKER_KEY), dict) else None
        if rec_m and rec_m.get("marker") == marker and rec_m.get("state") == "done":
            out["reprovisioned"] = False
            return {"out": out, "pending": None}
        if rec_m and rec_m.get("marker") == marker and rec_m.get("state") == "pending":
            prior = set(rec_m.get("prior_jobs") or [])
            jobs = [j for j in self.vmapi.list_vm_jobs(zone, task="reprovision") if j.get("uuid") not in prior]
            jobs.sort(key=lambda j: j.get("created_at") or "")
            if jobs:
                job = jobs[-1]
                if job.get("execution") not in ("succeeded", "failed", "canceled"):
                    self.vmapi.wait_job(job["uuid"], timeout=self.p["timeout"], interval=0.1)
                    job = self.vmapi.get_job(job["uuid"])
                if job.get("execution") == "succeeded":
                    self.sapi.update("instance", zone, "update", metadata={MARKER_KEY: dict(
                        rec_m, state="done", finished_at=rj.now_iso())})
                    out["reprovisioned"] = "resolved"
                    return {"out": out, "pending": None}
        prior = sorted(j.get("uuid") for j in self.vmapi.list_vm_jobs(zone, task="reprovision"))
        pending = {"marker": marker, "state": "pending", "image_uuid": image, "started_at": rj.now_iso(),
                   "prior_jobs": prior}
        self.sapi.update("instance", zone, "update", metadata={MARKER_KEY: pending})
        return {"out": out, "pending": pending}

    def _prefetch(self, role, rec):
        """prepare_one(role) in the background (see there); reconfigure_peers collects it."""
        if self.check:
            return
        if getattr(self, "_prep_pool", None) is None:
            self._prep_pool = ThreadPoolExecutor(max_workers=3)
            self._prepared = {}
        self._prepared[role] = self._prep_pool.submit(self.prepare_one, role, rec)

    def _reconfigure_one(self, role, rec):
        prep = None
        fut = (getattr(self, "_prepared", None) or {}).get(role)
        if fut is not None:
            try:
                prep = fut.result(timeout=self.p["timeout"])
                if prep["out"]["zone"] != rec["zone"]:
                    prep = None
            except Exception:  # noqa: BLE001 - done again below, from the real state
                prep = None
        if prep is None:
            prep = self.prepare_one(role, rec)
        out, pending = prep["out"], prep["pending"]
        if pending is None:
            return out
        zone = rec["zone"]
        t1 = time.monotonic()
        self.sapi.upgrade_instance(zone, pending["image_uuid"], timeout=self.p["timeout"])
        self.timings[f"reprovision_{role}"] = round(time.monotonic() - t1, 3)
        self.sapi.update("instance", zone, "update",
                         metadata={MARKER_KEY: dict(pending, state="done", finished_at=rj.now_iso())})
        out["reprovisioned"] = True
        return out

    def reconfigure_peers(self):
        d = self.props.get("detached") or {}
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=3) as ex:
            futs = {r: ex.submit(self.reconfigure_one, r, d[r]) for r in TAIL_FIRST}
            out = {r: f.result() for r, f in futs.items()}
        self.hold("reconfigure_peers")
        self.timings["reconfigure_peers"] = round(time.monotonic() - t0, 3)
        return {"reconfigured": out}

    # ---- verify_new_shard ------------------------------------------------------------------------------
    def cluster_ok(self):
        st = self.load_state(self.p["new_shard"])
        if st is None:
            return False, "no state"
        pg = mpg.probe_state(st, user=self.pg_opts.get("user"), password=self.pg_opts.get("password"),
                             connect_timeout=2, query_timeout=5)
        prim = pg.get(st["primary"]["id"]) or {}
        if prim.get("error") or prim.get("in_recovery") is not False:
            return False, f"primary {st['primary']['id']}: {prim.get('error') or 'still in recovery'}"
        rows = {r.get("application_name"): r for r in prim.get("replication") or []}
        s = rows.get((st.get("sync") or {}).get("pgUrl"))
        if not s or s.get("state") != "streaming" or s.get("sync_state") != "sync":
            return False, f"sync link: {s}"
        sync_pg = pg.get(st["sync"]["id"]) or {}
        arows = {r.get("application_name"): r for r in sync_pg.get("replication") or []}
        for a in st.get("async") or []:
            r = arows.get(a["pgUrl"])
            if not r or r.get("state") != "streaming":
                return False, f"async {a['id']} link: {r}"
        return True, "healthy"

    def discover_morays(self):
        """The new shard's morays, found as production finds them (reshard.md §1 "Instance listing"):
        the SAPI ``moray`` service of the application, its instances whose ``metadata.SERVICE_NAME`` is the
        new shard, each one's VM from VMAPI (it must be running; its address is the IP of its ``manta``
        nic, else its primary nic) and its port: instance metadata ``MORAY_PORT`` where the deployment
        publishes one (the lab, whose zones share 127.0.0.1), else ``moray_port`` (2020: haproxy in every
        moray zone). Returns [{uuid, url, server_uuid, alias}]; the endpoints come from no inventory."""
        new_shard = self.p["new_shard"]
        svcs = [s for s in self.sapi.list_services(name="moray", application_uuid=self.p["app_uuid"])
                if s.get("name") == "moray"]
        if len(svcs) != 1:
            raise CutoverError(f"SAPI has {len(svcs)} 'moray' services in application {self.p['app_uuid']}; "
                               "expected exactly 1")
        out = []
        for inst in self.sapi.list_instances(service_uuid=svcs[0]["uuid"]):
            md = inst.get("metadata") or {}
            if md.get("SERVICE_NAME") != new_shard:
                continue
            vm = self.vmapi.get_vm_or_none(inst["uuid"])
            if not vm or vm.get("state") != "running":
                continue
            nics = vm.get("nics") or []
            nic = next((n for n in nics if n.get("nic_tag") == "manta"), None) \
                or next((n for n in nics if n.get("primary")), None) or (nics[0] if nics else None)
            if not nic or not nic.get("ip"):
                continue
            try:
                port = int(md.get("MORAY_PORT") or self.p.get("moray_port") or 2020)
            except (TypeError, ValueError):
                raise CutoverError(f"moray instance {inst['uuid']} has MORAY_PORT {md.get('MORAY_PORT')!r}; "
                                   "expected a port number") from None
            out.append({"uuid": inst["uuid"], "url": f"http://{nic['ip']}:{port}",
                        "server_uuid": vm.get("server_uuid"), "alias": vm.get("alias")})
        return sorted(out, key=lambda m: m["uuid"])

    def _moray_sentinel(self, morays, deadline):
        """Write a fresh sentinel through one of the new shard's morays (the first that takes it) and read it
        back through every one of them. Returns (etag, value, via url, {url: etag read})."""
        value = rc.sentinel_value(self.plan, "verify_new_shard: through the new moray")
        etag = via = None
        last = None
        while etag is None:
            for m in morays:
                try:
                    res = rc.EmClient(m["url"], timeout=10).put_object(rc.SENTINEL_TABLE, rc.SENTINEL_KEY, value)
                    etag, via = res.get("etag"), m["url"]
                    break
                except rc.EmError as exc:
                    last = f"{m['url']}: {exc}"
            if etag is None:
                if time.monotonic() > deadline:
                    raise CutoverError(f"cannot write the sentinel through any moray of {self.p['new_shard']} "
                                       f"({', '.join(m['url'] for m in morays)}): {last}")
                time.sleep(0.05)
        reads = {}
        pending = list(morays)
        while pending:
            for m in list(pending):
                try:
                    got = rc.EmClient(m["url"], timeout=10).get_object(rc.SENTINEL_TABLE, rc.SENTINEL_KEY)
                except rc.EmError as exc:
                    last = f"{m['url']}: {exc}"
                    continue
                if got.get("_etag") == etag and got.get("value") == value:
                    reads[m["url"]] = etag
                    pending.remove(m)
                else:
                    last = f"{m['url']} reads etag {got.get('_etag')}, expected {etag}"
            if pending:
                if time.monotonic() > deadline:
                    raise CutoverError(f"the sentinel written through {via} is not read back through "
                                       f"{', '.join(m['url'] for m in pending)}: {last}")
                time.sleep(0.05)
        return etag, value, via, reads

    def verify_new_shard(self):
        new_shard = self.p["new_shard"]
        t0 = time.monotonic()
        morays = getattr(self, "morays", None) or self.discover_morays()
        if not morays:
            raise CutoverError(f"SAPI lists no running moray of {new_shard} (phase create_morays provisions "
                               "three); cannot prove the path through the new shard's moray")
        self.wait(f"the new cluster {new_shard} to be healthy", self.cluster_ok, self.p["timeout"], poll=0.05)
        self.hold("verify_new_shard")
        st = self.load_state(new_shard)
        deadline = time.monotonic() + self.p["timeout"]
        try:
            etag, value, via, reads = self._moray_sentinel(morays, deadline)
        except CutoverError:
            fresh = self.discover_morays()          # instances changed since the start? once more, afresh
            if not fresh or fresh == morays:
                raise
            morays = fresh
            etag, value, via, reads = self._moray_sentinel(morays, time.monotonic() + self.p["timeout"])
        # replication: the value written through the moray is on the new async (read straight from it: a
        # moray only reads from the primary)
        waited = rc.wait_sentinel(st["async"][-1]["pgUrl"], etag, value, self.p["timeout"], self.pg_opts,
                                  interval=0.05)
        self.timings["verify_new_shard"] = round(time.monotonic() - t0, 3)
        return {"new_shard_verified": {"via": f"moray {via}", "etag": etag, "read_through": sorted(reads),
                                       "morays": [m["uuid"] for m in morays], "read_on": st["async"][-1]["id"],
                                       "waited": round(waited, 3), "at": rj.now_iso()}}

    # ---- switch_sapi (first part of install_ring) ----------------------------------------------------------
    def switch_sapi(self):
        from ansible_collections.manta.ops.plugins.module_utils import index_shards as ix
        app = self.sapi.get_object("application", self.p["app_uuid"])
        md = app.get("metadata") or {}
        out = {}
        shards = ix.validate(md.get("INDEX_MORAY_SHARDS"))
        new = ix.ensure(shards, [self.p["new_shard"]], "present", None, "add")
        new = new[0] if isinstance(new, tuple) else new
        if new != shards:
            self.sapi.update("application", app["uuid"], "update", metadata={"INDEX_MORAY_SHARDS": new})
            out["index_shards_added"] = True
        cur = md.get("HASH_RING_IMAGE")
        final, trans, old = self.props["final_image"], self.props["transitional_image"], self.props["old_image"]
        if cur == final:
            out["hash_ring_image"] = "already final"
        elif cur in (trans, old):
            # fresh read immediately before the write: SAPI has no etag
            again = (self.sapi.get_object("application", app["uuid"]).get("metadata") or {}).get("HASH_RING_IMAGE")
            if again != cur:
                raise CutoverError(f"HASH_RING_IMAGE changed under us ({cur} -> {again})")
            self.sapi.update("application", app["uuid"], "update", metadata={"HASH_RING_IMAGE": final})
            out["hash_ring_image"] = f"{cur} -> {final}"
        else:
            raise CutoverError(f"HASH_RING_IMAGE is {cur}, neither this plan's transitional ({trans}), old "
                               f"({old}) nor final ({final}) image: someone else changed the ring; holding")
        self.hold("install_ring")
        return {"sapi_switched": out}
