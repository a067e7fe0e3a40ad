"""Pure logic of module_utils/sapi.py: metadata merge/delete, diffs, the
compare-and-swap check, secret masking, instance matching; and of
module_utils/sapi_reprovision.py: the reprovision marker (when a reprovision
already happened), with in-memory stand-ins for the SAPI/VMAPI clients (the
real APIs are exercised by tests/integration/test_sapi_modules.py)."""
import pytest

from ansible_collections.manta.ops.plugins.module_utils import sapi as S
from ansible_collections.manta.ops.plugins.module_utils import sapi_reprovision as R
from ansible_collections.manta.ops.plugins.module_utils.http_api import ApiError
from ansible_collections.manta.ops.plugins.modules import sapi_metadata


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
    out = R.trim_message(msg)
    assert out.splitlines() == ["line 0", "line 1", "... (6 lines) ...", "line 8", "line 9"]
    assert R.trim_message("short") == "short"


# ---- reprovision markers (module_utils/sapi_reprovision.py) -----------------------------

IMG_OLD = "11111111-1111-1111-1111-111111111111"
IMG_NEW = "22222222-2222-2222-2222-222222222222"
INST = "33333333-3333-3333-3333-333333333333"


@pytest.mark.parametrize("marker,record,cur,want", [
    ("m1", None, IMG_OLD, R.RUN),
    ("m1", {"marker": "m1", "state": "done"}, IMG_OLD, R.SKIP),      # the marker, not the image, decides
    ("m1", {"marker": "m1", "state": "pending"}, IMG_NEW, R.RESOLVE),
    ("m1", {"marker": "m1", "state": "failed"}, IMG_NEW, R.RUN),
    ("m2", {"marker": "m1", "state": "done"}, IMG_NEW, R.RUN),       # another marker: run again
    (None, {"marker": "m1", "state": "done"}, IMG_NEW, R.SKIP),      # no marker: the image decides
    (None, None, IMG_OLD, R.RUN),
])
def test_decide(marker, record, cur, want):
    assert R.decide(marker, record, cur, IMG_NEW) == want


def test_read_marker_and_current_image():
    inst = {"uuid": INST, "params": {"image_uuid": IMG_OLD},
            "metadata": {"K": {"marker": "m"}, "BAD": "text"}}
    assert R.read_marker(inst, "K") == {"marker": "m"}
    assert R.read_marker(inst, "BAD") is None and R.read_marker(inst, "NONE") is None
    assert R.read_marker({"uuid": INST}) is None
    assert R.current_image(inst) == IMG_OLD
    assert R.current_image(inst, {"image_uuid": IMG_NEW}) == IMG_NEW


def job(uuid, execution, created, image=IMG_NEW):
    return {"uuid": uuid, "execution": execution, "created_at": created, "params": {"image_uuid": image}}


def test_judge_pending_looks_only_at_jobs_the_interrupted_run_started():
    rec = {"marker": "m", "state": "pending", "image_uuid": IMG_NEW, "prior_jobs": ["j0"]}
    old_ok = job("j0", "succeeded", "2026-01-01")
    assert R.judge_pending(rec, [old_ok]) == ("redo", None), "a job from before the run proves nothing"
    assert R.judge_pending(rec, [old_ok, job("j1", "succeeded", "2026-01-02")])[0] == "done"
    assert R.judge_pending(rec, [job("j1", "running", "2026-01-02")]) == ("wait", job("j1", "running", "2026-01-02"))
    assert R.judge_pending(rec, [job("j1", "failed", "2026-01-02")]) == ("redo", None)
    assert R.judge_pending(rec, [job("j1", "succeeded", "2026-01-02", image=IMG_OLD)]) == ("redo", None), \
        "a reprovision onto another image is not ours"
    # newest first; a failed retry does not undo an earlier success of the same run
    assert R.judge_pending(rec, [job("j1", "succeeded", "2026-01-02"), job("j2", "failed", "2026-01-03")])[0] == "done"
    assert R.judge_pending(rec, [job("j1", "failed", "2026-01-02"), job("j2", "running", "2026-01-03")])[0] == "wait"
    assert R.judge_pending(dict(rec, prior_jobs=None), [job("j1", "succeeded", "2026-01-02")]) == ("redo", None)


