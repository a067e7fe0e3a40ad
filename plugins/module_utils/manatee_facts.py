# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Everything ``manatee-adm show -v`` / ``verify`` know about a shard, as data.

``cluster_facts(zk, shard, ...)`` reads the state and the election from
ZooKeeper, probes each non-deposed peer's postgres (manatee_pg), computes the
verify issues (manatee_verify) and returns one JSON-safe dict. ``peer_facts``
picks one peer out of it. The wait conditions used by the ``manatee_peer``
module are here too, as pure predicates over those facts.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ansible_collections.manta.ops.plugins.module_utils import lsn as lsnmod
from ansible_collections.manta.ops.plugins.module_utils import manatee_pg as mpg
from ansible_collections.manta.ops.plugins.module_utils import manatee_state as ms
from ansible_collections.manta.ops.plugins.module_utils import manatee_verify as mv


def cluster_facts(zk, shard, probe_postgres=True, pg_opts=None, zk_label=None, probe_ids=None):
    """Facts of a shard. Raises ms.StateMissing when it has no state.

    ``probe_ids`` limits the postgres probes to those peer ids (the others
    are reported ``not probed``); issues are only computed when every
    non-deposed peer was probed.
    """
    paths = ms.shard_paths(shard)
    state, stat = ms.load(zk, shard)
    active = ms.active_peers(zk, shard)
    errs_sitter = ms.validate_state(state, "sitter")
    errs_adm = ms.validate_state(state, "adm") if not errs_sitter else []
    fr = ms.freeze_info(state if isinstance(state, dict) else {})
    facts = {
        "shard": shard,
        "path": paths["state"],
        "exists": True,
        "version": stat.version,
        "state": state,
        "generation": state.get("generation") if isinstance(state, dict) else None,
        "init_wal": state.get("initWal") if isinstance(state, dict) else None,
        "mode": "singleton" if isinstance(state, dict) and state.get("oneNodeWriteMode") else "normal",
        "frozen": fr["frozen"],
        "freeze_date": fr["date"],
        "freeze_reason": fr["reason"],
        "topology": ms.topology(state) if isinstance(state, dict) else None,
        "active": active,
        "validation_errors": errs_sitter + errs_adm,
        "valid": not (errs_sitter or errs_adm),
        "peers": [],
        "errors": [],
        "warnings": [],
        "verify": [],
        "healthy": False,
        "probed": False,
        "show": None,
    }
    if errs_sitter or errs_adm:
        # manatee-adm itself would crash on this state; do not guess.
        facts["errors"] = [f"invalid state: {e}" for e in errs_sitter + errs_adm]
        facts["verify"] = [f"error: {e}" for e in facts["errors"]]
        return facts

    pg = {}
    if probe_postgres:
        if probe_ids is None:
            opts = dict(pg_opts or {})
            pg = mpg.probe_state(state, user=opts.get("user"), password=opts.get("password"),
                                 connect_timeout=opts.get("connect_timeout", 5),
                                 query_timeout=opts.get("query_timeout", 10.0))
        else:
            pg = probe_peers(state, set(probe_ids), pg_opts)
    active_ids = {a["id"] for a in active if a["id"]}
    for role, idx, peer in ms.peers(state):
        st = pg.get(peer["id"])
        up = mpg.upstream_of(state, role, idx)
        down = mpg.downstream_of(state, role, idx)
        facts["peers"].append(_peer_entry(role, idx, peer, st, up, down, peer["id"] in active_ids,
                                          pg.get(up["id"]) if up else None))
    complete = probe_postgres and probe_ids is None
    if complete:
        errors, warnings = mv.issues(state, pg)
        facts.update(errors=errors, warnings=warnings, verify=mv.verify_lines(errors, warnings),
                     healthy=not errors and not warnings, probed=True)
        facts["show"] = mv.render_show(zk_label or "", shard, state, pg, errors, warnings,
                                       verbose=True)
    return facts


