"""Pure logic of the INDEX_MORAY_SHARDS edits (module_utils/index_shards.py)."""
import copy

import pytest

from ansible_collections.manta.ops.plugins.module_utils import index_shards as IS

D = "lab.example.com"


def lst(*entries):
    return [dict(e) for e in entries]


BASE = lst({"host": f"1.moray.{D}"}, {"host": f"2.moray.{D}", "last": True})


def test_full_name_appends_domain_unless_present():
    assert IS.full_name("2.moray", D) == f"2.moray.{D}"
    assert IS.full_name(f"2.moray.{D}", D) == f"2.moray.{D}"
    assert IS.full_name(" 3.moray ", D) == f"3.moray.{D}"
    assert IS.full_name("2.moray", None) == "2.moray"
    with pytest.raises(IS.ShardListError):
        IS.full_name("", D)


@pytest.mark.parametrize("bad, text", [
    ("1.moray", "must be a JSON array"),
    ([{"nohost": 1}], "INDEX_MORAY_SHARDS[0] must be an object"),
    (["1.moray"], "must be an object"),
    ([{"host": "a"}, {"host": "a"}], "twice"),
])
def test_validate_rejects_malformed_lists(bad, text):
    with pytest.raises(IS.ShardListError) as exc:
        IS.validate(bad)
    assert text in str(exc.value)


def test_validate_absent_key_is_empty_list():
    assert IS.validate(None) == []


def test_mark_read_only_touches_only_named_and_keeps_last():
    before = lst({"host": f"1.moray.{D}", "extra": {"x": 1}}, {"host": f"2.moray.{D}"},
                 {"host": f"3.moray.{D}", "last": True})
    keep = copy.deepcopy(before)
    after = IS.mark(before, [f"1.moray.{D}"], True)
    assert before == keep, "input must not be modified"
    assert after == [{"host": f"1.moray.{D}", "extra": {"x": 1}, "readOnly": True},
                     {"host": f"2.moray.{D}"},
                     {"host": f"3.moray.{D}", "last": True}]


def test_mark_read_write_deletes_flag_and_leaves_other_read_only_entries():
    before = lst({"host": "a", "readOnly": True}, {"host": "b", "readOnly": True},
                 {"host": "c", "readOnly": True, "last": True})
    after = IS.mark(before, ["a", "c"], False)
    assert after == [{"host": "a"}, {"host": "b", "readOnly": True}, {"host": "c", "last": True}]


def test_mark_already_in_state_is_identity():
    before = lst({"host": "a", "readOnly": False}, {"host": "b", "last": True})
    # readOnly:false already means read-write: the entry is left as it is.
    assert IS.mark(before, ["a"], False) == before
    ro = lst({"host": "a", "readOnly": True}, {"host": "b", "last": True})
    assert IS.mark(ro, ["a"], True) == ro


def test_mark_unknown_shard_is_an_error_naming_it():
    with pytest.raises(IS.ShardListError) as exc:
        IS.mark(BASE, ["9.moray"], True)
    assert "9.moray" in str(exc.value) and f"1.moray.{D}" in str(exc.value)


def test_add_appends_and_moves_last():
    after = IS.add(BASE, f"3.moray.{D}", read_only=True)
    assert after == [{"host": f"1.moray.{D}"}, {"host": f"2.moray.{D}"},
                     {"host": f"3.moray.{D}", "readOnly": True, "last": True}]
    assert IS.add(after, f"3.moray.{D}") == after


def test_add_to_empty_list():
    assert IS.add([], "a") == [{"host": "a", "last": True}]


def test_fix_last_repairs_misplaced_last_only():
    broken = lst({"host": "a", "last": True}, {"host": "b", "readOnly": True}, {"host": "c", "last": False})
    assert IS.fix_last(broken) == [{"host": "a"}, {"host": "b", "readOnly": True}, {"host": "c", "last": True}]
    ok = lst({"host": "a", "last": False}, {"host": "b", "last": True})
    assert IS.fix_last(ok) == ok, "a false last on a non-final entry is left alone"


def test_ensure_reshard_phase7_then_phase15_round_trip():
    old, new = f"1.moray.{D}", f"3.moray.{D}"
    ro = IS.ensure(BASE, [old, new], read_only=True)
    assert ro == [{"host": old, "readOnly": True}, {"host": f"2.moray.{D}"},
                  {"host": new, "readOnly": True, "last": True}]
    assert IS.ensure(ro, [old, new], read_only=True) == ro, "idempotent"
    rw = IS.ensure(ro, [old, new], read_only=False, missing="fail")
    assert rw == [{"host": old}, {"host": f"2.moray.{D}"}, {"host": new, "last": True}]
    assert IS.summary(rw) == [{"host": old, "read_only": False}, {"host": f"2.moray.{D}", "read_only": False},
                              {"host": new, "read_only": False}]


def test_ensure_missing_fail_changes_nothing():
    with pytest.raises(IS.ShardListError) as exc:
        IS.ensure(BASE, [f"3.moray.{D}"], read_only=False, missing="fail")
    assert f"3.moray.{D}" in str(exc.value)


def test_ensure_present_without_read_only_keeps_flags():
    ro = lst({"host": "a", "readOnly": True}, {"host": "b", "last": True})
    assert IS.ensure(ro, ["a", "c"]) == [{"host": "a", "readOnly": True}, {"host": "b"},
                                         {"host": "c", "last": True}]


def test_ensure_absent_removes_and_remarks_last():
    three = IS.add(BASE, "c")
    assert IS.ensure(three, ["c"], state="absent") == BASE
    assert IS.ensure(BASE, ["zzz"], state="absent") == BASE
    assert IS.ensure([{"host": "a", "last": True}], ["a"], state="absent") == []
