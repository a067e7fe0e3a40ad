"""sapi_metadata, sapi_index_shards and sapi_instance executed as Ansible runs
them (tests/modrun.py) against the lab's real SAPI/VMAPI/IMGAPI server.

Tests that write use a scratch SAPI application (and scratch services) made
for the test, so the lab's own ``manta`` application is never disturbed;
the one test that provisions a real postgres peer into shard 1 of the
``manta`` application removes it again. "Another client" in these tests is
plain ``requests`` talking to the same server.
"""
import json
import sys
import uuid as uuidlib
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (modrun)
from modrun import run_module  # noqa: E402

H = {"Accept-Version": "~2"}


# ------------------------------------------------------------------ fixtures
class Apis:
    """URLs of the lab's APIs plus a raw client for setup and checks."""

    def __init__(self, lab):
        self.lab = lab
        env = lab.env()
        self.sapi, self.imgapi, self.vmapi = (env["MANTA_SAPI_URL"], env["MANTA_IMGAPI_URL"],
                                             env["MANTA_VMAPI_URL"])
        self.cfg = lab.cfg
        self.env = {"MANTA_SAPI_URL": self.sapi, "MANTA_IMGAPI_URL": self.imgapi,
                    "MANTA_VMAPI_URL": self.vmapi, "MANTA_API_TOKEN": ""}

    def run(self, name, args, check=False, diff=True, env=None):
        return run_module(name, {"poll_interval": 0.2, **args} if name in ("sapi_instance", "vmapi_vm") else args,
                          check=check, diff=diff, env={**self.env, **(env or {})})

    def req(self, method, base, path, **kw):
        r = requests.request(method, getattr(self, base) + path, headers=H, timeout=60, **kw)
        if r.status_code >= 400:
            raise AssertionError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json() if r.content else None

    def get(self, base, path, **kw):
        return self.req("GET", base, path, **kw)

    def status(self, base, path):
        return requests.get(getattr(self, base) + path, headers=H, timeout=30).status_code

    def active_image(self, name="mantav2-nameservice"):
        return self.get("imgapi", "/images", params={"name": name})[0]["uuid"]

    def jobs(self, vm, task):
        return self.get("vmapi", f"/vms/{vm}/jobs", params={"task": task})


@pytest.fixture(scope="session")
def apis(lab):
    return Apis(lab)


@pytest.fixture
def app(apis):
    """A scratch application shaped like ``manta`` (its own owner)."""
    tag = uuidlib.uuid4().hex[:8]
    domain = f"{tag}.lab.example.com"
    body = {"name": f"mops-test-{tag}", "owner_uuid": str(uuidlib.uuid4()),
            "metadata": {"DOMAIN_NAME": domain, "HASH_RING_IMAGE": "old-ring",
                         "HASH_RING_IMGAPI_SERVICE": apis.imgapi, "UFDS_ROOT_PW": "s3cret-pw",
                         "INDEX_MORAY_SHARDS": [{"host": f"1.moray.{domain}", "custom": {"k": 1}},
                                                {"host": f"2.moray.{domain}", "last": True}]}}
    created = apis.req("POST", "sapi", "/applications", json=body)
    created["domain"] = domain
    yield created
    for svc in apis.get("sapi", "/services", params={"application_uuid": created["uuid"]}):
        for inst in apis.get("sapi", "/instances", params={"service_uuid": svc["uuid"]}):
            requests.delete(f"{apis.sapi}/instances/{inst['uuid']}", headers=H, timeout=120)
        requests.delete(f"{apis.sapi}/services/{svc['uuid']}", headers=H, timeout=30)
    requests.delete(f"{apis.sapi}/applications/{created['uuid']}", headers=H, timeout=30)


