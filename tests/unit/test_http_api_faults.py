"""The modules, executed as Ansible executes them (tests/modrun.py), against
faults: an API that is unreachable, answers 500, or answers malformed JSON
(a throwaway HTTP server from test_http_api plays the broken API), plus bad
input that must fail before any request. Each failure must be clear (name
what was expected and what was found, with the API's code and message) and
change nothing (no write request reaches the server)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (modrun)
from modrun import run_module  # noqa: E402
from test_http_api import FaultServer, closed_port, const  # noqa: E402

APP = "6a1c3e0e-44a0-4d2b-9d6c-6f6f1b0a6a43"
VM = "b3c1f0e2-1111-4222-8333-444455556666"
IMG = "2c0a1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
CLEAN_ENV = {k: "" for k in ("MANTA_SAPI_URL", "MANTA_IMGAPI_URL", "MANTA_VMAPI_URL", "MANTA_API_TOKEN")}
FAST = {"api_retries": 1, "api_timeout": 5}

# One representative read-then-maybe-write invocation per module.
CALLS = {
    "sapi_metadata": ("sapi_url", {"application": "manta", "metadata": {"HASH_RING_IMAGE": IMG}}),
    "sapi_index_shards": ("sapi_url", {"shards": ["2.moray"], "read_only": True}),
    "sapi_instance": ("sapi_url", {"service": "postgres", "tags": {"manta_role": "postgres"}}),
    "imgapi_image": ("imgapi_url", {"state": "query", "name": "manta-hash-ring"}),
    "vmapi_vm": ("vmapi_url", {"uuid": VM, "state": "running"}),
}


def run(name, args, **kw):
    return run_module(name, {**FAST, **args}, env=dict(CLEAN_ENV, **kw.pop("env", {})), **kw)


def writes(srv):
    return [r for r in srv.requests if r["method"] in ("PUT", "POST", "DELETE")]


@pytest.mark.parametrize("name", sorted(CALLS))
def test_unreachable_api(name):
    opt, args = CALLS[name]
    url = f"http://127.0.0.1:{closed_port()}"
    res = run(name, {opt: url, **args})
    assert res.get("failed") is True, res
    assert res["changed"] is False
    assert "cannot reach " + url in res["msg"], res["msg"]
    assert res["api_code"] == "ConnectionError"


@pytest.mark.parametrize("name", sorted(CALLS))
def test_api_answers_500(name):
    opt, args = CALLS[name]
    body = {"code": "InternalError", "message": "moray client is not connected"}
    with FaultServer(const(500, body, {"x-request-id": "rid-500"})) as srv:
        res = run(name, {opt: srv.url, **args})
        assert not writes(srv)
    assert res.get("failed") is True, res
    assert "HTTP 500 InternalError: moray client is not connected" in res["msg"], res["msg"]
    assert "expected HTTP" in res["msg"] and "rid-500" in res["msg"]
    assert res["api_code"] == "InternalError" and res["api_status"] == 500
    assert res["changed"] is False


@pytest.mark.parametrize("name", sorted(CALLS))
def test_api_answers_malformed_json(name):
    opt, args = CALLS[name]
    with FaultServer(const(200, b"{'this is': not json")) as srv:
        res = run(name, {opt: srv.url, **args})
        assert not writes(srv)
    assert res.get("failed") is True, res
    assert res["api_code"] == "MalformedResponse"
    assert "not JSON" in res["msg"] and "this is" in res["msg"], res["msg"]
    assert res["changed"] is False


def test_sapi_update_answering_500_reports_code_and_changes_nothing():
    app = {"uuid": APP, "name": "manta", "metadata": {"HASH_RING_IMAGE": "old"}, "params": {}}

    def script(method, path, headers, body):
        if method == "GET":
            return 200, [app] if path.startswith("/applications?") else app, None
        return 500, {"code": "InternalError", "message": "updateObject failed"}, None
    with FaultServer(script) as srv:
        res = run("sapi_metadata", {"sapi_url": srv.url, "application": "manta",
                                    "metadata": {"HASH_RING_IMAGE": "new"}})
        puts = writes(srv)
    assert res.get("failed") is True
    assert len(puts) == 1, "a PUT is not retried"
    assert "SAPI update of application" in res["msg"] and "InternalError: updateObject failed" in res["msg"]
    assert res["changed"] is False


def test_sapi_malformed_index_shard_list_fails_before_writing():
    app = {"uuid": APP, "name": "manta", "metadata": {"DOMAIN_NAME": "lab", "INDEX_MORAY_SHARDS": "1.moray.lab"}}

    def script(method, path, headers, body):
        return 200, [app] if path.startswith("/applications?") else app, None
    with FaultServer(script) as srv:
        res = run("sapi_index_shards", {"sapi_url": srv.url, "shards": ["1.moray"], "read_only": True})
        assert not writes(srv)
    assert res.get("failed") is True
    assert "INDEX_MORAY_SHARDS must be a JSON array" in res["msg"] and "'1.moray.lab'" in res["msg"]


@pytest.mark.parametrize("name", sorted(CALLS))
def test_missing_url_names_option_and_env_var(name):
    opt, args = CALLS[name]
    res = run(name, args)
    assert res.get("failed") is True
    env = {"sapi_url": "MANTA_SAPI_URL", "imgapi_url": "MANTA_IMGAPI_URL", "vmapi_url": "MANTA_VMAPI_URL"}[opt]
    assert opt in res["msg"] and env in res["msg"], res["msg"]


def test_bad_url_is_rejected_before_any_request():
    res = run("sapi_metadata", {"sapi_url": "sapi.example.com", "application": "manta", "state": "read"})
    assert res.get("failed") is True and "must be an http:// or https:// URL" in res["msg"]


def test_url_and_token_from_environment_token_never_in_output():
    app = {"uuid": APP, "name": "manta", "metadata": {"A": 1, "UFDS_ROOT_PW": "pw-secret-1"}}

    def script(method, path, headers, body):
        return 200, [app] if path.startswith("/applications?") else app, None
    with FaultServer(script) as srv:
        res = run("sapi_metadata", {"application": "manta", "state": "read"},
                  env={"MANTA_SAPI_URL": srv.url, "MANTA_API_TOKEN": "tok-secret-2"})
        assert srv.requests[0]["headers"]["Authorization"] == "Bearer tok-secret-2"
    assert res.get("failed") is not True, res
    assert res["metadata"]["A"] == 1
    out = json.dumps(res)
    assert "tok-secret-2" not in out and "pw-secret-1" not in out


@pytest.mark.parametrize("name, args, text", [
    ("sapi_metadata", {"application": "manta"}, "needs metadata"),
    ("sapi_metadata", {"application": "manta", "state": "absent"}, "needs keys"),
    ("sapi_metadata", {"application": "manta", "state": "read", "expected": {"A": 1}}, "no meaning"),
    ("sapi_index_shards", {"state": "present"}, "shards is required"),
    ("sapi_index_shards", {"shards": ["1.moray"], "state": "absent", "read_only": True}, "read_only only applies"),
    ("sapi_instance", {"service": "postgres"}, "needs tags"),
    ("sapi_instance", {"service": "postgres", "tags": {"a": "b"}, "server_uuid": "cn1"}, "server_uuid must be a UUID"),
    ("sapi_instance", {"state": "reprovisioned", "uuid": VM}, "needs image_uuid"),
    ("sapi_instance", {"state": "present", "uuid": VM, "marker": "m"}, "marker only applies"),
    ("imgapi_image", {"state": "present"}, "needs manifest"),
    ("imgapi_image", {"state": "downloaded", "uuid": IMG}, "needs uuid and dest"),
    ("imgapi_image", {"state": "absent", "uuid": "nope"}, "uuid must be an image UUID"),
    ("vmapi_vm", {"uuid": "nope"}, "uuid must be a VM UUID"),
    ("vmapi_vm", {"uuid": VM, "state": "running", "restart_marker": "x"}, "restart_marker only applies"),
])
def test_bad_input_fails_before_any_request(name, args, text):
    with FaultServer(const(500, {"code": "InternalError", "message": "must not be called"})) as srv:
        urls = {"sapi_url": srv.url, "imgapi_url": srv.url, "vmapi_url": srv.url}
        keep = {k: v for k, v in urls.items() if k.split("_")[0] in name or name == "sapi_instance" and k == "vmapi_url"}
        res = run(name, {**keep, **args})
        assert srv.requests == [], f"{name} called the API despite bad input"
    assert res.get("failed") is True, res
    assert text in res["msg"], res["msg"]


def test_imgapi_add_file_500_rolls_back_the_import(tmp_path):
    """IMGAPI accepts the import, then fails the upload: the image this run
    imported is deleted again (as sdc-imgadm does) and the failure says so."""
    f = tmp_path / "ring.tar.gz"
    f.write_bytes(b"ring bytes")
    state = {}

    def script(method, path, headers, body):
        if method == "GET" and path.startswith("/images/"):
            return 404, {"code": "ResourceNotFound", "message": "image not found"}, None
        if method == "GET":
            return 200, [], None
        if method == "POST" and "action=import" in path:
            state["image"] = dict(json.loads(body), state="unactivated", files=[])
            return 200, state["image"], None
        if method == "PUT":
            return 500, {"code": "StorageIsDown", "message": "storage backend unavailable"}, None
        if method == "DELETE":
            return 204, None, None
        return 500, {"code": "Unexpected", "message": f"{method} {path}"}, None

    manifest = {"uuid": IMG, "name": "manta-hash-ring", "version": "1", "type": "other", "os": "other"}
    with FaultServer(script) as srv:
        res = run("imgapi_image", {"imgapi_url": srv.url, "manifest": manifest, "file": str(f)})
        calls = [(r["method"], r["path"].split("?")[0]) for r in srv.requests]
    assert res.get("failed") is True and res["rolled_back"] is True and res["changed"] is False
    assert "StorageIsDown: storage backend unavailable" in res["msg"]
    assert "the image imported by this run was deleted again" in res["msg"]
    assert calls[-3:] == [("POST", f"/images/{IMG}"), ("PUT", f"/images/{IMG}/file"), ("DELETE", f"/images/{IMG}")]
