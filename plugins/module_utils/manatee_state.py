# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Manatee's cluster state in ZooKeeper: parse, validate, compare-and-swap write.

Layout (reference/manatee.md section 1): ``/manatee/<shard>/state`` is the
authoritative topology (compact JSON), ``/manatee/<shard>/election`` holds one
ephemeral-sequential node per live sitter, ``/manatee/<shard>/history`` one
persistent-sequential node per state write.

Validation follows section 1.3. Three levels, each including the previous:

``sitter``
    What every sitter checks on every read; a failure is *fatal* to every
    sitter of the shard (they crash-loop).
``adm``
    Plus all five peer fields as strings, which ``manatee-adm show``,
    ``pg-status`` and ``verify`` assert. Every write made here is checked at
    this level at least.
``strict``
    Plus internal consistency, for states this collection builds (establish):
    integer generation, ``id``/``pgUrl``/``backupUrl`` agreeing with ``ip`` and
    the ports, IPv4 addresses, unique peers, a ``deposed`` list, a freeze
    object with date and reason, ``sync: null`` exactly in one-node-write mode.

Writes (section 1.5): read ``(state, version)``, modify in memory, validate,
then one multi-op ``setData(state, version)`` + ``create(history/<g>-,
sequential)``. BadVersion (another writer got in between) re-reads and
re-applies the change, up to ``retries`` times; nothing is ever written from
stale data.
"""
from __future__ import annotations

import copy
import ipaddress
import json
import re
import time

from ansible_collections.manta.ops.plugins.module_utils import lsn as lsnmod
from ansible_collections.manta.ops.plugins.module_utils.zk import (
    BadVersionError, NodeExistsError, NoNodeError)

PEER_FIELDS = ("id", "ip", "pgUrl", "zoneId", "backupUrl")
SITTER_PEER_FIELDS = ("id", "ip", "pgUrl", "zoneId")
ROLES = ("primary", "sync", "async", "deposed")
LEVELS = ("sitter", "adm", "strict")
DEFAULT_PG_PORT = 5432
DEFAULT_BACKUP_PORT = 12345

_SHARD_RE = re.compile(r"^[^/\x00-\x1f\x7f]+$")
_PGURL_RE = re.compile(r"^tcp://([^@/:]+)@([^/:]+):(\d+)/([^/]+)$")
_BACKUP_RE = re.compile(r"^http://([^/:]+):(\d+)/?$")
_ID_RE = re.compile(r"^([^:]+):(\d+):(\d+)$")


class ManateeError(Exception):
    """A manatee operation could not be done; nothing was changed."""


class StateMissing(ManateeError):
    pass


class StateInvalid(ManateeError):
    def __init__(self, msg, errors):
        super().__init__(msg)
        self.errors = list(errors)


class CasConflict(ManateeError):
    pass


# ---- names and serialisation ----------------------------------------------------

def shard_paths(shard):
    if not isinstance(shard, str) or not _SHARD_RE.match(shard) or shard in (".", ".."):
        raise ManateeError(
            f"shard {shard!r} is not a shard name: expected the name under /manatee/, "
            "like \"1.moray.us-east.joyent.us\" (no \"/\")")
    root = f"/manatee/{shard}"
    return {"root": root, "state": root + "/state", "election": root + "/election",
            "history": root + "/history"}


def dumps(state):
    """Compact JSON as manatee writes it (no whitespace)."""
    return json.dumps(state, separators=(",", ":"))


def loads(raw, where):
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else raw
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StateInvalid(f"{where} is not valid JSON ({exc}); found {text[:200]!r}",
                           [f"not JSON: {exc}"]) from None


def now_iso():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


# ---- peers ----------------------------------------------------------------------

def build_peer(ip, zone_id, pg_port=DEFAULT_PG_PORT, backup_port=DEFAULT_BACKUP_PORT,
               pg_user="postgres", pg_db="postgres"):
    """A peer object with all five fields, as the sitters write them."""
    return {
        "id": f"{ip}:{int(pg_port)}:{int(backup_port)}",
        "ip": ip,
        "pgUrl": f"tcp://{pg_user}@{ip}:{int(pg_port)}/{pg_db}",
        "zoneId": zone_id,
        "backupUrl": f"http://{ip}:{int(backup_port)}",
    }


def peer_from_spec(spec, where="peer"):
    """Normalise a user-given peer into the five-field object.

    Accepts manatee's own keys (``id ip pgUrl zoneId backupUrl``) and/or the
    short form ``zone_id ip pg_port backup_port``. Missing URLs and id are
    derived from ``ip`` and the ports. Raises ManateeError on unknown keys.
    """
    if not isinstance(spec, dict):
        raise ManateeError(f"{where}: expected a dict with zone_id/zoneId and ip, found {spec!r}")
    known = set(PEER_FIELDS) | {"zone_id", "pg_port", "backup_port"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ManateeError(f"{where}: unknown keys {unknown}; valid keys: {sorted(known)}")
    zone = spec.get("zoneId") or spec.get("zone_id")
    ip = spec.get("ip")
    if not zone or not ip:
        raise ManateeError(f"{where}: zone_id (or zoneId) and ip are required, found {spec!r}")
    pg_port = spec.get("pg_port")
    backup_port = spec.get("backup_port")
    m = _ID_RE.match(str(spec.get("id") or ""))
    if m:
        pg_port = pg_port or int(m.group(2))
        backup_port = backup_port or int(m.group(3))
    peer = build_peer(ip, zone, pg_port or DEFAULT_PG_PORT, backup_port or DEFAULT_BACKUP_PORT)
    for k in ("id", "pgUrl", "backupUrl"):
        if spec.get(k):
            peer[k] = spec[k]
    return peer


def _peer_errors(peer, where, level):
    if not isinstance(peer, dict):
        return [f"{where}: expected a peer object, found {json.dumps(peer)}"]
    errs = []
    fields = PEER_FIELDS if level != "sitter" else SITTER_PEER_FIELDS
    for k in fields:
        if not isinstance(peer.get(k), str):
            found = "nothing" if k not in peer else json.dumps(peer[k])
            errs.append(f"{where}.{k}: expected a string, found {found}")
    if errs or level != "strict":
        return errs
    unknown = sorted(set(peer) - set(PEER_FIELDS))
    if unknown:
        errs.append(f"{where}: unexpected keys {unknown} (a peer has exactly {list(PEER_FIELDS)})")
    ip = peer["ip"]
    try:
        if ipaddress.ip_address(ip).version != 4:
            raise ValueError
    except ValueError:
        errs.append(f"{where}.ip: expected an IPv4 address, found {ip!r}")
    if not peer["zoneId"].strip():
        errs.append(f"{where}.zoneId: expected the zone uuid, found an empty string")
    mid = _ID_RE.match(peer["id"])
    murl = _PGURL_RE.match(peer["pgUrl"])
    mbk = _BACKUP_RE.match(peer["backupUrl"])
    if not mid:
        errs.append(f"{where}.id: expected \"<ip>:<pgPort>:<backupPort>\", found {peer['id']!r}")
    if not murl:
        errs.append(f"{where}.pgUrl: expected \"tcp://postgres@<ip>:<pgPort>/postgres\", "
                    f"found {peer['pgUrl']!r}")
    if not mbk:
        errs.append(f"{where}.backupUrl: expected \"http://<ip>:<backupPort>\", "
                    f"found {peer['backupUrl']!r}")
    if mid:
        if mid.group(1) != ip:
            errs.append(f"{where}.id: expected to start with ip {ip!r}, found {peer['id']!r}")
        if murl and (murl.group(2) != ip or murl.group(3) != mid.group(2)):
            errs.append(f"{where}.pgUrl: expected host {ip} and port {mid.group(2)} (from id), "
                        f"found {peer['pgUrl']!r}")
        if mbk and (mbk.group(1) != ip or mbk.group(2) != mid.group(3)):
            errs.append(f"{where}.backupUrl: expected host {ip} and port {mid.group(3)} (from id), "
                        f"found {peer['backupUrl']!r}")
    return errs


# ---- state validation -----------------------------------------------------------

def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_state(state, level="adm"):
    """List of problems (strings naming the field, what is expected, what was found)."""
    if level not in LEVELS:
        raise ValueError(level)
    if not isinstance(state, dict):
        return [f"state: expected a JSON object, found {json.dumps(state)[:100]}"]
    errs = []
    gen = state.get("generation")
    if not _is_number(gen):
        errs.append(f"generation: expected a number, found {json.dumps(gen) if 'generation' in state else 'nothing'}")
    elif level == "strict" and (not isinstance(gen, int) or gen < 0):
        errs.append(f"generation: expected a non-negative integer, found {json.dumps(gen)}")

    if "primary" not in state or state["primary"] is None:
        errs.append("primary: expected a peer object, found " +
                    ("nothing" if "primary" not in state else "null"))
    else:
        errs += _peer_errors(state["primary"], "primary", level)

    onwm = state.get("oneNodeWriteMode")
    if "oneNodeWriteMode" in state and not isinstance(onwm, bool):
        errs.append(f"oneNodeWriteMode: expected a boolean, found {json.dumps(onwm)}")
    if "sync" not in state:
        errs.append("sync: expected a peer object or null, found nothing")
    elif state["sync"] is None:
        if not onwm:
            errs.append("sync: is null but oneNodeWriteMode is not true (a null sync is only "
                        "valid in one-node-write mode; every sitter would exit on this state)")
    else:
        errs += _peer_errors(state["sync"], "sync", level)
        if level == "strict" and onwm:
            errs.append("sync: expected null in one-node-write mode, found a peer")

    for key in ("async", "deposed"):
        if key not in state:
            if key == "async" or level == "strict":
                errs.append(f"{key}: expected an array of peer objects, found nothing")
            continue
        val = state[key]
        if not isinstance(val, list):
            errs.append(f"{key}: expected an array of peer objects, found {json.dumps(val)[:100]}")
            continue
        for i, p in enumerate(val):
            errs += _peer_errors(p, f"{key}[{i}]", level)

    wal = state.get("initWal")
    if not isinstance(wal, str):
        errs.append(f"initWal: expected an LSN string like \"0/174A4D0\", found "
                    f"{json.dumps(wal) if 'initWal' in state else 'nothing'}")
    elif not lsnmod.is_valid(wal):
        errs.append(f"initWal: expected an LSN string like \"0/174A4D0\", found {wal!r}")

    fr = state.get("freeze")
    if fr is not None and not isinstance(fr, (bool, dict)):
        errs.append(f"freeze: expected null, a boolean or an object, found {json.dumps(fr)}")
    elif level == "strict" and isinstance(fr, dict):
        for k in ("date", "reason"):
            if not isinstance(fr.get(k), str):
                errs.append(f"freeze.{k}: expected a string, found {json.dumps(fr.get(k))}")

    if level == "strict" and not errs:
        seen_id, seen_zone = {}, {}
        for role, idx, p in peers(state):
            where = role if idx is None else f"{role}[{idx}]"
            if p["id"] in seen_id:
                errs.append(f"{where}: peer id {p['id']} is also {seen_id[p['id']]}")
            if p["zoneId"] in seen_zone:
                errs.append(f"{where}: zoneId {p['zoneId']} is also {seen_zone[p['zoneId']]}")
            seen_id.setdefault(p["id"], where)
            seen_zone.setdefault(p["zoneId"], where)
    return errs


def check_valid(state, level, what):
    errs = validate_state(state, level)
    if errs:
        raise StateInvalid(f"{what}: state fails validation ({level} rules of manatee's state "
                           f"schema): " + "; ".join(errs), errs)


# ---- reading --------------------------------------------------------------------

def peers(state):
    """(role, index, peer) in chain order: primary, sync, asyncs, then deposed."""
    out = []
    if isinstance(state.get("primary"), dict):
        out.append(("primary", None, state["primary"]))
    if isinstance(state.get("sync"), dict):
        out.append(("sync", None, state["sync"]))
    for key in ("async", "deposed"):
        for i, p in enumerate(state.get(key) or []):
            if isinstance(p, dict):
                out.append((key, i, p))
    return out


def find_peer(state, ident):
    """(role, index, peer) for the peer whose id, zoneId, pgUrl or (unique) ip is ``ident``."""
    if not state:
        return None
    all_peers = peers(state)
    for role, i, p in all_peers:
        if ident in (p.get("id"), p.get("zoneId"), p.get("pgUrl")):
            return role, i, p
    by_ip = [(r, i, p) for r, i, p in all_peers if p.get("ip") == ident]
    if len(by_ip) == 1:
        return by_ip[0]
    return None


def topology(state):
    """The parts of a state that name who does what (ids)."""
    if not state:
        return None
    return {
        "primary": (state.get("primary") or {}).get("id"),
        "sync": (state.get("sync") or {}).get("id") if state.get("sync") else None,
        "async": [p.get("id") for p in state.get("async") or [] if isinstance(p, dict)],
        "deposed": [p.get("id") for p in state.get("deposed") or [] if isinstance(p, dict)],
    }


def freeze_info(state):
    fr = (state or {}).get("freeze")
    if not fr:
        return {"frozen": False, "date": None, "reason": None}
    if isinstance(fr, dict):
        return {"frozen": True, "date": fr.get("date"), "reason": fr.get("reason")}
    return {"frozen": True, "date": "unknown", "reason": "unknown"}


def plan_freeze(state, reason, force=False, now=None):
    """Decide a freeze (pure). Returns ``(new_state, foreign)``.

    Not frozen -> frozen with ``reason``. Frozen with ``reason`` (object form)
    -> unchanged. Frozen by someone else (another reason, or a boolean) ->
    unchanged, and ``foreign`` is that freeze's ``{"date","reason"}``; with
    ``force`` our freeze replaces it.
    """
    fr = freeze_info(state)
    if fr["frozen"] and isinstance(state.get("freeze"), dict) and fr["reason"] == reason:
        return state, None
    foreign = {"date": fr["date"], "reason": fr["reason"]} if fr["frozen"] else None
    if foreign and not force:
        return state, foreign
    new = copy.deepcopy(state)
    new["freeze"] = {"date": now or now_iso(), "reason": reason}
    return new, foreign


def plan_unfreeze(state, reason, force=False):
    """Decide an unfreeze (pure). Returns ``(new_state, matches, foreign)``.

    Only a freeze object whose reason is ``reason`` is removed; someone
    else's freeze (or a boolean one) is reported as ``foreign`` and kept,
    unless ``force``.
    """
    fr = freeze_info(state)
    if not fr["frozen"]:
        return state, False, None
    matches = isinstance(state.get("freeze"), dict) and reason is not None and fr["reason"] == reason
    foreign = None if matches else {"date": fr["date"], "reason": fr["reason"]}
    if matches or force:
        new = copy.deepcopy(state)
        del new["freeze"]
        return new, matches, foreign
    return state, False, foreign


def load(zk, shard):
    """(state dict, ZnodeStat). Raises StateMissing / StateInvalid (not JSON)."""
    paths = shard_paths(shard)
    raw, stat = zk.get_or_none(paths["state"])
    if raw is None:
        raise StateMissing(f"no state object exists for shard: \"{shard}\" "
                           f"(expected znode {paths['state']})")
    return loads(raw, paths["state"]), stat


def parse_election(names, data=None):
    """Active peers from election child names, as the sitters compute them.

    Keeps the highest sequence per id and sorts by id *string* (section 1.2).
    ``data`` maps child name -> bytes (optional). Returns a list of
    ``{"id","seq","name","data"}``; malformed names are returned under
    ``"invalid"`` entries with ``id`` None.
    """
    best = {}
    invalid = []
    for name in names:
        idx = name.rfind("-")
        seq = name[idx + 1:] if idx > 0 else ""
        if idx <= 0 or not seq.isdigit():
            invalid.append({"id": None, "seq": None, "name": name, "data": None})
            continue
        pid = name[:idx]
        if pid not in best or int(seq) > best[pid]["seq"]:
            best[pid] = {"id": pid, "seq": int(seq), "name": name, "data": None}
    out = [best[k] for k in sorted(best)]
    for e in out + invalid:
        raw = (data or {}).get(e["name"])
        if raw is not None:
            try:
                e["data"] = json.loads(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
            except ValueError:
                e["data"] = {"_unparseable": raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw}
    return out + invalid


def active_peers(zk, shard, with_data=True):
    paths = shard_paths(shard)
    names = zk.children(paths["election"])
    data = {}
    if with_data:
        for n in names:
            raw, _stat = zk.get_or_none(paths["election"] + "/" + n)
            if raw is not None:
                data[n] = raw
    return parse_election(names, data)


# ---- writing --------------------------------------------------------------------

def update_state(zk, shard, mutate, check_mode=False, retries=5, history_prefix="0",
                 level="adm", on_attempt=None):
    """Compare-and-swap a change into ``/manatee/<shard>/state``.

    ``mutate(state_copy)`` returns the desired state (it may return the copy
    unchanged, or raise ManateeError to refuse). It is called again on every
    retry, with freshly read state, so its decisions always see current data.

    Returns ``{"changed","before","after","version","attempts"}``. Raises
    StateMissing, StateInvalid (nothing written) or CasConflict after
    ``retries`` lost races.
    """
    paths = shard_paths(shard)
    history_ready = False
    attempts = 0
    while True:
        attempts += 1
        before, stat = load(zk, shard)
        after = mutate(copy.deepcopy(before))
        if after == before:
            return {"changed": False, "before": before, "after": before,
                    "version": stat.version, "attempts": attempts}
        check_valid(after, level, f"refusing to write the new state of shard {shard}")
        if check_mode:
            return {"changed": True, "before": before, "after": after,
                    "version": stat.version, "attempts": attempts}
        if not history_ready:
            # Made sure of before a fresh read, not between the read and the write: an
            # extra round trip there widens the window in which a sitter's write makes
            # us lose the compare-and-swap.
            zk.ensure_path(paths["history"])
            history_ready = True
            attempts -= 1
            continue
        if on_attempt:
            on_attempt(attempts)  # test hook: runs between the read and the write
        data = dumps(after).encode()
        tx = zk.transaction()
        tx.set_data(paths["state"], data, version=stat.version)
        tx.create(paths["history"] + f"/{history_prefix}-", data, sequence=True)
        try:
            results = zk.commit(tx, f"write {paths['state']}")
        except BadVersionError:
            if attempts > retries:
                raise CasConflict(
                    f"shard {shard}: the state changed between our read and our write "
                    f"{attempts} times (compare-and-swap lost to concurrent writers, e.g. the "
                    f"sitters); expected version {stat.version}, nothing was written") from None
            time.sleep(min(0.05 * attempts, 0.5))
            continue
        except NoNodeError:
            raise StateMissing(f"shard {shard}: {paths['state']} was deleted while we were "
                               "updating it; nothing was written") from None
        return {"changed": True, "before": before, "after": after,
                "version": results[0].version, "attempts": attempts,
                "history": results[1]}


def new_cluster_state(primary, sync, asyncs, init_wal, freeze_reason, generation=1):
    """The state a brand-new (reshard) cluster starts with: frozen, deposed empty."""
    return {
        "generation": generation,
        "primary": primary,
        "sync": sync,
        "async": list(asyncs or []),
        "deposed": [],
        "initWal": init_wal,
        "freeze": {"date": now_iso(), "reason": freeze_reason},
    }


def same_topology(a, b):
    ta, tb = topology(a), topology(b)
    return ta is not None and tb is not None and all(
        ta[k] == tb[k] for k in ("primary", "sync", "async"))


def create_state(zk, shard, state, check_mode=False):
    """Write the first state of a shard, with its history node, in one transaction.

    If a state already exists with the same primary, sync and async ids,
    nothing changes (idempotent re-run). If it differs, raises ManateeError
    naming both, and nothing is written.
    """
    paths = shard_paths(shard)
    check_valid(state, "strict", f"refusing to establish shard {shard}")
    for _attempt in range(3):
        raw, stat = zk.get_or_none(paths["state"])
        if raw is not None:
            current = loads(raw, paths["state"])
            if same_topology(current, state):
                return {"changed": False, "before": current, "after": current,
                        "version": stat.version}
            raise ManateeError(
                f"shard {shard} already has a state with a different topology: expected "
                f"{json.dumps(topology(state), sort_keys=True)}, found "
                f"{json.dumps(topology(current), sort_keys=True)} (generation "
                f"{current.get('generation') if isinstance(current, dict) else '?'}); "
                "nothing was written")
        if check_mode:
            return {"changed": True, "before": None, "after": state, "version": None}
        zk.ensure_path(paths["history"])
        zk.ensure_path(paths["election"])
        data = dumps(state).encode()
        tx = zk.transaction()
        tx.create(paths["state"], data)
        tx.create(paths["history"] + f"/{state['generation']}-", data, sequence=True)
        try:
            results = zk.commit(tx, f"create {paths['state']}")
        except NodeExistsError:
            continue  # a racing writer created it: compare with what is there
        _raw, stat = zk.get(paths["state"])
        return {"changed": True, "before": None, "after": state, "version": stat.version,
                "history": results[1]}
    raise CasConflict(f"shard {shard}: {paths['state']} kept appearing and disappearing; "
                      "nothing was written")