@pytest.fixture
def svc(apis, app):
    """A scratch zone service of the scratch application (the lab records its
    VMs without creating processes)."""
    body = {"name": f"mops-svc-{uuidlib.uuid4().hex[:6]}", "application_uuid": app["uuid"], "type": "vm",
            "params": {"image_uuid": apis.active_image(), "ram": 256, "quota": 10,
                       "networks": ["admin", "manta"],
                       "billing_id": "00000000-0000-0000-0000-000000000000"},
            "metadata": {"SERVICE_NAME": "scratch"}}
    return apis.req("POST", "sapi", "/services", json=body)


def app_meta(apis, app):
    return apis.get("sapi", f"/applications/{app['uuid']}")["metadata"]


# ================================================================ sapi_metadata
def test_metadata_set_check_mode_diff_then_real_then_idempotent(apis, app):
    args = {"application": app["name"], "metadata": {"NEW_KEY": {"a": [1, 2]}, "HASH_RING_IMAGE": "ring-2"}}
    res = apis.run("sapi_metadata", args, check=True)
    assert res["changed"] is True and res["changed_keys"] == ["HASH_RING_IMAGE", "NEW_KEY"]
    assert res["diff"] == {"before": {"metadata": {"HASH_RING_IMAGE": "old-ring"}},
                           "after": {"metadata": {"HASH_RING_IMAGE": "ring-2", "NEW_KEY": {"a": [1, 2]}}}}
    assert "NEW_KEY" not in app_meta(apis, app), "check mode wrote to SAPI"

    res = apis.run("sapi_metadata", args)
    assert res["changed"] is True and res["key_values"] == {"NEW_KEY": {"a": [1, 2]}, "HASH_RING_IMAGE": "ring-2"}
    meta = app_meta(apis, app)
    assert meta["NEW_KEY"] == {"a": [1, 2]} and meta["HASH_RING_IMAGE"] == "ring-2"
    assert meta["INDEX_MORAY_SHARDS"] == app["metadata"]["INDEX_MORAY_SHARDS"], "other keys untouched"

    again = apis.run("sapi_metadata", args)
    assert again["changed"] is False and again["changed_keys"] == []
    assert again["diff"] == {"before": {"metadata": {}}, "after": {"metadata": {}}}


def test_metadata_delete_and_read(apis, app):
    args = {"application": app["uuid"], "state": "absent", "keys": ["HASH_RING_IMAGE", "NOT_THERE"]}
    res = apis.run("sapi_metadata", args, check=True)
    assert res["changed"] is True and res["diff"]["before"] == {"metadata": {"HASH_RING_IMAGE": "old-ring"}}
    assert "HASH_RING_IMAGE" in app_meta(apis, app)
    res = apis.run("sapi_metadata", args)
    assert res["changed"] is True and "HASH_RING_IMAGE" not in app_meta(apis, app)
    assert apis.run("sapi_metadata", args)["changed"] is False

    read = apis.run("sapi_metadata", {"application": app["name"], "state": "read",
                                      "keys": ["DOMAIN_NAME", "HASH_RING_IMAGE"]})
    assert read["changed"] is False and read["key_values"] == {"DOMAIN_NAME": app["domain"]}


def test_metadata_secrets_masked_in_diff_and_result(apis, app):
    res = apis.run("sapi_metadata", {"application": app["name"], "metadata": {"UFDS_ROOT_PW": "new-pw-9"}})
    assert res["changed"] is True
    text = json.dumps(res)
    assert "new-pw-9" not in text and "s3cret-pw" not in text
    assert res["diff"]["after"]["metadata"]["UFDS_ROOT_PW"] == "********"
    assert app_meta(apis, app)["UFDS_ROOT_PW"] == "new-pw-9"


def test_metadata_compare_and_swap_succeeds_then_rerun_is_done(apis, app):
    args = {"application": app["name"], "metadata": {"HASH_RING_IMAGE": "new-ring"},
            "expected": {"HASH_RING_IMAGE": "old-ring"}}
    assert apis.run("sapi_metadata", args, check=True)["changed"] is True
    res = apis.run("sapi_metadata", args)
    assert res["changed"] is True and app_meta(apis, app)["HASH_RING_IMAGE"] == "new-ring"
    # The guard still names the old value, but the swap already happened.
    assert apis.run("sapi_metadata", args)["changed"] is False


