"""Pure logic of module_utils/vmapi.py and modules/vmapi_vm.py: job error
extraction, the job-polling loop (with a scripted job source and a fake
clock), and which power action a wanted state needs."""
import pytest

from ansible_collections.manta.ops.plugins.module_utils import vmapi as V
from ansible_collections.manta.ops.plugins.module_utils.http_api import ApiError
from ansible_collections.manta.ops.plugins.modules import vmapi_vm


def test_job_error_takes_last_error_message_or_string():
    job = {"chain_results": [{"name": "a", "error": ""},
                             {"name": "b", "error": {"name": "E", "message": "Cannot stop a VM from a 'stopped' state"}},
                             {"name": "c", "error": ""}]}
    assert V.job_error(job) == "Cannot stop a VM from a 'stopped' state"
    assert V.job_error({"chain_results": [{"error": "plain text"}]}) == "plain text"
    assert V.job_error({"chain_results": []}) is None
    assert V.job_error(None) is None


class ScriptedJobs(V.VmapiClient):
    """A VmapiClient whose get_job replays a script (jobs or exceptions)."""

    def __init__(self, script):
        super().__init__("http://127.0.0.1:1")
        self.script = list(script)
        self.calls = 0

    def get_job(self, job_uuid):
        self.calls += 1
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def transient():
    return ApiError("VMAPI", "GET", "/jobs/j", status=503, code="ServiceUnavailable", api_message="busy")


def test_wait_job_polls_until_succeeded_tolerating_transient_errors():
    c = ScriptedJobs([{"execution": "queued"}, transient(), {"execution": "running"}, transient(),
                      {"execution": "succeeded", "uuid": "j"}])
    clk = Clock()
    job = c.wait_job("j", timeout=100, interval=5, sleep=clk.sleep, clock=clk)
    assert job["execution"] == "succeeded"
    assert c.calls == 5 and clk.t == 20


def test_wait_job_failure_reports_chain_error():
    c = ScriptedJobs([{"execution": "failed", "name": "stop-x",
                       "chain_results": [{"error": {"message": "Cannot stop a VM from a 'stopped' state"}}]}])
    with pytest.raises(V.JobError) as exc:
        c.wait_job("j", sleep=lambda s: None)
    assert "failed: Cannot stop a VM from a 'stopped' state" in str(exc.value)
    assert not exc.value.timed_out


def test_wait_job_times_out():
    c = ScriptedJobs([{"execution": "running"}])
    clk = Clock()
    with pytest.raises(V.JobError) as exc:
        c.wait_job("j", timeout=12, interval=5, sleep=clk.sleep, clock=clk)
    assert exc.value.timed_out and "still running after 12s" in str(exc.value)


def test_wait_job_gives_up_after_too_many_transient_errors():
    c = ScriptedJobs([transient()])
    with pytest.raises(ApiError):
        c.wait_job("j", max_transient=3, sleep=lambda s: None)
    assert c.calls == 4


def test_wait_job_missing_job_fails_at_once():
    c = ScriptedJobs([ApiError("VMAPI", "GET", "/jobs/j", status=404, code="ResourceNotFound", api_message="x")])
    with pytest.raises(ApiError):
        c.wait_job("j", sleep=lambda s: None)
    assert c.calls == 1


@pytest.mark.parametrize("vm_state, want, marker, have, action", [
    ("running", "running", None, None, None),
    ("stopped", "running", None, None, "start"),
    ("running", "stopped", None, None, "stop"),
    ("stopped", "stopped", None, None, None),
    ("running", "restarted", None, None, "reboot"),
    ("stopped", "restarted", None, None, "start"),
    ("running", "restarted", "m1", "m1", None),
    ("running", "restarted", "m2", "m1", "reboot"),
    ("running", "present", None, None, None),
])
def test_plan_power(vm_state, want, marker, have, action):
    assert vmapi_vm.plan_power(vm_state, want, marker, have) == action
