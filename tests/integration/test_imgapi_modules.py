"""imgapi_image executed as Ansible runs it against the lab's real IMGAPI.

Images made here carry a per-test tag and a scratch owner, and are deleted
afterwards; the lab's own images are only read."""
import hashlib
import os
import uuid as uuidlib

import pytest
import requests

from test_sapi_modules import apis  # noqa: F401  (session fixture)


@pytest.fixture
def owner():
    return str(uuidlib.uuid4())


@pytest.fixture
def cleanup(apis):  # noqa: F811
    made = []
    yield made
    for u in made:
        requests.delete(f"{apis.imgapi}/images/{u}", timeout=30)


def images_by_tag(apis, owner, tag):  # noqa: F811
    return apis.get("imgapi", "/images", params={"owner": owner, "state": "all", "tag.manta_reshard_plan": tag})


def ring_file(tmp_path, name="hash_ring.tar.gz", data=None):
    f = tmp_path / name
    f.write_bytes(data if data is not None else os.urandom(4096))
    return f


def manifest(owner, tag, version="20260101T000000Z"):
    return {"name": "manta-hash-ring", "version": version, "type": "other", "os": "other", "owner": owner,
            "description": "Manta Hash Ring", "public": False,
            "tags": {"manta_reshard_plan": tag, "manta_reshard_transition": "split shard 1"}}


def test_import_check_mode_then_real_then_reused(apis, owner, cleanup, tmp_path):  # noqa: F811
    tag = uuidlib.uuid4().hex
    f = ring_file(tmp_path)
    sha1 = hashlib.sha1(f.read_bytes()).hexdigest()
    args = {"manifest": manifest(owner, tag), "file": str(f)}
    res = apis.run("imgapi_image", args, check=True)
    assert res["changed"] is True and res["steps"] == ["import", "add_file", "activate"]
    assert res["image"]["state"] == "active" and res["diff"]["after"]["sha1"] == sha1
    assert images_by_tag(apis, owner, tag) == [], "check mode imported"

    res = apis.run("imgapi_image", args)
    cleanup.append(res["uuid"])
    assert res["changed"] is True and res["reused"] is False
    img = apis.get("imgapi", f"/images/{res['uuid']}")
    assert img["state"] == "active" and img["files"][0]["sha1"] == sha1 and img["files"][0]["compression"] == "gzip"
    assert img["tags"]["manta_reshard_plan"] == tag and img["owner"] == owner

    # Re-run, even with a new version string (reshard regenerates it): same tags + sha1 -> reused.
    again = apis.run("imgapi_image", {**args, "manifest": manifest(owner, tag, version="20990101T000000Z")})
    assert again["changed"] is False and again["reused"] is True and again["uuid"] == res["uuid"]
    assert again["steps"] == [] and len(images_by_tag(apis, owner, tag)) == 1


def test_import_with_other_bytes_is_a_new_image(apis, owner, cleanup, tmp_path):  # noqa: F811
    tag = uuidlib.uuid4().hex
    a = apis.run("imgapi_image", {"manifest": manifest(owner, tag), "file": str(ring_file(tmp_path, "a.gz"))})
    b = apis.run("imgapi_image", {"manifest": manifest(owner, tag), "file": str(ring_file(tmp_path, "b.gz"))})
    cleanup += [a["uuid"], b["uuid"]]
    assert a["changed"] and b["changed"] and a["uuid"] != b["uuid"]
    assert len(images_by_tag(apis, owner, tag)) == 2
    listed = apis.run("imgapi_image", {"state": "query", "name": "manta-hash-ring", "owner": owner,
                                       "tags": {"manta_reshard_plan": tag}})
    assert listed["changed"] is False and sorted(i["uuid"] for i in listed["images"]) == sorted([a["uuid"], b["uuid"]])


def test_import_resumes_after_crash_between_steps(apis, owner, cleanup, tmp_path):  # noqa: F811
    tag = uuidlib.uuid4().hex
    f = ring_file(tmp_path)
    m = manifest(owner, tag)
    # A previous run imported the manifest and died before adding the file.
    u = str(uuidlib.uuid4())
    cleanup.append(u)
    apis.req("POST", "imgapi", f"/images/{u}", params={"action": "import"}, json={**m, "uuid": u, "v": 2})
    res = apis.run("imgapi_image", {"manifest": m, "file": str(f)})
    assert res["changed"] is True and res["reused"] is True and res["uuid"] == u
    assert res["steps"] == ["add_file", "activate"]
    assert apis.get("imgapi", f"/images/{u}")["state"] == "active"


def test_add_file_without_activation_then_activate(apis, owner, cleanup, tmp_path):  # noqa: F811
    tag = uuidlib.uuid4().hex
    f = ring_file(tmp_path)
    u = str(uuidlib.uuid4())
    cleanup.append(u)
    args = {"uuid": u, "manifest": manifest(owner, tag), "file": str(f), "activate": False}
    res = apis.run("imgapi_image", args)
    assert res["steps"] == ["import", "add_file"] and apis.get("imgapi", f"/images/{u}")["state"] == "unactivated"
    assert apis.run("imgapi_image", args)["changed"] is False
    res = apis.run("imgapi_image", {**args, "activate": True})
    assert res["steps"] == ["activate"] and apis.get("imgapi", f"/images/{u}")["state"] == "active"