def test_metadata_compare_and_swap_lost_to_concurrent_writer(apis, app):
    # Another client installs its own ring first.
    apis.req("PUT", "sapi", f"/applications/{app['uuid']}", json={"metadata": {"HASH_RING_IMAGE": "their-ring"}})
    args = {"application": app["name"], "metadata": {"HASH_RING_IMAGE": "new-ring", "OTHER": "x"},
            "expected": {"HASH_RING_IMAGE": "old-ring"}}
    for check in (True, False):
        res = apis.run("sapi_metadata", args, check=check)
        assert res.get("failed") is True, res
        assert "compare-and-swap lost" in res["msg"]
        assert "HASH_RING_IMAGE: expected 'old-ring', found 'their-ring'" in res["msg"]
        assert res["changed"] is False
        assert res["conflicts"] == [{"key": "HASH_RING_IMAGE", "expected": "old-ring", "found": "their-ring"}]
    meta = app_meta(apis, app)
    assert meta["HASH_RING_IMAGE"] == "their-ring" and "OTHER" not in meta, "nothing changed"


def test_metadata_guard_expected_absent(apis, app):
    args = {"application": app["name"], "metadata": {"LOCK": "me"}, "expected": {"LOCK": None}}
    assert apis.run("sapi_metadata", args)["changed"] is True
    lost = apis.run("sapi_metadata", {**args, "metadata": {"LOCK": "other"}})
    assert lost.get("failed") is True and "LOCK: expected absent, found 'me'" in lost["msg"]


def test_metadata_on_service_and_instance_with_params(apis, app, svc):
    res = apis.run("sapi_metadata", {"application": app["name"], "service": svc["name"],
                                     "metadata": {"SIZE": "lab"}})
    assert res["kind"] == "service" and res["changed"] is True
    assert apis.get("sapi", f"/services/{svc['uuid']}")["metadata"]["SIZE"] == "lab"
    # By bare uuid (kind looked up like sapiadm does).
    res = apis.run("sapi_metadata", {"uuid": svc["uuid"], "state": "read", "keys": ["SIZE"]})
    assert res["kind"] == "service" and res["key_values"] == {"SIZE": "lab"}

    inst = apis.req("POST", "sapi", "/instances", json={
        "service_uuid": svc["uuid"], "params": {"alias": "scratch-0", "server_uuid": apis.cfg.servers[0]["uuid"]},
        "metadata": {"SHARD": "1", "SERVICE_NAME": "1.moray.x"}})
    args = {"instance": inst["uuid"], "metadata": {"SHARD": "3", "SERVICE_NAME": "3.moray.x"},
            "params": {"alias": "3.scratch-0"}}
    res = apis.run("sapi_metadata", args)
    assert res["changed"] is True and res["kind"] == "instance"
    assert res["diff"]["before"]["params"] == {"alias": "scratch-0"}
    assert res["diff"]["after"]["params"] == {"alias": "3.scratch-0"}
    got = apis.get("sapi", f"/instances/{inst['uuid']}")
    assert got["metadata"]["SHARD"] == "3" and got["params"]["alias"] == "3.scratch-0"
    assert got["params"]["server_uuid"] == apis.cfg.servers[0]["uuid"], "other params kept"
    assert apis.run("sapi_metadata", args)["changed"] is False


@pytest.mark.parametrize("target, text", [
    ({"application": "mops-no-such-app"}, "no SAPI application 'mops-no-such-app'"),
    ({"instance": "00000000-0000-4000-8000-000000000001"}, "no SAPI instance 00000000-0000-4000-8000-000000000001"),
    ({"uuid": "00000000-0000-4000-8000-000000000002"}, "no SAPI application, service or instance has uuid"),
    ({"application": "manta", "service": "no-such-service"}, "no SAPI service 'no-such-service'"),
])
def test_metadata_object_missing(apis, target, text):
    res = apis.run("sapi_metadata", {**target, "metadata": {"X": 1}})
    assert res.get("failed") is True and text in res["msg"], res
    assert res["changed"] is False


