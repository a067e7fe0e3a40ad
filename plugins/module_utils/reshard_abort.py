# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Abort an unfinished reshard plan: find it, decide whether it can still be rolled back, and list what is
left to undo, from the real state (the journal, SAPI, IMGAPI, ZooKeeper, every electric-moray).

The point of no return (reference/reshard.md section 8; docs/reshard.md phase 15, ``install_ring``) is the
compare-and-swap of SAPI ``HASH_RING_IMAGE`` from the transitional ring to the *final* ring. Before it, the
moving vnodes are routed to the old shard by every ring in use (the old ring, or the transitional ring that
only marks them read-only), no row was deleted anywhere and no write went to the new shard: the old shard
holds every row, and putting the old ring back restores service exactly. From it on, an electric-moray may
start (a swap worker, a reprovision) on the final ring and acknowledge writes to the moved vnodes on the
new shard only; rolling back would lose them. A plan is past the point of no return when any of these holds:

* SAPI ``HASH_RING_IMAGE`` is the plan's final image;
* an electric-moray serves the final ring, or has it in place (its stamp);
* the journal has ``install_ring`` done, or any later phase started.

``unfinished`` plans are the active ones and the aborted ones whose roll back did not finish (an abort
marks the plan ``aborted`` before its first change, so that the plan can no longer be resumed while it is
rolled back, and records ``props.abort.done`` at the end).

Everything here only reads; the changes are made by the role with the collection's modules
(``sapi_metadata``, ``reshard_em_ring``, ``sapi_instance``, ``sapi_index_shards``, ``manatee_cluster``,
``zk_lock``, ``imgapi_image``, ``reshard_canary``, ``reshard_journal``), except ``remove_shard_state``: the new
shard's manatee tree in ZooKeeper, which no other module deletes.
"""
from __future__ import annotations

import time

from ansible_collections.manta.ops.plugins.module_utils import reshard_common as rc
from ansible_collections.manta.ops.plugins.module_utils import reshard_journal as rj

# phases after which (started or done) the plan is past the point of no return
AFTER_PONR = rj.PHASE_NAMES[rj.PHASE_NAMES.index("install_ring") + 1:]
WORKERS = rj.ROOT + "/workers"


class AbortError(rc.ReshardError):
    pass


# ---- pure ---------------------------------------------------------------------------------------

def abort_record(doc):
    return ((doc or {}).get("props") or {}).get("abort") or {}


def is_unfinished(doc):
    st = (doc or {}).get("state")
    return st == "active" or (st == "aborted" and abort_record(doc).get("started")
                              and not abort_record(doc).get("done"))


def select(plans, plan=None, shard=None, new_shard=None):
    """(doc, error): the one unfinished plan asked for; (None, None) when there is none."""
    if plan:
        doc = next((d for d in plans if d.get("plan") == plan), None)
        if doc is None:
            return None, f"plan: no reshard plan {plan} in the journal ({rj.plan_path(plan)})"
        return (doc if is_unfinished(doc) else None), None
    cands = [d for d in plans if is_unfinished(d)
             and (not shard or shard in (d.get("shard"), d.get("new_shard")))
             and (not new_shard or d.get("new_shard") == new_shard)]
    if len(cands) > 1:
        return None, ("several unfinished reshard plans match; give plan=<id>: "
                      + ", ".join(f"{d['plan']} ({d.get('shard')} -> {d.get('new_shard')}, phase "
                                  f"{d.get('phase')})" for d in cands))
    return (cands[0] if cands else None), None


def point_of_no_return(doc, hash_ring_image, ems):
    """(passed, reasons). ``ems``: [{host, image (served), stamp (in place)}]."""
    props = (doc or {}).get("props") or {}
    final = props.get("final_image")
    phases = (doc or {}).get("phases") or {}
    why = []
    if final and hash_ring_image == final:
        why.append(f"SAPI HASH_RING_IMAGE is the final ring {final}")
    for e in ems or []:
        if final and final in (e.get("image"), e.get("stamp")):
            why.append(f"electric-moray {e.get('host')} " + ("serves" if e.get("image") == final else "has")
                       + f" the final ring {final}")
    if (phases.get("install_ring") or {}).get("status") == "done":
        why.append("the journal has install_ring done")
    later = [p for p in AFTER_PONR if phases.get(p)]
    if later:
        why.append(f"the journal has later phases started ({', '.join(later)})")
    return bool(why), why


def refusal(doc, why):
    return (f"reshard plan {doc['plan']} ({doc.get('shard')} -> {doc.get('new_shard')}) is past the point of no "
            f"return ({'; '.join(why)}): the moved vnodes take writes on {doc.get('new_shard')}, which "
            f"{doc.get('shard')} does not have, so putting the old ring back would lose them. Abort refused; "
            "nothing was changed. Finish this plan instead (re-run the same reshard.yml command), then, to undo "
            f"it, reshard the vnodes back: playbooks/reshard.yml -e shard={doc.get('new_shard')} -e "
            f"new_shard=<a new shard> ... (see docs/reshard.md, How to abort)")


# ---- reading the real state --------------------------------------------------------------------------

def worker_alive(zk, plan):
    return bool(zk.exists(f"{WORKERS}/{plan}"))


def wait_workers(zk, plan, timeout, poll=0.2):
    """Wait until no cutover worker of the plan runs (an orphan of a killed controller finishes first)."""
    t0 = time.monotonic()
    while worker_alive(zk, plan):
        if time.monotonic() - t0 > timeout:
            raise AbortError(f"a cutover worker of plan {plan} is still running ({WORKERS}/{plan}) after "
                             f"{timeout:g}s; wait for it (or stop the reshard.yml run that started it) and re-run")
        time.sleep(poll)
    return round(time.monotonic() - t0, 3)


def shard_tree(zk, shard):
    """Every znode under /manatee/<shard> (deepest first), [] when there is none."""
    root = f"/manatee/{shard}"
    if not zk.exists(root):
        return []
    out = []

    def walk(path):
        for ch in sorted(zk.children(path)):
            walk(f"{path}/{ch}")
        out.append(path)
    walk(root)
    return out


def election_members(zk, shard):
    path = f"/manatee/{shard}/election"
    return sorted(zk.children(path)) if zk.exists(path) else []


def em_view(ems, status_fn=None):
    """[{host, status_url, image, stamp?}] from each electric-moray's status endpoint."""
    status_fn = status_fn or (lambda u: rc.em_status(u, timeout=3.0))
    out = []
    for host, url in ems:
        st = status_fn(url)
        out.append({"host": host, "status_url": url, "up": st is not None, "image": rc.status_image(st)})
    return out


