"""The exact match of the scan (classify), the metadata swap decision, moray's
serialisation and etag, durations and job names."""
import json
import zlib

import pytest

from ansible_collections.manta.ops.plugins.module_utils import evacuate_common as C
from ansible_collections.manta.ops.plugins.module_utils import evacuate_metadata as M
from ansible_collections.manta.ops.plugins.module_utils import evacuate_scan as S

N = "3.stor.example.com"


def value(**kw):
    v = {"dirname": "/o/stor/d", "key": "/o/stor/d/f", "headers": {}, "mtime": 1, "name": "f",
         "owner": "o", "roles": [], "type": "object", "contentLength": 10,
         "contentMD5": "bWQ1", "contentType": "text/plain", "etag": "oid", "objectId": "oid",
         "sharks": [{"datacenter": "dc3", "manta_storage_id": N},
                    {"datacenter": "dc1", "manta_storage_id": "1.stor.example.com"}],
         "vnode": 7}
    v.update(kw)
    return v


def cls(v, key="/o/stor/d/f", nodes=(N,)):
    return S.classify(key, 42, "ABCDEF01 ", json.dumps(v) if not isinstance(v, str) else v, list(nodes))


def test_classify_pending_row_fields():
    (r,) = cls(value())
    key, node, mid, oid, owner, path_owner, size, md5, etag, sharks, status, reason, detail = r
    assert (key, node, mid, oid, owner, path_owner, size, md5, etag) == \
        ("/o/stor/d/f", N, 42, "oid", "o", "o", 10, "bWQ1", "ABCDEF01")
    assert json.loads(sharks) == [["dc3", N], ["dc1", "1.stor.example.com"]]
    assert (status, reason) == ("pending", None)


def test_classify_is_exact_not_a_substring_match():
    # the id appears in a header and a key, not in sharks: the pre-filter would keep it
    v = value(headers={"m-note": f'"{N}"'}, sharks=[{"datacenter": "dc1",
                                                     "manta_storage_id": "1.stor.example.com"}])
    assert cls(v) == []
    # a longer id that contains the node's id is another node
    v = value(sharks=[{"datacenter": "dc3", "manta_storage_id": "13.stor.example.com"}])
    assert cls(v) == []


def test_classify_snaplink_uses_creator():
    (r,) = cls(value(creator="c"))
    assert r[5] == "c" and r[4] == "o"


@pytest.mark.parametrize("v,key,expect", [
    (value(), "/o/uploads/a/abc/0", ("skipped", "mpu_part")),
    (value(contentLength=0), "/o/stor/d/f", ("skipped", "zero_byte")),
    (value(objectId=None), "/o/stor/d/f", ("error", "bad_manta_object")),
    (value(contentMD5=None), "/o/stor/d/f", ("error", "bad_manta_object")),
    (value(sharks=[{"datacenter": "dc3", "manta_storage_id": N}] * 2), "/o/stor/d/f",
     ("error", "duplicate_shark")),
])
def test_classify_fates(v, key, expect):
    (r,) = cls(v, key=key)
    assert (r[10], r[11]) == expect


def test_classify_unparseable_json_is_an_error_for_the_named_node():
    (r,) = cls('{"sharks": [{"manta_storage_id": "' + N + '"}', nodes=(N, "9.stor.example.com"))
    assert r[1] == N and (r[10], r[11]) == ("error", "bad_manta_object")


def test_classify_several_evacuated_nodes():
    rows = cls(value(), nodes=(N, "1.stor.example.com"))
    assert sorted(r[1] for r in rows) == ["1.stor.example.com", N]


def test_like_patterns_escape_wildcards():
    assert S.like_patterns(["a_b%c"]) == ['%"a\\_b\\%c"%']


def _text(q):
    return repr(q)


def test_window_query_prefilter_forms():
    # one node: a LIKE pattern over the value
    q, extra = S.window_query("_idx", ["a"])
    assert extra == [['%"a"%']] and "_value LIKE ANY" in _text(q) and "_idx" in _text(q)
    # more: the storage ids cut out after "manta_storage_id", tested against the node set,
    # with the LIKE patterns only for rows naming that key more often than that
    nodes = ["n%d" % i for i in range(20)]
    q, extra = S.window_query("_id", nodes)
    assert extra == [nodes] * S.EXTRACT_SHARKS + [S.like_patterns(nodes)]
    assert _text(q).count("= ANY") == S.EXTRACT_SHARKS and "split_part" in _text(q)
    q, extra = S.window_query("_id", ["a", "b"], max_like=2)
    assert extra == [['%"a"%', '%"b"%']]