# ============================================================ sapi_index_shards
def test_index_shards_read_only_round_trip_keeps_other_entries(apis, app):
    d = app["domain"]
    base = app["metadata"]["INDEX_MORAY_SHARDS"]
    args = {"application": app["name"], "shards": ["1.moray", "3.moray"], "read_only": True}
    res = apis.run("sapi_index_shards", args, check=True)
    want = [{"host": f"1.moray.{d}", "custom": {"k": 1}, "readOnly": True},
            {"host": f"2.moray.{d}"},
            {"host": f"3.moray.{d}", "readOnly": True, "last": True}]
    assert res["changed"] is True and res["shards"] == want
    assert res["diff"] == {"before": {"INDEX_MORAY_SHARDS": base}, "after": {"INDEX_MORAY_SHARDS": want}}
    assert app_meta(apis, app)["INDEX_MORAY_SHARDS"] == base, "check mode wrote"

    res = apis.run("sapi_index_shards", args)
    assert res["changed"] is True and app_meta(apis, app)["INDEX_MORAY_SHARDS"] == want
    assert res["hosts"] == [f"1.moray.{d}", f"3.moray.{d}"]
    assert apis.run("sapi_index_shards", args)["changed"] is False

    # Lift the write block: both must be listed; readOnly is deleted, the
    # custom key and the unrelated entry stay as they are.
    rw = {"application": app["name"], "shards": ["1.moray", f"3.moray.{d}"], "read_only": False, "missing": "fail"}
    res = apis.run("sapi_index_shards", rw)
    assert res["changed"] is True
    assert app_meta(apis, app)["INDEX_MORAY_SHARDS"] == [
        {"host": f"1.moray.{d}", "custom": {"k": 1}}, {"host": f"2.moray.{d}"},
        {"host": f"3.moray.{d}", "last": True}]
    assert [s["read_only"] for s in res["summary"]] == [False, False, False]
    assert apis.run("sapi_index_shards", rw)["changed"] is False


def test_index_shards_missing_fail_changes_nothing(apis, app):
    res = apis.run("sapi_index_shards", {"application": app["name"], "shards": ["9.moray"],
                                         "read_only": False, "missing": "fail"})
    assert res.get("failed") is True
    assert f"not in the shard list: 9.moray.{app['domain']}" in res["msg"]
    assert f"found: 1.moray.{app['domain']}, 2.moray.{app['domain']}" in res["msg"]
    assert app_meta(apis, app)["INDEX_MORAY_SHARDS"] == app["metadata"]["INDEX_MORAY_SHARDS"]


def test_index_shards_absent_and_read_and_buckets_key(apis, app):
    d = app["domain"]
    res = apis.run("sapi_index_shards", {"application": app["name"], "shards": ["2.moray"], "state": "absent"})
    assert res["changed"] is True
    assert app_meta(apis, app)["INDEX_MORAY_SHARDS"] == [{"host": f"1.moray.{d}", "custom": {"k": 1}, "last": True}]
    read = apis.run("sapi_index_shards", {"application": app["name"], "state": "read"})
    assert read["changed"] is False and read["summary"] == [{"host": f"1.moray.{d}", "read_only": False}]
    res = apis.run("sapi_index_shards", {"application": app["name"], "key": "BUCKETS_MORAY_SHARDS",
                                         "shards": [f"1.buckets-mdapi.{d}"]})
    assert res["changed"] is True
    assert app_meta(apis, app)["BUCKETS_MORAY_SHARDS"] == [{"host": f"1.buckets-mdapi.{d}", "last": True}]


def test_index_shards_of_the_lab_manta_application_read_only_view(apis):
    res = apis.run("sapi_index_shards", {"state": "read"})
    assert res["changed"] is False
    assert [s["host"] for s in res["summary"]][:2] == [apis.cfg.shard_name(1), apis.cfg.shard_name(2)]


