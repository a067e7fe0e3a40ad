"""The lab VMAPI: VM objects, actions that run as workflow jobs, and jobs.

Endpoints and semantics: reference/triton_apis.md §3. Query string and JSON
body are merged with the body winning (VMAPI parses the body first). Every
action answers 202 ``{vm_uuid, job_uuid}`` and runs as a job that moves
queued → running → succeeded|failed; the job is what touches the lab's zones
(provision.py). Jobs of one VM run one at a time, in order.
"""
import collections
import datetime as dt
import hashlib
import json
import os
import re
import threading
import time
import traceback
import uuid as uuidlib

from . import errors, provision
from .server import Response, Service, log

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ALIAS_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
VERSION = "9.15.0"
VMS, JOBS = "vmapi_vms", "vmapi_jobs"
NIL_UUID = "00000000-0000-0000-0000-000000000000"
BRANDS = ("joyent-minimal", "joyent", "lx", "kvm", "bhyve")
REPROVISION_BRANDS = ("joyent", "joyent-minimal", "lx")
ACTIONS = ("start", "stop", "kill", "reboot", "update", "reprovision", "add_nics", "update_nics",
           "remove_nics", "create_snapshot", "rollback_snapshot", "delete_snapshot",
           "create_disk", "resize_disk", "delete_disk", "migrate")
LAB_ACTIONS = ("start", "stop", "kill", "reboot", "update", "reprovision")
STATES = ("running", "stopped", "active", "destroyed", "failed", "provisioning", "incomplete",
          "unknown")
MDATA_KINDS = ("tags", "customer_metadata", "internal_metadata")
NUMBER_FIELDS = ("ram", "max_physical_memory", "max_swap", "max_lwps", "max_locked_memory",
                 "quota", "cpu_cap", "cpu_shares", "zfs_io_priority", "tmpfs", "zlog_max_size")
BOOL_FIELDS = ("autoboot", "firewall_enabled", "indestructible_zoneroot",
               "indestructible_delegated", "maintain_resolvers", "do_not_inventory")
STRING_FIELDS = ("limit_priv", "fs_allowed", "package_name", "package_version",
                 "zfs_data_compression")
LIST_PARAMS = {"uuid", "uuids", "owner_uuid", "server_uuid", "image_uuid", "billing_id", "brand",
               "alias", "state", "ram", "docker", "create_timestamp", "package_name",
               "package_version", "fields", "limit", "offset", "marker", "sort", "predicate",
               "query"}
FINISHED = ("succeeded", "failed", "canceled")
JOB_DELAY = float(os.environ.get("MANTA_LAB_JOB_DELAY", "0.2"))


def now_iso():
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def lab_networks(cfg):
    """The lab's networks (no NAPI): name -> uuid."""
    return {n: str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"{n}.network.{cfg.domain}"))
            for n in ("admin", "manta", "external")}


class JobFailed(Exception):
    def __init__(self, message, name="Error"):
        super().__init__(message)
        self.name = name


def verr(field, code="Invalid", message=None):
    return errors.field_error(field, code, message)