class FakeSapi:
    def __init__(self, fail_upgrade=None):
        self.calls = []
        self.fail_upgrade = fail_upgrade

    def update(self, kind, uuid, action="update", metadata=None):
        self.calls.append(("update", dict(metadata)))

    def upgrade_instance(self, uuid, image_uuid, timeout=None):
        self.calls.append(("upgrade", image_uuid))
        if self.fail_upgrade:
            raise self.fail_upgrade


class FakeVmapi:
    def __init__(self, jobs):
        self.jobs = jobs
        self.waited = []

    def list_vm_jobs(self, uuid, task=None):
        return list(self.jobs)

    def wait_job(self, job_uuid, timeout=None, interval=None):
        self.waited.append(job_uuid)
        return {"uuid": job_uuid, "execution": "succeeded"}


def instance(record=None, image=IMG_OLD):
    return {"uuid": INST, "params": {"image_uuid": image},
            "metadata": {"MANTA_OPS_REPROVISION": record} if record else {}}


def test_reprovision_writes_pending_then_done_and_a_rerun_changes_nothing():
    sapi = FakeSapi()
    out = R.reprovision(sapi, FakeVmapi([job("j0", "succeeded", "1")]), instance(), IMG_NEW, marker="m")
    assert out["changed"] is True and out["marker"]["state"] == "done"
    assert [c[0] for c in sapi.calls] == ["update", "upgrade", "update"]
    pending = sapi.calls[0][1]["MANTA_OPS_REPROVISION"]
    assert pending["state"] == "pending" and pending["prior_jobs"] == ["j0"]
    assert sapi.calls[2][1]["MANTA_OPS_REPROVISION"]["finished_at"]
    again = FakeSapi()
    out2 = R.reprovision(again, None, instance(out["marker"], image=IMG_NEW), IMG_NEW, marker="m")
    assert out2["changed"] is False and again.calls == []


def test_reprovision_check_mode_calls_nothing():
    sapi = FakeSapi()
    out = R.reprovision(sapi, None, instance(), IMG_NEW, marker="m", check_mode=True)
    assert out["changed"] is True and out["after"]["marker"]["state"] == "done" and sapi.calls == []


def test_reprovision_resolves_an_interrupted_run_without_reprovisioning_twice():
    rec = {"marker": "m", "state": "pending", "image_uuid": IMG_NEW, "prior_jobs": []}
    sapi, vmapi = FakeSapi(), FakeVmapi([job("j1", "running", "2")])
    out = R.reprovision(sapi, vmapi, instance(rec), IMG_NEW, marker="m")
    assert out["resolved_pending"] is True and vmapi.waited == ["j1"]
    assert [c[0] for c in sapi.calls] == ["update"], "only the marker is completed: no second upgrade"
    assert out["marker"]["state"] == "done"


def test_reprovision_pending_without_vmapi_refuses_and_names_the_key():
    rec = {"marker": "m", "state": "pending", "image_uuid": IMG_NEW, "started_at": "T0"}
    with pytest.raises(R.ReprovisionError) as exc:
        R.reprovision(FakeSapi(), None, instance(rec), IMG_NEW, marker="m")
    assert "pending since T0" in str(exc.value) and "MANTA_OPS_REPROVISION" in str(exc.value)
    assert exc.value.result["changed"] is True


def test_reprovision_failure_is_recorded_on_the_marker():
    err = ApiError("sapi", "PUT", f"/instances/{INST}/upgrade", status=500, code="InternalError",
                   api_message="\n".join(f"log {i}" for i in range(9)))
    sapi = FakeSapi(fail_upgrade=err)
    with pytest.raises(R.ReprovisionApiError) as exc:
        R.reprovision(sapi, None, instance(), IMG_NEW, marker="m")
    assert exc.value.cause is err and "could not reprovision" in exc.value.what
    failed = sapi.calls[-1][1]["MANTA_OPS_REPROVISION"]
    assert failed["state"] == "failed" and "(5 lines)" in failed["error"]