# ============================================================== sapi_instance
def instance_args(app, svc, server, **kw):
    return {"application": app["name"], "service": svc["name"], "server_uuid": server,
            "alias": svc["name"] + "-{uuid8}", "tags": {"manta_role": svc["name"], "plan": "p1"},
            "metadata": {"SHARD": "7"}, **kw}


def test_instance_create_check_adopt_query(apis, app, svc):
    server = apis.cfg.servers[1]["uuid"]
    args = instance_args(app, svc, server)
    res = apis.run("sapi_instance", args, check=True)
    assert res["changed"] is True and res["created"] is True
    assert apis.get("sapi", "/instances", params={"service_uuid": svc["uuid"]}) == [], "check mode created"

    res = apis.run("sapi_instance", args)
    assert res["changed"] is True and res["created"] is True and res.get("job_uuid")
    inst = res["instance"]
    assert inst["alias"] == f"{svc['name']}-{inst['uuid'][:8]}"
    assert inst["server_uuid"] == server and inst["vm_state"] == "running" and inst["shard"] == "7"
    got = apis.get("sapi", f"/instances/{inst['uuid']}")
    assert got["params"]["tags"] == {"manta_role": svc["name"], "plan": "p1"}
    vm = apis.get("vmapi", f"/vms/{inst['uuid']}")
    assert vm["alias"] == inst["alias"] and vm["server_uuid"] == server

    again = apis.run("sapi_instance", args)
    assert again["changed"] is False and again["created"] is False and again["instance"]["uuid"] == inst["uuid"]
    assert len(apis.get("sapi", "/instances", params={"service_uuid": svc["uuid"]})) == 1

    q = apis.run("sapi_instance", {"state": "query", "application": app["name"], "service": svc["name"],
                                   "shard": "7", "tags": {"plan": "p1"}})
    assert q["changed"] is False and [i["uuid"] for i in q["instances"]] == [inst["uuid"]]
    assert apis.run("sapi_instance", {"state": "query", "application": app["name"], "service": svc["name"],
                                      "shard": "8"})["instances"] == []
    other = apis.cfg.servers[2]["uuid"]
    assert apis.run("sapi_instance", {"state": "query", "application": app["name"], "service": svc["name"],
                                      "server_uuid": other})["instances"] == []


def test_instance_identity_includes_server_and_ambiguity_fails(apis, app, svc):
    s1, s2 = apis.cfg.servers[0]["uuid"], apis.cfg.servers[1]["uuid"]
    a = apis.run("sapi_instance", instance_args(app, svc, s1))
    b = apis.run("sapi_instance", instance_args(app, svc, s2))
    assert a["created"] and b["created"] and a["instance"]["uuid"] != b["instance"]["uuid"]
    res = apis.run("sapi_instance", {**instance_args(app, svc, s1), "server_uuid": None})
    assert res.get("failed") is True and "2 instances of" in res["msg"] and "expected at most one" in res["msg"]
    assert len(apis.get("sapi", "/instances", params={"service_uuid": svc["uuid"]})) == 2


def test_instance_provision_failure_reports_error_and_leaves_nothing(apis, app, svc):
    args = instance_args(app, svc, apis.cfg.servers[0]["uuid"], image_uuid=str(uuidlib.uuid4()))
    res = apis.run("sapi_instance", args)
    assert res.get("failed") is True, res
    assert res["changed"] is False and res.get("api_code") and res.get("api_message")
    assert "SAPI could not create an instance of" in res["msg"]
    assert apis.get("sapi", "/instances", params={"service_uuid": svc["uuid"]}) == []


