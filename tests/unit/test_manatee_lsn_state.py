"""Pure logic: LSN parsing/comparison and manatee state validation (reference/manatee.md 1.3, 4.6)."""
import copy
import json

import pytest

from ansible_collections.manta.ops.plugins.module_utils import lsn
from ansible_collections.manta.ops.plugins.module_utils import manatee_state as ms


# ---- LSN -------------------------------------------------------------------------

@pytest.mark.parametrize("a,b,want", [
    ("0/0000000", "0/00000000", 0),        # backfill's 7 zeros == reshard's 8
    ("0/174A4D0", "0/174A4CF", 1),
    ("1/0", "0/FFFFFFFF", 1),              # high part dominates
    ("0/A", "0/9", 1),                     # hex, not decimal / string order
    ("0/10", "0/9", 1),                    # no padding assumed (string order would say <)
    ("A/0", "9/FFFFFFFF", 1),
    ("0/3000148", "0/3000148", 0),
    ("0/2FFFFFF", "0/3000000", -1),
])
def test_lsn_compare(a, b, want):
    assert lsn.compare(a, b) == want
    assert lsn.compare(b, a) == -want
    assert lsn.at_least(a, b) == (want >= 0)


@pytest.mark.parametrize("bad", ["", "0", "0/", "/0", "0/0/0", "G/0", "0/123456789", "0x1/0",
                                 " / ", None, 5, "0 /1"])
def test_lsn_rejects_garbage(bad):
    assert not lsn.is_valid(bad)
    with pytest.raises(lsn.LsnError) as ei:
        lsn.parse(bad)
    assert "expected an LSN" in str(ei.value)


def test_lsn_bytes_and_format():
    assert lsn.to_int("1/0") == 1 << 32
    assert lsn.diff("0/3000148", "0/3000000") == 0x148
    assert lsn.diff("1/0", "0/FFFFFFFF") == 1
    assert lsn.from_int((5 << 32) | 0x1A) == "5/1A"
    assert lsn.normalize("0/00000000") == "0/0"
    assert lsn.maximum("0/5", None, "0/10", "0/F") == "0/10"
    assert lsn.maximum(None) is None


# ---- state validation ------------------------------------------------------------

def peer(n, ip=None):
    ip = ip or f"10.77.77.{n}"
    return ms.build_peer(ip, f"0000000{n}-1d55-43cd-88f2-f6bfe3960683")


def good_state():
    return {
        "generation": 3,
        "primary": peer(49), "sync": peer(48), "async": [peer(50)], "deposed": [peer(47)],
        "initWal": "0/174A4D0",
        "freeze": {"date": "2015-03-18T18:40:11.095Z", "reason": "By nate for CM-129"},
    }


def test_reference_example_is_valid_at_every_level():
    for level in ms.LEVELS:
        assert ms.validate_state(good_state(), level) == [], level


def test_build_peer_has_exactly_the_five_fields():
    p = ms.build_peer("10.1.2.3", "zone", 5432, 12345)
    assert p == {"id": "10.1.2.3:5432:12345", "ip": "10.1.2.3",
                 "pgUrl": "tcp://postgres@10.1.2.3:5432/postgres", "zoneId": "zone",
                 "backupUrl": "http://10.1.2.3:12345"}


def mutated(fn):
    s = good_state()
    fn(s)
    return s


