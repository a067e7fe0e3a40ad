#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: reshard_plan
short_description: Validate a reshard's inputs, choose its vnodes and create or resume its plan
version_added: 0.1.0
description:
  - Reads SAPI, VMAPI, IMGAPI (the current hash ring), ZooKeeper (manatee states, locks, the reshard journal)
    and PostgreSQL (versions, a census of rows per vnode), and checks every input of a reshard before anything
    is changed. Every failed check is reported at once, each naming the input and what would be valid.
  - Checks that the shard is in C(INDEX_MORAY_SHARDS); that the new shard name is well formed
    (C(<name>.moray.<DOMAIN_NAME>)) and not in use anywhere (shard lists, the ring, ZooKeeper, SAPI); that every
    vnode belongs to the shard and at least one stays; that the servers for the new peers exist and span 1 or 3
    datacenters; that every peer of the shard runs the same PostgreSQL version; that ZooKeeper, SAPI, IMGAPI and
    VMAPI answer; and that no other reshard holds the reshard lock or works on the same shards.
  - With O(split=balanced) the vnodes are chosen from the census so that the new shard gets O(split_fraction)
    of the rows.
  - Then creates the plan in the journal (M(manta.ops.reshard_journal)), or resumes the active plan for the same
    shard and new shard; a re-run with the same command therefore continues where the last one stopped.
  - Always returns the rehearsal report (what moves, rows and bytes, the ring diff, every SAPI change, the peers
    and morays to create, and estimated durations). In check mode nothing is written; the plan is not created.
options:
  shard:
    description: The shard to split, full name (V(1.moray.us-east.example.com)) or short (V(1), V(1.moray)).
    type: str
    required: true
  new_shard:
    description: The new shard, full or short name. It must not exist anywhere yet.
    type: str
    required: true
  vnodes:
    description: The vnodes to move, as a list or a string with ranges (V(0,106,943), V(0-99)).
    type: raw
  split:
    description: V(balanced) chooses the vnodes from a census of rows instead of O(vnodes).
    type: str
    choices: [none, balanced]
    default: none
  split_fraction:
    description: With O(split=balanced), the share of the shard's rows that moves.
    type: float
    default: 0.5
  servers:
    description:
      - Compute nodes (uuid or hostname) for the three new peers, in the order primary, sync, async. They must
        be in 1 datacenter or in 3. By default one per datacenter is chosen from O(manta_servers).
    type: list
    elements: str
  manta_servers:
    description: The compute nodes of the region, C({uuid, hostname, datacenter}) (from the inventory / CNAPI).
    type: list
    elements: dict
    required: true
  postgres_image:
    description: Image for the new peers; by default the (single) image of the shard's peers, from VMAPI.
    type: str
  plan:
    description: Plan id to create or resume; by default the active plan for the shard pair, or a new uuid.
    type: str
  pause_before:
    description: A phase name; validated here, honoured by the role.
    type: str
  pg_versions:
    description: Allowed PostgreSQL versions (V(15), V(15.4)); empty allows any, provided all peers agree.
    type: list
    elements: str
    default: []
  census:
    description: Count rows and bytes per vnode on the shard's last async (needed by O(split=balanced)).
    type: bool
    default: true
  canaries:
    description: Number of canary objects on moving vnodes (one more goes on a staying vnode as a control).
    type: int
    default: 3
  delete:
    description: Delete tuning used for the estimate (C(batch_size), C(pause), C(connections)).
    type: dict
    default: {}
  rates:
    description: Overrides of the estimate model (see module_utils reshard_plan DEFAULT_RATES).
    type: dict
    default: {}
  electric_morays:
    description: Number of electric-moray processes (for the window estimate).
    type: int
    default: 1
  application:
    description: The SAPI application.
    type: str
    default: manta
  workdir:
    description: Scratch directory on the host running the module (the ring is downloaded there, then removed).
    type: path
    default: /var/tmp/manta-reshard
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.zookeeper
  - manta.ops.zookeeper.manatee_postgres
  - manta.ops.triton_api
  - manta.ops.triton_api.sapi
  - manta.ops.triton_api.imgapi
  - manta.ops.triton_api.vmapi
attributes:
  check_mode:
    support: full
    details: Everything is read and validated; the plan is not written to the journal.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements: [kazoo, psycopg2, requests, plyvel]
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: Plan (or resume) the split of shard 1
  manta.ops.reshard_plan:
    shard: 1.moray.us-east.example.com
    new_shard: 3.moray.us-east.example.com
    split: balanced
    manta_servers: "{{ manta_servers }}"
  register: plan
