"""Pure logic: manatee-adm verify messages (reference/manatee.md 2.5), show rendering,
lag formatting, downstream-row choice and the wait predicates."""
import pytest

from ansible_collections.manta.ops.plugins.module_utils import manatee_facts as mf
from ansible_collections.manta.ops.plugins.module_utils import manatee_pg as mpg
from ansible_collections.manta.ops.plugins.module_utils import manatee_state as ms
from ansible_collections.manta.ops.plugins.module_utils import manatee_verify as mv

P = ms.build_peer("10.0.0.1", "09957297-aaaa-bbbb-cccc-000000000001")
S = ms.build_peer("10.0.0.2", "a376df2b-aaaa-bbbb-cccc-000000000002")
A0 = ms.build_peer("10.0.0.3", "bb348824-aaaa-bbbb-cccc-000000000003")
A1 = ms.build_peer("10.0.0.4", "cc111111-aaaa-bbbb-cccc-000000000004")
D = ms.build_peer("10.0.0.5", "dd222222-aaaa-bbbb-cccc-000000000005")


def state(asyncs=(A0,), deposed=(), **kw):
    s = {"generation": 2, "primary": P, "sync": S, "async": list(asyncs), "deposed": list(deposed),
         "initWal": "0/174A4D0"}
    s.update(kw)
    return s


def row(to, sync_state, st="streaming", addr=None):
    return {"application_name": to["pgUrl"], "client_addr": addr or to["ip"], "state": st,
            "sync_state": sync_state, "sent_lsn": "0/79E8E0A0", "write_lsn": "0/79E8E0A0",
            "flush_lsn": "0/79E8E0A0", "replay_lsn": "0/79E8DCA0"}


def healthy_pg(st):
    pg = {st["primary"]["id"]: {"error": None, "repl": row(st["sync"], "sync")}}
    chain = [st["sync"]] + st["async"]
    for i, p in enumerate(chain):
        nxt = chain[i + 1] if i + 1 < len(chain) else None
        pg[p["id"]] = {"error": None, "repl": row(nxt, "async") if nxt else None,
                       "lag_seconds": 0.4}
    return pg


def test_healthy_cluster_has_no_issues():
    st = state(asyncs=(A0, A1))
    assert mv.issues(st, healthy_pg(st)) == ([], [])


def test_primary_down_matches_manatee_adm_doc_example():
    # doc example: primary fail, sync ok streaming to async
    st = state()
    pg = healthy_pg(st)
    pg[P["id"]] = {"error": "ECONNREFUSED", "repl": None}
    errors, warnings = mv.issues(st, pg)
    assert mv.verify_lines(errors, warnings) == [
        'error: cannot query postgres on primary: peer "09957297": ECONNREFUSED',
        'error: peer "09957297": downstream replication peer not connected',
    ]


def test_async_down_is_only_its_upstreams_not_connected_warning():
    st = state()
    pg = healthy_pg(st)
    pg[S["id"]]["repl"] = None
    pg[A0["id"]] = {"error": "ECONNREFUSED", "repl": None}
    assert mv.verify_lines(*mv.issues(st, pg)) == [
        'warning: peer "a376df2b": downstream replication peer not connected']


def test_sync_down_stops_after_deposed_and_async_checks():
    st = state(asyncs=(), deposed=(D,))
    pg = healthy_pg(st)
    pg[S["id"]] = {"error": "postgres request timed out", "repl": None}
    pg[P["id"]]["repl"] = None  # would be an error, but checks stop at the sync failure
    assert mv.verify_lines(*mv.issues(st, pg)) == [
        'error: cannot query postgres on sync: peer "a376df2b": postgres request timed out',
        "warning: cluster has a deposed peer",
        "warning: cluster has no async peers",
    ]


def test_wrong_downstream_and_not_streaming_both_reported_but_not_kind():
    st = state()
    pg = healthy_pg(st)
    pg[P["id"]]["repl"] = row(S, "potential", st="catchup", addr="10.0.0.9")
    errors, warnings = mv.issues(st, pg)
    assert errors == [
        'peer "09957297": expected downstream peer to be "10.0.0.2", but found "10.0.0.9"',
        'peer "09957297": downstream replication not yet established '
        '(expected state "streaming", found "catchup")',
    ]
    assert warnings == []


