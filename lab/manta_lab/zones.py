"""The lab's zones: one JSON record per zone, and zone-local service control.

A zone is what a Manta instance runs in: a postgres peer (service
``manatee-sitter``), a moray, an electric-moray process, a storage node
(``nginx`` and ``minnow``). Its record in ``<home>/zones/<uuid>.json`` holds
everything needed to start it again after `lab down`:

    {"uuid", "alias", "kind", "server_uuid", "datacenter", "shard" (optional),
     "ports": {...}, "paths": {...}, "metadata": {...},
     "services": {"<svc>": {"enabled": true}}}

Each kind has a handler module (see KINDS) exposing

    SERVICES: list of service names, in start order
    start_service(cfg, zone, svc)   start it if not running (idempotent)
    stop_service(cfg, zone, svc)    stop it by pid (idempotent)
    service_state(cfg, zone, svc)   'online' | 'offline' | 'disabled'

`svcadm` (enable/disable/restart) works on any zone through these, the way
`svcadm` does inside a real zone.
"""
import importlib
import json
import os
import uuid as uuidlib

from .config import LabError

KINDS = {
    "postgres": "manta_lab.peer",
    "moray": "manta_lab.moray",
    "electric-moray": "manta_lab.emoray",
    "storage": "manta_lab.storage",
}


def handler(kind):
    try:
        return importlib.import_module(KINDS[kind])
    except KeyError:
        raise LabError("zones", f"unknown zone kind {kind!r}; valid: {sorted(KINDS)}") from None


def _file(cfg, zuuid):
    return cfg.zones_dir / f"{zuuid}.json"


def create(cfg, kind, alias, services, zuuid=None, **fields):
    """Create and persist a zone record (services start disabled=False)."""
    handler(kind)
    zone = {
        "uuid": zuuid or str(uuidlib.uuid4()),
        "alias": alias,
        "kind": kind,
        "ports": {},
        "paths": {},
        "metadata": {},
        "services": {s: {"enabled": True} for s in services},
    }
    zone.update(fields)
    save(cfg, zone)
    return zone


def save(cfg, zone):
    cfg.zones_dir.mkdir(parents=True, exist_ok=True)
    f = _file(cfg, zone["uuid"])
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(zone, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, f)


def get(cfg, zuuid):
    try:
        return json.loads(_file(cfg, zuuid).read_text())
    except FileNotFoundError:
        raise LabError("zones", f"no zone {zuuid}") from None


def find(cfg, ident):
    """A zone by uuid, uuid prefix or alias."""
    matches = [z for z in all_zones(cfg)
               if z["uuid"] == ident or z["alias"] == ident or z["uuid"].startswith(ident)]
    if len(matches) != 1:
        raise LabError("zones", f"{ident!r} matches {len(matches)} zones; give a uuid or alias")
    return matches[0]


def remove(cfg, zuuid):
    try:
        _file(cfg, zuuid).unlink()
    except FileNotFoundError:
        pass


def all_zones(cfg, kind=None, shard=None):
    if not cfg.zones_dir.exists():
        return []
    out = []
    for f in sorted(cfg.zones_dir.glob("*.json")):
        z = json.loads(f.read_text())
        if kind and z["kind"] != kind:
            continue
        if shard and z.get("shard") != shard:
            continue
        out.append(z)
    return sorted(out, key=lambda z: z["alias"])


def proc_name(zone, svc):
    """The pidfile name of a zone's service."""
    return f"zone-{zone['uuid']}-{svc}"


def register(cfg, zone):
    """Tell SAPI/VMAPI about a zone the lab created itself (adoption). With no
    SAPI running this is a no-op: the next `bootstrap.ensure` adopts every zone."""
    from .config import port_free
    if port_free(cfg.port("sapi")):
        return
    from .apis import bootstrap
    bootstrap.register_zone(cfg, zone)


def ensure_indexed(cfg, kind, count, provision):
    """Zones of `kind` numbered 1..count exist and run: the missing ones are
    provisioned (``provision(cfg, index=i)``) and registered, the others started."""
    have = {z.get("index"): z for z in all_zones(cfg, kind=kind)}
    out = []
    for i in range(1, count + 1):
        z = have.get(i)
        if z is None:
            z = provision(cfg, index=i)
            register(cfg, z)
        else:
            start(cfg, z)
        out.append(z)
    return out


def destroy(cfg, zone, zone_dir):
    """Stop every service of a zone, forget it and remove its directory."""
    import shutil
    stop(cfg, zone)
    remove(cfg, zone["uuid"])
    shutil.rmtree(zone_dir, ignore_errors=True)


# ---- zone-local service control (svcadm) ---------------------------------

def start(cfg, zone):
    """Start every enabled service of a zone."""
    h = handler(zone["kind"])
    for svc in h.SERVICES:
        if zone["services"].get(svc, {}).get("enabled", True):
            h.start_service(cfg, zone, svc)


def stop(cfg, zone):
    """Stop every service of a zone (keeps enabled flags: `lab down` semantics)."""
    h = handler(zone["kind"])
    for svc in reversed(h.SERVICES):
        h.stop_service(cfg, zone, svc)


def svcadm(cfg, zone, action, svc):
    h = handler(zone["kind"])
    if svc not in h.SERVICES:
        raise LabError("svcadm", f"zone {zone['alias']} has no service {svc!r}; it has {h.SERVICES}")
    if action not in ("enable", "disable", "restart"):
        raise LabError("svcadm", f"unknown action {action!r}; valid: enable, disable, restart")
    zone = get(cfg, zone["uuid"])
    if action == "disable":
        zone["services"][svc] = {"enabled": False}
        save(cfg, zone)
        h.stop_service(cfg, zone, svc)
    elif action == "enable":
        zone["services"][svc] = {"enabled": True}
        save(cfg, zone)
        h.start_service(cfg, zone, svc)
    else:
        if zone["services"].get(svc, {}).get("enabled", True):
            h.stop_service(cfg, zone, svc)
            h.start_service(cfg, zone, svc)
    return h.service_state(cfg, zone, svc)


def states(cfg, zone):
    h = handler(zone["kind"])
    return {svc: h.service_state(cfg, zone, svc) for svc in h.SERVICES}
