"""The lab's SAPI, IMGAPI and VMAPI, tested over HTTP against the real
process (`python -m manta_lab.apis`), with its own lab home and ports.

The module fixture starts one APIs process in a fresh home under /var/tmp on
a base port in 32000-32999 and stops it by pid at the end. Provisioning of
real postgres peers (which needs ZooKeeper and a running shard) is in
test_lab_apis_provision.py, against the whole lab.
"""
import base64
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid as uuidlib

import pytest
import requests

from manta_lab import apis, config, procs, zones
from manta_lab.apis import bootstrap, sapi as sapi_mod

V2 = {"Accept-Version": "~2"}


def _free_base():
    """A base port in 32000-32999 whose fixed API ports are free."""
    for base in range(32000 + (os.getpid() % 40) * 20, 33000, 20):
        if all(config.port_free(base + off) for off in (0, 10, 11, 12)):
            return base
    for base in range(32000, 33000, 20):
        if all(config.port_free(base + off) for off in (0, 10, 11, 12)):
            return base
    raise RuntimeError("no free base port in 32000-32999")


class Lab:
    def __init__(self, cfg):
        self.cfg = cfg
        self.sapi = cfg.url("sapi")
        self.imgapi = cfg.url("imgapi")
        self.vmapi = cfg.url("vmapi")
        self.s = requests.Session()

    def get(self, url, **kw):
        return self.s.get(url, timeout=30, **kw)

    def post(self, url, **kw):
        return self.s.post(url, timeout=60, **kw)

    def put(self, url, **kw):
        return self.s.put(url, timeout=60, **kw)

    def delete(self, url, **kw):
        return self.s.delete(url, timeout=60, **kw)

    def wait_job(self, juuid, timeout=30):
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"{self.vmapi}/jobs/{juuid}").json()
            if not seen or seen[-1] != job["execution"]:
                seen.append(job["execution"])
            if job["execution"] in ("succeeded", "failed", "canceled"):
                return job, seen
            time.sleep(0.05)
        raise AssertionError(f"job {juuid} not finished: {seen}")


@pytest.fixture(scope="module")
def lab():
    home = tempfile.mkdtemp(prefix="manta-lab-apis-", dir="/var/tmp")
    cfg = config.LabConfig(home=home, base_port=_free_base())
    cfg.save()
    try:
        apis.start(cfg)
        yield Lab(cfg)
    finally:
        apis.stop(cfg)
        assert not procs.alive(cfg, "apis")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def app(lab):
    """A test application with one vm service (no lab zone kind) and its image."""
    r = lab.post(lab.imgapi + "/images", json={"name": "test-webapi", "version": "1.0.0",
                                               "type": "zone-dataset", "os": "smartos",
                                               "owner": str(uuidlib.uuid4())})
    img = r.json()["uuid"]
    lab.put(f"{lab.imgapi}/images/{img}/file?compression=none", data=b"img")
    lab.post(f"{lab.imgapi}/images/{img}?action=activate")
    owner = str(uuidlib.uuid4())
    a = lab.post(lab.sapi + "/applications", json={
        "name": "testapp", "owner_uuid": owner,
        "params": {"ram": 256, "networks": ["admin"], "image_uuid": img},
        "metadata": {"A": "app", "OVER": "app", "SAPI_URL": "http://sapi.test"}}).json()
    svc = lab.post(lab.sapi + "/services", json={
        "name": "webapi", "application_uuid": a["uuid"],
        "metadata": {"S": "svc", "OVER": "svc"}}).json()
    return {"app": a, "svc": svc, "image": img, "owner": owner}


def _create_inst(lab, app, **extra):
    body = {"service_uuid": app["svc"]["uuid"],
            "params": {"server_uuid": lab.cfg.servers[0]["uuid"]}, **extra}
    r = lab.post(lab.sapi + "/instances", json=body)
    assert r.status_code == 200, r.text
    return r.json()


# ---- common: ping, headers, errors ---------------------------------------------------

def test_ping_and_standard_headers(lab):
    r = lab.get(lab.sapi + "/ping")
    assert r.status_code == 200
    assert r.json()["mode"] == "full" and r.json()["storAvailable"] is True
    for h in ("x-request-id", "x-response-time", "x-server-name", "Server"):
        assert h in r.headers, h
    assert r.headers["Content-Type"] == "application/json"
    assert lab.get(lab.vmapi + "/ping").json()["status"] == "OK"
    p = lab.get(lab.imgapi + "/ping").json()
    assert p["ping"] == "pong" and p["imgapi"] is True
    assert lab.get(lab.sapi + "/ping", headers={"x-request-id": "abc"}).headers["x-request-id"] == "abc"


def test_unknown_routes_and_methods(lab):
    r = lab.get(lab.sapi + "/nope")
    assert r.status_code == 404 and r.json()["code"] == "ResourceNotFound"
    r = lab.s.patch(lab.sapi + "/applications", timeout=10)
    assert r.status_code == 405 and r.json()["code"] == "MethodNotAllowed"


@pytest.mark.parametrize("svc,path,method", [("sapi", "/applications", "post"),
                                             ("vmapi", "/vms", "post"),
                                             ("imgapi", "/images", "post")])