"""

RETURN = r"""
plan:
  description: The plan document of the journal (in check mode, the plan that would be created).
  returned: success
  type: dict
created:
  description: True when this run created the plan.
  returned: success
  type: bool
resumed:
  description: True when an active plan for the same shards was found and is resumed.
  returned: success
  type: bool
facts:
  description: What the phases need (names, pnodes, vnodes, servers, base peers, images, canaries...).
  returned: success
  type: dict
rehearsal:
  description: The rehearsal report as data.
  returned: success
  type: dict
rehearsal_text:
  description: The rehearsal report as text.
  returned: success
  type: str
errors:
  description: Every failed check (the task fails when there is any).
  returned: always
  type: list
  elements: str
"""

import time
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import reshard_common as rc
from ansible_collections.manta.ops.plugins.module_utils import reshard_journal as rj
from ansible_collections.manta.ops.plugins.module_utils import reshard_plan as rp
from ansible_collections.manta.ops.plugins.module_utils import reshard_rows as rr
from ansible_collections.manta.ops.plugins.module_utils.http_api import (
    ApiError, check_requests, client_kwargs, triton_argument_spec)
from ansible_collections.manta.ops.plugins.module_utils.zk import (
    Zk, ZkError, require_kazoo, zk_argument_spec)
from ansible_collections.manta.ops.plugins.module_utils import manatee_pg as mpg


def short_err(exc):
    t = str(exc).strip()
    return t.splitlines()[0] if t else type(exc).__name__


class Planner:
    def __init__(self, module):
        self.m = module
        self.p = module.params
        self.facts = {"errors": [], "warnings": []}
        self.zk = None
        self.t0 = time.time()
        self.stored = None

    def err(self, msg):
        self.facts["errors"].append(msg)

    # ---- gather -------------------------------------------------------------------------
    def clients(self):
        from ansible_collections.manta.ops.plugins.module_utils.sapi import SapiClient
        from ansible_collections.manta.ops.plugins.module_utils.imgapi import ImgapiClient
        from ansible_collections.manta.ops.plugins.module_utils.vmapi import VmapiClient
        kw = client_kwargs(self.m)
        self.sapi = self.imgapi = self.vmapi = None
        for key, cls, attr in (("sapi_url", SapiClient, "sapi"), ("imgapi_url", ImgapiClient, "imgapi"),
                               ("vmapi_url", VmapiClient, "vmapi")):
            url = self.p.get(key)
            if not url:
                self.err(f"{key} is not set: the reshard needs {attr.upper()} (set {key} or "
                         f"MANTA_{key.upper()})")
                continue
            c = cls(url, **kw)
            try:
                c.ping()
            except ApiError as exc:
                self.err(f"{attr.upper()} at {url} is not reachable: {short_err(exc)}")
                continue
            setattr(self, attr, c)
        try:
            self.zk = Zk(self.p["zk_servers"], self.p["zk_timeout"])
        except ZkError as exc:
            self.err(f"ZooKeeper is not reachable: {exc}")

    def gather(self):
        p = self.p
        f = self.facts
        self.clients()
        if self.sapi is None:
            return
        app = self.sapi.find_application(p["application"])
        if app is None:
            self.err(f"SAPI has no application {p['application']!r}")
            return
        md = app.get("metadata") or {}
        f["app_uuid"] = app["uuid"]
        f["owner_uuid"] = app.get("owner_uuid")
        domain = md.get("DOMAIN_NAME") or (f"{md.get('REGION')}.{md.get('DNS_DOMAIN')}"
                                           if md.get("REGION") and md.get("DNS_DOMAIN") else None)
        f["domain"] = domain
        f["region"] = md.get("REGION")
        shards = md.get("INDEX_MORAY_SHARDS") or []
        f["index_shards"] = shards
        f["index_hosts"] = [s.get("host") for s in shards if isinstance(s, dict)]
        f["storage_shard"] = md.get("STORAGE_MORAY_SHARD")
        f["hash_ring_image"] = md.get("HASH_RING_IMAGE")
        f["hash_ring_imgapi"] = md.get("HASH_RING_IMGAPI_SERVICE") or p.get("imgapi_url")
        f["zk_servers_md"] = md.get("ZK_SERVERS")
        shard = rc.full_shard(p["shard"], domain)
        new_shard = rc.full_shard(p["new_shard"], domain)
        f["shard"], f["new_shard"] = shard, new_shard
        f["short"], f["new_short"] = rc.short_shard(shard, domain), rc.short_shard(new_shard, domain)
        f["pnode"], f["new_pnode"] = rc.pnode(shard), rc.pnode(new_shard)

        # -- the journal: resume?
        if self.zk is not None:
            try:
                active = rj.find_active(self.zk, shard, new_shard)
            except (ZkError, rj.JournalError) as exc:
                self.err(f"cannot read the reshard journal: {exc}")
                active = []
            mine = [a for a in active if a.get("shard") == shard and a.get("new_shard") == new_shard
                    and (not p.get("plan") or a["plan"] == p["plan"])]
            f["resume"] = mine[0] if mine else None
            if not mine:
                # the same command after the plan completed: nothing to do, report it
                try:
                    done = [d for d in rj.list_plans(self.zk) if d.get("state") == "completed"
                            and d.get("shard") == shard and d.get("new_shard") == new_shard
                            and (not p.get("plan") or d["plan"] == p["plan"])]
                except (ZkError, rj.JournalError):
                    done = []
                if done:
                    f["resume"] = sorted(done, key=lambda d: d.get("completed") or "")[-1]
                    f["completed"] = True
            f["other_plans"] = [{"plan": a["plan"], "shard": a.get("shard"), "new_shard": a.get("new_shard"),
                                 "phase": a.get("phase")} for a in active if a not in mine]
            if p.get("plan") and not mine:
                doc, dummy = rj.load(self.zk, p["plan"])
                if doc is not None and doc.get("state") == "active":
                    self.err(f"plan {p['plan']} exists for {doc.get('shard')} -> {doc.get('new_shard')}, "
                             f"not {shard} -> {new_shard}")
            try:
                f["history"] = rj.list_plans(self.zk)
            except Exception:  # noqa: BLE001
                f["history"] = []
            from ansible_collections.manta.ops.plugins.module_utils import zk_lock as zl
            view = zl.read(self.zk, zl.lock_path(name=rc.LOCK_NAME))
            holders = list(view["holders"])
            f["lock_holder"] = holders[0] if holders else None
            f["lock_info"] = zl.describe(view) if holders else None
        resume = f.get("resume")
        stored = ((resume or {}).get("props") or {}).get("facts") or {}
        if resume and not self.m.check_mode and stored.get("app_uuid") and stored.get("freeze_reason"):
            # a resumed run: the plan's facts were gathered and validated when it was created; only
            # reachability, the lock and other plans (above) are checked again
            self.stored = stored
            return

        # -- SAPI instances
        svcs = {}
        for name in ("postgres", "moray", "electric-moray"):
            s = self.sapi.find_service(name, app["uuid"])
            if s is None:
                self.err(f"SAPI has no service {name!r} in application {p['application']}")
            svcs[name] = s
        f["services"] = {k: (v or {}).get("uuid") for k, v in svcs.items()}
        pg_insts = self.sapi.list_instances(svcs["postgres"]["uuid"]) if svcs.get("postgres") else []
        mo_insts = self.sapi.list_instances(svcs["moray"]["uuid"]) if svcs.get("moray") else []

        def md_of(i):
            return i.get("metadata") or {}

        def tag_of(i):
            return ((i.get("params") or {}).get("tags") or {}).get(rc.PLAN_TAG)

        plan_id = resume["plan"] if resume else p.get("plan")
        base = [i for i in pg_insts if md_of(i).get("SERVICE_NAME") == shard and not tag_of(i)]
        f["base_peers"] = []
        for i in sorted(base, key=lambda x: x["uuid"]):
            vm = self.vmapi.get_vm_or_none(i["uuid"]) if self.vmapi else None
            f["base_peers"].append({
                "uuid": i["uuid"], "alias": (i.get("params") or {}).get("alias"),
                "server_uuid": (vm or {}).get("server_uuid") or (i.get("params") or {}).get("server_uuid"),
                "image_uuid": (vm or {}).get("image_uuid") or (i.get("params") or {}).get("image_uuid"),
                "pg_config_overrides": md_of(i).get("PG_CONFIG_OVERRIDES")})
        f["old_servers"] = [b["server_uuid"] for b in f["base_peers"]]
        foreign_tags = [i for i in pg_insts if md_of(i).get("SERVICE_NAME") == shard and tag_of(i)
                        and tag_of(i) != plan_id]
        for i in foreign_tags:
            self.err(f"postgres instance {i['uuid']} of {shard} is tagged for another reshard plan "
                     f"({tag_of(i)}): possible conflict; finish or clean up that plan first")
        if not base and not resume:
            self.err(f"shard {shard!r}: SAPI has no postgres instances with SERVICE_NAME {shard}")
        images = sorted({b["image_uuid"] for b in f["base_peers"] if b["image_uuid"]})
        if p.get("postgres_image"):
            img = self.imgapi.get_image_or_none(p["postgres_image"]) if self.imgapi else None
            if img is None:
                self.err(f"postgres_image {p['postgres_image']!r} is not an image in IMGAPI")
            f["postgres_image"] = p["postgres_image"]
        elif len(images) == 1:
            f["postgres_image"] = images[0]
        elif images:
            self.err(f"the peers of {shard} run {len(images)} images ({', '.join(images)}); give "
                     "postgres_image= to choose the image of the new peers")
        overrides = [b["pg_config_overrides"] for b in f["base_peers"]]
        if overrides and any(o != overrides[0] for o in overrides):
            self.err(f"the peers of {shard} have different PG_CONFIG_OVERRIDES; make them equal first")
        f["pg_config_overrides"] = overrides[0] if overrides else None

        # -- is the new shard in use anywhere?
        uses = []
        if domain:
            for key in ("INDEX_MORAY_SHARDS", "BUCKETS_MORAY_SHARDS"):
                hosts = [s.get("host") for s in (md.get(key) or []) if isinstance(s, dict)]
                if new_shard in hosts:
                    uses.append(f"listed in SAPI {key}")
            for key in ("STORAGE_MORAY_SHARD", "MARLIN_MORAY_SHARD"):
                if md.get(key) == new_shard:
                    uses.append(f"it is SAPI {key}")
            for i in pg_insts + mo_insts:
                m = md_of(i)
                if m.get("SERVICE_NAME") == new_shard or str(m.get("SHARD")) == f["new_short"]:
                    if tag_of(i) and tag_of(i) == plan_id:
                        continue
                    uses.append(f"SAPI instance {i['uuid']} ({(i.get('params') or {}).get('alias')}) "
                                f"belongs to it")
        if self.zk is not None:
            try:
                if self.zk.exists(f"/manatee/{new_shard}/state"):
                    uses.append(f"ZooKeeper has /manatee/{new_shard}/state")
                if self.zk.children(f"/manatee/{new_shard}/election"):
                    uses.append(f"ZooKeeper has peers in /manatee/{new_shard}/election")
            except ZkError as exc:
                self.err(f"ZooKeeper: {exc}")

        # -- the ring
        topo = None
        if self.imgapi is not None and f.get("hash_ring_image"):
            try:
                topo, stamp = rp.load_ring_image(self.imgapi, f["hash_ring_image"], p["workdir"])
                f["ring_stamp"] = stamp
            except (ApiError, rc.ReshardError, OSError) as exc:
                self.err(f"cannot read the hash ring HASH_RING_IMAGE={f['hash_ring_image']}: {short_err(exc)}")
            except Exception as exc:  # noqa: BLE001 - ring errors from the fash library
                self.err(f"cannot read the hash ring HASH_RING_IMAGE={f['hash_ring_image']}: {short_err(exc)}")
        elif self.sapi is not None and not f.get("hash_ring_image"):
            self.err("SAPI manta application has no HASH_RING_IMAGE: there is no ring to reshard")
        self.topo = topo
        if topo is not None:
            f["vnode_count"] = topo.vnode_count
            pn = topo.pnodes()
            f["ring_pnodes"] = {q: len(topo.vnodes_of(q)) for q in pn}
            if f["new_pnode"] in pn and not resume:
                uses.append(f"the ring already has pnode {f['new_pnode']}")
            f["shard_vnodes"] = list(topo.vnodes_of(f["pnode"])) if f["pnode"] in pn else []
            if f["pnode"] not in pn:
                self.err(f"shard {shard!r} is not a pnode of the ring ({', '.join(pn)})")
            f["ring_data_vnodes"] = len(topo.data_vnodes())
        f["new_shard_uses"] = uses

        # -- manatee: the old cluster, versions, census
        f["pg_versions"] = {}
        self.state = None
        if self.zk is not None:
            from ansible_collections.manta.ops.plugins.module_utils import manatee_state as ms
            try:
                self.state, dummy = ms.load(self.zk, shard)
            except ms.ManateeError as exc:
                self.err(f"shard {shard!r}: {exc}")
        if self.state:
            chain = [self.state["primary"]] + ([self.state["sync"]] if self.state.get("sync") else []) \
                + list(self.state.get("async") or [])
            f["old_chain"] = chain
            f["old_frozen"] = bool(self.state.get("freeze"))
            pgo = self.pg_opts()
            for peer in chain:
                st = mpg.probe(peer, "async", None, pgo.get("user"), pgo.get("password"), 5, 10.0)
                if st.get("error"):
                    self.err(f"PostgreSQL of peer {peer['id']} ({peer.get('zoneId')}) of {shard} does not "
                             f"answer: {st['error']}")
                else:
                    f["pg_versions"][peer["zoneId"]] = self.version_text(peer)
            if (p["census"] or p["split"] == "balanced") and not f.get("resume"):
                f["census"] = None
                for peer in reversed(chain):
                    try:
                        conn = rc.pg_connect(peer["pgUrl"], query_timeout=600, **pgo)
                        try:
                            f["census"] = rr.census(conn)
                            f["census_peer"] = peer["zoneId"]
                        finally:
                            conn.close()
                        break
                    except Exception as exc:  # noqa: BLE001 - try the next peer upstream
                        f["census_error"] = short_err(exc)

    def pg_opts(self):
        return {"user": self.p.get("pg_user"), "password": self.p.get("pg_password")}

    def version_text(self, peer):
        try:
            conn = rc.pg_connect(peer["pgUrl"], dbname="postgres", **self.pg_opts())
            try:
                with conn.cursor() as cur:
                    cur.execute("SHOW server_version")
                    return cur.fetchone()[0].split()[0]
            finally:
                conn.close()
        except Exception as exc:  # noqa: BLE001
            return f"unknown ({short_err(exc)})"

    # ---- plan ----------------------------------------------------------------------------
    def run(self):
        p = self.p
        try:
            self.gather()
        except ApiError as exc:
            self.err(f"{exc.service if hasattr(exc, 'service') else 'API'}: {short_err(exc)}")
        except ZkError as exc:
            self.err(f"ZooKeeper: {exc}")
        f = self.facts
        inputs = {"shard": f.get("shard"), "new_shard": f.get("new_shard"), "vnodes": p.get("vnodes"),
                  "split": p.get("split"), "split_fraction": p.get("split_fraction"),
                  "servers": p.get("servers"), "pause_before": p.get("pause_before"),
                  "pg_versions": p.get("pg_versions"), "plan": p.get("plan")}
        f["servers"] = p.get("manta_servers") or []
        errors, warnings, d = rp.validate(inputs, f)
        result = {"changed": False, "errors": errors, "warnings_list": warnings, "created": False,
                  "resumed": bool(f.get("resume")), "completed": bool(f.get("completed"))}
        if errors:
            self.close()
            msg = "reshard inputs are not valid (nothing was changed):\n  - " + "\n  - ".join(errors)
            self.m.fail_json(msg=msg, **result)
        resume = f.get("resume")
        plan_id = resume["plan"] if resume else (p.get("plan") or rp.new_plan_id())
        vnodes = d["vnodes"]
        # canaries: the busiest moving vnodes (census), else the first ones; one staying control
        cen = (f.get("census") or {}).get("vnodes") or {}
        split = rr.split_summary(cen, f.get("shard_vnodes") or [], vnodes) if f.get("census") else None
        if resume and (resume.get("props") or {}).get("canaries"):
            canaries = resume["props"]["canaries"]
        else:
            canaries = self.choose_canaries(plan_id, vnodes, cen)
        if self.stored:
            facts = dict(self.stored) | {
                "plan": plan_id, "vnodes": vnodes, "vnodes_text": rj.ranges_text(vnodes),
                "servers": d["servers"], "canaries": canaries}
            self.close()
            result.update(plan=resume, facts=facts, rehearsal={}, rehearsal_text="",
                          done_phases=rj.done_phases(resume))
            self.m.exit_json(**result)
        facts = self.plan_facts(plan_id, d, canaries)
        inputs_doc = {"vnodes": rj.pack_vnodes(vnodes), "vnode_count": len(vnodes), "servers": d["servers"],
                      "split": p.get("split"), "split_fraction": p.get("split_fraction"),
                      "postgres_image": f.get("postgres_image")}
        measured, mplan = rp.history_rates(f.get("history") or [])
        if mplan:
            measured["plan"] = mplan
        ems = int(p.get("electric_morays") or 1)
        est = rp.estimates(split, (f.get("census") or {}).get("db_bytes"), ems, p.get("rates"),
                           p.get("delete") or {}, measured)
        reh = self.rehearsal(plan_id, vnodes, split, est, warnings)
        if resume:
            doc = resume
        else:
            doc = rj.new_plan(plan_id, f["shard"], f["new_shard"], inputs_doc, now=self.t0)
            doc["props"].update(self.initial_props(canaries, split, est, facts))
            rj.phase_start(doc, "validate", now=self.t0)
            rj.phase_end(doc, "validate", note=f"{len(vnodes)} vnodes, servers "
                         + ", ".join(s.get("hostname") or s["uuid"] for s in d["servers"]))
            if not self.m.check_mode:
                try:
                    doc, dummy = rj.create(self.zk, doc)
                except (rj.JournalError, ZkError) as exc:
                    self.close()
                    self.m.fail_json(msg=f"cannot create the plan in the journal: {exc}", **result)
                result.update(changed=True, created=True)
        self.close()
        for w in warnings:
            self.m.warn(w)
        result.update(plan=doc, facts=facts, rehearsal=reh, rehearsal_text=rp.rehearsal_text(reh),
                      done_phases=rj.done_phases(doc))
        self.m.exit_json(**result)

    def choose_canaries(self, plan_id, vnodes, cen):
        n = max(0, int(self.p["canaries"]))
        if n == 0 or self.topo is None or not self.facts.get("owner_uuid"):
            return []
        moving = sorted(vnodes, key=lambda v: (-(cen.get(v) or [0])[0], v))[:n]
        staying = sorted(set(self.facts.get("shard_vnodes") or []) - set(vnodes))
        targets = moving + staying[:1]
        keys = rc.canary_keys(self.topo, self.facts["owner_uuid"], plan_id, targets)
        return [{"vnode": v, "key": keys[v], "moving": v in moving} for v in targets]

    def plan_facts(self, plan_id, d, canaries):
        f = self.facts
        return {k: f.get(k) for k in (
            "shard", "new_shard", "short", "new_short", "pnode", "new_pnode", "domain", "region",
            "app_uuid", "owner_uuid", "hash_ring_image", "hash_ring_imgapi", "postgres_image",
            "pg_config_overrides", "base_peers", "services", "vnode_count", "storage_shard")} | {
            "plan": plan_id, "vnodes": d["vnodes"], "vnodes_text": rj.ranges_text(d["vnodes"]),
            "servers": d["servers"], "pg_version": d.get("pg_version"), "canaries": canaries,
            "index_shards": f.get("index_shards"), "shard_vnode_count": len(f.get("shard_vnodes") or []),
            "freeze_reason": f"reshard plan {plan_id}"}

    def initial_props(self, canaries, split, est, facts):
        per = {}
        if split:
            top = sorted(split["per_vnode"].items(), key=lambda kv: -kv[1]["rows"])[:2000]
            per = {str(v): x for v, x in top}
        return {"canaries": canaries, "old_image": facts.get("hash_ring_image"),
                "census": {"moving": (split or {}).get("moving"), "staying": (split or {}).get("staying"),
                           "db_bytes": (self.facts.get("census") or {}).get("db_bytes"),
                           "per_moving_vnode": per} if split else None,
                "estimates": est,
                # what a resumed run needs without gathering again (see Planner.gather)
                "facts": {k: v for k, v in facts.items() if k not in ("vnodes", "vnodes_text", "canaries",
                                                                      "servers", "plan")}}

    def rehearsal(self, plan_id, vnodes, split, est, warnings):
        f = self.facts
        pn = dict(f.get("ring_pnodes") or {})
        after = dict(pn)
        after[f["pnode"]] = after.get(f["pnode"], 0) - len(vnodes)
        after[f["new_pnode"]] = after.get(f["new_pnode"], 0) + len(vnodes)
        index_after = [dict(s) for s in f.get("index_shards") or []]
        for s in index_after:
            s.pop("last", None)
        if f["new_shard"] not in [s.get("host") for s in index_after]:
            index_after.append({"host": f["new_shard"]})
        if index_after:
            index_after[-1]["last"] = True
        new_md = {"SERVICE_NAME": f["new_shard"], "SHARD": f["new_short"],
                  "MANATEE_SHARD_PATH": f"/manatee/{f['new_shard']}"}
        servers = (f.get("resume") or {}).get("inputs", {}).get("servers") or \
            list(rp.auto_servers(f.get("servers"), f.get("old_servers") or []))
        creates = []
        for role, s in zip(rc.ROLES, servers):
            creates.append(f"postgres peer (new {role}) on {s.get('hostname') or s['uuid']} "
                           f"({s.get('datacenter')}), image {f.get('postgres_image')}, joining {f['shard']} "
                           f"as an async, tag {rc.PLAN_TAG}={plan_id}")
        for s in servers:
            creates.append(f"moray for {f['new_shard']} on {s.get('hostname') or s['uuid']}")
        creates.append(f"IMGAPI images manta-hash-ring: transitional ({len(vnodes)} vnodes 'ro') and final "
                       f"(tags {rc.PLAN_TAG}={plan_id})")
        creates.append(f"ZooKeeper /manatee/{f['new_shard']}/state (generation 1, frozen), the sentinel "
                       f"table {rc.SENTINEL_TABLE} on {f['shard']}, {self.p['canaries'] + 1} canary objects")
        sapi = [
            f"INDEX_MORAY_SHARDS: {[s.get('host') for s in f.get('index_shards') or []]} -> "
            f"{[s.get('host') for s in index_after]} (new shard appended, no readOnly flags)",
            f"HASH_RING_IMAGE: {f.get('hash_ring_image')} -> <transitional> -> <final> (compare-and-swap)",
            f"new peers' metadata: SERVICE_NAME/SHARD/MANATEE_SHARD_PATH {f['shard']} -> {new_md}, "
            f"alias {f['new_short']}.postgres.{f['domain']}-<uuid8>",
            f"tag {rc.PLAN_TAG} added to the new peers and morays, removed after the ring is installed",
        ]
        return {
            "plan": {"plan": plan_id, "shard": f["shard"], "new_shard": f["new_shard"]},
            "shard_vnodes": len(f.get("shard_vnodes") or []),
            "moving": {"count": len(vnodes), "ranges": rj.ranges_text(vnodes), "vnodes": vnodes},
            "split": split,
            "ring_diff": {"moved": len(vnodes), "from": f["pnode"], "to": f["new_pnode"],
                          "transitional_ro": len(vnodes), "pnode_counts_before": pn,
                          "pnode_counts_after": after},
            "sapi_changes": sapi, "index_shards_after": index_after, "creates": creates,
            "servers": servers, "estimates": est, "warnings": warnings,
        }

    def close(self):
        if self.zk is not None:
            self.zk.close()
            self.zk = None


def main():
    from ansible_collections.manta.ops.plugins.module_utils.manatee_pg import pg_argument_spec
    spec = zk_argument_spec()
    spec.update(pg_argument_spec())
    spec.update(triton_argument_spec("sapi", "imgapi", "vmapi"))
    spec.update(
        shard=dict(type="str", required=True),
        new_shard=dict(type="str", required=True),
        vnodes=dict(type="raw"),
        split=dict(type="str", default="none", choices=["none", "balanced"]),
        split_fraction=dict(type="float", default=0.5),
        servers=dict(type="list", elements="str"),
        manta_servers=dict(type="list", elements="dict", required=True),
        postgres_image=dict(type="str"),
        plan=dict(type="str"),
        pause_before=dict(type="str"),
        pg_versions=dict(type="list", elements="str", default=[]),
        census=dict(type="bool", default=True),
        canaries=dict(type="int", default=3),
        delete=dict(type="dict", default={}),
        rates=dict(type="dict", default={}),
        electric_morays=dict(type="int", default=1),
        application=dict(type="str", default="manta"),
        workdir=dict(type="path", default="/var/tmp/manta-reshard"),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_kazoo(module)
    check_requests(module)
    planner = Planner(module)
    try:
        planner.run()
    except Exception as exc:  # noqa: BLE001 - report, never a traceback on stdout
        planner.close()
        module.fail_json(msg=f"reshard_plan failed: {exc}", exception=traceback.format_exc(),
                         errors=planner.facts.get("errors"))


if __name__ == "__main__":
    main()