def lock_view(zk, path):
    from ansible_collections.manta.ops.plugins.module_utils import zk_lock as zl
    v = zl.read(zk, path)
    return {"path": path, "holders": sorted(v["holders"]), "text": zl.describe(v)}


def assess(zk, doc, sapi=None, imgapi=None, ems=(), app_uuid=None):
    """What the plan left behind, and whether it can be rolled back."""
    from ansible_collections.manta.ops.plugins.module_utils import manatee_state as ms
    from ansible_collections.manta.ops.plugins.module_utils import zk_lock as zl
    props = doc.get("props") or {}
    facts = props.get("facts") or {}
    plan = doc["plan"]
    owner = f"plan:{plan}"
    out = {"plan": plan, "state": doc.get("state"), "shard": doc.get("shard"), "new_shard": doc.get("new_shard"),
           "phase": doc.get("phase"), "paused_before": doc.get("paused_before"),
           "done_phases": rj.done_phases(doc), "started_phases": sorted(doc.get("phases") or {}),
           "old_image": props.get("old_image") or facts.get("hash_ring_image"),
           "transitional_image": props.get("transitional_image"), "final_image": props.get("final_image"),
           "freeze_reason": facts.get("freeze_reason") or f"reshard plan {plan}",
           "old_freeze": props.get("old_freeze"), "app_uuid": app_uuid or facts.get("app_uuid"),
           "canaries": props.get("canaries") or facts.get("canaries") or [], "owner_uuid": facts.get("owner_uuid"),
           "abort": abort_record(doc)}
    # SAPI
    md = {}
    if sapi is not None:
        app = sapi.get_object("application", out["app_uuid"]) if out["app_uuid"] else sapi.find_application("manta")
        out["app_uuid"] = app["uuid"]
        md = app.get("metadata") or {}
        out["owner_uuid"] = out["owner_uuid"] or app.get("owner_uuid")
    out["hash_ring_image"] = md.get("HASH_RING_IMAGE")
    out["index_shards"] = [s.get("host") for s in md.get("INDEX_MORAY_SHARDS") or [] if isinstance(s, dict)]
    out["index_has_new_shard"] = doc.get("new_shard") in out["index_shards"]
    out["instances"] = []
    if sapi is not None and out["app_uuid"]:
        for name in ("postgres", "moray"):
            svc = sapi.find_service(name, out["app_uuid"])
            for i in (sapi.list_instances(svc["uuid"]) if svc else []):
                tags = (i.get("params") or {}).get("tags") or {}
                if tags.get(rc.PLAN_TAG) == plan:
                    out["instances"].append({"uuid": i["uuid"], "service": name,
                                             "alias": (i.get("params") or {}).get("alias"),
                                             "shard": (i.get("metadata") or {}).get("SERVICE_NAME")})
    # IMGAPI: the plan's ring images
    out["ring_images"] = []
    if imgapi is not None:
        from ansible_collections.manta.ops.plugins.module_utils import reshard_ring as rring
        for img in imgapi.list_images(name=rring.IMAGE_NAME, state="all", tags={rc.PLAN_TAG: plan}):
            out["ring_images"].append({"uuid": img["uuid"], "role": (img.get("tags") or {}).get("manta_reshard_ring"),
                                       "state": img.get("state")})
    # electric-morays
    out["electric_morays"] = em_view(ems)
    # ZooKeeper
    out["worker_running"] = worker_alive(zk, plan)
    out["new_shard_znodes"] = len(shard_tree(zk, doc["new_shard"]))
    out["new_shard_election"] = election_members(zk, doc["new_shard"])
    try:
        st, dummy = ms.load(zk, doc["shard"])
    except ms.ManateeError:
        st = None
    out["old_shard_freeze"] = ms.freeze_info(st)["reason"] if st else None
    out["old_shard_frozen_by_plan"] = out["old_shard_freeze"] == out["freeze_reason"]
    out["locks"] = {"reshard": lock_view(zk, zl.lock_path(name=rc.LOCK_NAME)),
                    "pg_dump": lock_view(zk, "/pg_dump_lock")}
    out["reshard_lock_ours"] = owner in out["locks"]["reshard"]["holders"]
    out["pg_dump_lock_ours"] = owner in out["locks"]["pg_dump"]["holders"]
    passed, why = point_of_no_return(doc, out["hash_ring_image"], out["electric_morays"])
    out["point_of_no_return"] = {"passed": passed, "reasons": why}
    out["todo"] = todo(out)
    return out