def probe_peers(state, ids, pg_opts=None):
    """Probe only the given peer ids (each against its real downstream)."""
    opts = dict(pg_opts or {})
    targets = [(r, i, p) for r, i, p in ms.peers(state) if r != "deposed" and p["id"] in ids]
    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as ex:
        futs = {p["id"]: ex.submit(mpg.probe, p, r, mpg.downstream_of(state, r, i),
                                   opts.get("user"), opts.get("password"),
                                   opts.get("connect_timeout", 5), opts.get("query_timeout", 10.0))
                for r, i, p in targets}
        return {pid: f.result() for pid, f in futs.items()}


def _peer_entry(role, idx, peer, st, up, down, active, up_st):
    entry = {
        "role": role,
        "index": idx,
        "id": peer["id"],
        "zoneId": peer["zoneId"],
        "label": mv.label(peer),
        "ip": peer["ip"],
        "pgUrl": peer["pgUrl"],
        "backupUrl": peer["backupUrl"],
        "active": active,
        "upstream": up["id"] if up else None,
        "downstream": down["id"] if down else None,
        "pg": "not probed" if st is None else ("fail" if st.get("error") else "ok"),
    }
    if st is not None:
        entry.update({k: st.get(k) for k in (
            "error", "in_recovery", "server_version_num", "current_lsn", "receive_lsn",
            "replay_lsn", "wal_lsn", "lag_seconds", "lag", "repl", "replication")})
    # The upstream's view of the link that feeds this peer.
    if up_st is not None and not up_st.get("error"):
        row = None
        for r in up_st.get("replication") or []:
            if r.get("application_name") == peer["pgUrl"]:
                row = r
                break
        entry["upstream_link"] = row
    return entry


def peer_facts(facts, ident):
    for p in facts["peers"]:
        if ident in (p["id"], p["zoneId"], p["pgUrl"]):
            return p
    by_ip = [p for p in facts["peers"] if p["ip"] == ident]
    return by_ip[0] if len(by_ip) == 1 else None


def active_entry(facts, ident, peer=None):
    """The election entry of a peer (by id, or by zoneId in its data)."""
    for a in facts["active"]:
        if a["id"] and (a["id"] == ident or (peer and a["id"] == peer.get("id"))):
            return a
        data = a.get("data") or {}
        if isinstance(data, dict) and data.get("zoneId") == ident:
            return a
    return None


# ---- wait predicates ------------------------------------------------------------

def healthy_async(entry):
    """(ok, why): the peer is an async, its postgres is up and in recovery, and
    its upstream streams to it asynchronously."""
    if entry is None:
        return False, "not in the shard's state"
    if entry["role"] != "async":
        return False, f"role is {entry['role']}, expected async"
    if entry["pg"] != "ok":
        return False, f"postgres is {entry['pg']}" + (f" ({entry.get('error')})" if entry.get("error") else "")
    if not entry.get("in_recovery"):
        return False, "postgres is not in recovery (not a standby)"
    link = entry.get("upstream_link")
    if "upstream_link" not in entry:
        return False, "upstream postgres could not be queried"
    if not link:
        return False, "upstream has no replication connection from it"
    if link.get("state") != "streaming":
        return False, f"upstream link state is {link.get('state')!r}, expected 'streaming'"
    if link.get("sync_state") != "async":
        return False, f"upstream link sync_state is {link.get('sync_state')!r}, expected 'async'"
    if link.get("client_addr") != entry["ip"]:
        return False, f"upstream link client_addr is {link.get('client_addr')!r}, expected {entry['ip']!r}"
    return True, "healthy async"


def replayed(entry, target):
    """(ok, why): the peer's WAL position (replay on a standby) is >= target."""
    if entry is None:
        return False, "not in the shard's state"
    if entry["pg"] != "ok":
        return False, f"postgres is {entry['pg']}" + (f" ({entry.get('error')})" if entry.get("error") else "")
    pos = entry.get("wal_lsn")
    if not pos:
        return False, "postgres reports no WAL position yet"
    if lsnmod.at_least(pos, target):
        return True, f"at {pos} >= {target}"
    return False, f"at {pos}, {lsnmod.diff(target, pos)} bytes behind {target}"


def gone(entry, active):
    """(ok, why): the peer has no role in the state and no election node."""
    if entry is not None:
        return False, f"still listed as {entry['role']}"
    if active is not None:
        return False, f"still has an election node {active['name']} (its ZooKeeper session is alive)"
    return True, "not in the state and no election node"
