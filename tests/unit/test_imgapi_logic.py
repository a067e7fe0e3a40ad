"""Pure logic of module_utils/imgapi.py: compression, manifest checks, which
import steps are still needed, which existing image may be reused."""
import hashlib

import pytest

from ansible_collections.manta.ops.plugins.module_utils import imgapi as I

SHA = "a" * 40


def test_compression_precedence():
    assert I.compression_for("x.bz2", {"files": [{"compression": "gzip"}]}, "none") == "none"
    assert I.compression_for("x.bz2", {"files": [{"compression": "gzip"}]}) == "gzip"
    assert I.compression_for("x.bz2", {}) == "bzip2"
    assert I.compression_for("ring.tar.gz", None) == "gzip"
    with pytest.raises(I.ImageError) as exc:
        I.compression_for("x.tar", {})
    assert "could not determine the compression" in str(exc.value)
    with pytest.raises(I.ImageError):
        I.compression_for("x.gz", {}, "zstd")
    with pytest.raises(I.ImageError):
        I.compression_for("x.gz", {"files": [{"compression": "xz"}]})


def test_validate_manifest_names_missing_fields():
    with pytest.raises(I.ImageError) as exc:
        I.validate_manifest({"name": "n", "type": "other"})
    assert "version, os" in str(exc.value)
    with pytest.raises(I.ImageError):
        I.validate_manifest({"name": "n", "version": "1", "type": "other", "os": "other", "tags": []})
    with pytest.raises(I.ImageError):
        I.validate_manifest([1])


def test_import_body_drops_server_fields_and_sets_uuid():
    body = I.import_body({"name": "n", "state": "active", "files": [{}], "uuid": "old"}, "new")
    assert body == {"name": "n", "uuid": "new", "v": 2}


def test_plan_import_steps():
    assert I.plan_import(None, SHA) == ["import", "add_file", "activate"]
    assert I.plan_import(None, SHA, activate=False) == ["import", "add_file"]
    assert I.plan_import({"uuid": "u", "state": "unactivated", "files": []}, SHA) == ["add_file", "activate"]
    assert I.plan_import({"uuid": "u", "state": "unactivated", "files": [{"sha1": SHA}]}, SHA) == ["activate"]
    assert I.plan_import({"uuid": "u", "state": "unactivated", "files": [{"sha1": "b" * 40}]}, SHA) == \
        ["add_file", "activate"], "an unactivated image's file can be overwritten"
    assert I.plan_import({"uuid": "u", "state": "active", "files": [{"sha1": SHA}]}, SHA) == []


def test_plan_import_refuses_active_image_with_other_file():
    with pytest.raises(I.ImageError) as exc:
        I.plan_import({"uuid": "u", "state": "active", "activated": True, "files": [{"sha1": "b" * 40}]}, SHA)
    assert "ImageFilesImmutable" in str(exc.value)
    with pytest.raises(I.ImageError):
        I.plan_import({"uuid": "u", "state": "failed"}, SHA)


def test_is_candidate_requires_same_name_owner_tags_and_sha1():
    m = {"name": "manta-hash-ring", "owner": "o", "tags": {"manta_reshard_plan": "p1"}}
    good = {"name": "manta-hash-ring", "owner": "o", "state": "active", "files": [{"sha1": SHA}],
            "tags": {"manta_reshard_plan": "p1", "other": "x"}}
    assert I.is_candidate(good, m, SHA)
    assert not I.is_candidate(dict(good, name="x"), m, SHA)
    assert not I.is_candidate(dict(good, owner="z"), m, SHA)
    assert not I.is_candidate(dict(good, tags={"manta_reshard_plan": "p2"}), m, SHA)
    assert not I.is_candidate(good, m, "b" * 40)
    assert I.is_candidate(dict(good, state="unactivated", files=[]), m, SHA), "crash before add-file"
    assert not I.is_candidate(dict(good, state="active", files=[]), m, SHA)


def test_sha1_file(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"hello" * 1000)
    assert I.sha1_file(f, bufsize=7) == (hashlib.sha1(b"hello" * 1000).hexdigest(), 5000)


def test_image_view_is_compact():
    v = I.image_view({"uuid": "u", "name": "n", "files": [{"sha1": SHA, "size": 3, "compression": "gzip",
                                                           "stor": "local"}], "acl": []})
    assert v["files"] == [{"sha1": SHA, "size": 3, "compression": "gzip"}]
    assert "acl" not in v and v["uuid"] == "u"