ODD_VALUES = [
    '{"sharks": [{"manta_storage_id": "%s"}], "contentLength": NaN, "objectId": "o", '
    '"owner": "o", "contentMD5": "m"}' % N,
    '{"sharks": [{"manta_storage_id": "%s"}], "contentLength": 123456789012345678901234567890, '
    '"objectId": "o", "owner": "o", "contentMD5": "m"}' % N,
    '{"sharks": [{"manta_storage_id": "%s", "datacenter": "\\ud800"}], "contentLength": 5, '
    '"objectId": "o", "owner": "o", "contentMD5": "m"}' % N,
    '{"sharks": [], "sharks": [{"manta_storage_id": "%s", "datacenter": "d\u00e9"}], '
    '"contentLength": 5, "objectId": "o", "owner": "o", "contentMD5": "m"}' % N,
    '{"sharks": [{"manta_storage_id": ["%s"]}, {"manta_storage_id": "%s"}], "contentLength": 1.5, '
    '"objectId": "o", "owner": "o", "contentMD5": "m"}' % (N, N),
    '{"sharks": [{"manta_storage_id": "%s"}], "contentLength": true, "objectId": "o", '
    '"owner": 7, "creator": "c", "contentMD5": "m"}' % N,
    json.dumps(value(contentLength=-3)), json.dumps(value(contentLength=0.0)),
    json.dumps(value(contentLength=2 ** 63)), json.dumps(value(owner=None, creator="c")),
    '[1, 2]', '{"sharks": {"manta_storage_id": "%s"}}' % N, 'not json "%s"' % N,
]


@pytest.mark.parametrize("raw", ODD_VALUES)
def test_classify_same_fates_with_or_without_orjson(raw, monkeypatch):
    """orjson is only a faster parse: every value gets the fates the standard library's
    parse gives (orjson refuses NaN and lone surrogates and reads huge integers as floats;
    those fall back or land on the same fate). The sharks column may differ in escaping
    only, so it is compared parsed."""
    assert S._orjson is not None, "orjson is pinned in requirements.txt"
    fast = S.classify("/o/stor/d/f", 1, "E", raw, [N, "9.stor.example.com"])
    monkeypatch.setattr(S, "_orjson", None)
    slow = S.classify("/o/stor/d/f", 1, "E", raw, [N, "9.stor.example.com"])

    def norm(rows):
        return [r[:9] + (json.loads(r[9]) if r[9] else None,) + r[10:12] for r in rows]
    assert norm(fast) == norm(slow)
    assert all(r[10] in ("pending", "skipped", "error") for r in fast)


def test_classify_contentlength_beyond_bigint_is_an_error_not_a_crash():
    (r,) = cls(value(contentLength=2 ** 63))
    assert (r[10], r[11], r[6]) == ("error", "bad_manta_object", 0)
    (r,) = cls('{"sharks": [{"manta_storage_id": "%s"}], "contentLength": NaN, "objectId": "o", '
               '"owner": "o", "contentMD5": "m"}' % N)
    assert (r[10], r[11]) == ("error", "bad_manta_object")


def test_copy_lines_fast_path_matches_the_escaping_path():
    from ansible_collections.manta.ops.plugins.module_utils import evacuate_store as ST
    rows = cls(value()) + cls(value(contentLength=0)) + cls(value(objectId=None))
    rows.append(("/o/stor/tab\there\nnl", N, 1, "o", "o", "o", 5, "m", "E",
                 '[["d\\"c",null]]', "pending", None, None))
    rows.append(("/o/stor/x", N, 1, "o", "o", "o", 5, "m", "E", '[["dc\tx","n"]]', "pending",
                 None, None))
    for r in rows:
        assert ST._copy_line(r) == "\t".join(ST._copy_field(x) for x in r)
    chunks = ST._Chunks(["a", "b", "c"], "\n")
    assert chunks.read(512) + chunks.read(512) == "a\nb\nc\n" and chunks.read(512) == ""


# ---- metadata ---------------------------------------------------------------------------

def row(oid=1, node=N, dest="2.stor.example.com", **kw):
    r = {"oid": oid, "key": "/o/stor/d/f", "node": node, "dest": dest, "object_id": "oid",
         "md5": "bWQ1"}
    r.update(kw)
    return r


DCS = {"2.stor.example.com": "dc2", "4.stor.example.com": "dc1"}


