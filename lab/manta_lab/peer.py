"""Zone kind ``postgres``: a manatee peer (service ``manatee-sitter``).

A peer zone's record (zones.py) holds::

    shard        full shard name (metadata SERVICE_NAME), e.g. 1.moray.lab.manta.test
    datacenter, server_uuid
    ports        {"pg": <postgres port>, "backup": <backup/status port>}
    paths        {"root", "data", "pg_log", "sitter_log", "status"}
    metadata     {"SERVICE_NAME", "SHARD", "MANATEE_SHARD_PATH", "DATACENTER", ...}

Its peer id is ``127.0.0.1:<pg>:<backup>`` and its pgUrl
``tcp://postgres@127.0.0.1:<pg>/postgres``. The sitter reads the record at
start, so a metadata change takes effect through ``reprovision``.

Entry points (the lab's SAPI calls them for CreateInstance, UpgradeInstance
and DeleteInstance of the ``postgres`` service):

    provision(cfg, shard, server_uuid, zuuid=None, metadata=None) -> zone
    reprovision(cfg, zone, metadata) -> zone
    destroy(cfg, zone)

Service control, as SMF does it for manatee-sitter:

- ``svcadm disable`` (the record says disabled): SIGTERM; the sitter stops
  postgres (immediate mode), closes its ZooKeeper session (its election node
  goes at once) and exits;
- any other stop (``svcadm restart``, ``lab down``, a reprovision or a
  deletion halting the zone): SIGKILL of the whole process group, the SMF
  ``:kill -9`` stop method. The election node stays until the ZooKeeper
  session expires (sitter.SESSION_TIMEOUT), so a quick restart does not
  trigger a takeover (manatee.md §6.22).
"""
import json
import os
import shutil
import signal
import sys
import time
import uuid as uuidlib
from pathlib import Path

from . import config, postgres, procs, zones, zookeeper
from .config import LabError

KIND = "postgres"
SVC = "manatee-sitter"
SERVICES = [SVC]
LAB_DIR = Path(__file__).resolve().parents[1]


# ---- names -------------------------------------------------------------------

def full_shard(cfg, shard):
    """'1' or '1.moray.<domain>' -> '1.moray.<domain>'."""
    shard = str(shard)
    return shard if "." in shard else cfg.shard_name(shard)


def short_shard(shard):
    return shard.split(".moray.", 1)[0] if ".moray." in shard else shard


def shard_path(shard):
    return f"/manatee/{shard}"


def alias_for(cfg, shard, zuuid):
    return f"{short_shard(shard)}.postgres.{cfg.domain}-{zuuid[:8]}"


def zone_root(cfg, zuuid):
    return cfg.zones_dir / zuuid


def proc(zone):
    return zones.proc_name(zone, SVC)


def default_metadata(cfg, shard, datacenter):
    return {
        "SERVICE_NAME": shard,
        "SHARD": short_shard(shard),
        "MANATEE_SHARD_PATH": shard_path(shard),
        "DATACENTER": datacenter,
        "ZK_SERVERS": [{"host": config.HOST, "port": cfg.port("zookeeper")}],
        "SIZE": "lab",
    }


def new_zone(cfg, shard, server_uuid, zuuid=None, metadata=None):
    """Create (and persist) the record of a new peer zone; no data yet."""
    shard = full_shard(cfg, shard)
    server = cfg.server(server_uuid)
    if server is None:
        valid = ", ".join(s["uuid"] for s in cfg.servers)
        raise LabError("peer", f"server_uuid {server_uuid!r} is not a lab server; valid: {valid}")
    zuuid = zuuid or str(uuidlib.uuid4())
    md = default_metadata(cfg, shard, server["datacenter"])
    md.update(metadata or {})
    shard = md.get("SERVICE_NAME") or shard
    root = zone_root(cfg, zuuid)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    pg_port = cfg.alloc_port()
    backup_port = cfg.alloc_port()
    return zones.create(
        cfg, KIND, alias_for(cfg, shard, zuuid), SERVICES, zuuid=zuuid,
        shard=shard, datacenter=server["datacenter"], server_uuid=server_uuid,
        ports={"pg": pg_port, "backup": backup_port},
        paths={"root": str(root), "data": str(root / "data"),
               "pg_log": str(cfg.log(f"zone-{zuuid}-postgres")),
               "sitter_log": str(cfg.log(f"zone-{zuuid}-{SVC}")),
               "status": str(root / "sitter.json")},
        metadata=md)


def peer_object(zone):
    from .sitter import peer_from_zone
    return peer_from_zone(zone)


# ---- service control (zones.py handler contract) ---------------------------------

def sitter_status(zone):
    try:
        return json.loads(Path(zone["paths"]["status"]).read_text())
    except (OSError, ValueError, KeyError):
        return None


def start_service(cfg, zone, svc=SVC, wait=15.0):
    """Start the sitter (idempotent) and wait (up to ``wait`` seconds; 0: do
    not wait) until it has joined its shard's election."""
    _check_svc(svc)
    name = proc(zone)
    if procs.alive(cfg, name):
        return
    log = zone["paths"]["sitter_log"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(LAB_DIR), env.get("PYTHONPATH")) if p)
    argv = [python(), "-m", "manta_lab.sitter", "--home", str(cfg.home), "--zone", zone["uuid"]]
    procs.spawn(cfg, name, argv, log=log, env=env, cwd=zone["paths"]["root"])
    if wait:
        wait_registered(cfg, zone, wait)


