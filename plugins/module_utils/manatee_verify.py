# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""``manatee-adm verify`` and ``show`` from a state and per-peer postgres status.

Pure functions, no I/O. ``issues(state, pg)`` reproduces the checks of
reference/manatee.md section 2.5 in the same order and with the same message
texts, so operators see what ``manatee-adm verify`` would print:

1. primary pg error -> error ``cannot query postgres on primary: peer "<label>": <cause>``
2. one-node-write mode: more than one peer -> warning ``found <n> peers in
   singleton mode``; nothing else is checked
3. sync pg error -> error ``cannot query postgres on sync: peer "<label>": <cause>``
4. deposed non-empty -> warning ``cluster has a deposed peer``
5. no asyncs -> warning ``cluster has no async peers``
6. sync pg error -> stop
7. link P->S (errors), then S->A0 and Ai->Ai+1 (warnings):
   ``peer "<P>": downstream replication peer not connected`` (no row: stop
   this link); ``peer "<P>": expected downstream peer to be "<ip>", but found
   "<addr>"``; ``peer "<P>": downstream replication not yet established
   (expected state "streaming", found "<state>")``; and, only if neither of
   those failed, ``peer "<P>": expected downstream replication to be "<kind>",
   but found "<x>"``.

``pg`` maps peer id -> ``{"error": str|None, "repl": row|None, ...}`` as made
by manatee_pg.probe_state; peers missing from it (deposed) count as not
probed, without error, as in manatee-adm.
"""
from __future__ import annotations

from ansible_collections.manta.ops.plugins.module_utils.manatee_pg import format_lag

ROW_COLUMNS = (("ROLE", 8), ("PEER", 8), ("PG", 4), ("REPL", 5), ("SENT", 13),
               ("FLUSH", 13), ("REPLAY", 13), ("LAG", 6))


def label(peer):
    return str(peer.get("zoneId", ""))[:8]


def _pgerr(pg, peer):
    st = pg.get(peer.get("id")) or {}
    err = st.get("error")
    if err:
        return f'peer "{label(peer)}": {err}'
    return None


def _repl(pg, peer):
    st = pg.get(peer.get("id")) or {}
    row = st.get("repl")
    return row if row and row.get("state") else None


def _link(pg, peer, downstream, kind, out):
    """manatee-adm's loadReplErrors for the link peer -> downstream."""
    if downstream is None:
        return
    before = len(out)
    row = _repl(pg, peer)
    name = label(peer)
    if row is None:
        out.append(f'peer "{name}": downstream replication peer not connected')
        return
    if row.get("client_addr") != downstream.get("ip"):
        out.append(f'peer "{name}": expected downstream peer to be "{downstream.get("ip")}", '
                   f'but found "{row.get("client_addr")}"')
    if row.get("state") != "streaming":
        out.append(f'peer "{name}": downstream replication not yet established '
                   f'(expected state "streaming", found "{row.get("state")}")')
    if len(out) > before:
        return
    if row.get("sync_state") != kind:
        out.append(f'peer "{name}": expected downstream replication to be "{kind}", '
                   f'but found "{row.get("sync_state")}"')


def issues(state, pg):
    """(errors, warnings): lists of message strings, in manatee-adm's order."""
    errors, warnings = [], []
    primary = state["primary"]
    perr = _pgerr(pg, primary)
    if perr:
        errors.append(f"cannot query postgres on primary: {perr}")

    if state.get("oneNodeWriteMode"):
        ids = {p.get("id") for p in [primary, state.get("sync")] + list(state.get("async") or [])
               + list(state.get("deposed") or []) if isinstance(p, dict)}
        if len(ids) > 1:
            warnings.append(f"found {len(ids)} peers in singleton mode")
        return errors, warnings

    sync = state.get("sync") or {}
    serr = _pgerr(pg, sync)
    if serr:
        errors.append(f"cannot query postgres on sync: {serr}")
    if state.get("deposed"):
        warnings.append("cluster has a deposed peer")
    asyncs = list(state.get("async") or [])
    if not asyncs:
        warnings.append("cluster has no async peers")
    if serr:
        return errors, warnings

    _link(pg, primary, sync, "sync", errors)
    _link(pg, sync, asyncs[0] if asyncs else None, "async", warnings)
    for i, a in enumerate(asyncs):
        _link(pg, a, asyncs[i + 1] if i + 1 < len(asyncs) else None, "async", warnings)
    return errors, warnings


