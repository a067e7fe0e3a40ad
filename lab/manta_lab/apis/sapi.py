"""The lab SAPI: applications, services, instances, manifests, configs, mode.

Endpoints and semantics: reference/triton_apis.md §1. The query string and
the JSON body are merged into the request params with the query winning
(SAPI parses it first). Objects inherit params/metadata/manifests
application ← service ← instance with a per-key, one-level merge.

Instances of type ``vm`` are zones: CreateInstance asks the (in-process)
VMAPI to create the VM and, unless ``?async=true``, waits for the provision
job; UpgradeInstance runs a VMAPI reprovision job; DeleteInstance a destroy
job. Those jobs act on the lab's zones (provision.py).
"""
import hashlib
import json
import math
import re
import uuid as uuidlib

from . import errors, provision
from .server import Response, Service
from .vmapi import job_error

APPS, SVCS, INSTS, MANIFESTS, META = ("sapi_applications", "sapi_services", "sapi_instances",
                                      "sapi_manifests", "meta")
VERSION = "2.1.0"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SEMVER_RE = re.compile(r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                       r"(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
FIELDS = ("params", "metadata", "manifests")
SAFE_VMAPI_KEYS = ("SAPI_URL", "sapi_url", "SAPI-URL", "sapi-url", "user-script", "assets-ip")
SHARDED = ("postgres", "moray", "buckets-postgres", "buckets-mdapi")


def truthy(v):
    if isinstance(v, str):
        return v.strip().lower() not in ("", "false", "0", "no")
    return bool(v)


# ---- GetConfig's Etag (lib/server/endpoints/configs.js) ------------------------

def _js_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isfinite(v) and v.is_integer() and abs(v) < 1e21:
            return str(int(v))
        return repr(v)
    return str(v)


def _flatten(obj, prev, out):
    if isinstance(obj, list):
        for v in obj:
            _flatten(v, prev, out)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, k if prev == "" else f"{prev},{k}", out)
    elif obj is None:
        return  # typeof null == 'object' with no keys: contributes nothing
    else:
        out.append(f"{prev},{_js_scalar(obj)}")