def test_wrong_replication_kind_p_s_is_error_s_a_is_warning():
    st = state(asyncs=(A0, A1))
    pg = healthy_pg(st)
    pg[P["id"]]["repl"] = row(S, "async")
    pg[A0["id"]]["repl"] = row(A1, "sync")
    errors, warnings = mv.issues(st, pg)
    assert errors == ['peer "09957297": expected downstream replication to be "sync", but found "async"']
    assert warnings == ['peer "bb348824": expected downstream replication to be "async", but found "sync"']


def test_last_async_link_not_checked_and_no_async_warning():
    st = state(asyncs=())
    pg = healthy_pg(st)
    pg[S["id"]]["repl"] = row(A0, "async")  # a stray downstream of the tail is ignored
    assert mv.issues(st, pg) == ([], ["cluster has no async peers"])


def test_singleton_mode_counts_peers_and_stops():
    st = {"generation": 1, "primary": P, "sync": None, "async": [], "deposed": [D],
          "initWal": "0/0", "oneNodeWriteMode": True}
    errors, warnings = mv.issues(st, {P["id"]: {"error": None, "repl": None}})
    assert (errors, warnings) == ([], ["found 2 peers in singleton mode"])
    st["deposed"] = []
    assert mv.issues(st, {P["id"]: {"error": None, "repl": None}}) == ([], [])


def test_row_without_state_counts_as_not_connected():
    st = state()
    pg = healthy_pg(st)
    pg[P["id"]]["repl"] = {"client_addr": "10.0.0.2", "state": None}
    assert mv.issues(st, pg)[0] == ['peer "09957297": downstream replication peer not connected']


def test_multiline_messages_are_truncated():
    assert mv.verify_lines(["a\nb"], ["c"]) == ["error: a...", "warning: c"]


@pytest.mark.parametrize("secs,text", [(None, "-"), (0, "0m00s"), (5.9, "0m05s"), (65, "1m05s"),
                                       (86465, "1441m05s"), (-3, "0m00s")])
def test_format_lag(secs, text):
    assert mpg.format_lag(secs) == text


def test_show_text_layout():
    st = state(freeze={"date": "2015-03-18T18:40:11.095Z", "reason": "By nate for CM-129"})
    pg = healthy_pg(st)
    pg[A0["id"]]["lag_seconds"] = 65
    text = mv.render_show("10.0.0.100:2181", "1.moray.x", st, pg, [], ["cluster has no async peers"])
    lines = text.splitlines()
    assert lines[:6] == [
        "zookeeper:   10.0.0.100:2181",
        "cluster:     1.moray.x",
        "generation:  2 (0/174A4D0)",
        "mode:        normal",
        "freeze:      frozen since 2015-03-18T18:40:11.095Z",
        "freeze info: By nate for CM-129",
    ]
    assert lines[7].split() == ["ROLE", "PEER", "PG", "REPL", "SENT", "FLUSH", "REPLAY", "LAG"]
    assert lines[7].startswith("ROLE     PEER     PG   REPL  SENT          FLUSH")
    assert lines[8].split() == ["primary", "09957297", "ok", "sync", "0/79E8E0A0", "0/79E8E0A0",
                                "0/79E8DCA0", "-"]
    assert lines[9].split() == ["sync", "a376df2b", "ok", "async", "0/79E8E0A0", "0/79E8E0A0",
                                "0/79E8DCA0", "0m00s"]
    assert lines[10].split() == ["async", "bb348824", "ok", "-", "-", "-", "-", "1m05s"]
    assert lines[-1] == "warning: cluster has no async peers"


def test_show_fail_row_dashes_and_not_frozen():
    st = state()
    pg = healthy_pg(st)
    pg[S["id"]] = {"error": "boom", "repl": None}
    text = mv.render_show("z", "s", st, pg, [], [], verbose=True)
    assert "freeze:      not frozen" in text
    assert "ROLE     PEERNAME                             IP" in text
    sync_line = [ln for ln in text.splitlines() if ln.startswith("sync     a376df2b ")][0]
    assert sync_line.split() == ["sync", "a376df2b", "fail", "-", "-", "-", "-", "-"]


def test_choose_downstream_row_prefers_application_name():
    stale = {"application_name": "tcp://postgres@10.0.0.9:5432/postgres", "state": "streaming"}
    real = {"application_name": S["pgUrl"], "state": "streaming"}
    assert mpg.choose_downstream_row([stale, real], S) is real
    assert mpg.choose_downstream_row([stale], S) is stale  # manatee-adm: first row
    assert mpg.choose_downstream_row([], S) is None