def test_decide_swaps_in_place_keeping_everything_else():
    v = value()
    raw = M.value_string(v)
    new, fates = M.decide(raw, [row()], DCS)
    assert fates == [(1, "done", None, None)]
    assert new["sharks"] == [{"datacenter": "dc2", "manta_storage_id": "2.stor.example.com"},
                             {"datacenter": "dc1", "manta_storage_id": "1.stor.example.com"}]
    assert {k: x for k, x in new.items() if k != "sharks"} == \
        {k: x for k, x in v.items() if k != "sharks"}
    # key order is kept, so the text differs only in the shark entry
    assert M.value_string(new).replace("dc2", "dc3").replace("2.stor", "3.stor") == raw


def test_decide_already_swapped_deleted_changed():
    swapped = value(sharks=[{"datacenter": "dc2", "manta_storage_id": "2.stor.example.com"},
                            {"datacenter": "dc1", "manta_storage_id": "1.stor.example.com"}])
    assert M.decide(M.value_string(swapped), [row()], DCS) == \
        (None, [(1, "done", "already_swapped", None)])
    assert M.decide(None, [row()], DCS)[1][0][1:3] == ("skipped", "object_deleted")
    # overwritten: new objectId, no longer on the node
    other = value(objectId="new", contentMD5="bmV3",
                  sharks=[{"datacenter": "dc1", "manta_storage_id": "1.stor.example.com"}])
    assert M.decide(M.value_string(other), [row()], DCS)[1][0][1:3] == ("skipped", "object_changed")
    # overwritten but still on the node: re-plan the new version
    again = value(objectId="new", contentMD5="bmV3")
    f = M.decide(M.value_string(again), [row()], DCS)[1][0]
    assert f[1] == "refresh" and f[2]["objectId"] == "new"
    # metadata-only change (same object): swap on the new value
    hdr = value(headers={"m-x": "1"})
    new, fates = M.decide(M.value_string(hdr), [row()], DCS)
    assert fates[0][1] == "done" and new["headers"] == {"m-x": "1"}


def test_decide_errors():
    dup = value(sharks=[{"datacenter": "dc3", "manta_storage_id": N}] * 2)
    assert M.decide(M.value_string(dup), [row()], DCS)[1][0][1:3] == ("error", "duplicate_shark")
    both = value(sharks=[{"datacenter": "dc3", "manta_storage_id": N},
                         {"datacenter": "dc2", "manta_storage_id": "2.stor.example.com"}])
    assert M.decide(M.value_string(both), [row()], DCS)[1][0][1:3] == \
        ("error", "dest_already_in_sharks")
    assert M.decide("{not json", [row()], DCS)[1][0][1:3] == ("error", "bad_manta_object")


def test_decide_two_evacuated_copies_of_one_key():
    v = value(sharks=[{"datacenter": "dc3", "manta_storage_id": N},
                      {"datacenter": "dc1", "manta_storage_id": "1.stor.example.com"}])
    rows = [row(1), row(2, node="1.stor.example.com", dest="4.stor.example.com")]
    new, fates = M.decide(M.value_string(v), rows, DCS)
    assert [f[1] for f in fates] == ["done", "done"]
    assert [s["manta_storage_id"] for s in new["sharks"]] == ["2.stor.example.com",
                                                              "4.stor.example.com"]


def test_value_string_and_etag_are_morays():
    v = {"a": "é", "b": [1, 2.5, None, True], "c": {"d": "x\ny"}}
    s = M.value_string(v)
    assert s == '{"a":"é","b":[1,2.5,null,true],"c":{"d":"x\\ny"}}'     # JSON.stringify
    assert M.etag_of(s) == "%08X" % (zlib.crc32(s.encode()) & 0xFFFFFFFF)
    try:
        from manta_lab import rpc
    except ImportError:
        return
    assert M.etag_of(s) == rpc.etag_of(s) and M.value_string(v) == rpc.value_string(v)


@pytest.mark.parametrize("text,secs", [("3600", 3600.0), ("90m", 5400.0), ("8h", 28800.0),
                                       ("1d", 86400.0), ("45s", 45.0), (120, 120.0), ("", None),
                                       (None, None), ("0", None)])
def test_parse_duration(text, secs):
    assert C.parse_duration(text) == secs


def test_parse_duration_rejects_garbage():
    with pytest.raises(C.EvacError, match="is not a duration"):
        C.parse_duration("soon")


def test_job_names():
    assert C.default_job_name(["3.stor.x"]) == "evacuate-3.stor.x"
    a = C.default_job_name(["1.stor.x", "2.stor.x"])
    assert a == C.default_job_name(["2.stor.x", "1.stor.x"]) and a.startswith("evacuate-2-nodes-")
    with pytest.raises(C.EvacError, match="not a valid job name"):
        C.check_job_name("../x")