def config_etag(config):
    """sha1 of JSON.stringify(sorted flattened "key,...,value" strings)."""
    flat = []
    _flatten(config, "", flat)
    flat.sort()
    data = json.dumps(flat, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha1(data.encode("utf-8")).hexdigest()


# ---- a small JSON Schema subset for metadata_schema ------------------------------

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type_ok(v, t):
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "boolean":
        return isinstance(v, bool)
    return isinstance(v, _TYPES.get(t, object))


def schema_errors(v, schema, path):
    """Errors of v against a JSON Schema (type, enum, const, properties,
    required, additionalProperties, items, min/max, lengths, pattern)."""
    if not isinstance(schema, dict):
        return []
    out = []
    t = schema.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not any(_type_ok(v, x) for x in types):
            return [f"{path} must be of type {'/'.join(types)}"]
    if "enum" in schema and v not in schema["enum"]:
        out.append(f"{path} must be one of {schema['enum']}")
    if "const" in schema and v != schema["const"]:
        out.append(f"{path} must be {schema['const']!r}")
    if isinstance(v, dict):
        props = schema.get("properties", {})
        for k in schema.get("required", []):
            if k not in v:
                out.append(f"{path}.{k} is required")
        for k, sub in v.items():
            if k in props:
                out += schema_errors(sub, props[k], f"{path}.{k}")
            elif schema.get("additionalProperties") is False:
                out.append(f"{path}.{k} is not allowed")
            elif isinstance(schema.get("additionalProperties"), dict):
                out += schema_errors(sub, schema["additionalProperties"], f"{path}.{k}")
    if isinstance(v, list):
        if isinstance(schema.get("items"), dict):
            for i, sub in enumerate(v):
                out += schema_errors(sub, schema["items"], f"{path}[{i}]")
        if "minItems" in schema and len(v) < schema["minItems"]:
            out.append(f"{path} needs at least {schema['minItems']} items")
        if "maxItems" in schema and len(v) > schema["maxItems"]:
            out.append(f"{path} has more than {schema['maxItems']} items")
    if isinstance(v, str):
        if "minLength" in schema and len(v) < schema["minLength"]:
            out.append(f"{path} is shorter than {schema['minLength']}")
        if "maxLength" in schema and len(v) > schema["maxLength"]:
            out.append(f"{path} is longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], v):
            out.append(f"{path} does not match {schema['pattern']}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if "minimum" in schema and v < schema["minimum"]:
            out.append(f"{path} is less than {schema['minimum']}")
        if "maximum" in schema and v > schema["maximum"]:
            out.append(f"{path} is greater than {schema['maximum']}")
    return out


class Sapi:
    def __init__(self, app):
        self.app = app
        self.cfg = app.cfg
        self.store = app.store
        s = self.service = Service("sapi", f"sapi/{VERSION}")
        s.add("GET", "/ping", self.ping)
        s.add("GET", "/mode", self.get_mode)
        s.add("POST", "/mode", self.set_mode)
        s.add("POST", "/cache", lambda req: Response(204))
        s.add("GET", "/loglevel", lambda req: {"level": "info"})
        s.add("POST", "/loglevel", lambda req: {"level": req.params(True).get("level", "info")})
        s.add("GET", "/applications", self.list_applications)
        s.add("POST", "/applications", self.create_application)
        s.add("GET", "/applications/:uuid", self.get_application)
        s.add("PUT", "/applications/:uuid", self.update_application)
        s.add("DELETE", "/applications/:uuid", self.delete_application)
        s.add("GET", "/services", self.list_services)
        s.add("POST", "/services", self.create_service)
        s.add("GET", "/services/:uuid", self.get_service)
        s.add("PUT", "/services/:uuid", self.update_service)
        s.add("DELETE", "/services/:uuid", self.delete_service)
        s.add("GET", "/instances", self.list_instances)
        s.add("POST", "/instances", self.create_instance)
        s.add("GET", "/instances/:uuid", self.get_instance)
        s.add("GET", "/instances/:uuid/payload", self.get_instance_payload)
        s.add("PUT", "/instances/:uuid", self.update_instance)
        s.add("PUT", "/instances/:uuid/upgrade", self.upgrade_instance)
        s.add("DELETE", "/instances/:uuid", self.delete_instance)
        s.add("GET", "/manifests", self.list_manifests)
        s.add("POST", "/manifests", self.create_manifest)
        s.add("GET", "/manifests/:uuid", self.get_manifest)
        s.add("DELETE", "/manifests/:uuid", self.delete_manifest)
        s.add("GET", "/configs/:uuid", self.get_config)

    # ---- model -------------------------------------------------------------------
    def _get(self, bucket, what, uuid):
        obj = self.store.get(bucket, uuid)
        if obj is None:
            raise errors.not_found(f"no such {what}: {uuid}")
        return obj

    def get_app(self, uuid):
        return self._get(APPS, "application", uuid)

    def get_svc(self, uuid):
        return self._get(SVCS, "service", uuid)

    def get_inst(self, uuid):
        return self._get(INSTS, "instance", uuid)

    def get_mfest(self, uuid):
        return self._get(MANIFESTS, "manifest", uuid)

    def mode(self):
        m = self.store.get(META, "sapi_mode")
        return m["mode"] if m else "full"

    def parents(self, inst):
        svc = self.get_svc(inst["service_uuid"])
        app = self.get_app(svc["application_uuid"])
        return app, svc, inst

    @staticmethod
    def assemble(app, svc, inst):
        out = {}
        for f in FIELDS:
            m = {}
            for o in (app, svc, inst):
                if isinstance(o.get(f), dict):
                    m.update(o[f])
            out[f] = m
        return out

    def vm_server(self, inst, merged_params):
        vm = self.app.vmapi.get_vm(inst["uuid"])
        return (merged_params.get("server_uuid") or (vm or {}).get("server_uuid")
                or self.cfg.servers[0]["uuid"])

    def zone_params(self, app, svc, inst):
        """The CreateVm payload (generateZoneParams)."""
        if svc.get("type") == "agent":
            return {}
        a = self.assemble(app, svc, inst)
        params = a["params"]
        params["owner_uuid"] = app["owner_uuid"]
        params["uuid"] = inst["uuid"]
        params["brand"] = "joyent-minimal"
        md = a["metadata"]
        md["SERVER_UUID"] = params.get("server_uuid")
        md["ZONE_UUID"] = inst["uuid"]
        allowed = list(SAFE_VMAPI_KEYS)
        extra = md.get("pass_vmapi_metadata_keys")
        if isinstance(extra, list):
            allowed += [k for k in extra if isinstance(k, str)]
        params["customer_metadata"] = {k: md[k] for k in allowed if md.get(k)}
        if isinstance(params.get("networks"), list):
            params["networks"] = [
                ({"uuid": n} if UUID_RE.match(n) else {"name": n}) if isinstance(n, str) else n
                for n in params["networks"]]
        return params

    def config(self, inst):
        """GetConfig: {manifests: [...], metadata: {...}} for an instance."""
        app, svc, _ = self.parents(inst)
        a = self.assemble(app, svc, inst)
        md = a["metadata"]
        md["SERVER_UUID"] = self.vm_server(inst, a["params"])
        md["ZONE_UUID"] = inst["uuid"]
        md["INSTANCE_UUID"] = inst["uuid"]
        md.pop("user-script", None)
        mfests = []
        for muuid in a["manifests"].values():
            m = self.store.get(MANIFESTS, muuid)
            if m is None:
                raise errors.internal(f"no such manifest: {muuid}")
            mfests.append(m)
        return {"manifests": mfests, "metadata": md}

    def fill_metadata(self, uuid, metadata):
        """Add metadata keys an instance lacks (what provisioning decided)."""
        with self.store.tx():
            inst = self.store.get(INSTS, uuid)
            if inst is None:
                return
            md = inst.setdefault("metadata", {})
            add = {k: v for k, v in metadata.items() if k not in md}
            if add:
                md.update(add)
                self.store.put(INSTS, uuid, inst)

    # ---- serialization -------------------------------------------------------------
    @staticmethod
    def ser_app(o):
        out = {k: o[k] for k in ("uuid", "name", "owner_uuid", "params", "metadata") if k in o}
        if "metadata_schema" in o:
            out["metadata_schema"] = o["metadata_schema"]
        out["manifests"] = o.get("manifests", {})
        if o.get("master"):
            out["master"] = True
        return out

    @staticmethod
    def ser_svc(o):
        out = {k: o.get(k) for k in ("uuid", "name", "application_uuid")}
        out.update({f: o.get(f, {}) for f in FIELDS})
        if o.get("master"):
            out["master"] = True
        out["type"] = o.get("type", "vm")
        return out

    @staticmethod
    def ser_inst(o, job_uuid=None):
        out = {k: o.get(k) for k in ("uuid", "service_uuid")}
        out.update({f: o.get(f, {}) for f in FIELDS})
        if o.get("master"):
            out["master"] = True
        out["type"] = o.get("type", "vm")
        if job_uuid:
            out["job_uuid"] = job_uuid
        return out

    # ---- validation helpers ----------------------------------------------------------
    @staticmethod
    def _require(p, keys):
        missing = [k for k in keys if p.get(k) is None]
        if missing:
            raise errors.missing_parameter("missing required keys: " + ", ".join(missing))

    @staticmethod
    def _check_objects(p, fields):
        for f in fields:
            if p.get(f) is not None and not isinstance(p[f], dict):
                raise errors.invalid_argument(f"{f} must be an object, not {type(p[f]).__name__}")

    def _check_manifests(self, manifests):
        for name, muuid in (manifests or {}).items():
            if not isinstance(muuid, str):
                raise errors.invalid_argument(f"manifests.{name} must be a manifest uuid (a string)")
            self.get_mfest(muuid)

    def _check_image(self, params):
        img = (params or {}).get("image_uuid")
        if img is not None and (not isinstance(img, str) or self.app.imgapi.get(img) is None):
            raise errors.internal(f"no such image in local IMGAPI: {img}")

    def _new_uuid(self, p, bucket, what):
        u = p.get("uuid")
        if u is None:
            return str(uuidlib.uuid4())
        if not isinstance(u, str) or not UUID_RE.match(u):
            raise errors.invalid_argument(f"uuid must be a lowercase UUID, got {u!r}")
        if self.store.get(bucket, u) is not None:
            raise errors.invalid_argument(f"{what} {u} already exists")
        return u

    def _check_schema(self, app):
        schema = app.get("metadata_schema")
        if schema:
            errs = schema_errors(app.get("metadata", {}), schema, "metadata")
            if errs:
                raise errors.schema_validation("metadata does not match the application's "
                                               "metadata_schema: " + "; ".join(errs))

    def _apply(self, obj, p, action, fields):
        """attributes.js applyChange: only the fields present in the request."""
        for f in fields:
            change = p.get(f)
            if change is None or change is False or change == "" or change == 0:
                continue  # JS `if (changes[field])`
            if not isinstance(change, dict):
                raise errors.invalid_argument(f"{f} must be an object, not {type(change).__name__}")
            if action == "update":
                obj[f] = {**(obj.get(f) or {}), **change}
            elif action == "replace":
                obj[f] = dict(change)
            else:
                cur = dict(obj.get(f) or {})
                for k in change:
                    cur.pop(k, None)
                obj[f] = cur
        return obj

    @staticmethod
    def _action(p):
        action = p.get("action") or "update"
        if not isinstance(action, str) or action.lower() not in ("update", "replace", "delete"):
            raise errors.invalid_argument(f"invalid action {action!r}: "
                                          "use update, replace or delete")
        return action.lower()

    def _update(self, bucket, what, uuid, p, fields, extra=None):
        action = self._action(p)
        if "manifests" in fields and isinstance(p.get("manifests"), dict) and action != "delete":
            self._check_manifests(p["manifests"])
        with self.store.tx():
            obj = self._get(bucket, what, uuid)
            self._apply(obj, p, action, fields)
            if extra:
                extra(obj)
            if bucket == APPS:
                self._check_schema(obj)
            self.store.put(bucket, uuid, obj)
        return self.store.get(bucket, uuid)

    def _delete(self, bucket, what, uuid):
        with self.store.tx():
            if not self.store.delete(bucket, uuid):
                raise errors.not_found(f"no such {what}: {uuid}")
        return Response(204)

    # ---- endpoints: misc ---------------------------------------------------------------
    def ping(self, req):
        return {"mode": self.mode(), "storType": "LabSqliteStorage", "storAvailable": True}

    def get_mode(self, req):
        return self.mode()

    def set_mode(self, req):
        want = req.params(True).get("mode")
        if want not in ("proto", "full"):
            raise errors.invalid_argument(f"invalid mode {want!r}: use proto or full")
        cur = self.mode()
        if want == "proto" and cur == "full":
            raise errors.invalid_argument("cannot transition from full to proto mode")
        self.store.put(META, "sapi_mode", {"mode": want})
        return Response(204)

    # ---- applications --------------------------------------------------------------------
    def list_applications(self, req):
        q = req.params(True)
        out = [a for a in self.store.list(APPS)
               if all(a.get(k) == q[k] for k in ("name", "owner_uuid") if q.get(k))]
        return [self.ser_app(a) for a in out]

    def get_application(self, req, uuid):
        return self.ser_app(self.get_app(uuid))

    def create_application(self, req):
        p = req.params(True)
        self._require(p, ("name", "owner_uuid"))
        self._check_objects(p, FIELDS + ("metadata_schema",))
        for k in ("name", "owner_uuid"):
            if not isinstance(p[k], str):
                raise errors.invalid_argument(f"{k} must be a string")
        self._check_manifests(p.get("manifests"))
        self._check_image(p.get("params"))
        with self.store.tx():
            app = {"uuid": self._new_uuid(p, APPS, "application"), "name": p["name"],
                   "owner_uuid": p["owner_uuid"], "params": p.get("params") or {},
                   "metadata": p.get("metadata") or {}, "manifests": p.get("manifests") or {}}
            if p.get("metadata_schema"):
                app["metadata_schema"] = p["metadata_schema"]
            if truthy(p.get("master")):
                app["master"] = True
            self._check_schema(app)
            self.store.put(APPS, app["uuid"], app)
        return self.ser_app(app)

    def update_application(self, req, uuid):
        p = req.params(True)

        def owner(obj):
            if p.get("owner_uuid"):
                obj["owner_uuid"] = p["owner_uuid"]
        return self.ser_app(self._update(APPS, "application", uuid, p,
                                         FIELDS + ("metadata_schema",), owner))

    def delete_application(self, req, uuid):
        return self._delete(APPS, "application", uuid)

    # ---- services -------------------------------------------------------------------------
    def list_services(self, req):
        q = req.params(True)
        filters = {k: q[k] for k in ("name", "application_uuid") if q.get(k)}
        if q.get("type"):
            filters["type"] = q["type"]
        elif req.api_version < 2:
            filters["type"] = "vm"
        out = [s for s in self.store.list(SVCS)
               if all(s.get(k, "vm" if k == "type" else None) == v for k, v in filters.items())]
        return [self.ser_svc(s) for s in out]

    def get_service(self, req, uuid):
        return self.ser_svc(self.get_svc(uuid))

    def create_service(self, req):
        p = req.params(True)
        self._require(p, ("name", "application_uuid"))
        self._check_objects(p, FIELDS)
        stype = p.get("type") or "vm"
        if stype not in ("vm", "agent"):
            raise errors.invalid_argument(f"service type is invalid: {stype}")
        self._check_manifests(p.get("manifests"))
        self._check_image(p.get("params"))
        with self.store.tx():
            self.get_app(p["application_uuid"])
            svc = {"uuid": self._new_uuid(p, SVCS, "service"), "name": p["name"],
                   "application_uuid": p["application_uuid"], "params": p.get("params") or {},
                   "metadata": p.get("metadata") or {}, "manifests": p.get("manifests") or {},
                   "type": stype}
            if truthy(p.get("master")):
                svc["master"] = True
            self.store.put(SVCS, svc["uuid"], svc)
        return self.ser_svc(svc)

    def update_service(self, req, uuid):
        return self.ser_svc(self._update(SVCS, "service", uuid, req.params(True), FIELDS))

    def delete_service(self, req, uuid):
        return self._delete(SVCS, "service", uuid)

    # ---- instances ---------------------------------------------------------------------
    def list_instances(self, req):
        q = req.params(True)
        filters = {}
        if q.get("service_uuid"):
            filters["service_uuid"] = q["service_uuid"]
        elif q.get("type"):
            filters["type"] = q["type"]
        elif req.api_version < 2:
            filters["type"] = "vm"
        out = [i for i in self.store.list(INSTS)
               if all(i.get(k, "vm" if k == "type" else None) == v for k, v in filters.items())]
        return [self.ser_inst(i) for i in out]

    def get_instance(self, req, uuid):
        return self.ser_inst(self.get_inst(uuid))

    def get_instance_payload(self, req, uuid):
        inst = self.get_inst(uuid)
        app, svc, _ = self.parents(inst)
        return self.zone_params(app, svc, inst)

    def update_instance(self, req, uuid):
        return self.ser_inst(self._update(INSTS, "instance", uuid, req.params(True), FIELDS))

    def _lab_defaults(self, app, svc, inst):
        """Lab convenience for manta instances: sdc-manta's deployer always sends
        params.alias and params.tags.manta_role; fill them in when a client did not."""
        if app.get("name") != "manta":
            return
        params = inst["params"]
        merged = self.assemble(app, svc, inst)
        if not isinstance(params.get("tags"), dict):
            params["tags"] = dict(merged["params"].get("tags") or {})
        params["tags"].setdefault("manta_role", svc["name"])
        if "alias" not in merged["params"]:
            # sdc-manta: <short>.<svc>.<region>.<dns_domain>-<uuid8> for sharded
            # services, <svc>.<region>.<dns_domain>-<uuid8> otherwise (DOMAIN_NAME
            # is <region>.<dns_domain>).
            md = merged["metadata"]
            domain = md.get("DOMAIN_NAME") or self.cfg.domain
            short = md.get("SHARD")
            sn = md.get("SERVICE_NAME")
            if (short in (None, "")) and isinstance(sn, str) and ".moray." in sn:
                short = sn.split(".")[0]
            prefix = f"{short}." if svc["name"] in SHARDED and short not in (None, "") else ""
            params["alias"] = f"{prefix}{svc['name']}.{domain}-{inst['uuid'][:8]}"

    def create_instance(self, req):
        p = req.params(True)
        self._require(p, ("service_uuid",))
        self._check_objects(p, FIELDS)
        do_async = truthy(p.get("async", False))
        exists = truthy(p.get("exists", False))
        if exists and not p.get("uuid"):
            raise errors.missing_parameter("missing required keys: uuid")
        vmapi = self.app.vmapi
        job = None
        with self.store.tx():
            svc = self.get_svc(p["service_uuid"])
            app = self.get_app(svc["application_uuid"])
            self._check_manifests(p.get("manifests"))
            self._check_image(p.get("params"))
            inst = {"uuid": self._new_uuid(p, INSTS, "instance"), "service_uuid": svc["uuid"],
                    "params": dict(p.get("params") or {}), "metadata": dict(p.get("metadata") or {}),
                    "manifests": dict(p.get("manifests") or {}), "type": svc.get("type", "vm")}
            if truthy(p.get("master")):
                inst["master"] = True
            if exists:
                vm = vmapi.get_vm(inst["uuid"])
                if vm is None or vm.get("state") == "destroyed":
                    raise errors.invalid_argument(
                        f"cannot adopt instance {inst['uuid']}: VMAPI has no such VM")
                self.store.put(INSTS, inst["uuid"], inst)
                return self.ser_inst(inst)
            if inst["type"] == "agent" or self.mode() == "proto":
                self.store.put(INSTS, inst["uuid"], inst)
                return self.ser_inst(inst)
            self._lab_defaults(app, svc, inst)
            merged = self.assemble(app, svc, inst)
            probs = provision.check(self.cfg, svc["name"], merged["metadata"])
            if probs:
                raise errors.missing_parameter(probs[0])
            vm, job = vmapi.create_vm(self.zone_params(app, svc, inst))
            self.store.put(INSTS, inst["uuid"], inst)
        vmapi.jobs.submit(job)
        if do_async:
            return self.ser_inst(inst, job_uuid=job["uuid"])
        done = vmapi.jobs.wait(job["uuid"], 3600)
        if done is None or done["execution"] != "succeeded":
            msg = job_error(done) if done else f"job {job['uuid']} vanished"
            with self.store.tx():
                self.store.delete(INSTS, inst["uuid"])
            raise errors.provision_failed(msg)
        return self.ser_inst(inst)

    def upgrade_instance(self, req, uuid):
        p = req.params(True)
        if not p.get("image_uuid"):
            raise errors.missing_parameter("missing image_uuid")
        inst = self.get_inst(uuid)
        if inst.get("type") == "agent" or self.mode() == "proto":
            return self.ser_inst(inst)
        vmapi = self.app.vmapi
        with self.store.tx():
            vm = vmapi.lookup(uuid)
            job = vmapi.start_action(vm, "reprovision", {"image_uuid": p["image_uuid"]})
        vmapi.jobs.submit(job)
        done = vmapi.jobs.wait(job["uuid"], 3600)
        if done is None or done["execution"] != "succeeded":
            raise errors.reprovision_failed(job_error(done) if done else "reprovision job vanished")
        return self.ser_inst(inst)

    def delete_instance(self, req, uuid):
        inst = self.get_inst(uuid)
        vmapi = self.app.vmapi
        if inst.get("type", "vm") == "vm" and self.mode() == "full":
            job = None
            with self.store.tx():
                vm = vmapi.get_vm(uuid)
                if vm is not None and vm.get("state") != "destroyed":
                    job = vmapi.delete_vm(vm)
            if job is not None:
                vmapi.jobs.submit(job)
                done = vmapi.jobs.wait(job["uuid"], 600)
                if done is None or done["execution"] != "succeeded":
                    last = (done or {}).get("chain_results") or [{}]
                    err = last[-1].get("error")
                    if not (isinstance(err, dict) and err.get("name") == "ResourceNotFoundError"):
                        raise errors.destroy_failed(f"failed to delete VM {uuid}: "
                                                    + (job_error(done) if done else "job vanished"))
        with self.store.tx():
            self.store.delete(INSTS, uuid)
        return Response(204)

    # ---- manifests -------------------------------------------------------------------------
    def list_manifests(self, req):
        return self.store.list(MANIFESTS)

    def get_manifest(self, req, uuid):
        return self.get_mfest(uuid)

    def create_manifest(self, req):
        p = req.params(True)
        self._require(p, ("name", "path", "template"))
        version = p.get("version") or "1.0.0"
        if not isinstance(version, str) or not SEMVER_RE.match(version):
            raise errors.invalid_argument("invalid version")
        for k in ("name", "path"):
            if not isinstance(p[k], str):
                raise errors.invalid_argument(f"{k} must be a string")
        if not isinstance(p["template"], (str, dict)):
            raise errors.invalid_argument("template must be a string or an object")
        with self.store.tx():
            m = {"uuid": self._new_uuid(p, MANIFESTS, "manifest"), "name": p["name"],
                 "path": p["path"], "template": p["template"]}
            if p.get("post_cmd") is not None:
                m["post_cmd"] = p["post_cmd"]
            m["version"] = version
            if truthy(p.get("master")):
                m["master"] = True
            self.store.put(MANIFESTS, m["uuid"], m)
        return m

    def delete_manifest(self, req, uuid):
        return self._delete(MANIFESTS, "manifest", uuid)

    # ---- configs -------------------------------------------------------------------------
    def get_config(self, req, uuid):
        inst = self.get_inst(uuid)
        cfg = self.config(inst)
        etag = config_etag(cfg)
        inm = req.headers.get("If-None-Match")
        if inm:
            tags = [re.sub(r'^"(\w*)"$', r"\1", t.strip().removeprefix("W/"))
                    for t in inm.split(",")]
            if "*" in tags or etag in tags:
                return Response(304, None, {"Etag": etag})
        return Response(200, cfg, {"Etag": etag})