def test_instance_reprovision_once_per_marker(apis, app, svc):
    inst = apis.run("sapi_instance", instance_args(app, svc, apis.cfg.servers[0]["uuid"]))["instance"]
    img = apis.active_image("mantav2-storage")
    args = {"state": "reprovisioned", "uuid": inst["uuid"], "image_uuid": img, "marker": "plan-primary"}
    res = apis.run("sapi_instance", args, check=True)
    assert res["changed"] is True and apis.jobs(inst["uuid"], "reprovision") == []
    res = apis.run("sapi_instance", args)
    assert res["changed"] is True and res["marker"]["state"] == "done"
    assert res["instance"]["image_uuid"] == img
    assert apis.get("vmapi", f"/vms/{inst['uuid']}")["image_uuid"] == img
    assert len(apis.jobs(inst["uuid"], "reprovision")) == 1
    meta = apis.get("sapi", f"/instances/{inst['uuid']}")["metadata"]
    assert meta["MANTA_OPS_REPROVISION"]["marker"] == "plan-primary"
    assert meta["MANTA_OPS_REPROVISION"]["state"] == "done"

    again = apis.run("sapi_instance", args)
    assert again["changed"] is False and len(apis.jobs(inst["uuid"], "reprovision")) == 1
    # A new marker reprovisions again (same image: reshard's "same-image reprovision").
    res = apis.run("sapi_instance", {**args, "marker": "plan-primary-2"})
    assert res["changed"] is True and len(apis.jobs(inst["uuid"], "reprovision")) == 2


def test_instance_reprovision_resumes_interrupted_run(apis, app, svc):
    inst = apis.run("sapi_instance", instance_args(app, svc, apis.cfg.servers[0]["uuid"]))["instance"]
    uuid = inst["uuid"]
    img = apis.active_image("mantav2-storage")
    # An earlier run wrote "pending", sent the upgrade, and died before "done".
    pending = {"marker": "m", "state": "pending", "image_uuid": img, "started_at": "2026-01-01T00:00:00.000Z",
               "prior_jobs": []}
    apis.req("PUT", "sapi", f"/instances/{uuid}", json={"metadata": {"MANTA_OPS_REPROVISION": pending}})
    apis.req("PUT", "sapi", f"/instances/{uuid}/upgrade", json={"image_uuid": img})
    assert len(apis.jobs(uuid, "reprovision")) == 1
    res = apis.run("sapi_instance", {"state": "reprovisioned", "uuid": uuid, "image_uuid": img, "marker": "m"})
    assert res["changed"] is True and res.get("resolved_pending") is True
    assert len(apis.jobs(uuid, "reprovision")) == 1, "the interrupted reprovision must not be repeated"
    assert apis.get("sapi", f"/instances/{uuid}")["metadata"]["MANTA_OPS_REPROVISION"]["state"] == "done"

    # "pending" but the upgrade never reached VMAPI: reprovision now.
    prior = [j["uuid"] for j in apis.jobs(uuid, "reprovision")]
    apis.req("PUT", "sapi", f"/instances/{uuid}",
             json={"metadata": {"MANTA_OPS_REPROVISION": dict(pending, marker="m2", prior_jobs=prior)}})
    res = apis.run("sapi_instance", {"state": "reprovisioned", "uuid": uuid, "image_uuid": img, "marker": "m2"})
    assert res["changed"] is True and not res.get("resolved_pending")
    assert len(apis.jobs(uuid, "reprovision")) == 2


def test_instance_reprovision_without_marker_compares_vm_image(apis, app, svc):
    inst = apis.run("sapi_instance", instance_args(app, svc, apis.cfg.servers[0]["uuid"]))["instance"]
    same = {"state": "reprovisioned", "uuid": inst["uuid"], "image_uuid": inst["image_uuid"]}
    assert apis.run("sapi_instance", same)["changed"] is False
    assert apis.jobs(inst["uuid"], "reprovision") == []
    other = dict(same, image_uuid=apis.active_image("mantav2-moray"))
    assert apis.run("sapi_instance", other)["changed"] is True
    assert apis.run("sapi_instance", other)["changed"] is False
    assert len(apis.jobs(inst["uuid"], "reprovision")) == 1