def test_malformed_json_is_400_invalid_content(lab, svc, path, method):
    url = lab.cfg.url(svc) + path
    r = getattr(lab, method)(url, data=b'{"name": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == "InvalidContent" and body["message"].startswith("Invalid JSON")


def test_only_loopback_is_bound(lab):
    for svc in ("sapi", "imgapi", "vmapi"):
        with pytest.raises(OSError):
            s = socket.create_connection(("127.0.0.2", lab.cfg.port(svc)), timeout=1)
            s.close()
            raise AssertionError("reachable on 127.0.0.2")


# ---- SAPI ---------------------------------------------------------------------------------

def test_application_create_get_list_delete(lab):
    owner = str(uuidlib.uuid4())
    r = lab.post(lab.sapi + "/applications", json={"name": "crud", "owner_uuid": owner,
                                                   "metadata": {"K": 1}})
    assert r.status_code == 200
    a = r.json()
    assert a["name"] == "crud" and a["owner_uuid"] == owner and a["metadata"] == {"K": 1}
    assert a["params"] == {} and a["manifests"] == {}
    assert lab.get(f"{lab.sapi}/applications/{a['uuid']}").json() == a
    assert [x["uuid"] for x in lab.get(lab.sapi + "/applications", params={"name": "crud"}).json()] \
        == [a["uuid"]]
    assert lab.get(lab.sapi + "/applications",
                   params={"name": "crud", "owner_uuid": str(uuidlib.uuid4())}).json() == []
    assert lab.get(lab.sapi + "/applications",
                   params={"owner_uuid": owner, "include_master": "true"}).json()[0]["uuid"] == a["uuid"]
    # a client-given uuid is kept; the same uuid twice is refused
    u = str(uuidlib.uuid4())
    assert lab.post(lab.sapi + "/applications", json={"uuid": u, "name": "x", "owner_uuid": owner}
                    ).json()["uuid"] == u
    r = lab.post(lab.sapi + "/applications", json={"uuid": u, "name": "x", "owner_uuid": owner})
    assert r.status_code == 409 and r.json()["code"] == "InvalidArgument"
    assert lab.delete(f"{lab.sapi}/applications/{a['uuid']}").status_code == 204
    r = lab.get(f"{lab.sapi}/applications/{a['uuid']}")
    assert r.status_code == 404
    assert r.json() == {"code": "ResourceNotFound", "message": f"no such application: {a['uuid']}"}
    r = lab.delete(f"{lab.sapi}/applications/{a['uuid']}")
    assert r.status_code == 404 and r.json()["code"] == "ResourceNotFound"


def test_create_missing_keys_is_409_missing_parameter(lab):
    r = lab.post(lab.sapi + "/applications", json={"name": "x"})
    assert r.status_code == 409
    assert r.json() == {"code": "MissingParameter", "message": "missing required keys: owner_uuid"}
    r = lab.post(lab.sapi + "/services", json={})
    assert r.json()["message"] == "missing required keys: name, application_uuid"
    r = lab.post(lab.sapi + "/instances", json={})
    assert r.status_code == 409 and r.json()["message"] == "missing required keys: service_uuid"
    r = lab.post(lab.sapi + "/applications", json={"name": "x", "owner_uuid": "o", "metadata": [1]})
    assert r.status_code == 409 and r.json()["code"] == "InvalidArgument"


def test_update_replace_delete_semantics(lab):
    a = lab.post(lab.sapi + "/applications", json={
        "name": "upd", "owner_uuid": str(uuidlib.uuid4()),
        "params": {"p": 1}, "metadata": {"A": 1, "OBJ": {"x": 1, "y": 2}, "ARR": [1, 2]}}).json()
    url = f"{lab.sapi}/applications/{a['uuid']}"
    # update (default): per-key, values replaced whole (no deep merge); params untouched
    r = lab.put(url, json={"metadata": {"OBJ": {"x": 9}, "B": "b"}})
    assert r.status_code == 200
    assert r.json()["metadata"] == {"A": 1, "OBJ": {"x": 9}, "ARR": [1, 2], "B": "b"}
    assert r.json()["params"] == {"p": 1}
    # delete: keys removed, values ignored
    r = lab.put(url, json={"action": "delete", "metadata": {"A": None, "B": " ", "NOPE": True}})
    assert r.json()["metadata"] == {"OBJ": {"x": 9}, "ARR": [1, 2]}
    # replace: the whole map; {} empties it; only fields present are touched
    r = lab.put(url, json={"action": "replace", "params": {"image_uuid": "i"}})
    assert r.json()["params"] == {"image_uuid": "i"}
    assert r.json()["metadata"] == {"OBJ": {"x": 9}, "ARR": [1, 2]}
    r = lab.put(url, json={"action": "REPLACE", "metadata": {}})
    assert r.json()["metadata"] == {}
    # the action may come in the query string; there it wins over the body
    r = lab.put(url + "?action=update", json={"action": "delete", "metadata": {"Q": 1}})
    assert r.json()["metadata"] == {"Q": 1}
    # owner_uuid moves the application
    new_owner = str(uuidlib.uuid4())
    assert lab.put(url, json={"owner_uuid": new_owner}).json()["owner_uuid"] == new_owner
    # bad action: 409 InvalidArgument, nothing changed
    r = lab.put(url, json={"action": "merge", "metadata": {"Z": 1}})
    assert r.status_code == 409 and r.json()["code"] == "InvalidArgument"
    r = lab.put(url, json={"metadata": "notamap"})
    assert r.status_code == 409
    assert lab.get(url).json()["metadata"] == {"Q": 1}
    # missing object: 404
    r = lab.put(f"{lab.sapi}/applications/{uuidlib.uuid4()}", json={"metadata": {"A": 1}})
    assert r.status_code == 404 and r.json()["code"] == "ResourceNotFound"


def test_metadata_schema_rejects_and_stores_nothing(lab):
    a = lab.post(lab.sapi + "/applications", json={
        "name": "schema", "owner_uuid": str(uuidlib.uuid4()), "metadata": {"N": 1},
        "metadata_schema": {"type": "object", "properties": {"N": {"type": "integer"}}}}).json()
    url = f"{lab.sapi}/applications/{a['uuid']}"
    r = lab.put(url, json={"metadata": {"N": "one"}})
    assert r.status_code == 409 and r.json()["code"] == "SchemaValidationError"
    assert lab.get(url).json()["metadata"] == {"N": 1}
    assert lab.put(url, json={"metadata": {"N": 2}}).json()["metadata"] == {"N": 2}


def test_services_type_filter_and_accept_version(lab, app):
    aid = app["app"]["uuid"]
    agent = lab.post(lab.sapi + "/services", json={"name": "agentsvc", "application_uuid": aid,
                                                   "type": "agent"}).json()
    assert agent["type"] == "agent" and app["svc"]["type"] == "vm"
    # ~1 (no header): type=vm implied, but type is always in the objects
    v1 = lab.get(lab.sapi + "/services", params={"application_uuid": aid}).json()
    assert [s["name"] for s in v1] == ["webapi"] and v1[0]["type"] == "vm"
    v2 = lab.get(lab.sapi + "/services", params={"application_uuid": aid}, headers=V2).json()
    assert sorted(s["name"] for s in v2) == ["agentsvc", "webapi"]
    only = lab.get(lab.sapi + "/services", params={"application_uuid": aid, "type": "agent"},
                   headers=V2).json()
    assert [s["uuid"] for s in only] == [agent["uuid"]]
    assert lab.get(lab.sapi + "/services", params={"name": "webapi"}).json()[0]["uuid"] \
        == app["svc"]["uuid"]
    # an agent instance is only recorded, and only listed under ~2 or by service_uuid
    inst = lab.post(lab.sapi + "/instances", json={"service_uuid": agent["uuid"]}).json()
    assert inst["type"] == "agent"
    assert lab.get(f"{lab.vmapi}/vms/{inst['uuid']}").status_code == 404
    ids = [i["uuid"] for i in lab.get(lab.sapi + "/instances").json()]
    assert inst["uuid"] not in ids
    ids = [i["uuid"] for i in lab.get(lab.sapi + "/instances", headers=V2).json()]
    assert inst["uuid"] in ids
    ids = [i["uuid"] for i in lab.get(lab.sapi + "/instances",
                                      params={"service_uuid": agent["uuid"]}).json()]
    assert ids == [inst["uuid"]]
    r = lab.post(lab.sapi + "/services", json={"name": "bad", "application_uuid": aid, "type": "x"})
    assert r.status_code == 409
    r = lab.post(lab.sapi + "/services", json={"name": "s", "application_uuid": str(uuidlib.uuid4())})
    assert r.status_code == 404 and r.json()["message"].startswith("no such application")
    assert lab.delete(f"{lab.sapi}/instances/{inst['uuid']}").status_code == 204
    assert lab.delete(f"{lab.sapi}/services/{agent['uuid']}").status_code == 204


def test_instance_create_records_vm_and_payload(lab, app):
    inst = _create_inst(lab, app, metadata={"I": "inst", "OVER": "inst"})
    assert inst["type"] == "vm" and "job_uuid" not in inst
    vm = lab.get(f"{lab.vmapi}/vms/{inst['uuid']}").json()
    assert vm["state"] == "running"
    assert vm["server_uuid"] == lab.cfg.servers[0]["uuid"]
    assert vm["owner_uuid"] == app["owner"] and vm["brand"] == "joyent-minimal"
    assert vm["image_uuid"] == app["image"] and vm["ram"] == 256
    assert vm["customer_metadata"] == {"SAPI_URL": "http://sapi.test"}  # sanitized
    assert vm["nics"][0]["ip"] == "127.0.0.1"
    pl = lab.get(f"{lab.sapi}/instances/{inst['uuid']}/payload").json()
    assert pl["uuid"] == inst["uuid"] and pl["owner_uuid"] == app["owner"]
    assert pl["brand"] == "joyent-minimal" and pl["networks"] == [{"name": "admin"}]
    assert pl["customer_metadata"] == {"SAPI_URL": "http://sapi.test"}
    # list filters
    ids = [i["uuid"] for i in lab.get(lab.sapi + "/instances",
                                      params={"service_uuid": app["svc"]["uuid"],
                                              "include_master": "true"}).json()]
    assert inst["uuid"] in ids
    assert lab.get(lab.sapi + "/instances", params={"service_uuid": str(uuidlib.uuid4())}).json() == []
    # duplicate uuid
    r = lab.post(lab.sapi + "/instances", json={"service_uuid": app["svc"]["uuid"],
                                                "uuid": inst["uuid"]})
    assert r.status_code == 409


def test_instance_create_errors_write_nothing(lab, app):
    before = len(lab.get(lab.sapi + "/instances", headers=V2).json())
    vms_before = len(lab.get(lab.vmapi + "/vms").json())
    sid = app["svc"]["uuid"]
    r = lab.post(lab.sapi + "/instances", json={"service_uuid": str(uuidlib.uuid4())})
    assert r.status_code == 404 and r.json()["message"].startswith("no such service")
    r = lab.post(lab.sapi + "/instances", json={"service_uuid": sid,
                                                "params": {"server_uuid": str(uuidlib.uuid4())}})
    assert r.status_code == 409
    body = r.json()
    assert body["code"] == "ValidationFailed"
    assert body["errors"][0]["field"] == "server_uuid" and body["errors"][0]["code"] == "Invalid"
    r = lab.post(lab.sapi + "/instances", json={"service_uuid": sid,
                                                "params": {"image_uuid": str(uuidlib.uuid4())}})
    assert r.status_code == 500 and "no such image" in r.json()["message"]
    r = lab.post(lab.sapi + "/instances", json={"service_uuid": sid,
                                                "manifests": {"m": str(uuidlib.uuid4())}})
    assert r.status_code == 404 and r.json()["message"].startswith("no such manifest")
    r = lab.post(lab.sapi + "/instances", json={"service_uuid": sid, "params": {"alias": "bad alias!"}})
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "alias"
    r = lab.post(lab.sapi + "/instances", json={"service_uuid": sid, "exists": True})
    assert r.status_code == 409 and r.json()["code"] == "MissingParameter"
    r = lab.post(lab.sapi + "/instances", json={"service_uuid": sid, "exists": True,
                                                "uuid": str(uuidlib.uuid4())})
    assert r.status_code == 409 and r.json()["code"] == "InvalidArgument"
    assert len(lab.get(lab.sapi + "/instances", headers=V2).json()) == before
    assert len(lab.get(lab.vmapi + "/vms").json()) == vms_before


def test_instance_async_create_goes_through_job_states(lab, app):
    r = lab.post(lab.sapi + "/instances?async=true", json={
        "service_uuid": app["svc"]["uuid"], "params": {"alias": "async-one"}})
    assert r.status_code == 200
    inst = r.json()
    assert inst["job_uuid"]
    assert lab.get(f"{lab.vmapi}/vms/{inst['uuid']}").json()["state"] == "provisioning"
    job, seen = lab.wait_job(inst["job_uuid"])
    assert seen[0] == "queued" and seen[-1] == "succeeded", seen
    assert job["name"] == f"provision-{inst['uuid']}" and job["params"]["task"] == "provision"
    vm = lab.get(f"{lab.vmapi}/vms/{inst['uuid']}").json()
    assert vm["state"] == "running" and vm["alias"] == "async-one"
    # the server was picked (no server_uuid given) among the lab's servers
    assert lab.cfg.server(vm["server_uuid"]) is not None


def test_upgrade_and_delete_instance(lab, app):
    inst = _create_inst(lab, app)
    url = f"{lab.sapi}/instances/{inst['uuid']}"
    r = lab.put(url + "/upgrade", json={})
    assert r.status_code == 409 and r.json()["code"] == "MissingParameter"
    r = lab.put(f"{lab.sapi}/instances/{uuidlib.uuid4()}/upgrade", json={"image_uuid": app["image"]})
    assert r.status_code == 404
    # a new image: the VM gets it, SAPI params do not change
    img = lab.post(lab.imgapi + "/images", json={"name": "test-webapi", "version": "2.0.0",
                                                 "type": "zone-dataset", "os": "smartos",
                                                 "owner": app["owner"]}).json()["uuid"]
    lab.put(f"{lab.imgapi}/images/{img}/file?compression=none", data=b"img2")
    r = lab.put(url + "/upgrade", json={"image_uuid": img})
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "image_uuid"  # unactivated
    lab.post(f"{lab.imgapi}/images/{img}?action=activate")
    r = lab.put(url + "/upgrade", json={"image_uuid": img})
    assert r.status_code == 200, r.text
    assert r.json()["params"] == inst["params"]
    assert lab.get(f"{lab.vmapi}/vms/{inst['uuid']}").json()["image_uuid"] == img
    jobs = lab.get(f"{lab.vmapi}/vms/{inst['uuid']}/jobs", params={"task": "reprovision"}).json()
    assert jobs and jobs[0]["execution"] == "succeeded"
    # delete: 204, the VM is destroyed, the record gone
    assert lab.delete(url).status_code == 204
    vm = lab.get(f"{lab.vmapi}/vms/{inst['uuid']}").json()
    assert vm["state"] == "destroyed" and vm["destroyed"]
    assert lab.get(url).status_code == 404
    r = lab.delete(url)
    assert r.status_code == 404 and r.json()["code"] == "ResourceNotFound"


def test_update_instance_and_service(lab, app):
    inst = _create_inst(lab, app)
    r = lab.put(f"{lab.sapi}/instances/{inst['uuid']}", json={"metadata": {"X": 1},
                                                              "params": {"tags": {"t": "v"}}})
    assert r.status_code == 200
    assert r.json()["metadata"]["X"] == 1 and r.json()["params"]["tags"] == {"t": "v"}
    r = lab.put(f"{lab.sapi}/services/{app['svc']['uuid']}", json={"action": "delete",
                                                                   "metadata": {"NOPE": 1}})
    assert r.status_code == 200 and r.json()["metadata"] == app["svc"]["metadata"]


def test_manifests_and_config_etag(lab, app):
    r = lab.post(lab.sapi + "/manifests", json={"name": "cfg", "path": "/etc/x.json"})
    assert r.status_code == 409 and r.json()["message"] == "missing required keys: template"
    r = lab.post(lab.sapi + "/manifests", json={"name": "cfg", "path": "/p", "template": "t",
                                                "version": "one"})
    assert r.status_code == 409 and r.json()["code"] == "InvalidArgument"
    m = lab.post(lab.sapi + "/manifests", json={"name": "cfg", "path": "/etc/x.json",
                                                "template": "{{A}}", "post_cmd": "true"}).json()
    assert m["version"] == "1.0.0" and m["template"] == "{{A}}"
    assert lab.get(f"{lab.sapi}/manifests/{m['uuid']}").json() == m
    assert m["uuid"] in [x["uuid"] for x in lab.get(lab.sapi + "/manifests").json()]
    inst = _create_inst(lab, app, manifests={"cfg": m["uuid"]}, metadata={"OVER": "inst"})
    r = lab.get(f"{lab.sapi}/configs/{inst['uuid']}")
    assert r.status_code == 200
    cfgobj = r.json()
    assert cfgobj["manifests"] == [m]
    md = cfgobj["metadata"]
    assert md["A"] == "app" and md["S"] == "svc" and md["OVER"] == "inst"
    assert md["ZONE_UUID"] == md["INSTANCE_UUID"] == inst["uuid"]
    assert md["SERVER_UUID"] == lab.cfg.servers[0]["uuid"]
    etag = r.headers["Etag"]
    assert etag == sapi_mod.config_etag(cfgobj)
    r2 = lab.get(f"{lab.sapi}/configs/{inst['uuid']}", headers={"If-None-Match": etag})
    assert r2.status_code == 304 and r2.content == b"" and r2.headers["Etag"] == etag
    r2 = lab.get(f"{lab.sapi}/configs/{inst['uuid']}", headers={"If-None-Match": f'"{etag}"'})
    assert r2.status_code == 304
    lab.put(f"{lab.sapi}/applications/{app['app']['uuid']}", json={"metadata": {"NEW": True}})
    r3 = lab.get(f"{lab.sapi}/configs/{inst['uuid']}", headers={"If-None-Match": etag})
    assert r3.status_code == 200 and r3.headers["Etag"] != etag and r3.json()["metadata"]["NEW"] is True
    assert lab.get(f"{lab.sapi}/configs/{uuidlib.uuid4()}").status_code == 404
    # no UpdateManifest: delete it
    assert lab.delete(f"{lab.sapi}/manifests/{m['uuid']}").status_code == 204
    assert lab.get(f"{lab.sapi}/manifests/{m['uuid']}").status_code == 404


def test_mode(lab):
    assert lab.get(lab.sapi + "/mode").json() == "full"
    r = lab.post(lab.sapi + "/mode?mode=proto")
    assert r.status_code == 409
    assert lab.post(lab.sapi + "/mode?mode=full").status_code == 204


# ---- IMGAPI ---------------------------------------------------------------------------------

def _manifest(**kw):
    m = {"name": "manta-hash-ring", "version": "20260101T000000Z", "type": "other", "os": "other",
         "owner": str(uuidlib.uuid4())}
    m.update(kw)
    return m


def test_imgapi_create_addfile_activate_getfile(lab):
    r = lab.post(lab.imgapi + "/images", json={"name": "x"})
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "ValidationFailed"
    assert {e["field"] for e in body["errors"]} == {"version", "type", "os", "owner"}
    r = lab.post(lab.imgapi + "/images", json=_manifest(state="active", files=[{"sha1": "x"}],
                                                        tags={"k": "v"}))
    assert r.status_code == 200
    img = r.json()
    u = img["uuid"]
    assert img["state"] == "unactivated" and img["files"] == [] and img["v"] == 2
    assert img["public"] is False and img["disabled"] is False
    r = lab.post(f"{lab.imgapi}/images/{u}?action=activate")
    assert r.status_code == 422 and r.json()["code"] == "NoActivationNoFile"
    data = os.urandom(100_000)
    sha1 = hashlib.sha1(data).hexdigest()
    r = lab.put(f"{lab.imgapi}/images/{u}/file", data=data)
    assert r.status_code == 422 and r.json()["code"] == "InvalidParameter"
    r = lab.put(f"{lab.imgapi}/images/{u}/file?compression=zip", data=data)
    assert r.status_code == 422
    r = lab.put(f"{lab.imgapi}/images/{u}/file?compression=gzip&sha1={'0' * 40}", data=data)
    assert r.status_code == 400 and r.json()["code"] == "Download"
    r = lab.put(f"{lab.imgapi}/images/{u}/file?compression=gzip", data=b"")
    assert r.status_code == 400 and r.json()["code"] == "Download"
    assert lab.get(f"{lab.imgapi}/images/{u}").json()["files"] == []
    r = lab.put(f"{lab.imgapi}/images/{u}/file?compression=gzip&sha1={sha1}", data=data,
                headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    assert r.json()["files"] == [{"sha1": sha1, "size": len(data), "compression": "gzip"}]
    # chunked upload (no Content-Length) overwrites an unactivated image's file
    r = lab.put(f"{lab.imgapi}/images/{u}/file?compression=gzip",
                data=(data[i:i + 30000] for i in range(0, len(data), 30000)))
    assert r.status_code == 200 and r.json()["files"][0]["sha1"] == sha1
    r = lab.post(f"{lab.imgapi}/images/{u}?action=activate")
    assert r.status_code == 200
    assert r.json()["state"] == "active" and r.json()["published_at"]
    r = lab.post(f"{lab.imgapi}/images/{u}?action=activate")
    assert r.status_code == 422 and r.json()["code"] == "ImageAlreadyActivated"
    r = lab.put(f"{lab.imgapi}/images/{u}/file?compression=gzip", data=b"other")
    assert r.status_code == 422 and r.json()["code"] == "ImageFilesImmutable"
    r = lab.get(f"{lab.imgapi}/images/{u}/file")
    assert r.status_code == 200 and r.content == data
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Length"] == str(len(data)) and r.headers["Etag"] == sha1
    assert r.headers["Content-MD5"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert r.headers["Last-Modified"].endswith("GMT")
    # update: mutable fields only
    r = lab.post(f"{lab.imgapi}/images/{u}?action=update", json={"description": "ring"})
    assert r.status_code == 200 and r.json()["description"] == "ring"
    r = lab.post(f"{lab.imgapi}/images/{u}?action=update", json={"uuid": str(uuidlib.uuid4())})
    assert r.status_code == 422 and r.json()["code"] == "ValidationFailed"
    # disable / enable
    assert lab.post(f"{lab.imgapi}/images/{u}?action=disable").json()["state"] == "disabled"
    assert lab.post(f"{lab.imgapi}/images/{u}?action=enable").json()["state"] == "active"
    # action only from the query
    r = lab.post(f"{lab.imgapi}/images/{u}", json={"action": "activate"})
    assert r.status_code == 422 and r.json()["code"] == "InvalidParameter"
    assert r.json()["message"] == 'no image "action" was specified'
    r = lab.post(f"{lab.imgapi}/images/{u}?action=explode")
    assert r.status_code == 422 and r.json()["code"] == "InvalidParameter"
    # delete
    assert lab.delete(f"{lab.imgapi}/images/{u}").status_code == 204
    assert lab.get(f"{lab.imgapi}/images/{u}").status_code == 404
    assert lab.get(f"{lab.imgapi}/images/{u}/file").status_code == 404
    assert lab.delete(f"{lab.imgapi}/images/{u}").status_code == 404


def test_imgapi_import_keeps_uuid_and_refuses_twice(lab):
    u = str(uuidlib.uuid4())
    m = _manifest(uuid=u, published_at="2020-01-02T03:04:05Z", state="active",
                  files=[{"sha1": "abc", "size": 3, "compression": "gzip"}],
                  tags={"manta_reshard_plan": "p1"})
    r = lab.post(f"{lab.imgapi}/images/{uuidlib.uuid4()}?action=import", json=m)
    assert r.status_code == 422 and r.json()["code"] == "InvalidParameter"
    r = lab.post(f"{lab.imgapi}/images/{u}?action=import&account={uuidlib.uuid4()}", json=m)
    assert r.status_code == 403 and r.json()["code"] == "OperatorOnly"
    r = lab.post(f"{lab.imgapi}/images/{u}?action=import&skip_owner_check=true", json=m)
    assert r.status_code == 200
    img = r.json()
    assert img["uuid"] == u and img["state"] == "unactivated" and img["files"] == []
    assert img["published_at"] == "2020-01-02T03:04:05Z"
    r = lab.post(f"{lab.imgapi}/images/{u}?action=import", json=m)
    assert r.status_code == 409 and r.json()["code"] == "ImageUuidAlreadyExists"
    lab.put(f"{lab.imgapi}/images/{u}/file?compression=gzip", data=b"abc")
    act = lab.post(f"{lab.imgapi}/images/{u}?action=activate").json()
    assert act["published_at"] == "2020-01-02T03:04:05Z"
    nil = _manifest(uuid=str(uuidlib.uuid4()), owner="00000000-0000-0000-0000-000000000000")
    r = lab.post(f"{lab.imgapi}/images/{nil['uuid']}?action=import", json=nil)
    assert r.json()["owner"] != nil["owner"]


def test_imgapi_list_filters(lab):
    owner = str(uuidlib.uuid4())
    made = []
    for i, (name, tags) in enumerate([("lst-ring", {"plan": "a"}), ("lst-ring", {"plan": "b"}),
                                      ("lst-other", {"plan": "a", "flag": True})]):
        img = lab.post(lab.imgapi + "/images", json=_manifest(name=name, owner=owner, tags=tags,
                                                              version=f"v{i}")).json()
        made.append(img["uuid"])
        if i < 2:
            lab.put(f"{lab.imgapi}/images/{img['uuid']}/file?compression=none", data=b"x%d" % i)
            lab.post(f"{lab.imgapi}/images/{img['uuid']}?action=activate")

    def names(**q):
        return [i["uuid"] for i in lab.get(lab.imgapi + "/images", params={"owner": owner, **q}).json()]
    assert names() == made[:2]                         # default: active only
    assert names(state="all") == made
    assert names(state="unactivated") == made[2:]
    assert names(name="lst-ring") == made[:2]
    assert names(name="~other", state="all") == made[2:]
    assert names(**{"tag.plan": "a", "state": "all"}) == [made[0], made[2]]
    assert names(**{"tag.plan": "b"}) == [made[1]]
    assert names(**{"tag.flag": "true", "state": "all"}) == [made[2]]
    assert names(sort="published_at.desc") == made[:2][::-1]
    assert names(limit="1") == made[:1]
    assert names(type="!other") == []
    r = lab.get(lab.imgapi + "/images", params={"state": "bogus"})
    assert r.status_code == 422


# ---- VMAPI ----------------------------------------------------------------------------------

def test_vmapi_get_list_filters(lab, app):
    a = _create_inst(lab, app, params={"server_uuid": lab.cfg.servers[1]["uuid"], "alias": "flt-a",
                                       "tags": {"manta_role": "webapi", "n": 1}})
    b = _create_inst(lab, app, params={"server_uuid": lab.cfg.servers[2]["uuid"], "alias": "flt-b",
                                       "tags": {"manta_role": "other"}})
    r = lab.get(f"{lab.vmapi}/vms/{uuidlib.uuid4()}")
    assert r.status_code == 404 and r.json()["code"] == "ResourceNotFound"

    def ids(**q):
        r = lab.get(lab.vmapi + "/vms", params=q)
        assert r.status_code == 200, r.text
        return {v["uuid"] for v in r.json()}
    assert ids(alias="flt-a") == {a["uuid"]}
    assert ids(**{"tag.manta_role": "other"}) == {b["uuid"]}
    assert ids(**{"tag.n": "1"}) == {a["uuid"]}
    assert ids(server_uuid=lab.cfg.servers[2]["uuid"], state="active") == {b["uuid"]}
    assert ids(owner_uuid=app["owner"], alias="flt-b", state="running") == {b["uuid"]}
    assert ids(uuids=f"{a['uuid']},{b['uuid']}") == {a["uuid"], b["uuid"]}
    assert ids(predicate=json.dumps({"eq": ["alias", "flt-b"]})) == {b["uuid"]}
    assert ids(predicate=json.dumps({"and": [{"eq": ["tag.manta_role", "webapi"]},
                                             {"ne": ["alias", "flt-b"]}]})) >= {a["uuid"]}
    # limit + marker pages through everything exactly once
    everything = [v["uuid"] for v in lab.get(lab.vmapi + "/vms", params={"sort": "uuid.asc"}).json()]
    paged, marker = [], None
    while True:
        q = {"sort": "uuid.asc", "limit": 2, **({"marker": json.dumps({"uuid": marker})} if marker else {})}
        page = lab.get(lab.vmapi + "/vms", params=q).json()
        paged += [v["uuid"] for v in page]
        if len(page) < 2:
            break
        marker = page[-1]["uuid"]
    assert paged == everything
    assert a["uuid"] not in ids(state="destroyed")
    r = lab.get(lab.vmapi + "/vms", params={"bogus": "1"})
    assert r.status_code == 409 and r.json()["code"] == "ValidationFailed"
    assert r.json()["errors"][0]["field"] == "bogus"
    r = lab.get(lab.vmapi + "/vms", params={"state": "weird"})
    assert r.status_code == 409
    v = lab.get(f"{lab.vmapi}/vms/{a['uuid']}", params={"fields": "uuid,alias"}).json()
    assert v == {"uuid": a["uuid"], "alias": "flt-a"}
    assert lab.get(f"{lab.vmapi}/vms/{a['uuid']}",
                   params={"owner_uuid": str(uuidlib.uuid4())}).status_code == 404


def test_vmapi_update_alias_and_duplicate(lab, app):
    a = _create_inst(lab, app, params={"server_uuid": lab.cfg.servers[0]["uuid"], "alias": "dup-a"})
    _create_inst(lab, app, params={"server_uuid": lab.cfg.servers[0]["uuid"], "alias": "dup-b"})
    url = f"{lab.vmapi}/vms/{a['uuid']}"
    r = lab.post(url + "?action=update", json={"alias": "dup-c"})
    assert r.status_code == 202
    assert set(r.json()) == {"vm_uuid", "job_uuid"} and r.json()["vm_uuid"] == a["uuid"]
    assert r.headers["workflow-api"]
    job, _ = lab.wait_job(r.json()["job_uuid"])
    assert job["execution"] == "succeeded" and job["params"]["task"] == "update"
    assert lab.get(url).json()["alias"] == "dup-c"
    for alias in ("dup-b", "dup-c"):   # another VM's alias, and its own (as reshard expects)
        r = lab.post(url + "?action=update", json={"alias": alias})
        assert r.status_code == 409
        assert r.json()["code"] == "ValidationFailed"
        assert r.json()["errors"] == [{"field": "alias", "code": "Duplicate",
                                       "message": "Already exists for this owner_uuid"}]
    r = lab.post(url + "?action=update", json={"alias": "no spaces"})
    assert r.status_code == 409 and r.json()["errors"][0]["code"] == "Invalid"
    r = lab.post(url + "?action=update", json={})
    assert r.status_code == 409 and r.json()["message"] == "No VM parameters provided"
    # maps are replaced whole; body wins over the query string
    r = lab.post(url + "?action=update", json={"tags": {"only": "this"}, "ram": 512})
    lab.wait_job(r.json()["job_uuid"])
    vm = lab.get(url).json()
    assert vm["tags"] == {"only": "this"} and vm["ram"] == 512
    r = lab.post(url + "?action=stop", json={"action": "update", "alias": "dup-z"})
    assert lab.wait_job(r.json()["job_uuid"])[0]["params"]["task"] == "update"


def test_vmapi_start_stop_reboot_jobs(lab, app):
    a = _create_inst(lab, app)
    url = f"{lab.vmapi}/vms/{a['uuid']}"

    def act(action, **q):
        r = lab.post(url, params={"action": action, **q}, json={})
        assert r.status_code == 202, r.text
        return lab.wait_job(r.json()["job_uuid"])[0]
    job = act("stop")
    assert job["execution"] == "succeeded" and job["name"] == f"stop-{a['uuid']}"
    assert lab.get(url).json()["state"] == "stopped"
    job = act("stop")
    assert job["execution"] == "failed"
    assert job["chain_results"][-1]["error"]["message"] == "Cannot stop a VM from a 'stopped' state"
    assert act("stop", idempotent="true")["execution"] == "succeeded"
    assert act("reboot")["execution"] == "failed"
    assert act("start")["execution"] == "succeeded"
    assert lab.get(url).json()["state"] == "running"
    assert act("reboot")["execution"] == "succeeded"
    # sync=true waits; the 202 body is the same
    r = lab.post(url + "?action=stop&sync=true", json={})
    assert r.status_code == 202
    assert lab.get(f"{lab.vmapi}/jobs/{r.json()['job_uuid']}").json()["execution"] == "succeeded"
    r = lab.post(url + "?action=start&sync=maybe", json={})
    assert r.status_code == 409
    # wait endpoint and job lists
    r = lab.post(url + "?action=start", json={})
    w = lab.get(f"{lab.vmapi}/jobs/{r.json()['job_uuid']}/wait").json()
    assert w["execution"] == "succeeded"
    jobs = lab.get(f"{lab.vmapi}/vms/{a['uuid']}/jobs").json()
    assert {j["params"]["task"] for j in jobs} >= {"provision", "start", "stop", "reboot"}
    failed = lab.get(f"{lab.vmapi}/jobs", params={"vm_uuid": a["uuid"], "execution": "failed"}).json()
    assert len(failed) == 2 and all(j["execution"] == "failed" for j in failed)
    assert lab.get(f"{lab.vmapi}/jobs/{uuidlib.uuid4()}").status_code == 404


def test_vmapi_bad_actions(lab, app):
    a = _create_inst(lab, app)
    url = f"{lab.vmapi}/vms/{a['uuid']}"
    r = lab.post(url, json={})
    assert r.status_code == 409
    assert r.json() == {"code": "ValidationFailed", "message": "Invalid Parameters",
                        "errors": [{"field": "action", "code": "MissingParameter",
                                    "message": "Is required"}]}
    r = lab.post(url + "?action=explode", json={})
    assert r.status_code == 409 and r.json()["errors"][0]["code"] == "Invalid"
    r = lab.post(f"{lab.vmapi}/vms/{uuidlib.uuid4()}?action=start", json={})
    assert r.status_code == 404
    r = lab.post(url + "?action=reprovision", json={})
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "image_uuid"
    r = lab.post(url, data=b"{bad", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "InvalidContent"


def test_vmapi_metadata_endpoints(lab, app):
    a = _create_inst(lab, app, params={"tags": {"manta_role": "webapi"}})
    url = f"{lab.vmapi}/vms/{a['uuid']}/tags"
    r = lab.post(url, json={"x": "1", "y": True})
    assert r.status_code == 202
    lab.wait_job(r.json()["job_uuid"])
    assert lab.get(url).json() == {"manta_role": "webapi", "x": "1", "y": True}
    assert lab.get(url + "/x").json() == "1"
    lab.wait_job(lab.delete(url + "/x").json()["job_uuid"])
    assert lab.get(url).json() == {"manta_role": "webapi", "y": True}
    lab.wait_job(lab.put(url, json={"only": "z"}).json()["job_uuid"])
    assert lab.get(url).json() == {"only": "z"}
    r = lab.post(url, json={"nested": {"no": 1}})
    assert r.status_code == 409
    assert lab.get(url + "/nope").status_code == 404


def test_vmapi_create_vm_directly(lab, app):
    r = lab.post(lab.vmapi + "/vms", json={"owner_uuid": app["owner"], "image_uuid": app["image"],
                                           "brand": "joyent-minimal", "ram": 128,
                                           "networks": [{"name": "admin"}], "alias": "direct"})
    assert r.status_code == 202
    job, _ = lab.wait_job(r.json()["job_uuid"])
    assert job["execution"] == "succeeded"
    r = lab.post(lab.vmapi + "/vms", json={"brand": "kvm2"})
    assert r.status_code == 409
    fields = {e["field"] for e in r.json()["errors"]}
    assert {"owner_uuid", "brand", "image_uuid", "ram", "networks"} <= fields


# ---- persistence ---------------------------------------------------------------------------------

def test_everything_survives_a_restart(lab, app):
    inst = _create_inst(lab, app, metadata={"KEEP": "me"})
    data = b"persisted file"
    img = lab.post(lab.imgapi + "/images", json=_manifest()).json()["uuid"]
    lab.put(f"{lab.imgapi}/images/{img}/file?compression=none", data=data)
    before = {
        "apps": lab.get(lab.sapi + "/applications").json(),
        "svcs": lab.get(lab.sapi + "/services", headers=V2).json(),
        "insts": lab.get(lab.sapi + "/instances", headers=V2).json(),
        "vms": lab.get(lab.vmapi + "/vms").json(),
        "imgs": lab.get(lab.imgapi + "/images?state=all").json(),
        "jobs": lab.get(lab.vmapi + "/jobs").json(),
    }
    pid = procs.alive(lab.cfg, "apis")
    apis.stop(lab.cfg)
    assert not procs.alive(lab.cfg, "apis")
    apis.start(lab.cfg)
    assert procs.alive(lab.cfg, "apis") != pid
    lab.s = requests.Session()
    after = {
        "apps": lab.get(lab.sapi + "/applications").json(),
        "svcs": lab.get(lab.sapi + "/services", headers=V2).json(),
        "insts": lab.get(lab.sapi + "/instances", headers=V2).json(),
        "vms": lab.get(lab.vmapi + "/vms").json(),
        "imgs": lab.get(lab.imgapi + "/images?state=all").json(),
        "jobs": lab.get(lab.vmapi + "/jobs").json(),
    }
    assert after == before
    assert lab.get(f"{lab.sapi}/instances/{inst['uuid']}").json()["metadata"] == {"KEEP": "me"}
    assert lab.get(f"{lab.imgapi}/images/{img}/file").content == data


# ---- bootstrap --------------------------------------------------------------------------------

def test_bootstrap_is_idempotent_and_keeps_changes(lab):
    cfg = lab.cfg
    # a lab zone that exists before the bootstrap (a storage node record)
    zone = {"uuid": str(uuidlib.uuid4()), "alias": "1.storage-test", "kind": "storage",
            "server_uuid": cfg.servers[2]["uuid"], "datacenter": cfg.servers[2]["datacenter"],
            "storage_id": "1.stor.lab.manta.test", "ports": {}, "paths": {},
            "metadata": {"MANTA_STORAGE_ID": "1.stor.lab.manta.test"}, "services": {}}
    zones.save(cfg, zone)
    out = bootstrap.ensure(cfg)
    assert zone["uuid"] in out["instances"]
    app = lab.get(lab.sapi + "/applications", params={"name": "manta"}).json()
    assert len(app) == 1
    md = app[0]["metadata"]
    assert md["INDEX_MORAY_SHARDS"] == [{"host": cfg.shard_name(1)},
                                        {"host": cfg.shard_name(2), "last": True}]
    assert md["STORAGE_MORAY_SHARD"] == cfg.shard_name(1)
    assert md["ZK_SERVERS"][0]["host"] == "127.0.0.1"
    assert md["ZK_SERVERS"][0]["port"] == cfg.port("zookeeper")
    assert md["DOMAIN_NAME"] == cfg.domain and md["REGION"] == cfg.region
    assert "HASH_RING_IMAGE" not in md and "HASH_RING_IMGAPI_SERVICE" not in md
    svcs = {s["name"]: s for s in lab.get(lab.sapi + "/services",
                                          params={"application_uuid": app[0]["uuid"]}).json()}
    assert {"postgres", "moray", "electric-moray", "storage", "nameservice"} <= set(svcs)
    for s in svcs.values():
        img = lab.get(f"{lab.imgapi}/images/{s['params']['image_uuid']}").json()
        assert img["state"] == "active" and img["name"] == f"mantav2-{s['name']}"
    inst = lab.get(f"{lab.sapi}/instances/{zone['uuid']}").json()
    assert inst["service_uuid"] == svcs["storage"]["uuid"]
    assert inst["metadata"]["MANTA_STORAGE_ID"] == "1.stor.lab.manta.test"
    assert inst["metadata"]["DATACENTER"] == cfg.servers[2]["datacenter"]
    assert inst["params"]["tags"]["manta_role"] == "storage"
    vm = lab.get(f"{lab.vmapi}/vms/{zone['uuid']}").json()
    assert vm["alias"] == "1.storage-test" and vm["server_uuid"] == cfg.servers[2]["uuid"]
    assert vm["state"] == "running" and vm["tags"]["manta_storage_id"] == "1.stor.lab.manta.test"
    assert vm["owner_uuid"] == app[0]["owner_uuid"]
    # an operator change (a reshard's) survives a second ensure; nothing is duplicated
    shards = md["INDEX_MORAY_SHARDS"][:1] + [{"host": "3.moray.x", "last": True}]
    lab.put(f"{lab.sapi}/applications/{app[0]['uuid']}", json={"metadata": {"INDEX_MORAY_SHARDS": shards}})
    n_inst = len(lab.get(lab.sapi + "/instances", headers=V2).json())
    n_vms = len(lab.get(lab.vmapi + "/vms").json())
    bootstrap.ensure(cfg)
    app2 = lab.get(lab.sapi + "/applications", params={"name": "manta"}).json()
    assert len(app2) == 1 and app2[0]["metadata"]["INDEX_MORAY_SHARDS"] == shards
    assert len(lab.get(lab.sapi + "/instances", headers=V2).json()) == n_inst
    assert len(lab.get(lab.vmapi + "/vms").json()) == n_vms
    # manta-adm show -sj can be computed from SAPI + VMAPI
    vms = lab.get(lab.vmapi + "/vms", params={"state": "active",
                                              "owner_uuid": app[0]["owner_uuid"]}).json()
    assert zone["uuid"] in {v["uuid"] for v in vms if v["tags"].get("manta_role")}
    zones.remove(cfg, zone["uuid"])


def test_register_zone_adopts_a_later_zone(lab):
    cfg = lab.cfg
    bootstrap.ensure(cfg)
    zone = {"uuid": str(uuidlib.uuid4()), "alias": "7.moray-late", "kind": "moray",
            "shard": cfg.shard_name(7), "server_uuid": cfg.servers[3]["uuid"],
            "datacenter": cfg.servers[3]["datacenter"], "ports": {}, "paths": {},
            "metadata": {}, "services": {}}
    inst = bootstrap.register_zone(cfg, zone)
    assert inst["uuid"] == zone["uuid"]
    md = inst["metadata"]
    assert md["SERVICE_NAME"] == cfg.shard_name(7) and md["SHARD"] == "7"
    assert "MANATEE_SHARD_PATH" not in md
    assert bootstrap.register_zone(cfg, zone)["uuid"] == zone["uuid"]   # idempotent
    vm = lab.get(f"{lab.vmapi}/vms/{zone['uuid']}").json()
    assert vm["tags"] == {"manta_role": "moray"} and vm["server_uuid"] == cfg.servers[3]["uuid"]


def test_queued_jobs_run_after_a_restart(monkeypatch):
    """A job still queued when the process stops runs when it starts again."""
    home = tempfile.mkdtemp(prefix="manta-lab-apis-jobs-", dir="/var/tmp")
    cfg = config.LabConfig(home=home, base_port=_free_base())
    cfg.save()
    try:
        monkeypatch.setenv("MANTA_LAB_JOB_DELAY", "30")   # jobs stay queued
        apis.start(cfg)
        lab = Lab(cfg)
        vm = lab.put(f"{lab.vmapi}/vms/{uuidlib.uuid4()}", json={
            "alias": "restart-me", "owner_uuid": str(uuidlib.uuid4()),
            "server_uuid": cfg.servers[0]["uuid"], "state": "running"}).json()
        assert vm["state"] == "running" and vm["nics"]
        r = lab.post(f"{lab.vmapi}/vms/{vm['uuid']}?action=stop", json={})
        juuid = r.json()["job_uuid"]
        assert lab.get(f"{lab.vmapi}/jobs/{juuid}").json()["execution"] == "queued"
        apis.stop(cfg)
        monkeypatch.setenv("MANTA_LAB_JOB_DELAY", "0.05")
        apis.start(cfg)
        lab = Lab(cfg)
        job, _ = lab.wait_job(juuid)
        assert job["execution"] == "succeeded"
        assert lab.get(f"{lab.vmapi}/vms/{vm['uuid']}").json()["state"] == "stopped"
    finally:
        apis.stop(cfg)
        shutil.rmtree(home, ignore_errors=True)