def todo(a):
    """What the roll back still has to do, in order (empty: nothing left)."""
    out = []
    if a["hash_ring_image"] == a["transitional_image"] and a["transitional_image"]:
        out.append(f"SAPI HASH_RING_IMAGE {a['transitional_image']} -> {a['old_image']} (compare-and-swap)")
    for e in a["electric_morays"]:
        if e["image"] != a["old_image"]:
            out.append(f"electric-moray {e['host']}: ring {e['image']} -> {a['old_image']}")
    if a["index_has_new_shard"]:
        out.append(f"remove {a['new_shard']} from SAPI INDEX_MORAY_SHARDS")
    for i in a["instances"]:
        out.append(f"delete SAPI {i['service']} instance {i['uuid']} ({i['alias']})")
    if a["new_shard_znodes"]:
        out.append(f"remove /manatee/{a['new_shard']} ({a['new_shard_znodes']} znodes)")
    if a["old_shard_frozen_by_plan"]:
        out.append(f"unfreeze {a['shard']} (frozen by this plan)")
    if a["pg_dump_lock_ours"]:
        out.append("release this plan's hold on /pg_dump_lock")
    if a["reshard_lock_ours"]:
        out.append("release the reshard lock")
    for img in a["ring_images"]:
        out.append(f"delete the {img['role']} ring image {img['uuid']} from IMGAPI")
    if a["state"] == "active":
        out.append("mark the plan aborted in the journal")
    return out


def remove_shard_state(zk, shard, timeout, check_mode=False, poll=0.2):
    """Delete /manatee/<shard> (state, history, election) once no sitter is in its election. Returns the znodes
    removed (or that would be)."""
    t0 = time.monotonic()
    while True:
        members = election_members(zk, shard)
        if not members or check_mode:
            break
        if time.monotonic() - t0 > timeout:
            raise AbortError(f"/manatee/{shard}/election still has {', '.join(members)} after {timeout:g}s: a "
                             "sitter of the new shard still runs; delete its instance first")
        time.sleep(poll)
    nodes = shard_tree(zk, shard)
    if nodes and not check_mode:
        from ansible_collections.manta.ops.plugins.module_utils.zk import NoNodeError
        for path in nodes:
            try:
                zk.delete(path)
            except NoNodeError:
                pass
    return nodes
