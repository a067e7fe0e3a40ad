"""Make the lab's SAPI/IMGAPI/VMAPI look like a deployed Manta.

``ensure(cfg)`` (run by `lab up` once the APIs answer) idempotently creates:

* one IMGAPI image per Manta service (``mantav2-<svc>``, a placeholder file),
  so instances and VMs carry real image uuids (`manta-adm show` counts them);
* the ``manta`` application, owned by poseidon, with the production metadata
  keys INDEX_MORAY_SHARDS, STORAGE_MORAY_SHARD, ZK_SERVERS, DOMAIN_NAME,
  REGION, DNS_DOMAIN, SIZE, SAPI_URL. A key is only written when it is absent, so a
  reshard's changes survive `lab down && lab up`. HASH_RING_IMAGE and
  HASH_RING_IMGAPI_SERVICE are left to the ring builder;
* the services nameservice, postgres, moray, electric-moray and storage with
  their params (image_uuid, ram, quota, networks) and metadata;
* a VMAPI VM and an adopted SAPI instance for every lab zone
  (``register_zone``), with the instance metadata production has
  (reference/reshard.md §5.3).

``register_zone(cfg, zone)`` is also how components that create zones later
(storage, electric-moray, ...) make them known: the VM is told to VMAPI with
PutVm (what vm-agent does) and the instance is adopted with CreateInstance
``exists: true`` (what sdc-manta does for zones it did not provision).
"""
import uuid as uuidlib

from .. import zones
from ..config import LabError
from .client import Imgapi, Sapi, Vmapi

APP_NAME = "manta"
# Service -> (ram MiB, quota GiB, delegate_dataset). Order is manta-adm's deploy order.
SERVICES = {
    "nameservice": (512, 25, True),
    "postgres": (4096, 100, True),
    "moray": (1024, 25, False),
    "electric-moray": (2048, 25, False),
    "storage": (1024, 100, True),
}
NETWORKS = ["admin", "manta"]


def _u5(cfg, name):
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"{name}.{cfg.domain}"))


def poseidon_uuid(cfg):
    """The owner of the manta application, its zones and its images."""
    return _u5(cfg, "poseidon")


def image_uuid(cfg, svc):
    return _u5(cfg, f"mantav2-{svc}.image")


def dns_domain(cfg):
    prefix = f"{cfg.region}."
    return cfg.domain[len(prefix):] if cfg.domain.startswith(prefix) else cfg.domain


def app_metadata(cfg):
    n = cfg.shards
    index = [{"host": cfg.shard_name(i)} for i in range(1, n + 1)]
    index[-1]["last"] = True
    return {
        "INDEX_MORAY_SHARDS": index,
        "STORAGE_MORAY_SHARD": cfg.shard_name(1),
        "ZK_SERVERS": [{"host": "127.0.0.1", "port": cfg.port("zookeeper"), "num": 1,
                        "last": True}],
        "DOMAIN_NAME": cfg.domain,
        "REGION": cfg.region,
        "DNS_DOMAIN": dns_domain(cfg),
        "SIZE": "lab",
        "SAPI_URL": cfg.url("sapi"),
    }


# Keys production keeps on the application only. A zone record may carry its
# own copy (what its config-agent rendered); adopting it must not shadow the
# application's value at the instance level.
APP_LEVEL = {"INDEX_MORAY_SHARDS", "STORAGE_MORAY_SHARD", "BUCKETS_MORAY_SHARDS", "ZK_SERVERS",
             "DOMAIN_NAME", "REGION", "DNS_DOMAIN", "SIZE", "HASH_RING_IMAGE",
             "HASH_RING_IMGAPI_SERVICE", "BUCKETS_HASH_RING_IMAGE", "MARLIN_MORAY_SHARD"}


def service_metadata(cfg, svc):
    names = {"nameservice": f"nameservice.{cfg.domain}",
             "electric-moray": f"electric-moray.{cfg.domain}",
             "storage": f"stor.{cfg.domain}"}
    return {"SERVICE_NAME": names[svc]} if svc in names else {}


def ensure_images(cfg, img=None):
    img = img or Imgapi(cfg)
    out = {}
    for svc in SERVICES:
        manifest = {"v": 2, "uuid": image_uuid(cfg, svc), "owner": poseidon_uuid(cfg),
                    "name": f"mantav2-{svc}", "version": "lab-1.0.0", "type": "zone-dataset",
                    "os": "smartos", "public": False,
                    "description": f"lab placeholder image for Manta {svc} zones",
                    "tags": {"smartdc_service": True}}
        data = f"manta lab placeholder image: mantav2-{svc}\n".encode()
        out[svc] = img.import_image(manifest, data, compression="none")["uuid"]
    return out


def ensure_app(cfg, sapi=None):
    """The manta application, with every production key that is missing."""
    sapi = sapi or Sapi(cfg)
    app = sapi.get_app(APP_NAME)
    want = app_metadata(cfg)
    if app is None:
        return sapi.request("POST", "/applications", body={
            "uuid": _u5(cfg, "manta.application"), "name": APP_NAME,
            "owner_uuid": poseidon_uuid(cfg), "params": {}, "metadata": want, "master": True})
    missing = {k: v for k, v in want.items() if k not in app.get("metadata", {})}
    if missing:
        app = sapi.update_metadata(app["uuid"], missing)
    return app


