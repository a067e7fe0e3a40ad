# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Named locks kept as persistent ZooKeeper znodes.

A lock znode exists exactly while the lock is held, so "the node exists" keeps
the meaning the pg_dump scripts and ``manatee-adm check-lock`` give it
(reference/manatee.md section 1.1). Its data is compact JSON:

exclusive::

    {"manta_ops_lock":1,"mode":"exclusive","owner":"plan:<uuid>",
     "purpose":"...","host":"...","plan":"<uuid>","time":"<ISO8601>",
     "broke":{...}}                       # only when taken by force

shared (counted; e.g. ``/pg_dump_lock``)::

    {"manta_ops_lock":1,"mode":"shared",
     "holders":{"plan:<a>":{"purpose":..,"host":..,"plan":..,"time":..}, ...}}

Every change is atomic: ``create`` when the node is absent, otherwise
``set``/``delete`` with the version just read (compare-and-swap). A lost race
(NodeExists / BadVersion / NoNode) re-reads and re-decides, so two acquirers
can never both win and the shared node is deleted only by the write that
removes its last holder.

A node whose data is not ours (for example one made by an operator with
``zkCli.sh create /pg_dump_lock x``) is held by the external holder
``(external)``: a shared acquire keeps it as a holder (its original data is
preserved and restored when it is the last one left), an exclusive acquire is
refused.

