"""What the lab VMAPI's workflow jobs do to the lab's zones.

In Triton a VMAPI job asks a compute node to create, reprovision, boot or
destroy a zone; in the lab the job calls the zone kind's module instead:

    kind            module                 calls
    postgres        manta_lab.peer         provision(cfg, shard, server_uuid=, zuuid=, metadata=)
                                           reprovision(cfg, zone, metadata), destroy(cfg, zone)
    moray           manta_lab.moray        provision(cfg, shard, ...), destroy(cfg, zone)
    electric-moray  manta_lab.emoray       provision(cfg, server_uuid=, zuuid=, metadata=), destroy
    storage         manta_lab.storage      provision(cfg, server_uuid=, zuuid=, metadata=), destroy

Reprovision uses the module's ``reprovision`` when it has one. Otherwise a
stateless kind (moray, electric-moray: nothing on a delegated dataset) is
destroyed and provisioned again under the same uuid and server, and any
other kind (storage: its objects live on the delegated dataset) keeps its
zone: the new metadata is merged into the zone record and the zone restarts.

A kind with no entry in PROVISIONERS (nameservice, ...) is *recorded only*:
VMAPI keeps the VM, nothing is created. Start, stop and reboot act on any VM
that has a lab zone (zones.start/zones.stop).

The kind of a VM is the name of its SAPI service (VMAPI itself knows only the
VM's ``tags.manta_role``, which is the fallback). Metadata is what the zone's
config-agent would fetch from SAPI: application ← service ← instance
metadata, plus SERVER_UUID, ZONE_UUID and INSTANCE_UUID.
"""
import importlib
import threading
import time

from .. import zones
from ..config import LabError

# kind -> module name (or module object: unit tests put a fake here).
PROVISIONERS = {
    "postgres": "manta_lab.peer",
    "moray": "manta_lab.moray",
    "electric-moray": "manta_lab.emoray",
    "storage": "manta_lab.storage",
}
SHARDED = ("postgres", "moray")
STATELESS = ("moray", "electric-moray")   # reprovision = destroy + provision


def module_for(kind):
    """The provisioning module of a kind, or None if the kind is recorded only."""
    mod = PROVISIONERS.get(kind)
    if mod is None or not isinstance(mod, str):
        return mod
    try:
        return importlib.import_module(mod)
    except ImportError as exc:
        raise LabError("vmapi", f"zone kind {kind!r}: cannot import {mod} ({exc})") from None


def handled(kind):
    return kind in PROVISIONERS


def shard_of(cfg, metadata):
    """The full shard name (``<n>.moray.<domain>``) a sharded zone belongs to.

    SERVICE_NAME wins (moray and manatee find their cluster through it:
    ``/manatee/<SERVICE_NAME>``); else SHARD, the short name; else None.
    """
    md = metadata or {}
    sn = md.get("SERVICE_NAME")
    if isinstance(sn, str) and ".moray." in sn:
        return sn
    short = md.get("SHARD")
    if isinstance(short, (str, int)) and not isinstance(short, bool) and str(short).strip():
        short = str(short).strip()
        return short if ".moray." in short else cfg.shard_name(short)
    return None


def check(cfg, kind, metadata):
    """Problems that would make provisioning this kind fail; [] if none.

    Called before anything is written, so bad input fails up front.
    """
    if kind in SHARDED and handled(kind) and shard_of(cfg, metadata) is None:
        return [f"a {kind} instance needs metadata SHARD (e.g. \"1\") or SERVICE_NAME "
                f"(e.g. \"{cfg.shard_name(1)}\"), merged from application, service and instance"]
    return []


def find_zone(cfg, zuuid):
    try:
        return zones.get(cfg, zuuid)
    except LabError:
        return None


def provision(cfg, kind, zuuid, server_uuid, metadata):
    """Create the zone for a new VM. Returns the zone, or None if recorded only."""
    mod = module_for(kind)
    if mod is None:
        return None
    if kind in SHARDED:
        shard = shard_of(cfg, metadata)
        if shard is None:
            raise LabError("vmapi", check(cfg, kind, metadata)[0])
        return mod.provision(cfg, shard, server_uuid=server_uuid, zuuid=zuuid,
                             metadata=dict(metadata))
    return mod.provision(cfg, server_uuid=server_uuid, zuuid=zuuid, metadata=dict(metadata))