def ensure_services(cfg, app, sapi=None):
    sapi = sapi or Sapi(cfg)
    have = {s["name"]: s for s in sapi.list_services(application_uuid=app["uuid"])}
    out = {}
    for svc, (ram, quota, delegate) in SERVICES.items():
        if svc in have:
            out[svc] = have[svc]
            continue
        params = {"image_uuid": image_uuid(cfg, svc), "ram": ram, "quota": quota,
                  "networks": list(NETWORKS), "billing_id": "00000000-0000-0000-0000-000000000000"}
        if delegate:
            params["delegate_dataset"] = True
        out[svc] = sapi.request("POST", "/services", body={
            "uuid": _u5(cfg, f"{svc}.service"), "name": svc, "application_uuid": app["uuid"],
            "type": "vm", "params": params, "metadata": service_metadata(cfg, svc),
            "master": True})
    return out


def instance_metadata(cfg, zone):
    """What sdc-manta's deployer gives an instance of this zone's kind."""
    kind = zone["kind"]
    server = cfg.server(zone.get("server_uuid") or "") or {}
    md = {"DATACENTER": zone.get("datacenter") or server.get("datacenter") or cfg.datacenters[0],
          "SAPI_URL": cfg.url("sapi")}
    shard = zone.get("shard") or (zone.get("metadata") or {}).get("SERVICE_NAME")
    if kind in ("postgres", "moray") and shard:
        md["SERVICE_NAME"] = shard
        md["SHARD"] = shard.split(".")[0]
        if kind == "postgres":
            md["MANATEE_SHARD_PATH"] = f"/manatee/{shard}"
    elif kind == "electric-moray":
        md["SERVICE_NAME"] = f"electric-moray.{cfg.domain}"
        md["SHARD"] = "1"
    elif kind == "storage":
        md["SERVICE_NAME"] = f"stor.{cfg.domain}"
        sid = (zone.get("metadata") or {}).get("MANTA_STORAGE_ID") or zone.get("storage_id")
        if sid:
            md["MANTA_STORAGE_ID"] = sid
    md.update({k: v for k, v in (zone.get("metadata") or {}).items() if k not in APP_LEVEL})
    return md


def _server_for(cfg, zone):
    if zone.get("server_uuid") and cfg.server(zone["server_uuid"]):
        return zone["server_uuid"]
    pool = cfg.servers_in(zone["datacenter"]) if zone.get("datacenter") else []
    pool = pool or cfg.servers
    return pool[int(zone["uuid"].replace("-", ""), 16) % len(pool)]["uuid"]


def register_zone(cfg, zone, _ctx=None):
    """Make an existing lab zone a VMAPI VM and an adopted SAPI instance.

    Idempotent; returns the SAPI instance. The APIs must be running.
    """
    sapi, vmapi = Sapi(cfg), Vmapi(cfg)
    kind = zone["kind"]
    if _ctx is None:
        app = ensure_app(cfg, sapi)
        svc = sapi.get_service(kind, app["uuid"])
        if svc is None:
            if kind not in SERVICES:
                raise LabError("apis", f"zone {zone['alias']}: no SAPI service {kind!r}")
            ensure_images(cfg)
            svc = ensure_services(cfg, app, sapi)[kind]
    else:
        app, svc = _ctx["app"], _ctx["services"].get(kind)
        if svc is None:
            raise LabError("apis", f"zone {zone['alias']}: no SAPI service {kind!r}")
    inst = sapi.get_instance(zone["uuid"])
    server_uuid = _server_for(cfg, zone)
    img = svc["params"].get("image_uuid") or image_uuid(cfg, kind)
    tags = {"manta_role": kind}
    md = instance_metadata(cfg, zone)
    if kind == "storage" and md.get("MANTA_STORAGE_ID"):
        tags["manta_storage_id"] = md["MANTA_STORAGE_ID"]
    if vmapi.get_vm(zone["uuid"]) is None:
        ram, quota, delegate = SERVICES.get(kind, (1024, 25, False))
        vmapi.put_vm(zone["uuid"], {
            "uuid": zone["uuid"], "alias": zone["alias"], "server_uuid": server_uuid,
            "owner_uuid": app["owner_uuid"], "image_uuid": img, "brand": "joyent-minimal",
            "state": "running", "tags": tags, "ram": ram, "quota": quota,
            "delegate_dataset": delegate, "customer_metadata": {"SAPI_URL": cfg.url("sapi")},
            "_networks": list(NETWORKS)})
    if inst is None:
        inst = sapi.create_instance({
            "service_uuid": svc["uuid"], "uuid": zone["uuid"], "exists": True, "master": True,
            "params": {"alias": zone["alias"], "server_uuid": server_uuid, "image_uuid": img,
                       "tags": tags},
            "metadata": md})
    return inst


def ensure(cfg):
    """Idempotently set up images, the manta application, its services, and
    an instance + VM for every lab zone. Returns a summary."""
    sapi = Sapi(cfg)
    images = ensure_images(cfg)
    app = ensure_app(cfg, sapi)
    services = ensure_services(cfg, app, sapi)
    ctx = {"app": app, "services": services}
    registered = []
    for z in zones.all_zones(cfg):
        if z["kind"] in services:
            register_zone(cfg, z, _ctx=ctx)
            registered.append(z["uuid"])
    return {"application": app["uuid"], "images": images,
            "services": {k: v["uuid"] for k, v in services.items()}, "instances": registered}