@pytest.mark.parametrize("name,change,level,needle", [
    ("generation string", lambda s: s.update(generation="3"), "sitter", "generation: expected a number"),
    ("generation bool", lambda s: s.update(generation=True), "sitter", "generation: expected a number"),
    ("generation missing", lambda s: s.pop("generation"), "sitter", "found nothing"),
    ("generation float strict", lambda s: s.update(generation=1.5), "strict", "non-negative integer"),
    ("primary missing", lambda s: s.pop("primary"), "sitter", "primary: expected a peer object"),
    ("primary null", lambda s: s.update(primary=None), "sitter", "found null"),
    ("primary no pgUrl", lambda s: s["primary"].pop("pgUrl"), "sitter", "primary.pgUrl: expected a string"),
    ("primary id number", lambda s: s["primary"].update(id=5), "sitter", "primary.id: expected a string, found 5"),
    ("sync null w/o onwm", lambda s: s.update(sync=None), "sitter", "only valid in one-node-write mode"),
    ("sync missing", lambda s: s.pop("sync"), "sitter", "sync: expected a peer object or null"),
    ("async not list", lambda s: s.update({"async": {}}), "sitter", "async: expected an array"),
    ("async missing", lambda s: s.pop("async"), "sitter", "async: expected an array"),
    ("async entry bad", lambda s: s["async"].append("x"), "sitter", "async[1]: expected a peer object"),
    ("deposed not list", lambda s: s.update(deposed=None), "sitter", "deposed: expected an array"),
    ("deposed missing strict", lambda s: s.pop("deposed"), "strict", "deposed: expected an array"),
    ("initWal garbage", lambda s: s.update(initWal="nope"), "sitter", "initWal: expected an LSN"),
    ("initWal number", lambda s: s.update(initWal=0), "sitter", "initWal: expected an LSN"),
    ("initWal missing", lambda s: s.pop("initWal"), "sitter", "initWal"),
    ("freeze string", lambda s: s.update(freeze="yes"), "sitter", "freeze: expected null, a boolean or an object"),
    ("freeze list", lambda s: s.update(freeze=[]), "sitter", "freeze: expected null"),
    ("onwm string", lambda s: s.update(oneNodeWriteMode="true"), "sitter", "oneNodeWriteMode: expected a boolean"),
    ("backupUrl missing (adm)", lambda s: s["sync"].pop("backupUrl"), "adm", "sync.backupUrl: expected a string"),
    ("id/ip mismatch", lambda s: s["primary"].update(ip="10.77.77.99"), "strict", "primary.id: expected to start with ip"),
    ("pgUrl port mismatch", lambda s: s["primary"].update(pgUrl="tcp://postgres@10.77.77.49:5433/postgres"), "strict", "primary.pgUrl: expected host"),
    ("backupUrl port mismatch", lambda s: s["async"][0].update(backupUrl="http://10.77.77.50:1"), "strict", "async[0].backupUrl: expected host"),
    ("pgUrl shape", lambda s: s["sync"].update(pgUrl="postgres://x"), "strict", "sync.pgUrl: expected \"tcp://postgres@"),
    ("ip not v4", lambda s: s["sync"].update(ip="fe80::1", id="fe80::1:5432:12345"), "strict", "sync.ip: expected an IPv4 address"),
    ("empty zone", lambda s: s["sync"].update(zoneId=" "), "strict", "zoneId: expected the zone uuid"),
    ("extra peer key", lambda s: s["sync"].update(online=True), "strict", "unexpected keys ['online']"),
    ("duplicate peer", lambda s: s["async"].append(copy.deepcopy(s["sync"])), "strict", "async[1]: peer id 10.77.77.48:5432:12345 is also sync"),
    ("onwm with sync", lambda s: s.update(oneNodeWriteMode=True), "strict", "sync: expected null in one-node-write mode"),
    ("freeze no reason", lambda s: s.update(freeze={"date": "x"}), "strict", "freeze.reason: expected a string"),
])
def test_each_rule_rejects(name, change, level, needle):
    errs = ms.validate_state(mutated(change), level)
    assert errs, name
    assert any(needle in e for e in errs), (name, errs)
    # and the rule is not stricter than its level: the pristine state passes
    assert ms.validate_state(good_state(), level) == []


def test_levels_nest():
    # a missing backupUrl is tolerated by the sitter rules but not by manatee-adm's
    s = mutated(lambda s: s["sync"].pop("backupUrl"))
    assert ms.validate_state(s, "sitter") == []
    assert ms.validate_state(s, "adm")
    # an inconsistent id is fine for the sitter and adm, not for strict
    s = mutated(lambda s: s["primary"].update(ip="10.77.77.99"))
    assert ms.validate_state(s, "adm") == []
    assert ms.validate_state(s, "strict")