def test_existing_active_uuid_with_other_file_fails_and_changes_nothing(apis, owner, cleanup, tmp_path):  # noqa: F811
    tag = uuidlib.uuid4().hex
    u = str(uuidlib.uuid4())
    cleanup.append(u)
    apis.run("imgapi_image", {"uuid": u, "manifest": manifest(owner, tag), "file": str(ring_file(tmp_path, "a.gz"))})
    before = apis.get("imgapi", f"/images/{u}")
    res = apis.run("imgapi_image", {"uuid": u, "manifest": manifest(owner, tag),
                                    "file": str(ring_file(tmp_path, "b.gz"))})
    assert res.get("failed") is True and "ImageFilesImmutable" in res["msg"]
    assert f"image {u} is active with file sha1 {before['files'][0]['sha1']}" in res["msg"]
    assert apis.get("imgapi", f"/images/{u}") == before


def test_empty_file_fails_before_import(apis, owner, tmp_path):  # noqa: F811
    tag = uuidlib.uuid4().hex
    empty = ring_file(tmp_path, "empty.gz", data=b"")  # IMGAPI refuses a 0-byte file (400 Download)
    res = apis.run("imgapi_image", {"manifest": manifest(owner, tag), "file": str(empty)})
    assert res.get("failed") is True, res
    assert "is empty" in res["msg"] and res["changed"] is False
    assert images_by_tag(apis, owner, tag) == []


def test_manifest_sha1_mismatch_and_bad_compression_fail_before_import(apis, owner, tmp_path):  # noqa: F811
    tag = uuidlib.uuid4().hex
    f = ring_file(tmp_path, "ring.tar")
    m = dict(manifest(owner, tag), files=[{"sha1": "0" * 40, "compression": "gzip"}])
    res = apis.run("imgapi_image", {"manifest": m, "file": str(f)})
    assert res.get("failed") is True and "expected them to match" in res["msg"]
    res = apis.run("imgapi_image", {"manifest": manifest(owner, tag), "file": str(f)})
    assert res.get("failed") is True and "could not determine the compression" in res["msg"]
    res = apis.run("imgapi_image", {"manifest": {"name": "x"}, "file": str(f), "compression": "none"})
    assert res.get("failed") is True and "missing required field(s): version, type, os" in res["msg"]
    assert images_by_tag(apis, owner, tag) == []


def test_manifest_path(apis, owner, cleanup, tmp_path):  # noqa: F811
    import json
    tag = uuidlib.uuid4().hex
    mp = tmp_path / "manifest.json"
    mp.write_text(json.dumps(manifest(owner, tag)))
    res = apis.run("imgapi_image", {"manifest_path": str(mp), "file": str(ring_file(tmp_path))})
    cleanup.append(res["uuid"])
    assert res["changed"] is True and res["image"]["tags"]["manta_reshard_plan"] == tag


def test_download_verify_and_idempotence(apis, owner, cleanup, tmp_path):  # noqa: F811
    tag = uuidlib.uuid4().hex
    src = ring_file(tmp_path, "src.gz", data=os.urandom(300_000))
    u = apis.run("imgapi_image", {"manifest": manifest(owner, tag), "file": str(src)})["uuid"]
    cleanup.append(u)
    dest = tmp_path / "out" / "ring.tar.gz"
    dest.parent.mkdir()
    args = {"state": "downloaded", "uuid": u, "dest": str(dest)}
    res = apis.run("imgapi_image", args, check=True)
    assert res["changed"] is True and not dest.exists()
    res = apis.run("imgapi_image", args)
    assert res["changed"] is True and dest.read_bytes() == src.read_bytes()
    assert res["sha1"] == hashlib.sha1(src.read_bytes()).hexdigest()
    assert apis.run("imgapi_image", args)["changed"] is False
    dest.write_bytes(b"corrupted")
    assert apis.run("imgapi_image", args, check=True)["changed"] is True and dest.read_bytes() == b"corrupted"
    assert apis.run("imgapi_image", args)["changed"] is True and dest.read_bytes() == src.read_bytes()
    assert sorted(os.listdir(dest.parent)) == ["ring.tar.gz"], "no temporary file left behind"


def test_download_of_missing_image(apis, tmp_path):  # noqa: F811
    u = str(uuidlib.uuid4())
    res = apis.run("imgapi_image", {"state": "downloaded", "uuid": u, "dest": str(tmp_path / "x")})
    assert res.get("failed") is True and f"no IMGAPI image {u}" in res["msg"]
    assert not (tmp_path / "x").exists()


def test_delete(apis, owner, tmp_path):  # noqa: F811
    tag = uuidlib.uuid4().hex
    u = apis.run("imgapi_image", {"manifest": manifest(owner, tag), "file": str(ring_file(tmp_path))})["uuid"]
    args = {"state": "absent", "uuid": u}
    assert apis.run("imgapi_image", args, check=True)["changed"] is True
    assert apis.status("imgapi", f"/images/{u}") == 200
    assert apis.run("imgapi_image", args)["changed"] is True
    assert apis.status("imgapi", f"/images/{u}") == 404
    assert apis.run("imgapi_image", args)["changed"] is False


def test_list_lab_images_by_name(apis):  # noqa: F811
    res = apis.run("imgapi_image", {"state": "query", "name": "mantav2-postgres", "image_state": "active"})
    assert res["changed"] is False and len(res["images"]) >= 1
    assert all(i["name"] == "mantav2-postgres" and i["state"] == "active" for i in res["images"])