def test_normalize_repl_row_9x_names_and_lag_bytes():
    r = mpg.normalize_repl_row({"sent_location": "0/3000200", "replay_location": "0/3000100",
                                "state": "streaming"})
    assert r["sent_lsn"] == "0/3000200" and r["replay_lsn"] == "0/3000100"
    assert r["replay_lag_bytes"] == 0x100


@pytest.mark.parametrize("url,want", [
    ("tcp://postgres@10.0.0.1:5432/postgres", ("10.0.0.1", 5432, "postgres", "postgres")),
    ("tcp://moray@127.0.0.1:26001/moray", ("127.0.0.1", 26001, "moray", "moray")),
])
def test_parse_pg_url(url, want):
    t = mpg.parse_pg_url(url)
    assert (t["host"], t["port"], t["user"], t["dbname"]) == want


@pytest.mark.parametrize("bad", ["http://x", "garbage", "tcp://:5432/x", "tcp://a@b:99999/x"])
def test_parse_pg_url_rejects(bad):
    with pytest.raises(mpg.PgError):
        mpg.parse_pg_url(bad)


def test_sentinel_matches():
    rows = [{"_key": "sentinel", "_etag": "E1", "_value": {"pid": 1, "rand": 2}}]
    assert mpg.sentinel_matches(rows, "E1", {"rand": 2, "pid": 1}) == (True, "sentinel row present")
    ok, why = mpg.sentinel_matches(rows, "E2")
    assert not ok and "expected _etag 'E2', found 'E1'" in why
    ok, why = mpg.sentinel_matches(rows, None, {"pid": 2})
    assert not ok and "expected _value" in why
    ok, why = mpg.sentinel_matches([], "E1")
    assert not ok and "found 0" in why


def test_upstream_downstream_chain():
    st = state(asyncs=(A0, A1))
    assert mpg.downstream_of(st, "primary", None) is S
    assert mpg.downstream_of(st, "sync", None) is A0
    assert mpg.downstream_of(st, "async", 0) is A1
    assert mpg.downstream_of(st, "async", 1) is None
    assert mpg.upstream_of(st, "async", 0) is S
    assert mpg.upstream_of(st, "async", 1) is A0
    assert mpg.upstream_of(st, "primary", None) is None


# ---- wait predicates -----------------------------------------------------------

def entry(**kw):
    e = {"role": "async", "ip": "10.0.0.3", "pg": "ok", "in_recovery": True, "wal_lsn": "0/5000",
         "upstream_link": {"state": "streaming", "sync_state": "async", "client_addr": "10.0.0.3"}}
    e.update(kw)
    return e


@pytest.mark.parametrize("e,ok,needle", [
    (entry(), True, "healthy async"),
    (None, False, "not in the shard's state"),
    (entry(role="sync"), False, "role is sync"),
    (entry(pg="fail", error="refused"), False, "postgres is fail (refused)"),
    (entry(in_recovery=False), False, "not in recovery"),
    (entry(upstream_link=None), False, "no replication connection"),
    (entry(upstream_link={"state": "catchup", "sync_state": "async", "client_addr": "10.0.0.3"}), False, "'catchup'"),
    (entry(upstream_link={"state": "streaming", "sync_state": "sync", "client_addr": "10.0.0.3"}), False, "sync_state is 'sync'"),
])
def test_healthy_async(e, ok, needle):
    got, why = mf.healthy_async(e)
    assert got is ok and needle in why


def test_healthy_async_needs_upstream_probe():
    e = entry()
    del e["upstream_link"]
    assert mf.healthy_async(e) == (False, "upstream postgres could not be queried")


def test_replayed_and_gone():
    assert mf.replayed(entry(wal_lsn="0/5000"), "0/5000")[0]
    ok, why = mf.replayed(entry(wal_lsn="0/4000"), "0/5000")
    assert not ok and "4096 bytes behind 0/5000" in why
    assert not mf.replayed(entry(pg="fail"), "0/1")[0]
    assert mf.gone(None, None) == (True, "not in the state and no election node")
    assert "still listed as async" in mf.gone(entry(), None)[1]
    assert "election node x-1" in mf.gone(None, {"name": "x-1"})[1]