def _bool_param(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    return None


def _number(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str) and re.match(r"^\d+(\.\d+)?$", v):
        return float(v) if "." in v else int(v)
    return None


def validate_metadata(field, obj):
    """VMAPI: metadata maps hold only strings, numbers and booleans."""
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except ValueError:
            return None, [verr(field, "Invalid", "Malformed JSON")]
    if not isinstance(obj, dict):
        return None, [verr(field, "Invalid", "Invalid data type")]
    bad = [k for k, v in obj.items() if not isinstance(v, (str, int, float, bool)) or v is None]
    if bad:
        return None, [verr(f"{field}.{bad[0]}", "Invalid",
                           "Invalid metadata value: must be a string, number or boolean")]
    return obj, []


class Jobs:
    """Workflow jobs: persisted, run per VM in order, in background threads."""

    def __init__(self, vmapi):
        self.vmapi = vmapi
        self.store = vmapi.store
        self.cond = threading.Condition()
        self.queues = collections.defaultdict(collections.deque)
        self.busy = set()
        self.stopping = False

    def new(self, vm_uuid, task, params, name=None):
        """A queued job record (the caller saves it inside its transaction)."""
        juuid = str(uuidlib.uuid4())
        return {
            "uuid": juuid,
            "name": name or f"{task}-{vm_uuid}",
            "execution": "queued",
            "params": {**params, "vm_uuid": vm_uuid, "task": task},
            "exec_after": now_iso(),
            "created_at": now_iso(),
            "timeout": 3600 if task in ("provision", "reprovision", "destroy") else 180,
            "chain_results": [],
            "onerror_results": [],
            "vm_uuid": vm_uuid,
            "task": task,
        }

    def submit(self, job):
        vm = job["params"]["vm_uuid"]
        with self.cond:
            if self.stopping:
                return
            self.queues[vm].append(job["uuid"])
            if vm not in self.busy:
                self.busy.add(vm)
                threading.Thread(target=self._worker, args=(vm,), daemon=True,
                                 name=f"jobs-{vm[:8]}").start()

    def _worker(self, vm):
        while True:
            with self.cond:
                if not self.queues[vm] or self.stopping:
                    self.busy.discard(vm)
                    self.queues.pop(vm, None)
                    return
                juuid = self.queues[vm].popleft()
            time.sleep(JOB_DELAY)  # a job is visibly queued first, as in wfapi
            self._run(juuid)

    def _set(self, job, **fields):
        job.update(fields)
        self.store.put(JOBS, job["uuid"], job)
        with self.cond:
            self.cond.notify_all()

    def _run(self, juuid):
        job = self.store.get(JOBS, juuid)
        if job is None or job["execution"] != "queued":
            return
        self._set(job, execution="running", started=now_iso())
        t0 = time.monotonic()
        step = {"name": f"lab.{job['params']['task']}", "started_at": now_iso()}
        try:
            result = self.vmapi.execute(job)
            step.update(result=result or "OK", error="", finished_at=now_iso())
            job["chain_results"].append(step)
            self._set(job, execution="succeeded", elapsed=round(time.monotonic() - t0, 3))
        except Exception as exc:  # the job fails; the error is in chain_results
            name = exc.name if isinstance(exc, JobFailed) else type(exc).__name__
            if not isinstance(exc, JobFailed):
                log(f"vmapi: job {juuid} ({job['name']}): "
                    + "".join(traceback.format_exception(exc)))
            step.update(result="", error={"name": name, "message": str(exc)},
                        finished_at=now_iso())
            job["chain_results"].append(step)
            try:
                self.vmapi.on_job_failed(job, exc)
            except Exception as exc2:  # keep the original error
                log(f"vmapi: job {juuid}: on failure: {exc2}")
            self._set(job, execution="failed", elapsed=round(time.monotonic() - t0, 3))
        # reported finished first; then status.json follows the zones (in the background)
        hook = getattr(self.vmapi, "zones_changed", None)
        if hook is not None:
            hook(job)

    def wait(self, juuid, timeout=3600):
        deadline = time.monotonic() + timeout
        while True:
            job = self.store.get(JOBS, juuid)  # never read the store holding cond
            if job is None or job["execution"] in FINISHED:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                return job
            with self.cond:
                self.cond.wait(min(left, 0.5))

    def recover(self):
        """At start: re-queue queued jobs; running ones were cut short by a stop."""
        for job in self.store.list(JOBS):
            if job["execution"] == "queued":
                self.submit(job)
            elif job["execution"] == "running":
                job["chain_results"].append({
                    "name": f"lab.{job['params']['task']}", "result": "",
                    "error": {"name": "JobInterrupted",
                              "message": "the lab VMAPI was stopped while this job ran"},
                    "started_at": job.get("started", job["created_at"]), "finished_at": now_iso()})
                with self.store.tx():
                    self.vmapi.on_job_failed(job, JobFailed("interrupted", "JobInterrupted"))
                    self._set(job, execution="failed")

    def shutdown(self):
        with self.cond:
            self.stopping = True
            self.cond.notify_all()


class Vmapi:
    def __init__(self, app):
        self.app = app
        self.cfg = app.cfg
        self.store = app.store
        self.networks = lab_networks(self.cfg)
        self.jobs = Jobs(self)
        self.vm_locks = collections.defaultdict(threading.Lock)
        self.status_file = provision.StatusRefresher(self.cfg, log=log)
        s = self.service = Service("vmapi", f"vmapi/{VERSION}")
        s.add("GET", "/ping", self.ping)
        s.add("GET", "/vms", self.list_vms)
        s.add("POST", "/vms", self.http_create_vm)
        s.add("GET", "/vms/:uuid", self.http_get_vm)
        s.add("POST", "/vms/:uuid", self.http_action)
        s.add("PUT", "/vms/:uuid", self.http_put_vm)
        s.add("DELETE", "/vms/:uuid", self.http_delete_vm)
        s.add("GET", "/vms/:uuid/jobs", self.list_vm_jobs)
        for kind in MDATA_KINDS:
            s.add("GET", f"/vms/:uuid/{kind}", self._mdata(kind, "list"))
            s.add("POST", f"/vms/:uuid/{kind}", self._mdata(kind, "add"))
            s.add("PUT", f"/vms/:uuid/{kind}", self._mdata(kind, "set"))
            s.add("DELETE", f"/vms/:uuid/{kind}", self._mdata(kind, "delete_all"))
            s.add("GET", f"/vms/:uuid/{kind}/:key", self._mdata(kind, "get"))
            s.add("DELETE", f"/vms/:uuid/{kind}/:key", self._mdata(kind, "delete"))
        s.add("GET", "/jobs", self.list_jobs)
        s.add("GET", "/jobs/:uuid", self.get_job)
        s.add("GET", "/jobs/:uuid/wait", self.wait_job)

    # ---- in-process API (SAPI uses these) -----------------------------------------
    def get_vm(self, uuid):
        return self.store.get(VMS, uuid)

    def lookup(self, uuid, owner_uuid=None):
        vm = self.store.get(VMS, uuid)
        if vm is None or (owner_uuid and vm.get("owner_uuid") != owner_uuid):
            raise errors.not_found("VM not found")
        return vm

    def wfapi_headers(self):
        return {"workflow-api": self.cfg.url("vmapi")}

    def accepted(self, vm_uuid, job_uuid):
        return Response(202, {"vm_uuid": vm_uuid, "job_uuid": job_uuid}, self.wfapi_headers())

    def alias_taken(self, owner_uuid, alias):
        return any(v.get("alias") == alias and v.get("owner_uuid") == owner_uuid
                   and v.get("state") not in ("destroyed", "failed")
                   for v in self.store.list(VMS))

    def resolve_networks(self, networks):
        """CreateVm networks -> nics (no NAPI: the lab's own networks)."""
        if isinstance(networks, str):
            networks = [n for n in networks.split(",") if n]
        if not isinstance(networks, list) or not networks:
            return None, [verr("networks", "Invalid", "Invalid networks array")]
        by_uuid = {u: n for n, u in self.networks.items()}
        nics = []
        for i, net in enumerate(networks):
            if isinstance(net, str):
                net = {"uuid": net} if UUID_RE.match(net) else {"name": net}
            if not isinstance(net, dict):
                return None, [verr("networks", "Invalid", "Invalid networks array")]
            name = net.get("name")
            nuuid = net.get("uuid") or net.get("ipv4_uuid")
            if name is None and nuuid is not None:
                name = by_uuid.get(nuuid)
            if name not in self.networks:
                ident = nuuid or net.get("name")
                return None, [verr("networks", "Invalid",
                                   f"network {ident!r} does not exist; the lab has "
                                   + ", ".join(f"{n} ({u})" for n, u in self.networks.items()))]
            nics.append(name)
        return nics, []

    def make_nics(self, vm_uuid, names):
        out = []
        for i, name in enumerate(names):
            h = hashlib.sha1(f"{vm_uuid}/{i}".encode()).hexdigest()
            out.append({"interface": f"net{i}",
                        "mac": "90:b8:d0:" + ":".join(h[j:j + 2] for j in (0, 2, 4)),
                        "ip": "127.0.0.1", "netmask": "255.0.0.0", "gateway": "127.0.0.1",
                        "nic_tag": name, "vlan_id": 0, "primary": i == 0,
                        "network_uuid": self.networks[name]})
        return out

    def validate_create(self, params):
        """CreateVm validation (validateCreateVmParams); returns (params, nics)."""
        p = dict(params)
        errs = []
        for f in ("uuid", "owner_uuid", "server_uuid", "image_uuid", "billing_id"):
            if p.get(f) not in (None, "") and not (isinstance(p[f], str) and UUID_RE.match(p[f])):
                errs.append(verr(f, "Invalid", "Invalid UUID"))
        if not p.get("owner_uuid"):
            errs.append(verr("owner_uuid", "MissingParameter", "Is required"))
        if not p.get("brand"):
            errs.append(verr("brand", "MissingParameter", "Is required"))
        elif p["brand"] not in BRANDS:
            errs.append(verr("brand", "Invalid", "Must be one of: " + ", ".join(BRANDS)))
        if not p.get("image_uuid"):
            errs.append(verr("image_uuid", "MissingParameter", "Is required"))
        if p.get("ram") is None and p.get("max_physical_memory") is None and not p.get("billing_id"):
            errs.append(verr("ram", "MissingParameter", "Is required"))
        for f in NUMBER_FIELDS:
            if p.get(f) is not None:
                n = _number(p[f])
                if n is None or n < 0:
                    errs.append(verr(f, "Invalid", "Not a valid number"))
                else:
                    p[f] = n
        for f in BOOL_FIELDS + ("delegate_dataset",):
            if f in p:
                b = _bool_param(p[f])
                if b is None:
                    errs.append(verr(f, "Invalid", "Not a valid boolean"))
                else:
                    p[f] = b
        nics = []
        if p.get("networks") is None:
            errs.append(verr("networks", "MissingParameter", "Is required"))
        else:
            nics, nerrs = self.resolve_networks(p["networks"])
            errs += nerrs
        for kind in MDATA_KINDS:
            if kind in p:
                val, merrs = validate_metadata(kind, p[kind])
                errs += merrs
                if val is not None:
                    p[kind] = val
        if p.get("alias") is not None:
            a = p["alias"]
            if not isinstance(a, str) or not ALIAS_RE.match(a) or len(a) > 189:
                errs.append(verr("alias", "Invalid",
                                 f"String does not match regexp: {ALIAS_RE.pattern}"))
            elif self.alias_taken(p.get("owner_uuid"), a):
                errs.append(verr("alias", "Duplicate", "Already exists for this owner_uuid"))
        if p.get("uuid") and UUID_RE.match(str(p["uuid"])) and self.store.get(VMS, p["uuid"]):
            errs.append(verr("uuid", "Duplicate", "Already exists"))
        if p.get("server_uuid") and UUID_RE.match(str(p["server_uuid"])) \
                and self.cfg.server(p["server_uuid"]) is None:
            errs.append(verr("server_uuid", "Invalid",
                             f"Server {p['server_uuid']} not found; the lab's servers are "
                             + ", ".join(f"{s['uuid']} ({s['hostname']})" for s in self.cfg.servers)))
        if p.get("image_uuid") and UUID_RE.match(str(p["image_uuid"])):
            img = self.app.imgapi.get(p["image_uuid"])
            if img is None:
                errs.append(verr("image_uuid", "Invalid", f"image {p['image_uuid']} not found"))
            elif img["state"] != "active" or img.get("disabled"):
                errs.append(verr("image_uuid", "Invalid", "Image must be active and not disabled"))
        if errs:
            raise errors.vmapi_validation("Invalid VM parameters", errs)
        return p, nics

    def pick_server(self):
        """No server_uuid given: the lab's DAPI picks the least loaded server."""
        load = collections.Counter(v.get("server_uuid") for v in self.store.list(VMS)
                                   if v.get("state") not in ("destroyed", "failed"))
        return min(self.cfg.servers, key=lambda s: load[s["uuid"]])["uuid"]

    def new_vm(self, p, nics, state="provisioning"):
        now = now_iso()
        vm_uuid = p.get("uuid") or str(uuidlib.uuid4())
        ram = int(p.get("ram") or p.get("max_physical_memory") or 1024)
        vm = {
            "uuid": vm_uuid,
            "alias": p.get("alias"),
            "autoboot": p.get("autoboot", True),
            "billing_id": p.get("billing_id") or NIL_UUID,
            "brand": p.get("brand", "joyent-minimal"),
            "cpu_cap": p.get("cpu_cap"),
            "cpu_shares": p.get("cpu_shares") or max(1, ram // 128),
            "create_timestamp": now,
            "customer_metadata": p.get("customer_metadata") or {},
            "datasets": [],
            "delegate_dataset": bool(p.get("delegate_dataset", False)),
            "destroyed": None,
            "firewall_enabled": bool(p.get("firewall_enabled", False)),
            "image_uuid": p.get("image_uuid"),
            "indestructible_delegated": False,
            "indestructible_zoneroot": False,
            "internal_metadata": p.get("internal_metadata") or {},
            "last_modified": now,
            "limit_priv": p.get("limit_priv", "default"),
            "max_locked_memory": ram,
            "max_lwps": int(p.get("max_lwps") or 4000),
            "max_physical_memory": int(p.get("max_physical_memory") or ram),
            "max_swap": int(p.get("max_swap") or max(ram * 2, 256)),
            "nics": self.make_nics(vm_uuid, nics),
            "owner_uuid": p.get("owner_uuid"),
            "platform_buildstamp": "lab",
            "quota": p.get("quota") if p.get("quota") is not None else 10,
            "ram": ram,
            "resolvers": p.get("resolvers") or [],
            "server_uuid": p.get("server_uuid") or self.pick_server(),
            "snapshots": [],
            "state": state,
            "tags": p.get("tags") or {},
            "zfs_io_priority": p.get("zfs_io_priority") or 100,
            "zone_state": "running" if state == "running" else "installed",
            "zonepath": f"/zones/{vm_uuid}",
            "zpool": "zones",
        }
        if p.get("delegate_dataset"):
            vm["datasets"] = [f"zones/{vm_uuid}/data"]
        return vm

    def create_vm(self, params):
        """CreateVm: validate, store the VM (provisioning) and queue its job.

        Must be called inside a store transaction; returns (vm, job) and the
        caller submits the job once the transaction is committed.
        """
        p, nics = self.validate_create(params)
        vm = self.new_vm(p, nics)
        job = self.jobs.new(vm["uuid"], "provision",
                            {"owner_uuid": vm["owner_uuid"], "server_uuid": vm["server_uuid"],
                             "image_uuid": vm["image_uuid"], "alias": vm["alias"]},
                            name=f"provision-{vm['uuid']}")
        self.store.put(VMS, vm["uuid"], vm)
        self.store.put(JOBS, job["uuid"], job)
        return vm, job

    def start_action(self, vm, action, params):
        """Validate an action on a VM and queue its job (inside a transaction)."""
        if vm.get("state") == "provisioning":
            raise errors.unallocated_vm()
        jp = {"owner_uuid": vm.get("owner_uuid"), "server_uuid": vm.get("server_uuid")}
        if action in ("start", "stop", "reboot", "kill"):
            idem = _bool_param(params.get("idempotent", False))
            if idem is None:
                raise errors.vmapi_validation("Invalid Parameters", [verr("idempotent")])
            jp["idempotent"] = idem
        elif action == "update":
            jp.update(self.validate_update(vm, params))
        elif action == "reprovision":
            img = params.get("image_uuid")
            if not img:
                raise errors.vmapi_validation("Invalid Parameters",
                                              [verr("image_uuid", "MissingParameter", "Is required")])
            if vm.get("brand") not in REPROVISION_BRANDS:
                raise errors.brand_not_supported(
                    f"reprovision is not supported for brand {vm.get('brand')}")
            image = self.app.imgapi.get(img) if UUID_RE.match(str(img)) else None
            if image is None or image["state"] != "active":
                raise errors.vmapi_validation(
                    "Invalid Parameters",
                    [verr("image_uuid", "Invalid",
                          f"image {img} not found" if image is None else
                          "Image must be active and not disabled")])
            jp["image_uuid"] = img
        elif action == "destroy":
            pass
        job = self.jobs.new(vm["uuid"], action, jp)
        self.store.put(JOBS, job["uuid"], job)
        return job

    def validate_update(self, vm, body):
        """validateUpdateVmParams: only mutable fields; metadata maps replace whole."""
        out, errs = {}, []
        if "alias" in body:
            a = body["alias"]
            if not isinstance(a, str) or not ALIAS_RE.match(a) or len(a) > 189:
                errs.append(verr("alias", "Invalid",
                                 f"String does not match regexp: {ALIAS_RE.pattern}"))
            elif self.alias_taken(vm.get("owner_uuid"), a):
                errs.append(verr("alias", "Duplicate", "Already exists for this owner_uuid"))
            else:
                out["alias"] = a
        for f in NUMBER_FIELDS:
            if f in body:
                n = _number(body[f])
                if n is None or n < 0:
                    errs.append(verr(f, "Invalid", "Not a valid number"))
                else:
                    out[f] = n
        for f in BOOL_FIELDS:
            if f in body:
                b = _bool_param(body[f])
                if b is None:
                    errs.append(verr(f, "Invalid", "Not a valid boolean"))
                else:
                    out[f] = b
        for f in STRING_FIELDS:
            if f in body:
                if isinstance(body[f], str):
                    out[f] = body[f]
                else:
                    errs.append(verr(f, "Invalid", "Not a valid string"))
        if "resolvers" in body:
            if isinstance(body["resolvers"], list):
                out["resolvers"] = body["resolvers"]
            else:
                errs.append(verr("resolvers", "Invalid", "Not an array"))
        for f in ("billing_id", "new_owner_uuid"):
            if f in body:
                if isinstance(body[f], str) and UUID_RE.match(body[f]):
                    out[f] = body[f]
                else:
                    errs.append(verr(f, "Invalid", "Invalid UUID"))
        for kind in MDATA_KINDS:
            if kind in body:
                val, merrs = validate_metadata(kind, body[kind])
                errs += merrs
                if val is not None:
                    out[kind] = val
        if errs:
            raise errors.vmapi_validation("Invalid VM update parameters", errs)
        if not out:
            raise errors.vmapi_validation("No VM parameters provided", [])
        return {"update": out}

    # ---- job execution (called from a job thread) ------------------------------------
    ZONE_TASKS = ("provision", "reprovision", "destroy", "update", "start", "stop", "reboot", "kill")

    def zones_changed(self, job):
        """After a job that may have created, changed or destroyed a zone: status.json is rewritten."""
        if (job.get("params") or {}).get("task") in self.ZONE_TASKS:
            self.status_file.kick()

    def kind_and_metadata(self, vm):
        """The zone kind (SAPI service name) and its config-agent metadata."""
        sapi = self.app.sapi
        inst = sapi.store.get("sapi_instances", vm["uuid"])
        if inst is not None:
            try:
                objs = sapi.parents(inst)
                merged = sapi.assemble(*objs)
                md = dict(merged["metadata"])
                md["SERVER_UUID"] = vm.get("server_uuid")
                md["ZONE_UUID"] = vm["uuid"]
                md["INSTANCE_UUID"] = vm["uuid"]
                md.pop("user-script", None)
                return objs[1]["name"], md
            except errors.ApiError:
                pass
        return (vm.get("tags") or {}).get("manta_role"), dict(vm.get("customer_metadata") or {})

    def _update_vm(self, uuid, **fields):
        with self.store.tx():
            vm = self.store.get(VMS, uuid)
            if vm is None:
                return None
            vm.update(fields)
            vm["last_modified"] = now_iso()
            self.store.put(VMS, uuid, vm)
            return vm

    def execute(self, job):
        p = job["params"]
        task, uuid = p["task"], p["vm_uuid"]
        cfg = self.cfg
        vm = self.store.get(VMS, uuid)
        if vm is None:
            raise JobFailed(f"VM {uuid} not found", "ResourceNotFoundError")
        if task == "provision":
            kind, md = self.kind_and_metadata(vm)
            zone = provision.provision(cfg, kind, uuid, vm["server_uuid"], md)
            fields = {"state": "running", "zone_state": "running"}
            if zone is not None:
                zone = provision.set_alias(cfg, uuid, vm.get("alias")) or zone
                if not vm.get("alias"):
                    fields["alias"] = zone.get("alias")
                sid = zone.get("storage_id") or (zone.get("metadata") or {}).get("MANTA_STORAGE_ID")
                if kind == "storage" and sid:
                    fields["tags"] = {**(vm.get("tags") or {}), "manta_storage_id": sid}
                    self.app.sapi.fill_metadata(uuid, {"MANTA_STORAGE_ID": sid})
            self._update_vm(uuid, **fields)
            return f"provisioned {kind or 'vm'} zone" + (f" {zone['alias']}" if zone else
                                                          " (recorded only: no lab zone kind)")
        if task in ("start", "stop", "reboot", "kill"):
            need = "stopped" if task == "start" else "running"
            if vm["state"] != need:
                if p.get("idempotent"):
                    return f"VM already {vm['state']}: nothing to do"
                raise JobFailed(f"Cannot {task} a VM from a '{vm['state']}' state")
            if task in ("stop", "kill", "reboot"):
                provision.stop(cfg, uuid)
            if task in ("start", "reboot"):
                provision.start(cfg, uuid)
            st = "stopped" if task in ("stop", "kill") else "running"
            self._update_vm(uuid, state=st, zone_state="installed" if st == "stopped" else st)
            return f"VM {st}"
        if task == "update":
            ch = dict(p["update"])
            if "new_owner_uuid" in ch:
                ch["owner_uuid"] = ch.pop("new_owner_uuid")
            for kind in MDATA_KINDS:
                if f"set_{kind}" in ch or f"remove_{kind}" in ch:
                    cur = dict(vm.get(kind) or {})
                    cur.update(ch.pop(f"set_{kind}", {}))
                    for k in ch.pop(f"remove_{kind}", []):
                        cur.pop(k, None)
                    ch[kind] = cur
            if "ram" in ch:
                ch.setdefault("max_physical_memory", ch["ram"])
            self._update_vm(uuid, **ch)
            if ch.get("alias"):
                provision.set_alias(cfg, uuid, ch["alias"])
            return "VM updated: " + ", ".join(sorted(ch))
        if task == "reprovision":
            if vm["state"] in ("destroyed", "failed"):
                raise JobFailed(f"Cannot reprovision a VM from a '{vm['state']}' state")
            kind, md = self.kind_and_metadata(vm)
            self._update_vm(uuid, state="provisioning")
            provision.reprovision(cfg, kind, uuid, vm["server_uuid"], md)
            provision.set_alias(cfg, uuid, vm.get("alias"))
            self._update_vm(uuid, state="running", zone_state="running",
                            image_uuid=p["image_uuid"])
            return f"reprovisioned onto image {p['image_uuid']}"
        if task == "destroy":
            if vm["state"] == "destroyed":
                return "VM already destroyed"
            kind, _ = self.kind_and_metadata(vm)
            provision.destroy(cfg, kind, uuid)
            self._update_vm(uuid, state="destroyed", zone_state="destroyed", destroyed=now_iso())
            return "VM destroyed"
        raise JobFailed(f"unknown task {task!r}")

    def on_job_failed(self, job, exc):
        p = job["params"]
        if p["task"] == "provision":
            self._update_vm(p["vm_uuid"], state="failed", zone_state="failed")
        elif p["task"] == "reprovision":
            vm = self.store.get(VMS, p["vm_uuid"])
            if vm and vm["state"] == "provisioning":
                self._update_vm(p["vm_uuid"], state="failed")

    # ---- endpoints -------------------------------------------------------------------
    def ping(self, req):
        return {"pingErrors": {}, "status": "OK", "healthy": True,
                "services": {"wfapi": "online", "moray": "online"}, "initialization": {}}

    def _params(self, req):
        return req.params(query_wins=False)

    @staticmethod
    def _pick_fields(vm, fields):
        if not fields or fields == "*":
            return vm
        want = [f for f in fields.split(",") if f]
        return {k: vm[k] for k in want if k in vm}

    def http_get_vm(self, req, uuid):
        p = self._params(req)
        vm = self.lookup(uuid, p.get("owner_uuid"))
        return self._pick_fields(vm, p.get("fields"))

    def list_vms(self, req):
        p = self._params(req)
        errs = []
        for k in p:
            if k not in LIST_PARAMS and not k.startswith("tag.") and not k.startswith("internal_metadata."):
                errs.append(verr(k, "Invalid", "Unsupported parameter"))
        st = p.get("state")
        if st is not None and st not in STATES:
            errs.append(verr("state", "Invalid", "Must be one of: " + ", ".join(STATES)))
        for f in ("owner_uuid", "server_uuid", "image_uuid", "billing_id", "uuid"):
            if p.get(f) and not UUID_RE.match(str(p[f])):
                errs.append(verr(f, "Invalid", "Invalid UUID"))
        pred = None
        if p.get("predicate"):
            try:
                pred = json.loads(p["predicate"]) if isinstance(p["predicate"], str) else p["predicate"]
                self._pred_check(pred)
            except (ValueError, TypeError) as exc:
                errs.append(verr("predicate", "Invalid", f"Invalid predicate: {exc}"))
        if p.get("query"):
            errs.append(verr("query", "Invalid",
                             "the lab VMAPI does not implement LDAP queries; use predicate"))
        limit = offset = None
        for f in ("limit", "offset"):
            if f in p:
                n = _number(p[f])
                if not isinstance(n, int) or (f == "limit" and not 1 <= n <= 1000):
                    errs.append(verr(f, "Invalid", "Not a valid number"))
                elif f == "limit":
                    limit = n
                else:
                    offset = n
        sort = p.get("sort", "create_timestamp.desc")
        sfield, _, sdir = sort.partition(".")
        if sdir.lower() not in ("", "asc", "desc"):
            errs.append(verr("sort", "Invalid", f"Invalid sort param: {sort}"))
        if errs:
            raise errors.vmapi_validation("Invalid Parameters", errs)
        vms = self.store.list(VMS)
        if st == "active":
            vms = [v for v in vms if v.get("state") not in ("destroyed", "failed")]
        elif st:
            vms = [v for v in vms if v.get("state") == st]
        for f in ("owner_uuid", "server_uuid", "image_uuid", "billing_id", "brand", "alias", "uuid",
                  "package_name", "package_version"):
            if p.get(f) is not None:
                vms = [v for v in vms if str(v.get(f)) == str(p[f])]
        if p.get("ram") is not None:
            vms = [v for v in vms if str(v.get("ram")) == str(p["ram"])]
        if p.get("uuids"):
            want = set(p["uuids"].split(",")) if isinstance(p["uuids"], str) else set(p["uuids"])
            vms = [v for v in vms if v["uuid"] in want]
        for k, val in p.items():
            if k.startswith("tag."):
                vms = [v for v in vms if k[4:] in (v.get("tags") or {})
                       and _js_str(v["tags"][k[4:]]) == str(val)]
            elif k.startswith("internal_metadata."):
                key = k[len("internal_metadata."):]
                vms = [v for v in vms if _js_str((v.get("internal_metadata") or {}).get(key))
                       == str(val)]
        if pred:
            vms = [v for v in vms if self._pred_eval(pred, v)]
        vms.sort(key=lambda v: (str(v.get(sfield) if v.get(sfield) is not None else ""), v["uuid"]),
                 reverse=sdir.lower() != "asc")
        if p.get("marker"):
            # VMAPI markers are JSON objects holding (at least) the uuid of the last
            # VM of the previous page: continue after it in this sort order.
            try:
                mk = json.loads(p["marker"]) if isinstance(p["marker"], str) else p["marker"]
                mu = mk["uuid"]
            except (ValueError, TypeError, KeyError):
                raise errors.vmapi_validation("Invalid Parameters", [verr(
                    "marker", "Invalid", 'Invalid marker: must be JSON like {"uuid": "..."}')]
                ) from None
            ids = [v["uuid"] for v in vms]
            vms = vms[ids.index(mu) + 1:] if mu in ids else vms
        if offset:
            vms = vms[offset:]
        if limit:
            vms = vms[:limit]
        return Response(200, [self._pick_fields(v, p.get("fields")) for v in vms],
                        {"x-joyent-resource-count": str(len(vms))})

    @staticmethod
    def _pred_check(pred):
        if not isinstance(pred, dict) or len(pred) != 1:
            raise ValueError("a predicate is an object with one operator")
        op, arg = next(iter(pred.items()))
        if op in ("and", "or"):
            if not isinstance(arg, list) or not arg:
                raise ValueError(f"{op} takes a non-empty array")
            for a in arg:
                Vmapi._pred_check(a)
        elif op in ("eq", "ne", "lt", "le", "gt", "ge"):
            if not isinstance(arg, list) or len(arg) != 2 or not isinstance(arg[0], str):
                raise ValueError(f"{op} takes [field, value]")
        else:
            raise ValueError(f"unknown operator {op!r}")

    def _pred_eval(self, pred, vm):
        op, arg = next(iter(pred.items()))
        if op == "and":
            return all(self._pred_eval(a, vm) for a in arg)
        if op == "or":
            return any(self._pred_eval(a, vm) for a in arg)
        field, want = arg
        if field.startswith(("tag.", "tags.")):
            have = (vm.get("tags") or {}).get(field.split(".", 1)[1])
        else:
            have = vm.get(field)
        if isinstance(want, list):  # eq with an array: any of
            return any(self._pred_eval({op: [field, w]}, vm) for w in want)
        if op == "eq":
            return have == want or (have is not None and _js_str(have) == _js_str(want))
        if op == "ne":
            return not (have == want or (have is not None and _js_str(have) == _js_str(want)))
        if have is None:
            return False
        try:
            return {"lt": have < want, "le": have <= want,
                    "gt": have > want, "ge": have >= want}[op]
        except TypeError:
            return False

    def http_create_vm(self, req):
        p = self._params(req)
        with self.store.tx():
            vm, job = self.create_vm(p)
        self.jobs.submit(job)
        return self._maybe_sync(p, vm["uuid"], job)

    def _maybe_sync(self, p, vm_uuid, job):
        sync = _bool_param(p.get("sync", False))
        if sync:
            done = self.jobs.wait(job["uuid"])
            if done["execution"] == "failed":
                raise errors.internal(job_error(done))
        return self.accepted(vm_uuid, job["uuid"])

    def http_action(self, req, uuid):
        p = self._params(req)
        action = p.get("action")
        if not action:
            raise errors.vmapi_validation(
                "Invalid Parameters", [verr("action", "MissingParameter", "Is required")])
        if action not in ACTIONS:
            raise errors.vmapi_validation(
                "Invalid Parameters", [verr("action", "Invalid", "Invalid VM update action")])
        if "sync" in p and _bool_param(p["sync"]) is None:
            raise errors.vmapi_validation("Invalid Parameters",
                                          [verr("sync", "Invalid", "Must be true or false")])
        vm = self.lookup(uuid, p.get("owner_uuid"))
        if action not in LAB_ACTIONS:
            raise errors.vmapi_validation(
                "Invalid Parameters",
                [verr("action", "Invalid", f"the lab VMAPI does not implement action {action!r}; "
                                           "it has " + ", ".join(LAB_ACTIONS))])
        body = {k: v for k, v in p.items()
                if k not in ("action", "sync", "owner_uuid", "origin", "creator_uuid", "context")}
        with self.store.tx():
            vm = self.lookup(uuid)
            job = self.start_action(vm, action, body)
        self.jobs.submit(job)
        return self._maybe_sync(p, uuid, job)

    def http_put_vm(self, req, uuid):
        """PutVm: how vm-agent/heartbeater tell VMAPI about a zone (lab: adoption)."""
        body = req.body_object()
        if not UUID_RE.match(uuid):
            raise errors.vmapi_validation("Invalid VM parameters", [verr("uuid", "Invalid", "Invalid UUID")])
        if body.get("uuid", uuid) != uuid:
            raise errors.vmapi_validation("Invalid VM parameters",
                                          [verr("uuid", "Invalid", "must equal the uuid in the path")])
        errs = []
        for f in ("owner_uuid", "server_uuid", "image_uuid"):
            if body.get(f) and not (isinstance(body[f], str) and UUID_RE.match(body[f])):
                errs.append(verr(f, "Invalid", "Invalid UUID"))
        if body.get("state") is not None and body["state"] not in STATES:
            errs.append(verr("state", "Invalid", "Must be one of: " + ", ".join(STATES)))
        for kind in MDATA_KINDS:
            if kind in body:
                val, merrs = validate_metadata(kind, body[kind])
                errs += merrs
        if errs:
            raise errors.vmapi_validation("Invalid VM parameters", errs)
        with self.store.tx():
            old = self.store.get(VMS, uuid)
            if old is None:
                names = body.pop("_networks", None) or ["admin", "manta"]
                base = self.new_vm({**body, "uuid": uuid}, names, state=body.get("state", "running"))
            else:
                base = old
            vm = {**base, **{k: v for k, v in body.items() if not k.startswith("_")}, "uuid": uuid}
            vm["last_modified"] = now_iso()
            self.store.put(VMS, uuid, vm)
        return vm

    def http_delete_vm(self, req, uuid):
        p = self._params(req)
        if "sync" in p and _bool_param(p["sync"]) is None:
            raise errors.vmapi_validation("Invalid Parameters",
                                          [verr("sync", "Invalid", "Must be true or false")])
        with self.store.tx():
            vm = self.lookup(uuid, p.get("owner_uuid"))
            job = self.delete_vm(vm)
        self.jobs.submit(job)
        return self._maybe_sync(p, uuid, job)

    def delete_vm(self, vm):
        """DeleteVm (inside a transaction): queue a destroy job."""
        if not vm.get("server_uuid"):
            raise errors.unallocated_vm("Cannot delete a VM that has no server_uuid")
        job = self.jobs.new(vm["uuid"], "destroy",
                            {"owner_uuid": vm.get("owner_uuid"), "server_uuid": vm["server_uuid"]})
        self.store.put(JOBS, job["uuid"], job)
        return job

    def _mdata(self, kind, op):
        def handler(req, uuid, key=None):
            if op in ("list", "get"):
                vm = self.lookup(uuid)
                m = vm.get(kind) or {}
                if op == "list":
                    return m
                if key not in m:
                    raise errors.not_found(f"{kind} key {key!r} not found")
                return m[key]
            p = self._params(req)
            body = {k: v for k, v in p.items() if k not in ("sync", "owner_uuid", "origin",
                                                            "creator_uuid", "context")}
            with self.store.tx():
                vm = self.lookup(uuid, p.get("owner_uuid"))
                if vm.get("state") == "provisioning":
                    raise errors.unallocated_vm()
                cur = vm.get(kind) or {}
                if op in ("add", "set"):
                    val, errs = validate_metadata(kind, body)
                    if errs:
                        raise errors.vmapi_validation("Invalid Metadata Parameters", errs)
                    upd = {f"set_{kind}": val} if op == "add" else {kind: val}
                elif op == "delete":
                    if key not in cur:
                        raise errors.not_found(f"{kind} key {key!r} not found")
                    upd = {f"remove_{kind}": [key]}
                else:
                    upd = {kind: {}}
                job = self.jobs.new(uuid, "update",
                                    {"owner_uuid": vm.get("owner_uuid"),
                                     "server_uuid": vm.get("server_uuid"), "update": upd})
                self.store.put(JOBS, job["uuid"], job)
            self.jobs.submit(job)
            return self._maybe_sync(p, uuid, job)
        return handler

    def _filter_jobs(self, jobs, p):
        for f in ("execution", "task", "vm_uuid"):
            if p.get(f):
                key = "params" if f in ("task", "vm_uuid") else None
                jobs = [j for j in jobs if (j["params"] if key else j).get(f) == p[f]]
        jobs.sort(key=lambda j: j["created_at"], reverse=True)
        return jobs

    def list_jobs(self, req):
        p = self._params(req)
        return self._filter_jobs(self.store.list(JOBS), p)

    def list_vm_jobs(self, req, uuid):
        p = self._params(req)
        self.lookup(uuid)
        return self._filter_jobs(self.store.list(JOBS), {**p, "vm_uuid": uuid})

    def get_job(self, req, uuid):
        job = self.store.get(JOBS, uuid)
        if job is None:
            raise errors.not_found(f"Job {uuid} not found")
        return job

    def wait_job(self, req, uuid):
        if self.store.get(JOBS, uuid) is None:
            raise errors.not_found(f"Job {uuid} not found")
        timeout = _number(req.query.get("timeout", "3600")) or 3600
        return self.jobs.wait(uuid, timeout)


def _js_str(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def job_error(job):
    """The message of a failed job: its last chain result's error (§3.3)."""
    for r in reversed(job.get("chain_results") or []):
        e = r.get("error")
        if e:
            return e.get("message", str(e)) if isinstance(e, dict) else str(e)
    return f"job {job['uuid']} {job['execution']}"