def wait_pg(cfg, zone, timeout=60.0):
    """Wait until the running sitter has settled its postgres: up and
    answering, or deliberately down (no state, deposed). False on timeout."""
    name = proc(zone)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = procs.alive(cfg, name)
        if not pid:
            raise LabError(f"{SVC} {zone['alias']}", "exited", zone["paths"]["sitter_log"])
        st = sitter_status(zone)
        if st and st.get("pid") == pid and st.get("pg_config"):
            if st["pg_config"].get("role") == "none" or st.get("pg") == "online":
                return True
        time.sleep(0.05)
    return False


def python():
    """The venv's interpreter (kazoo, psycopg2), else the one running us."""
    venv = config.REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def wait_registered(cfg, zone, timeout=15.0):
    """Wait until the zone's running sitter has its election node. Returns
    False on timeout (e.g. ZooKeeper unreachable); raises if it exited."""
    name = proc(zone)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = procs.alive(cfg, name)
        if not pid:
            raise LabError(f"{SVC} {zone['alias']}", "exited during start-up",
                           zone["paths"]["sitter_log"])
        st = sitter_status(zone)
        if st and st.get("pid") == pid and st.get("registered"):
            return True
        time.sleep(0.05)
    return False


def stop_service(cfg, zone, svc=SVC):
    _check_svc(svc)
    name = proc(zone)
    enabled = zone.get("services", {}).get(svc, {}).get("enabled", True)
    if enabled:
        procs.kill(cfg, name)                     # SMF :kill -9 of the contract
    else:
        procs.stop(cfg, name, sig=signal.SIGTERM, timeout=20, group=False)
    # The sitter took its postgres with it; a postmaster left behind (sitter
    # SIGKILLed alone) is found by its postmaster.pid, never by name.
    postgres.kill_postmaster(zone["paths"]["data"], sig=signal.SIGKILL, reaped=False)


def service_state(cfg, zone, svc=SVC):
    _check_svc(svc)
    if not zone.get("services", {}).get(svc, {}).get("enabled", True):
        return "disabled"
    pid = procs.alive(cfg, proc(zone))
    if not pid:
        return "offline"
    st = sitter_status(zone)
    if st and st.get("pid") == pid and st.get("fatal"):
        return "maintenance"
    return "online"


def _check_svc(svc):
    if svc != SVC:
        raise LabError("peer", f"postgres zones have one service, {SVC!r}; got {svc!r}")


# ---- provisioning ------------------------------------------------------------------

def provision(cfg, shard, server_uuid, zuuid=None, metadata=None):
    """A new peer for a running shard: base backup from the chain tail, then
    the sitter. The peer waits as a standby of the tail until the primary's
    sitter appends it to ``async`` (manatee.md §3.7). Returns the zone."""
    from .sitter import chain, read_state, url_port
    if zuuid:
        try:
            existing = zones.get(cfg, zuuid)
        except LabError:
            existing = None
        if existing:
            if existing["kind"] != KIND:
                raise LabError("peer", f"zone {zuuid} exists and is a {existing['kind']} zone")
            start_service(cfg, existing)
            return existing
    zone = new_zone(cfg, shard, server_uuid, zuuid=zuuid, metadata=metadata)
    try:
        path = zone["metadata"]["MANATEE_SHARD_PATH"]
        with zookeeper.client(cfg) as zk:
            state, _ = read_state(zk, path)
        if state is None:
            raise LabError("peer", f"shard {zone['shard']} has no state at {path}/state; "
                                   "bring the shard up first")
        sources = list(reversed(chain(state)))       # the tail first, then upstream
        last = None
        for src in sources:
            _, port = url_port(src["pgUrl"])
            if not postgres.ping(port, timeout=1):
                last = f"{src['id']} not answering"
                continue
            postgres.basebackup(zone["paths"]["data"], port, zone["paths"]["pg_log"],
                                component=f"peer {zone['alias']}")
            break
        else:
            raise LabError("peer", f"no peer of {zone['shard']} to back up from ({last})",
                           zone["paths"]["pg_log"])
        start_service(cfg, zone)
        wait_pg(cfg, zone)
    except BaseException:
        _remove(cfg, zone)
        raise
    return zones.get(cfg, zone["uuid"])


def reprovision(cfg, zone, metadata=None):
    """Restart the zone under new metadata, keeping its data (a reprovision
    keeps the delegated dataset). The sitter is re-enabled, as the zone's
    setup script does, and starts under the (new) MANATEE_SHARD_PATH."""
    zone = zones.get(cfg, zone["uuid"])
    procs.kill(cfg, proc(zone))                       # the zone halts
    postgres.kill_postmaster(zone["paths"]["data"], sig=signal.SIGKILL, reaped=False)
    md = dict(zone.get("metadata") or {})
    md.update(metadata or {})
    shard = md.get("SERVICE_NAME") or zone["shard"]
    if shard != zone.get("shard"):
        md.setdefault("SHARD", short_shard(shard))
        if "MANATEE_SHARD_PATH" not in (metadata or {}):
            md["MANATEE_SHARD_PATH"] = shard_path(shard)
        zone["alias"] = alias_for(cfg, shard, zone["uuid"])
    zone["shard"] = shard
    zone["metadata"] = md
    zone["services"][SVC] = {"enabled": True}
    zones.save(cfg, zone)
    start_service(cfg, zone)
    wait_pg(cfg, zone)
    return zones.get(cfg, zone["uuid"])


def destroy(cfg, zone):
    """Delete the zone: its processes are killed (the session expires; the
    primary then drops it from the state), its data and record removed."""
    try:
        zone = zones.get(cfg, zone["uuid"])
    except LabError:
        return False
    _remove(cfg, zone)
    return True


def _remove(cfg, zone):
    procs.kill(cfg, proc(zone))
    postgres.kill_postmaster(zone["paths"]["data"], sig=signal.SIGKILL, reaped=False)
    shutil.rmtree(zone["paths"]["root"], ignore_errors=True)
    zones.remove(cfg, zone["uuid"])