def reprovision(cfg, kind, zuuid, server_uuid, metadata):
    """Reprovision a VM's zone under new metadata, keeping its data."""
    zone = find_zone(cfg, zuuid)
    mod = module_for(kind) if handled(kind) else _kind_module(zone)
    if zone is None:
        if mod is not None and handled(kind):
            # Its zone is gone (e.g. removed by hand): provision it again.
            return provision(cfg, kind, zuuid, server_uuid, metadata)
        return None
    if mod is not None and hasattr(mod, "reprovision"):
        return mod.reprovision(cfg, zone, dict(metadata)) or zones.get(cfg, zuuid)
    if mod is not None and kind in STATELESS and hasattr(mod, "destroy"):
        alias = zone.get("alias")
        mod.destroy(cfg, zone)
        zone = provision(cfg, kind, zuuid, zone.get("server_uuid") or server_uuid, metadata)
        set_alias(cfg, zuuid, alias)
        return zone
    zones.stop(cfg, zone)
    zone = zones.get(cfg, zuuid)
    zone["metadata"] = {**(zone.get("metadata") or {}), **(metadata or {})}
    zones.save(cfg, zone)
    zones.start(cfg, zone)
    return zone


def destroy(cfg, kind, zuuid):
    zone = find_zone(cfg, zuuid)
    if zone is None:
        return
    mod = module_for(kind) if handled(kind) else _kind_module(zone)
    if mod is not None and hasattr(mod, "destroy"):
        mod.destroy(cfg, zone)
        return
    zones.stop(cfg, zone)
    zones.remove(cfg, zuuid)


def start(cfg, zuuid):
    zone = find_zone(cfg, zuuid)
    if zone is not None:
        zones.start(cfg, zone)


def stop(cfg, zuuid):
    zone = find_zone(cfg, zuuid)
    if zone is not None:
        zones.stop(cfg, zone)


def set_alias(cfg, zuuid, alias):
    """A zone's alias is its VM's alias (vmadm keeps one): follow VMAPI's."""
    zone = find_zone(cfg, zuuid)
    if zone is not None and alias and zone.get("alias") != alias:
        zone["alias"] = alias
        zones.save(cfg, zone)
    return zone


def _kind_module(zone):
    if zone is None:
        return None
    try:
        return zones.handler(zone["kind"])
    except (LabError, ImportError):
        return None


class StatusRefresher:
    """Keeps ``<home>/status.json`` (and so anything reading it) in step with the zones.

    After every VMAPI job that created, reprovisioned, destroyed, renamed, started or stopped a zone,
    ``kick()`` asks for a rewrite; one background thread does it (manta_lab.cli.write_status: computed
    from the zone records and ZooKeeper, written to a temporary file and renamed, under the status lock).
    Kicks that arrive while it writes are coalesced into one more write, so a burst of jobs (a reshard's
    three reprovisions) costs one or two rewrites, and never delays a job: the job is reported finished
    first. Nothing is written for a lab that was never brought up (no status.json)."""

    SETTLE = 0.05   # seconds: let the jobs of a burst finish before computing

    def __init__(self, cfg, log=None):
        self.cfg = cfg
        self.log = log or (lambda msg: None)
        self.wanted = threading.Event()
        self.idle = threading.Event()
        self.idle.set()
        self.thread = None
        self.lock = threading.Lock()
        self.writes = 0

    def kick(self):
        if not self.cfg.path("status.json").exists():
            return
        with self.lock:
            self.idle.clear()
            self.wanted.set()
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, daemon=True, name="status-refresh")
                self.thread.start()

    def wait(self, timeout=30.0):
        """Block until no rewrite is pending (tests, shutdown)."""
        return self.idle.wait(timeout)

    def _loop(self):
        from ..cli import write_status
        while True:
            if not self.wanted.wait(timeout=5.0):
                with self.lock:
                    if not self.wanted.is_set():
                        self.thread = None
                        self.idle.set()
                        return
                continue
            time.sleep(self.SETTLE)
            self.wanted.clear()
            try:
                write_status(self.cfg)
                self.writes += 1
            except Exception as exc:  # noqa: BLE001 - a status file is not worth failing the API for
                self.log(f"vmapi: status.json refresh failed: {type(exc).__name__}: {exc}")
            with self.lock:
                if not self.wanted.is_set():
                    self.idle.set()
