"""vmapi_vm executed as Ansible runs it against the lab's real VMAPI.

The VMs are zones of a scratch SAPI service (provisioned through SAPI, so
VMAPI really holds them) and are destroyed with their scratch application."""
import json
import uuid as uuidlib

import pytest

from test_sapi_modules import apis, app, svc  # noqa: F401  (fixtures)


@pytest.fixture
def vm(apis, app, svc):  # noqa: F811
    inst = apis.req("POST", "sapi", "/instances", json={
        "service_uuid": svc["uuid"],
        "params": {"alias": f"vm-{uuidlib.uuid4().hex[:8]}", "server_uuid": apis.cfg.servers[0]["uuid"]}})
    v = apis.get("vmapi", f"/vms/{inst['uuid']}")
    assert v["state"] == "running"
    return v


def state(apis, vm):  # noqa: F811
    return apis.get("vmapi", f"/vms/{vm['uuid']}")


def test_stop_start_check_mode_and_idempotence(apis, vm):  # noqa: F811
    stop = {"uuid": vm["uuid"], "state": "stopped"}
    res = apis.run("vmapi_vm", stop, check=True)
    assert res["changed"] is True and res["vm"]["state"] == "stopped" and res["jobs"] == []
    assert state(apis, vm)["state"] == "running", "check mode stopped the VM"

    res = apis.run("vmapi_vm", stop)
    assert res["changed"] is True and res["vm"]["state"] == "stopped"
    assert [(j["task"], j["execution"]) for j in res["jobs"]] == [("stop", "succeeded")]
    assert res["diff"] == {"before": {"alias": vm["alias"], "state": "running"},
                           "after": {"alias": vm["alias"], "state": "stopped"}}
    assert state(apis, vm)["state"] == "stopped"
    again = apis.run("vmapi_vm", stop)
    assert again["changed"] is False and again["jobs"] == []

    start = {"uuid": vm["uuid"], "state": "running"}
    assert apis.run("vmapi_vm", start)["changed"] is True and state(apis, vm)["state"] == "running"
    assert apis.run("vmapi_vm", start)["changed"] is False


def test_reboot_plain_and_once_per_marker(apis, vm):  # noqa: F811
    plain = {"uuid": vm["uuid"], "state": "restarted"}
    for _ in range(2):  # without a marker, like service state=restarted, every run reboots
        res = apis.run("vmapi_vm", plain)
        assert res["changed"] is True and res["jobs"][0]["task"] == "reboot"
    assert len(apis.jobs(vm["uuid"], "reboot")) == 2

    marked = {**plain, "restart_marker": "plan-x-em"}
    assert apis.run("vmapi_vm", marked, check=True)["changed"] is True
    assert len(apis.jobs(vm["uuid"], "reboot")) == 2
    res = apis.run("vmapi_vm", marked)
    assert res["changed"] is True
    assert state(apis, vm)["internal_metadata"]["manta_ops:restart_marker"] == "plan-x-em"
    assert apis.run("vmapi_vm", marked)["changed"] is False
    assert len(apis.jobs(vm["uuid"], "reboot")) == 3


def test_alias_update_and_idempotence(apis, vm):  # noqa: F811
    args = {"uuid": vm["uuid"], "alias": "3.postgres.lab-" + vm["uuid"][:8]}
    res = apis.run("vmapi_vm", args, check=True)
    assert res["changed"] is True and state(apis, vm)["alias"] == vm["alias"]
    res = apis.run("vmapi_vm", args)
    assert res["changed"] is True and res["jobs"][0]["task"] == "update"
    assert res["jobs"][0]["execution"] == "succeeded"
    assert res["diff"]["after"]["alias"] == args["alias"] and state(apis, vm)["alias"] == args["alias"]
    assert apis.run("vmapi_vm", args)["changed"] is False


def test_duplicate_alias_counts_as_done(apis, app, svc, vm):  # noqa: F811
    other = apis.req("POST", "sapi", "/instances", json={
        "service_uuid": svc["uuid"], "params": {"alias": "taken-" + vm["uuid"][:8],
                                                "server_uuid": apis.cfg.servers[1]["uuid"]}})
    res = apis.run("vmapi_vm", {"uuid": vm["uuid"], "alias": other["params"]["alias"]})
    assert res.get("failed") is not True, res
    assert res["changed"] is False and res["alias_duplicate"] is True
    assert "as Duplicate; counting it as done" in json.dumps(res["warnings"])
    assert state(apis, vm)["alias"] == vm["alias"]


def test_invalid_alias_is_reported_with_vmapi_code(apis, vm):  # noqa: F811
    res = apis.run("vmapi_vm", {"uuid": vm["uuid"], "alias": "bad alias with spaces!"})
    assert res.get("failed") is True and res["changed"] is False
    assert res["api_code"] == "ValidationFailed" and "alias Invalid" in res["msg"]
    assert state(apis, vm)["alias"] == vm["alias"]


def test_no_wait_returns_the_job(apis, vm):  # noqa: F811
    res = apis.run("vmapi_vm", {"uuid": vm["uuid"], "state": "stopped", "wait": False})
    assert res["changed"] is True and res["jobs"][0]["execution"] == "queued"
    job = apis.get("vmapi", f"/jobs/{res['jobs'][0]['uuid']}/wait")
    assert job["execution"] == "succeeded" and state(apis, vm)["state"] == "stopped"


def test_missing_vm(apis):  # noqa: F811
    u = str(uuidlib.uuid4())
    res = apis.run("vmapi_vm", {"uuid": u, "state": "running"})
    assert res.get("failed") is True and f"no VMAPI VM {u}" in res["msg"]


def test_destroyed_vm_cannot_be_started(apis, vm):  # noqa: F811
    apis.req("DELETE", "sapi", f"/instances/{vm['uuid']}")
    res = apis.run("vmapi_vm", {"uuid": vm["uuid"], "state": "running"})
    assert res.get("failed") is True and "is destroyed; expected a running or stopped VM" in res["msg"]