Breaking a lock (``force``) writes, in the same transaction, a record of who
broke it, why, when and what was held, as a persistent sequential node under
``/manta_ops/lock_breaks/`` (the lock node itself may be gone afterwards).
"""
from __future__ import annotations

import copy
import json
import re
import socket
import threading
import time

from ansible_collections.manta.ops.plugins.module_utils.zk import (
    BadVersionError, NodeExistsError, NoNodeError, ZkError)

LOCK_ROOT = "/manta_ops/locks"
BREAK_LOG = "/manta_ops/lock_breaks"
EXTERNAL = "(external)"
MARK = "manta_ops_lock"
MODES = ("exclusive", "shared")
MAX_ATTEMPTS = 25

_PATH_SEG_RE = re.compile(r"^[^/\x00-\x1f\x7f]+$")


class LockError(Exception):
    """Bad input or an unexpected lock layout: nothing was changed."""


class LockHeld(LockError):
    """The lock is held in a way that conflicts with the request."""

    def __init__(self, msg, view):
        super().__init__(msg)
        self.view = view


def now_iso():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def default_host():
    # gethostname, not getfqdn: a reverse lookup can stall for seconds without DNS.
    try:
        return socket.gethostname() or "unknown"
    except OSError:
        return "unknown"


def lock_path(name=None, path=None, root=LOCK_ROOT):
    """The znode path of a lock given by ``name`` (under ``root``) or a full ``path``."""
    if (name is None) == (path is None):
        raise LockError("give exactly one of name (a lock name under the lock root) or path")
    if path is not None:
        p = str(path)
        segs = p.split("/")
        if not p.startswith("/") or p == "/" or p.endswith("/") or \
                not all(_PATH_SEG_RE.match(s) and s not in (".", "..") for s in segs[1:]):
            raise LockError(f"path {path!r} is not an absolute ZooKeeper path like \"/pg_dump_lock\"")
        if p == "/zookeeper" or p.startswith("/zookeeper/"):
            raise LockError(f"path {path!r} is inside ZooKeeper's reserved /zookeeper tree")
        return p
    n = str(name)
    if not _PATH_SEG_RE.match(n) or n in (".", ".."):
        raise LockError(f"name {name!r} must be a single znode name (no \"/\", not empty, not . or ..)")
    return lock_path(path=root.rstrip("/") + "/" + n)


def check_owner(owner):
    if not isinstance(owner, str) or not owner.strip():
        raise LockError("owner must be a non-empty string identifying the holder, like \"plan:<uuid>\"")
    if owner.startswith("(") or any(ord(c) < 32 for c in owner):
        raise LockError(f"owner {owner!r} may not start with \"(\" or contain control characters")
    return owner


# ---- decoding -----------------------------------------------------------------

def decode(raw, stat=None, path=None):
    """Lock view of a node's data (None raw = lock not held).

    ``{"path","exists","version","mode","holders":{owner: info},"data"}`` where
    mode is exclusive, shared or external (data not written by manta.ops).
    """
    view = {"path": path, "exists": raw is not None, "version": stat.version if stat else None,
            "mode": None, "holders": {}, "data": None}
    if raw is None:
        return view
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get(MARK) == 1 and doc.get("mode") in MODES:
        view["data"] = doc
        if doc["mode"] == "exclusive" and isinstance(doc.get("owner"), str):
            view["mode"] = "exclusive"
            view["holders"] = {doc["owner"]: {k: doc.get(k) for k in ("purpose", "host", "plan", "time")}}
            return view
        if doc["mode"] == "shared" and isinstance(doc.get("holders"), dict):
            view["mode"] = "shared"
            view["holders"] = copy.deepcopy(doc["holders"])
            return view
    view["mode"] = "external"
    view["data"] = text
    view["holders"] = {EXTERNAL: {"data": text,
                                  "time": _ms_iso(stat.ctime) if stat else None}}
    return view


def _ms_iso(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000.0)) + f".{int(ms % 1000):03d}Z"


def _encode(doc):
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def describe_holder(owner, info):
    info = info or {}
    if owner == EXTERNAL:
        return f"an external holder (node data {info.get('data')!r}, created {info.get('time')})"
    bits = [f"{k}: {info[k]}" for k in ("purpose", "host", "plan") if info.get(k)]
    if info.get("time"):
        bits.append(f"since {info['time']}")
    return f"{owner}" + (f" ({', '.join(bits)})" if bits else "")


def describe(view):
    if not view["exists"]:
        return "free"
    return ", ".join(describe_holder(o, i) for o, i in sorted(view["holders"].items()))


def public(view):
    """The lock view as returned to users (JSON-safe, holders as a list)."""
    return {
        "path": view["path"],
        "exists": view["exists"],
        "mode": view["mode"],
        "version": view["version"],
        "holders": [dict(owner=o, **dict(i or {}))
                    for o, i in sorted(view["holders"].items())],
    }


def diff_view(view):
    """Compact before/after form for --diff: {owner: info} (empty when free)."""
    if not view["exists"]:
        return {}
    return {"mode": view["mode"], "holders": view["holders"]}


# ---- operations ---------------------------------------------------------------

def read(zk, path):
    raw, stat = zk.get_or_none(path)
    return decode(raw, stat, path)


def _holder_info(purpose, host, plan):
    return {"purpose": purpose, "host": host or default_host(), "plan": plan, "time": now_iso()}


def _break_record(path, owner, reason, view, host):
    return {"path": path, "broken_by": owner, "reason": reason, "time": now_iso(),
            "host": host or default_host(), "previous": public(view)}


def _commit_break(zk, path, record, change):
    """One transaction: ``change(tx)`` on the lock node plus the break record under BREAK_LOG.
    False when the compare-and-swap lost (the caller re-reads and decides again)."""
    zk.ensure_path(BREAK_LOG)
    tx = zk.transaction()
    change(tx)
    tx.create(BREAK_LOG + "/break-", _encode(record), sequence=True)
    try:
        zk.commit(tx, f"break lock {path}")
    except (BadVersionError, NoNodeError):
        return False
    return True


def acquire(zk, path, mode, owner, purpose=None, host=None, plan=None,
            force=False, force_reason=None, check_mode=False):
    """Take the lock for ``owner``. Returns a result dict; raises LockHeld on conflict.

    Result: ``{"changed","before","after","broken"}`` (views; ``broken`` is the
    break record when a holder was displaced by ``force``).
    """
    check_owner(owner)
    if mode not in MODES:
        raise LockError(f"mode must be one of {', '.join(MODES)}, found {mode!r}")
    if force and not (force_reason and str(force_reason).strip()):
        raise LockError("force needs force_reason: say why the current holder is stale")
    info = _holder_info(purpose, host, plan)
    for _attempt in range(MAX_ATTEMPTS):
        raw, stat = zk.get_or_none(path)
        before = decode(raw, stat, path)
        if raw is None:
            doc = _new_doc(mode, owner, info)
            after = decode(_encode(doc), None, path)
            if check_mode:
                return _result(True, before, after)
            try:
                zk.create(path, _encode(doc), makepath=True)
            except NodeExistsError:
                continue  # someone else created it first: re-read and decide again
            return _result(True, before, read(zk, path))

        if owner in before["holders"]:
            if before["mode"] == mode:
                return _result(False, before, before)  # re-entrant: already ours
            raise LockHeld(f"lock {path} is already held by {owner} in {before['mode']} mode; "
                           f"release it before taking it {mode}", before)

        conflict = _conflicts(before, mode, owner)
        if conflict:
            if not force:
                raise LockHeld(_held_msg(path, before, owner, mode), before)
            record = _break_record(path, owner, force_reason, before, host)
            doc = _new_doc(mode, owner, info)
            doc["broke"] = {k: record[k] for k in ("broken_by", "reason", "time")}
            doc["broke"]["previous"] = [h["owner"] for h in public(before)["holders"]]
            after = decode(_encode(doc), None, path)
            if check_mode:
                return _result(True, before, after, record)
            if not _commit_break(zk, path, record, lambda tx: tx.set_data(path, _encode(doc),
                                                                          version=stat.version)):
                continue
            return _result(True, before, read(zk, path), record)

        # shared, no conflict: add ourselves as a holder
        doc = _shared_doc_from(before)
        doc["holders"][owner] = info
        after = decode(_encode(doc), None, path)
        if check_mode:
            return _result(True, before, after)
        try:
            zk.set(path, _encode(doc), version=stat.version)
        except (BadVersionError, NoNodeError):
            continue
        return _result(True, before, read(zk, path))
    raise ZkError(f"lock {path}: lost the compare-and-swap race {MAX_ATTEMPTS} times in a row; "
                  "another writer keeps changing it")


def release(zk, path, mode, owner, force=False, force_reason=None, host=None, check_mode=False):
    """Release ``owner``'s hold. Raises LockHeld when another owner holds an exclusive lock.

    Releasing a lock that is free, or a shared lock ``owner`` does not hold,
    changes nothing. ``force`` breaks the lock whoever holds it (all holders)
    and records the break.
    """
    check_owner(owner)
    if mode not in MODES:
        raise LockError(f"mode must be one of {', '.join(MODES)}, found {mode!r}")
    if force and not (force_reason and str(force_reason).strip()):
        raise LockError("force needs force_reason: say why the current holder is stale")
    for _attempt in range(MAX_ATTEMPTS):
        raw, stat = zk.get_or_none(path)
        before = decode(raw, stat, path)
        if raw is None:
            return _result(False, before, before)
        free = decode(None, None, path)
        mine = owner in before["holders"]
        if mine and before["mode"] == "shared" and len(before["holders"]) > 1:
            doc = _shared_doc_from(before)
            del doc["holders"][owner]
            restore_external = list(doc["holders"]) == [EXTERNAL]
            new = (doc["holders"][EXTERNAL]["data"].encode() if restore_external else _encode(doc))
            after = decode(new, stat, path)
            if check_mode:
                return _result(True, before, after)
            try:
                zk.set(path, new, version=stat.version)
            except (BadVersionError, NoNodeError):
                continue
            return _result(True, before, read(zk, path))
        if mine:  # exclusive, or the last shared holder: the node goes away
            if check_mode:
                return _result(True, before, free)
            try:
                zk.delete(path, version=stat.version)
            except (BadVersionError, NoNodeError):
                continue
            return _result(True, before, read(zk, path))
        if not force:
            if mode == "shared" and before["mode"] in ("shared", "external"):
                return _result(False, before, before)  # not one of the holders: nothing to do
            raise LockHeld(
                f"lock {path} is held by {describe(before)}, not by {owner}; refusing to "
                f"release it (release it as its owner, or break it with force: true and "
                f"force_reason)", before)
        record = _break_record(path, owner, force_reason, before, host)
        if check_mode:
            return _result(True, before, free, record)
        if not _commit_break(zk, path, record, lambda tx: tx.delete(path, version=stat.version)):
            continue
        return _result(True, before, read(zk, path), record)
    raise ZkError(f"lock {path}: lost the compare-and-swap race {MAX_ATTEMPTS} times in a row; "
                  "another writer keeps changing it")


def acquire_wait(zk, path, mode, owner, timeout, poll=1.0, **kw):
    """``acquire`` that waits (up to ``timeout`` s) for a conflicting holder to go.

    Wakes on a ZooKeeper watch of the lock node, with ``poll`` as a fallback.
    Returns the acquire result plus ``waited`` seconds; raises LockHeld (whose
    message says how long it waited) on timeout.
    """
    start = time.monotonic()
    deadline = start + max(0.0, float(timeout))
    while True:
        changed = threading.Event()
        try:
            res = acquire(zk, path, mode, owner, **kw)
            res["waited"] = round(time.monotonic() - start, 3)
            return res
        except LockHeld as held:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                held.args = (f"{held.args[0]} (waited {time.monotonic() - start:.1f}s, "
                             f"timeout {float(timeout):g}s)",)
                raise
            try:
                zk.exists(path, watch=lambda _ev: changed.set())
            except ZkError:
                raise
            changed.wait(min(remaining, poll))


# ---- helpers ------------------------------------------------------------------

def _new_doc(mode, owner, info):
    if mode == "exclusive":
        doc = {MARK: 1, "mode": "exclusive", "owner": owner}
        doc.update(info)
        return doc
    return {MARK: 1, "mode": "shared", "holders": {owner: info}}


def _shared_doc_from(view):
    """A shared document holding everyone in ``view`` (external data kept as a holder)."""
    return {MARK: 1, "mode": "shared", "holders": copy.deepcopy(view["holders"])}


def _conflicts(view, mode, owner):
    if not view["exists"]:
        return False
    if mode == "exclusive":
        return True  # held, and not by us in exclusive mode
    # shared: coexists with other shared holders and with an external holder,
    # conflicts with an exclusive holder (even if that is us: mode mismatch).
    return view["mode"] == "exclusive"


def _held_msg(path, view, owner, mode):
    kind = {"exclusive": "exclusive lock", "shared": "shared lock",
            "external": "node created outside manta.ops"}[view["mode"]]
    return (f"lock {path} is held ({kind}) by {describe(view)}; refusing to take it "
            f"{mode} for {owner}. Wait for it (wait: true, timeout) or, if the holder is "
            f"stale, break it with force: true and force_reason")


def _result(changed, before, after, broken=None):
    return {"changed": changed, "before": before, "after": after, "broken": broken}
