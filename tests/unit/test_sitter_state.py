"""The lab sitter's pure helpers: manatee's election ordering, state
validation, role derivation, the primary's rebuild of the state, and the
postgres configuration each role gets (reference/manatee.md §1-§4)."""
import pytest

from manta_lab import postgres, schema, sitter


def peer(ip, pg=5432, bk=12345, zone="z"):
    return {"id": f"{ip}:{pg}:{bk}", "ip": ip, "pgUrl": f"tcp://postgres@{ip}:{pg}/postgres",
            "zoneId": zone, "backupUrl": f"http://{ip}:{bk}"}


def data(p):
    return {k: p[k] for k in ("zoneId", "ip", "pgUrl", "backupUrl")}


P, S, A0, A1 = (peer(f"10.0.0.{i}", zone=f"zone{i}") for i in (1, 2, 3, 4))
STATE = {"generation": 3, "primary": P, "sync": S, "async": [A0, A1], "deposed": [],
         "initWal": "0/174A4D0"}


def test_election_ids_sorted_by_string_and_deduplicated():
    named = {
        "10.0.0.9:5432:12345-0000000001": data(peer("10.0.0.9")),
        "10.0.0.10:5432:12345-0000000002": data(peer("10.0.0.10")),
        "10.0.0.9:5432:12345-0000000007": data(peer("10.0.0.9", zone="new")),
    }
    active = sitter.active_peers(named)
    assert [p["id"] for p in active] == ["10.0.0.10:5432:12345", "10.0.0.9:5432:12345"]
    assert active[1]["zoneId"] == "new"                 # highest sequence wins
    assert set(active[0]) == {"id", "zoneId", "ip", "pgUrl", "backupUrl"}


def test_election_node_name_and_fallbacks():
    assert sitter.split_node("10.77.77.7:5432:12345-0000000164") == ("10.77.77.7:5432:12345", 164)
    with pytest.raises(ValueError):
        sitter.split_node("nodash")
    legacy = sitter.peer_from_election("10.0.0.5:5432:12345-0000000001",
                                       {"zoneId": "z", "ip": "10.0.0.5"})
    assert legacy["pgUrl"] == "tcp://postgres@10.0.0.5:5432/postgres"
    assert legacy["backupUrl"] == "http://10.0.0.5:5432"   # manatee's fallback bug, kept
    with pytest.raises(ValueError):
        sitter.active_peers({"10.0.0.5:5432:12345-0000000001": {"ip": "10.0.0.5"}})


@pytest.mark.parametrize("mutate,msg", [
    (lambda s: s.update(generation="3"), "generation"),
    (lambda s: s.update(sync=None), "oneNodeWriteMode"),
    (lambda s: s["async"][0].pop("zoneId"), r"async\[0\]"),
    (lambda s: s.update(initWal="nope"), "initWal"),
    (lambda s: s.update(freeze="yes"), "freeze"),
    (lambda s: s.update(deposed={}), "deposed"),
])
def test_validate_state_rejects(mutate, msg):
    import copy
    st = copy.deepcopy(STATE)
    mutate(st)
    with pytest.raises(ValueError, match=msg):
        sitter.validate_state(st)


def test_validate_state_accepts_shapes():
    sitter.validate_state(STATE)
    sitter.validate_state({**STATE, "freeze": True})
    sitter.validate_state({**STATE, "freeze": {"date": "d", "reason": "r"}})
    sitter.validate_state({**STATE, "sync": None, "async": [], "oneNodeWriteMode": True})
    sitter.validate_state({**STATE, "initWal": "0/0000000"})   # backfill's 7 zeros


def test_roles_and_upstreams():
    st = {**STATE, "deposed": [peer("10.0.0.8")]}
    assert sitter.role_of(st, P["id"]) == ("primary", None)
    assert sitter.role_of(st, S["id"]) == ("sync", None)
    assert sitter.role_of(st, A1["id"]) == ("async", 1)
    assert sitter.role_of(st, "10.0.0.8:5432:12345") == ("deposed", None)
    assert sitter.role_of(st, "10.0.0.99:5432:12345") == ("unassigned", None)
    assert sitter.upstream_of(st, S["id"]) == P
    assert sitter.upstream_of(st, A0["id"]) == S
    assert sitter.upstream_of(st, A1["id"]) == A0
    assert sitter.upstream_of(st, "10.0.0.99:5432:12345") == A1   # waits on the chain tail
    assert sitter.upstream_of(st, P["id"]) is None


def test_rebuilt_keeps_freeze_and_drops_unknown_keys():
    st = {**STATE, "freeze": {"date": "d", "reason": "r"}, "promote": {"id": "x"}, "custom": 1}
    out = sitter.rebuilt(st, **{"async": [A0]})
    assert out == {**STATE, "async": [A0], "freeze": {"date": "d", "reason": "r"}}
    assert "freeze" not in sitter.rebuilt({**STATE, "freeze": False})


def test_lsn_order():
    assert sitter.parse_lsn("0/174A4D0") < sitter.parse_lsn("1/0")
    assert sitter.parse_lsn("0/00000000") == 0
    assert postgres.format_lsn(sitter.parse_lsn("16/B374D848")) == "16/B374D848"


def test_postgres_conf_per_role():
    prim = postgres.render_conf(5432, None, "primary", sync_name=S["pgUrl"])
    assert "synchronous_standby_names = '\"tcp://postgres@10.0.0.2:5432/postgres\"'" in prim
    assert "listen_addresses = '127.0.0.1'" in prim
    assert "primary_conninfo" not in prim
    stby = postgres.render_conf(5433, "/z/run", "standby", upstream_port=5432,
                                app_name=A0["pgUrl"],
                                overrides={"common": {"work_mem": "8MB"}, "15": {"max_connections": 50}})
    assert ("primary_conninfo = 'host=127.0.0.1 port=5432 user=postgres "
            "application_name=tcp://postgres@10.0.0.3:5432/postgres connect_timeout=60'") in stby
    assert "synchronous_commit = 'off'" in stby and "synchronous_standby_names = ''" in stby
    assert "work_mem = '8MB'" in stby and "max_connections = 50" in stby
    assert "unix_socket_directories = '/z/run'" in stby
    for conf in (prim, stby):
        assert "wal_level = 'replica'" in conf and "hot_standby = on" in conf


def test_schema_manta_table_is_morays():
    assert schema.COLUMNS["manta"] == ["_id", "_txn_snap", "_key", "_value", "_etag", "_mtime",
                                       "_vnode", "dirname", "name", "owner", "objectid", "type"]
    assert schema.INDEX_COLUMNS["manta"] == ["dirname", "name", "owner", "objectid", "type",
                                             "_id", "_etag", "_mtime", "_vnode"]
    assert schema.COLUMNS["manta_directory_counts"][-1] == "entries"
    ddl = "\n".join(schema.statements())
    assert "_key TEXT PRIMARY KEY" in ddl and "manta_storage" not in ddl
    assert "CREATE TABLE manta_storage" in "\n".join(schema.statements(storage=True))


def test_pg_config_overrides_sections_and_flat_keys():
    ov = {"common": {"work_mem": "4MB", "a": 1}, "15": {"work_mem": "8MB"},
          "15.18": {"a": 2}, "9.6": {"a": 3}, "max_connections": 30}
    assert postgres.override_settings(ov) == {"work_mem": "8MB", "a": 2, "max_connections": 30}
    assert postgres.override_settings(None) == {}