def test_instance_reprovision_failure_and_missing(apis, app, svc):
    inst = apis.run("sapi_instance", instance_args(app, svc, apis.cfg.servers[0]["uuid"]))["instance"]
    bad = str(uuidlib.uuid4())
    res = apis.run("sapi_instance", {"state": "reprovisioned", "uuid": inst["uuid"], "image_uuid": bad, "marker": "x"})
    assert res.get("failed") is True and "SAPI could not reprovision instance" in res["msg"]
    assert res.get("api_code"), res
    meta = apis.get("sapi", f"/instances/{inst['uuid']}")["metadata"]["MANTA_OPS_REPROVISION"]
    assert meta["state"] == "failed" and meta["marker"] == "x"
    assert apis.get("vmapi", f"/vms/{inst['uuid']}")["image_uuid"] == inst["image_uuid"]

    missing = str(uuidlib.uuid4())
    res = apis.run("sapi_instance", {"state": "reprovisioned", "uuid": missing, "image_uuid": inst["image_uuid"],
                                     "marker": "x"})
    assert res.get("failed") is True and f"found 0 instance {missing}" in res["msg"]


def test_instance_delete(apis, app, svc):
    args = instance_args(app, svc, apis.cfg.servers[0]["uuid"])
    inst = apis.run("sapi_instance", args)["instance"]
    refuse = apis.run("sapi_instance", {"state": "absent", "application": app["name"], "service": svc["name"]})
    assert refuse.get("failed") is True and "refusing to delete every instance" in refuse["msg"]
    gone = {"state": "absent", "application": app["name"], "service": svc["name"], "tags": {"plan": "p1"}}
    res = apis.run("sapi_instance", gone, check=True)
    assert res["changed"] is True and apis.status("sapi", f"/instances/{inst['uuid']}") == 200
    res = apis.run("sapi_instance", gone)
    assert res["changed"] is True and res["diff"]["after"] == {"instances": []}
    assert apis.status("sapi", f"/instances/{inst['uuid']}") == 404
    assert apis.get("vmapi", f"/vms/{inst['uuid']}")["state"] == "destroyed"
    assert apis.run("sapi_instance", gone)["changed"] is False
    assert apis.run("sapi_instance", {"state": "absent", "uuid": inst["uuid"]})["changed"] is False


def test_instance_service_missing(apis, app):
    res = apis.run("sapi_instance", {"application": app["name"], "service": "nope", "tags": {"a": "b"}})
    assert res.get("failed") is True and "no SAPI service 'nope'" in res["msg"]


def test_instance_real_postgres_peer_joins_shard_and_is_removed(apis, lab):
    """On the lab's manta application: a postgres instance really provisions a
    peer that joins shard 1 as an async; deleting it removes it again."""
    cfg = apis.cfg
    shard = cfg.shard_name(1)
    plan = "mops-test-" + uuidlib.uuid4().hex[:8]
    args = {"service": "postgres", "server_uuid": cfg.servers[-1]["uuid"],
            "image_uuid": apis.active_image("mantav2-postgres"),
            "alias": f"1.postgres.{cfg.domain}-{{uuid8}}",
            "metadata": {"SHARD": "1", "SERVICE_NAME": shard, "MANATEE_SHARD_PATH": f"/manatee/{shard}"},
            "tags": {"manta_role": "postgres", "manta_reshard_plan": plan}}
    try:
        res = apis.run("sapi_instance", args)
        assert res["changed"] is True and res["instance"]["vm_state"] == "running", res
        uuid = res["instance"]["uuid"]
        peers = {p.get("zone") or p.get("uuid") or p.get("alias"): p for p in lab.status["shards"][shard]["peers"]}
        assert any(uuid in json.dumps(p) for p in peers.values()), peers
        assert apis.run("sapi_instance", args)["changed"] is False
        q = apis.run("sapi_instance", {"state": "query", "service": "postgres", "shard": "1",
                                       "tags": {"manta_reshard_plan": plan}})
        assert [i["uuid"] for i in q["instances"]] == [uuid]
    finally:
        gone = apis.run("sapi_instance", {"state": "absent", "service": "postgres",
                                          "tags": {"manta_reshard_plan": plan}})
    assert gone.get("failed") is not True, gone
    assert not any(uuid in json.dumps(p) for p in lab.status["shards"][shard]["peers"])
