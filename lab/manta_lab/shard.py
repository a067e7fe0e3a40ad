"""A lab shard: three manatee peers (primary -> sync -> async) under
``/manatee/<shard>``.

    ensure(cfg, shard, wait=True, timeout=60)  create or start; returns describe()
    wait_healthy(cfg, shard, timeout)          state, writable primary, links streaming
    describe(cfg, shard)                       {"shard", "generation", "frozen", "peers": [...]}
    state(cfg, shard) -> (state, version)      the raw /state
    freeze(cfg, shard, reason) / unfreeze(cfg, shard)   as manatee-adm (history "0-")

A new shard is made the fast way: one initdb plus the moray schema in the
primary's data directory, then a cold copy of that stopped directory for the
sync and the async (same system identifier and WAL, as a manatee restore
from the primary's snapshot gives). The generation-1 state is written before
the sitters start (what reshard's establish_cluster and §3.13's safe
procedure do), with the peers in id order: lowest id primary, next sync,
then async, as manatee's initial setup would choose. A shard whose zones
exist is just started (primary first), keeping its data.
"""
import time

from . import peer, postgres, zones, zookeeper
from .config import LabError
from .sitter import (INITIAL_WAL, chain, frozen, now_iso, read_state, url_port,
                     validate_state, write_state)

PEERS = 3


def shard_path(shard):
    return peer.shard_path(shard)


def peer_zones(cfg, shard):
    return zones.all_zones(cfg, kind=peer.KIND, shard=shard)


def _placement(cfg, shard, count=PEERS):
    """Servers for a new shard's peers: one per datacenter, rotating by shard."""
    try:
        n = int(peer.short_shard(shard))
    except ValueError:
        n = sum(map(ord, shard))
    out = []
    dcs = cfg.datacenters
    for i in range(count):
        dc = dcs[(n - 1 + i) % len(dcs)]
        servers = cfg.servers_in(dc) or cfg.servers
        out.append(servers[(n - 1) % len(servers)]["uuid"])
    return out


def ensure(cfg, shard, wait=True, timeout=60):
    """Bring the shard up: create its 3 peers if it has none, else start them."""
    zs = peer_zones(cfg, shard)
    if not zs:
        _create(cfg, shard)
    else:
        _start(cfg, [z for z in _start_order(cfg, shard, zs)
                     if z["services"].get(peer.SVC, {}).get("enabled", True)])
    if wait:
        wait_healthy(cfg, shard, timeout)
    return describe(cfg, shard)


def _start(cfg, ordered):
    """Start sitters in chain order. The primary and then the sync each join
    the election before the next starts: a sync that found no primary, or a
    primary that found an async but no sync, would declare a new generation
    (takeover, new sync) as manatee does. The asyncs start together."""
    for z in ordered[:2]:
        peer.start_service(cfg, z, peer.SVC)
    for z in ordered[2:]:
        peer.start_service(cfg, z, peer.SVC, wait=0)
    for z in ordered[2:]:
        peer.wait_registered(cfg, z)


def _start_order(cfg, shard, zs):
    try:
        st, _ = state(cfg, shard)
    except LabError:
        st = None
    if not st:
        return zs
    rank = {p["zoneId"]: i for i, p in enumerate(chain(st))}
    return sorted(zs, key=lambda z: rank.get(z["uuid"], len(rank)))


def _create(cfg, shard):
    made = []
    try:
        for server in _placement(cfg, shard):
            made.append(peer.new_zone(cfg, shard, server))
        made.sort(key=lambda z: peer.peer_object(z)["id"])
        first = made[0]
        logf = first["paths"]["pg_log"]
        comp = f"shard {shard}"
        postgres.initdb(first["paths"]["data"], logf, comp)
        postgres.setup_moray(first["paths"]["data"], logf, storage=(shard == cfg.shard_name(1)),
                             component=comp)
        for z in made[1:]:
            postgres.clone(first["paths"]["data"], z["paths"]["data"])
        peers = [peer.peer_object(z) for z in made]
        st = {"generation": 1, "primary": peers[0], "sync": peers[1], "async": peers[2:],
              "deposed": [], "initWal": INITIAL_WAL}
        with zookeeper.client(cfg) as zk:
            write_state(zk, shard_path(shard), lambda cur: st)
        _start(cfg, made)
    except BaseException:
        for z in made:
            peer._remove(cfg, z)
        raise
    return made


# ---- state ------------------------------------------------------------------------

def state(cfg, shard):
    with zookeeper.client(cfg) as zk:
        return read_state(zk, shard_path(shard))


def freeze(cfg, shard, reason):
    """manatee-adm freeze: fails if already frozen."""
    def mutate(cur):
        if cur is None:
            raise LabError(f"shard {shard}", f"No state exists for shard {shard}")
        if cur.get("freeze"):
            raise LabError(f"shard {shard}", "shard is already been frozen: "
                           f"{(cur['freeze'] or {}).get('reason') if isinstance(cur['freeze'], dict) else cur['freeze']}")
        cur["freeze"] = {"date": now_iso(), "reason": reason}
        return cur
    with zookeeper.client(cfg) as zk:
        return write_state(zk, shard_path(shard), mutate, history_prefix=0)[0]


def unfreeze(cfg, shard):
    """manatee-adm unfreeze: deletes the freeze key."""
    def mutate(cur):
        if cur is None:
            raise LabError(f"shard {shard}", f"No state exists for shard {shard}")
        if not cur.get("freeze"):
            raise LabError(f"shard {shard}", "shard is not frozen")
        del cur["freeze"]
        return cur
    with zookeeper.client(cfg) as zk:
        return write_state(zk, shard_path(shard), mutate, history_prefix=0)[0]


