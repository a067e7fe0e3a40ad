"""Pure logic of module_utils/sapi.py: metadata merge/delete, diffs, the
compare-and-swap check, secret masking, instance matching."""
import pytest

from ansible_collections.manta.ops.plugins.module_utils import sapi as S
from ansible_collections.manta.ops.plugins.modules import sapi_instance, sapi_metadata


def test_apply_update_is_shallow_per_key_replace():
    cur = {"A": 1, "OBJ": {"x": 1, "y": 2}, "ARR": [1, 2]}
    new = S.apply_update(cur, {"OBJ": {"x": 9}, "ARR": [3], "B": None})
    assert new == {"A": 1, "OBJ": {"x": 9}, "ARR": [3], "B": None}
    assert cur == {"A": 1, "OBJ": {"x": 1, "y": 2}, "ARR": [1, 2]}, "input untouched"


def test_apply_delete_ignores_absent_keys():
    assert S.apply_delete({"A": 1, "B": 2}, ["B", "C"]) == {"A": 1}


def test_changed_keys_sees_presence_and_null():
    assert S.changed_keys({"A": 1, "N": None}, {"A": 1}) == ["N"]
    assert S.changed_keys({"A": 1}, {"A": 1, "N": None}) == ["N"]
    assert S.changed_keys({"A": [1]}, {"A": [1]}) == []
    assert S.changed_keys({"A": "1"}, {"A": 1}) == ["A"], "types matter: SAPI stores JSON values"


@pytest.mark.parametrize("current, expected, desired, deleting, lost", [
    # still holds the expected value: no conflict
    ({"H": "old"}, {"H": "old"}, {"H": "new"}, (), []),
    # already swapped by us (re-run): no conflict
    ({"H": "new"}, {"H": "old"}, {"H": "new"}, (), []),
    # someone else swapped it: conflict
    ({"H": "other"}, {"H": "old"}, {"H": "new"}, (), [("H", "old", "other")]),
    # expected absent but present
    ({"H": "x"}, {"H": None}, {"H": "new"}, (), [("H", None, "x")]),
    # expected absent and absent
    ({}, {"H": None}, {"H": "new"}, (), []),
    # expected a value but the key is gone
    ({}, {"H": "old"}, {"H": "new"}, (), [("H", "old", None)]),
    # delete guarded by value, already deleted: done
    ({}, {"H": "old"}, None, ("H",), []),
    # delete guarded by value, value changed by someone else
    ({"H": "zzz"}, {"H": "old"}, None, ("H",), [("H", "old", "zzz")]),
])
def test_cas_conflicts(current, expected, desired, deleting, lost):
    assert S.cas_conflicts(current, expected, desired, deleting) == lost


def test_describe_conflicts_names_key_expected_found_and_masks_secrets():
    text = S.describe_conflicts([("HASH_RING_IMAGE", "a", "b"), ("UFDS_ROOT_PW", "p1", "p2"),
                                 ("K", None, "v")])
    assert "HASH_RING_IMAGE: expected 'a', found 'b'" in text
    assert "p1" not in text and "p2" not in text
    assert "K: expected absent, found 'v'" in text


def test_redact_masks_secret_looking_keys_only():
    red = S.redact({"UFDS_ROOT_PW": "s", "DB_PASSWORD": "s", "API_TOKEN": "t", "HASH_RING_IMAGE": "img",
                    "PW_LENGTH": 3, "SHARD": "1"})
    assert red == {"UFDS_ROOT_PW": S.REDACTED, "DB_PASSWORD": S.REDACTED, "API_TOKEN": S.REDACTED,
                   "HASH_RING_IMAGE": "img", "PW_LENGTH": 3, "SHARD": "1"}


def test_key_diff_shows_only_changed_keys():
    d = S.key_diff({"A": 1, "B": 2, "UFDS_ROOT_PW": "x"}, {"A": 1, "B": 3, "C": 4, "UFDS_ROOT_PW": "y"})
    assert d == {"before": {"B": 2, "UFDS_ROOT_PW": S.REDACTED},
                 "after": {"B": 3, "C": 4, "UFDS_ROOT_PW": S.REDACTED}}


def _inst(shard="1", tags=None, server="s1"):
    return {"uuid": "u", "metadata": {"SHARD": shard},
            "params": {"server_uuid": server, "tags": tags or {}}}


def test_instance_matches_shard_tags_server():
    inst = _inst(shard=1, tags={"manta_role": "postgres", "plan": "p1"})
    assert S.instance_matches(inst, shard="1", tags={"plan": "p1"}, server_uuid="s1")
    assert not S.instance_matches(inst, shard="2")
    assert not S.instance_matches(inst, tags={"plan": "p2"})
    assert not S.instance_matches(inst, tags={"other": "x"})
    assert not S.instance_matches(inst, server_uuid="s2")


def test_instance_matches_prefers_vmapi_server_over_stale_params():
    inst = _inst(server="stale")
    assert S.instance_matches(inst, server_uuid="real", vm={"server_uuid": "real"})
    assert not S.instance_matches(inst, server_uuid="stale", vm={"server_uuid": "real"})


def test_format_alias():
    u = "0123abcd-0000-4000-8000-000000000000"
    assert S.format_alias("1.postgres.lab-{uuid8}", u) == "1.postgres.lab-0123abcd"
    with pytest.raises(ValueError) as exc:
        S.format_alias("x-{nope}", u)
    assert "valid placeholders" in str(exc.value)


def test_is_uuid():
    assert S.is_uuid("0123abcd-0000-4000-8000-000000000000")
    assert not S.is_uuid("manta")
    assert not S.is_uuid(None)


def test_resolve_without_target_is_an_error():
    c = S.SapiClient("http://127.0.0.1:1")
    with pytest.raises(LookupError):
        c.resolve()
    with pytest.raises(LookupError):
        c.resolve(uuid="not-a-uuid")


def test_sapi_client_sends_accept_version_2():
    c = S.SapiClient("http://127.0.0.1:1")
    assert c.session.headers["Accept-Version"] == "~2"


def test_sapi_metadata_compute_states():
    params = {"metadata": {"A": 2}, "keys": None, "params": None}
    meta, prm, wanted, deleting = sapi_metadata.compute("present", {"A": 1, "B": 1}, {"alias": "x"}, params)
    assert meta == {"A": 2, "B": 1} and prm == {"alias": "x"} and wanted == ["A"] and deleting == ()
    meta, _, wanted, deleting = sapi_metadata.compute("absent", {"A": 1, "B": 1}, {},
                                                      {"metadata": None, "keys": ["B", "Z"], "params": None})
    assert meta == {"A": 1} and wanted == ["B", "Z"] and set(deleting) == {"B", "Z"}
    meta, _, wanted, _ = sapi_metadata.compute("read", {"A": 1}, {}, {"metadata": None, "keys": ["A"],
                                                                       "params": None})
    assert meta == {"A": 1} and wanted == ["A"]


def test_trim_message_keeps_first_and_last_lines():
    msg = "\n".join(f"line {i}" for i in range(10))
    out = sapi_instance.trim_message(msg)
    assert out.splitlines() == ["line 0", "line 1", "... (6 lines) ...", "line 8", "line 9"]
    assert sapi_instance.trim_message("short") == "short"