def _first_line(msg):
    lines = str(msg).split("\n")
    return lines[0] + ("..." if len(lines) > 1 else "")


def verify_lines(errors, warnings):
    """The stdout lines of ``manatee-adm verify`` (without -v)."""
    return [f"error: {_first_line(e)}" for e in errors] + \
           [f"warning: {_first_line(w)}" for w in warnings]


def _row(values, widths):
    return " ".join(str(v).ljust(w) for v, w in zip(values, widths))


def rows(state, pg):
    """Per-peer rows of the pg-status table, as dicts (chain order, then deposed)."""
    out = []
    order = [("primary", state.get("primary"))]
    if state.get("sync"):
        order.append(("sync", state["sync"]))
    order += [("async", p) for p in state.get("async") or []]
    order += [("deposed", p) for p in state.get("deposed") or []]
    for role, peer in order:
        if not isinstance(peer, dict):
            continue
        st = pg.get(peer.get("id"))
        probed = st is not None
        failed = bool(st and st.get("error"))
        repl = _repl(pg, peer) if probed and not failed else None
        out.append({
            "role": role,
            "peerabbr": label(peer),
            "peername": peer.get("zoneId"),
            "ip": peer.get("ip"),
            "pg": "fail" if failed else "ok",
            "probed": probed,
            "repl": (repl or {}).get("sync_state") or "-",
            "sent": (repl or {}).get("sent_lsn") or "-",
            "write": (repl or {}).get("write_lsn") or "-",
            "flush": (repl or {}).get("flush_lsn") or "-",
            "replay": (repl or {}).get("replay_lsn") or "-",
            "lag": "-" if (failed or not probed or role == "primary")
                   else format_lag((st or {}).get("lag_seconds")),
        })
    return out


def render_show(zk, shard, state, pg, errors, warnings, verbose=False):
    """Text of ``manatee-adm show [-v]``."""
    fr = state.get("freeze")
    lines = [
        f"zookeeper:   {zk}",
        f"cluster:     {shard}",
        f"generation:  {state.get('generation')} ({state.get('initWal')})",
        "mode:        " + ("singleton (one-node-write)" if state.get("oneNodeWriteMode") else "normal"),
    ]
    if fr:
        date = fr.get("date", "unknown") if isinstance(fr, dict) else "unknown"
        reason = fr.get("reason", "unknown") if isinstance(fr, dict) else "unknown"
        lines.append(f"freeze:      frozen since {date}")
        lines.append(f"freeze info: {reason}")
    else:
        lines.append("freeze:      not frozen")
    lines.append("")
    table = rows(state, pg)
    if verbose:
        w = (8, 36, 16)
        lines.append(_row(("ROLE", "PEERNAME", "IP"), w))
        for r in table:
            lines.append(_row((r["role"], r["peername"], r["ip"]), w))
        lines.append("")
    widths = [c[1] for c in ROW_COLUMNS]
    lines.append(_row([c[0] for c in ROW_COLUMNS], widths))
    for r in table:
        lines.append(_row((r["role"], r["peerabbr"], r["pg"], r["repl"], r["sent"], r["flush"],
                           r["replay"], r["lag"]), widths))
    issue_lines = verify_lines(errors, warnings)
    if issue_lines:
        lines.append("")
        lines += issue_lines
    return "\n".join(lines) + "\n"