def test_onwm_state_is_valid():
    s = {"generation": 1, "primary": peer(1), "initWal": "0/00000000", "deposed": [], "sync": None,
         "async": [], "oneNodeWriteMode": True,
         "freeze": {"date": "2020-01-01T00:00:00.000Z", "reason": "manatee setup: one node write mode"}}
    assert ms.validate_state(s, "strict") == []


def test_boolean_freeze_and_missing_deposed_are_tolerated_by_sitters():
    s = mutated(lambda s: (s.update(freeze=True), s.pop("deposed")))
    assert ms.validate_state(s, "sitter") == []
    assert ms.freeze_info(s) == {"frozen": True, "date": "unknown", "reason": "unknown"}


def test_not_an_object():
    assert ms.validate_state([], "sitter") == ["state: expected a JSON object, found []"]


def test_check_valid_raises_with_all_errors():
    s = mutated(lambda s: (s.update(initWal="x"), s.update(sync=None)))
    with pytest.raises(ms.StateInvalid) as ei:
        ms.check_valid(s, "adm", "refusing")
    assert len(ei.value.errors) == 2
    assert "refusing: state fails validation" in str(ei.value)


# ---- peer specs, names, election order ------------------------------------------

def test_peer_from_spec_short_form_and_ports():
    p = ms.peer_from_spec({"zone_id": "z1", "ip": "127.0.0.1", "pg_port": 26001, "backup_port": 26002})
    assert p == {"id": "127.0.0.1:26001:26002", "ip": "127.0.0.1",
                 "pgUrl": "tcp://postgres@127.0.0.1:26001/postgres", "zoneId": "z1",
                 "backupUrl": "http://127.0.0.1:26002"}
    # the manatee form passes through, ports taken from the id
    q = ms.peer_from_spec({"id": "10.0.0.1:6000:7000", "ip": "10.0.0.1", "zoneId": "z2"})
    assert q["pgUrl"] == "tcp://postgres@10.0.0.1:6000/postgres"
    assert q["backupUrl"] == "http://10.0.0.1:7000"


@pytest.mark.parametrize("spec,needle", [
    ({"ip": "10.0.0.1"}, "zone_id (or zoneId) and ip are required"),
    ({"zone_id": "z"}, "zone_id (or zoneId) and ip are required"),
    ({"zone_id": "z", "ip": "10.0.0.1", "port": 1}, "unknown keys ['port']"),
    ("z", "expected a dict"),
])
def test_peer_from_spec_rejects(spec, needle):
    with pytest.raises(ms.ManateeError) as ei:
        ms.peer_from_spec(spec, "primary")
    assert needle in str(ei.value)


@pytest.mark.parametrize("bad", ["", "a/b", "..", None])
def test_shard_name_rejected(bad):
    with pytest.raises(ms.ManateeError) as ei:
        ms.shard_paths(bad)
    assert "is not a shard name" in str(ei.value)


def test_shard_paths():
    assert ms.shard_paths("2.moray.x") == {
        "root": "/manatee/2.moray.x", "state": "/manatee/2.moray.x/state",
        "election": "/manatee/2.moray.x/election", "history": "/manatee/2.moray.x/history"}


def test_election_dedup_and_string_order():
    names = ["10.0.0.9:5432:12345-0000000003", "10.0.0.10:5432:12345-0000000007",
             "10.0.0.9:5432:12345-0000000011", "garbage", "10.0.0.2:5432:12345-0000000001"]
    data = {"10.0.0.9:5432:12345-0000000011": b'{"zoneId":"z9"}'}
    act = ms.parse_election(names, data)
    ids = [a["id"] for a in act if a["id"]]
    # string order: "10.0.0.10" < "10.0.0.2" < "10.0.0.9"
    assert ids == ["10.0.0.10:5432:12345", "10.0.0.2:5432:12345", "10.0.0.9:5432:12345"]
    nine = [a for a in act if a["id"] == "10.0.0.9:5432:12345"][0]
    assert nine["seq"] == 11 and nine["data"] == {"zoneId": "z9"}
    assert [a["name"] for a in act if a["id"] is None] == ["garbage"]