# ---- health -----------------------------------------------------------------------

def problems(cfg, shard):
    """What keeps the shard from being healthy (empty list = healthy)."""
    try:
        st, _ = state(cfg, shard)
    except LabError as exc:
        return [str(exc)]
    if st is None:
        return [f"no state at {shard_path(shard)}/state"]
    try:
        validate_state(st)
    except ValueError as exc:
        return [f"invalid state: {exc}"]
    out = []
    links = chain(st)
    for i, up in enumerate(links[:-1]):
        down = links[i + 1]
        _, port = url_port(up["pgUrl"])
        want = "sync" if i == 0 else "async"
        try:
            rows = postgres.replication(port, timeout=2)
        except Exception as exc:  # noqa: BLE001
            out.append(f"{up['id']}: cannot query postgres: {str(exc).strip()}")
            continue
        row = next((r for r in rows if r["application_name"] == down["pgUrl"]), None)
        if row is None:
            out.append(f"{up['id']}: downstream {down['id']} not connected")
        elif row["state"] != "streaming":
            out.append(f"{up['id']}: downstream {down['id']} is {row['state']}, not streaming")
        elif row["sync_state"] != want:
            out.append(f"{up['id']}: downstream {down['id']} is {row['sync_state']}, not {want}")
    if out:
        return out
    _, port = url_port(st["primary"]["pgUrl"])
    try:
        rows = postgres.query(port, "SELECT pg_is_in_recovery() AS rec, "
                                    "current_setting('default_transaction_read_only') AS ro, "
                                    "txid_current() AS xid", dbname="moray", timeout=5)
        if rows[0]["rec"]:
            out.append(f"primary {st['primary']['id']} is in recovery")
        elif rows[0]["ro"] == "on":
            out.append(f"primary {st['primary']['id']} is read-only")
    except Exception as exc:  # noqa: BLE001
        out.append(f"primary {st['primary']['id']} not writable: {str(exc).strip()}")
    return out


def wait_healthy(cfg, shard, timeout=60):
    """Wait until the state exists, the primary takes writes (synchronously
    replicated) and every link of the chain streams with the right kind."""
    deadline = time.monotonic() + timeout
    last = []
    while True:
        last = problems(cfg, shard)
        if not last:
            return describe(cfg, shard)
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    zs = peer_zones(cfg, shard)
    logs = ", ".join(z["paths"]["sitter_log"] for z in zs[:1])
    raise LabError(f"shard {shard}", f"not healthy after {timeout}s: " + "; ".join(last),
                   logs or None)


# ---- description --------------------------------------------------------------------

def _peer_entry(cfg, role, p, zone):
    ent = {"role": role, "id": p["id"] if p else None, "zone": None, "alias": None,
           "pgUrl": p["pgUrl"] if p else None}
    if p:
        host, port = url_port(p["pgUrl"])
        ent.update(ip=p["ip"], pg_port=port, backupUrl=p.get("backupUrl"),
                   dsn=postgres.dsn(port))
    if zone:
        ent.update(zone=zone["uuid"], alias=zone["alias"], datacenter=zone.get("datacenter"),
                   server_uuid=zone.get("server_uuid"), pg_port=zone["ports"]["pg"],
                   backup_port=zone["ports"]["backup"], dsn=postgres.dsn(zone["ports"]["pg"]),
                   data=zone["paths"]["data"], log=zone["paths"]["sitter_log"],
                   pg_log=zone["paths"]["pg_log"],
                   service=peer.service_state(cfg, zone, peer.SVC))
        if not p:
            obj = peer.peer_object(zone)
            ent.update(id=obj["id"], ip=obj["ip"], pgUrl=obj["pgUrl"], backupUrl=obj["backupUrl"])
    return ent


def describe(cfg, shard):
    """The shard as ZooKeeper and the zone records see it. Peers come in chain
    order (primary, sync, asyncs), then deposed, then this shard's zones the
    state does not name (role "unassigned")."""
    out = {"shard": shard, "shard_path": shard_path(shard), "generation": None,
           "initWal": None, "frozen": False, "freeze": None, "peers": []}
    try:
        st, version = state(cfg, shard)
    except LabError as exc:
        st, out["error"] = None, str(exc)
    by_uuid = {z["uuid"]: z for z in zones.all_zones(cfg, kind=peer.KIND)}
    seen = set()
    if st:
        out.update(generation=st.get("generation"), initWal=st.get("initWal"),
                   frozen=frozen(st), freeze=st.get("freeze"), version=version)
        named = [("primary", st.get("primary"))]
        if st.get("sync"):
            named.append(("sync", st["sync"]))
        named += [("async", a) for a in st.get("async") or []]
        named += [("deposed", d) for d in st.get("deposed") or []]
        for role, p in named:
            if not isinstance(p, dict):
                continue
            z = by_uuid.get(p.get("zoneId"))
            seen.add(p.get("zoneId"))
            out["peers"].append(_peer_entry(cfg, role, p, z))
    for z in peer_zones(cfg, shard):
        if z["uuid"] not in seen:
            out["peers"].append(_peer_entry(cfg, "unassigned", None, z))
    return out


def primary_dsn(cfg, shard):
    st, _ = state(cfg, shard)
    if not st:
        raise LabError(f"shard {shard}", f"no state at {shard_path(shard)}/state")
    _, port = url_port(st["primary"]["pgUrl"])
    return postgres.dsn(port)