def test_find_peer_by_every_identity():
    s = good_state()
    assert ms.find_peer(s, "10.77.77.48:5432:12345")[0] == "sync"
    assert ms.find_peer(s, s["async"][0]["zoneId"])[:2] == ("async", 0)
    assert ms.find_peer(s, s["deposed"][0]["pgUrl"])[0] == "deposed"
    assert ms.find_peer(s, "10.77.77.49")[0] == "primary"
    assert ms.find_peer(s, "nobody") is None
    # an ip shared by two peers (the lab) is ambiguous
    s["sync"] = ms.build_peer("10.77.77.49", "zz", 5433, 12346)
    assert ms.find_peer(s, "10.77.77.49") is None


def test_new_cluster_state_shape():
    st = ms.new_cluster_state(peer(1), peer(2), [peer(3)], "0/3000148", "reshard plan X")
    assert st["generation"] == 1 and st["deposed"] == [] and st["initWal"] == "0/3000148"
    assert st["freeze"]["reason"] == "reshard plan X"
    assert st["freeze"]["date"].endswith("Z")
    assert ms.validate_state(st, "strict") == []
    assert ms.dumps(st) == json.dumps(st, separators=(",", ":"))
    assert " " not in ms.dumps(st).replace("reshard plan X", "")


def test_same_topology_ignores_freeze_and_wal():
    a = ms.new_cluster_state(peer(1), peer(2), [peer(3)], "0/1", "r1")
    b = ms.new_cluster_state(peer(1), peer(2), [peer(3)], "0/9", "r2")
    assert ms.same_topology(a, b)
    c = ms.new_cluster_state(peer(2), peer(1), [peer(3)], "0/1", "r1")
    assert not ms.same_topology(a, c)


# ---- freeze decisions ---------------------------------------------------------------

R = "reshard plan 1"


def test_plan_freeze():
    s = good_state()
    s.pop("freeze")
    new, foreign = ms.plan_freeze(s, R, now="T")
    assert new["freeze"] == {"date": "T", "reason": R} and foreign is None
    assert "freeze" not in s, "the input is not modified"
    same, foreign = ms.plan_freeze(new, R)
    assert same is new and foreign is None
    other = good_state()  # frozen "By nate for CM-129"
    kept, foreign = ms.plan_freeze(other, R)
    assert kept == good_state() and foreign["reason"] == "By nate for CM-129"
    forced, foreign = ms.plan_freeze(other, R, force=True, now="T")
    assert forced["freeze"]["reason"] == R and foreign["reason"] == "By nate for CM-129"
    boolean = dict(good_state(), freeze=True)
    kept, foreign = ms.plan_freeze(boolean, "unknown")
    assert kept["freeze"] is True and foreign == {"date": "unknown", "reason": "unknown"}


def test_plan_unfreeze():
    ours = dict(good_state(), freeze={"date": "T", "reason": R})
    new, matches, foreign = ms.plan_unfreeze(ours, R)
    assert "freeze" not in new and matches and foreign is None
    assert ours["freeze"]["reason"] == R, "the input is not modified"
    other = good_state()
    kept, matches, foreign = ms.plan_unfreeze(other, R)
    assert kept["freeze"]["reason"] == "By nate for CM-129" and not matches
    assert foreign["reason"] == "By nate for CM-129"
    gone, matches, foreign = ms.plan_unfreeze(other, None, force=True)
    assert "freeze" not in gone and not matches and foreign
    # a boolean freeze's reason is "unknown" for display only: it never matches
    boolean = dict(good_state(), freeze=True)
    kept, matches, _ = ms.plan_unfreeze(boolean, "unknown")
    assert kept["freeze"] is True and not matches
    none = dict(good_state(), freeze=None)
    assert ms.plan_unfreeze(none, R) == (none, False, None)
